//! Unit tests for the iPXE scripts and the dnsmasq snippet.
use super::*;
use crate::images;
use crate::state::{Host, Hosts, State};
use kiln_protocol::{HostBinding, HostSpec, Plan, SecretKey, SignedTicket, Ticket};
use std::path::PathBuf;

const MAC: &str = "52:54:00:12:34:56";

/// The script for `mac` from an index built now (these tests write run folders
/// directly, not through the journal).
fn script(s: &State, mac: &str, base: &str) -> String {
    let (index, _) = Index::build(s, true).unwrap();
    mac_script(&index, mac, base)
}

fn setup(image: Option<&str>) -> (tempfile::TempDir, State) {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = State::init(&d.path().join("s")).unwrap();
    let hosts = Hosts {
        hosts: vec![Host {
            name: "node1".into(),
            macs: vec![MAC.into()],
            serial: None,
            image: image.map(str::to_string),
            spec: None,
            agent_key: None,
            power: None,
        }],
    };
    s.save_hosts(&hosts).unwrap();
    let k = d.path().join("vmlinuz");
    let i = d.path().join("initrd");
    std::fs::write(&k, b"kernel bytes").unwrap();
    std::fs::write(&i, b"initrd bytes").unwrap();
    images::add(&s, "burnin", &k, &i, "quiet").unwrap();
    (d, s)
}

fn issue(s: &State, host: &str, run: u8, issued_at: u64, key: &SecretKey) -> RunId {
    let run = RunId([run; 16]);
    let t = Ticket {
        version: kiln_protocol::VERSION,
        run,
        issued_at,
        not_after: crate::fsutil::now_s() + 3600,
        host: HostBinding {
            name: host.into(),
            macs: vec![
                if host == "node1" {
                    MAC
                } else {
                    "02:00:00:00:00:01"
                }
                .parse()
                .unwrap(),
            ],
            serial: None,
            spec: HostSpec::default(),
            agent_key: None,
        },
        coordinator: None,
        plan: Plan {
            name: "p".into(),
            stages: vec![],
            fail_fast: true,
            timeout_s: 0,
            hold: Default::default(),
        },
    };
    let dir = s.run_dir(&run);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ticket.kiln"),
        SignedTicket::sign(&t, key).to_file(),
    )
    .unwrap();
    run
}

#[test]
fn boot_script_chains_to_the_mac_script() {
    assert_eq!(boot_script(), "#!ipxe\nchain /ipxe/${mac:hexhyp}\n");
}

#[test]
fn unknown_mac_and_bad_input_exit() {
    let (_d, s) = setup(Some("burnin"));
    let out = script(&s, "52:54:00:ff:ff:ff", "http://10.0.2.2:7373");
    assert!(
        out.ends_with("exit\n") && out.contains("unknown MAC 52:54:00:ff:ff:ff"),
        "{out}"
    );
    let out = script(&s, "nonsense\nshell", "http://10.0.2.2:7373");
    assert!(out.ends_with("exit\n") && !out.contains("shell"), "{out}");
    let out = script(&s, MAC, "http://x\nshell");
    assert!(out.ends_with("exit\n") && !out.contains("shell"), "{out}");
}

#[test]
fn known_host_with_nothing_pending_exits() {
    let (_d, s) = setup(Some("burnin"));
    let out = script(&s, MAC, "http://10.0.2.2:7373");
    assert!(
        out.contains("nothing pending for host node1") && out.ends_with("exit\n"),
        "{out}"
    );
    // A run that has started (has events) is no longer pending.
    let run = issue(&s, "node1", 1, 10, &s.signing_key().unwrap());
    std::fs::write(s.run_dir(&run).join("events.log"), b"\x01\x00").unwrap();
    assert!(script(&s, MAC, "http://h:1").ends_with("exit\n"));
}

#[test]
fn host_without_image_exits() {
    let (_d, s) = setup(None);
    issue(&s, "node1", 1, 10, &s.signing_key().unwrap());
    let out = script(&s, MAC, "http://h:1");
    assert!(
        out.contains("has no image") && out.ends_with("exit\n"),
        "{out}"
    );
}

#[test]
fn pending_host_boots_its_oldest_run_by_cas_urls() {
    let (_d, s) = setup(Some("burnin"));
    let key = s.signing_key().unwrap();
    issue(&s, "node1", 2, 20, &key);
    let oldest = issue(&s, "node1", 3, 10, &key);
    issue(&s, "other", 4, 1, &key);
    // Signed by another key: never booted.
    issue(&s, "node1", 5, 1, &SecretKey::from_seed([9; 32]));
    let img = images::load(&s).unwrap().get("burnin").unwrap().clone();
    let out = script(&s, "52-54-00-12-34-56", "http://10.0.2.2:7373/");
    let want = format!(
        "#!ipxe\necho kiln: host node1 run {oldest} image burnin\n\
         kernel http://10.0.2.2:7373/cas/{k} initrd=initrd kiln.url=http://10.0.2.2:7373 \
         kiln.run={oldest} BOOTIF=01-52-54-00-12-34-56 {DEFAULT_CONSOLE} quiet\n\
         initrd --name initrd http://10.0.2.2:7373/cas/{i}\nboot\n",
        k = img.kernel,
        i = img.initrd
    );
    assert_eq!(out, want);
}

#[test]
fn missing_cas_object_exits() {
    let (_d, s) = setup(Some("burnin"));
    issue(&s, "node1", 1, 10, &s.signing_key().unwrap());
    let img = images::load(&s).unwrap().get("burnin").unwrap().clone();
    std::fs::remove_file(s.cas().path(&img.initrd_sha().unwrap())).unwrap();
    let out = script(&s, MAC, "http://h:1");
    assert!(
        out.contains("missing from cas/") && out.ends_with("exit\n"),
        "{out}"
    );
}

fn dnsmasq(range: Option<&str>, proxy: Option<&str>) -> Result<String> {
    dnsmasq_snippet(&Dnsmasq {
        url: "http://10.0.0.1:7373".into(),
        proxy: proxy.map(str::to_string),
        range: range.map(str::to_string),
        interface: Some("lan0".into()),
        tftp_root: PathBuf::from("/usr/lib/ipxe"),
    })
}

#[test]
fn dnsmasq_dhcp_and_proxy_modes() {
    let full = dnsmasq(Some("10.0.0.100,10.0.0.200,12h"), None).unwrap();
    for line in [
        "interface=lan0",
        "dhcp-range=10.0.0.100,10.0.0.200,12h",
        "dhcp-match=set:ipxe,175",
        "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
        "dhcp-boot=tag:ipxe,http://10.0.0.1:7373/boot.ipxe",
        "tftp-root=/usr/lib/ipxe",
    ] {
        assert!(
            full.lines().any(|l| l == line),
            "missing {line:?} in\n{full}"
        );
    }
    let proxy = dnsmasq(None, Some("10.0.0.0")).unwrap();
    assert!(
        proxy.lines().any(|l| l == "dhcp-range=10.0.0.0,proxy"),
        "{proxy}"
    );
    assert!(proxy.contains("pxe-service=tag:!ipxe,x86PC"), "{proxy}");
    assert!(dnsmasq(None, None).is_err());
    assert!(dnsmasq(Some("a"), Some("b")).is_err());
    assert!(dnsmasq(Some("a b"), None).is_err());
}
