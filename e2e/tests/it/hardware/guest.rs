//! Hardware stages in a qemu guest (TCG) netbooted through Debian's iPXE ROM from a
//! real coordinator into the shared image (`crate::image`). The guest has an SMBIOS
//! serial, an emulated NVMe and an ATA disk, and three virtio disks for the storage
//! gates (two blank, one ext4); an iperf3 server runs on the host. What it shows: the
//! serial binds the ticket and is reported; the spec diff's severities; smartctl
//! figures from NVMe and ATA; the destructive storage stage writes only the blank
//! expected disk; stress-ng and iperf3 figures arrive.
use super::{measure, part, s, stage};
use crate::common::*;
use crate::image::{image, register, trusted_state};
use crate::qemu::{Bus, Qemu, guest_url};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SERIAL: &str = "KILN-E2E-0001";
/// The NIC's MAC: iPXE fetches `/ipxe/<mac>` for the host's pending run.
const VM_MAC: &str = "52:54:00:6b:00:02";
/// TCG is slow, and other tests share the CPUs: generous limits, never timed asserts.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// An `iperf3 -s` on a free loopback port (the guest reaches it as 10.0.2.2).
struct Iperf(Child, u16);

impl Iperf {
    fn start() -> Iperf {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new("iperf3")
            .args([
                "-s",
                "-B",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--forceflush",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        loop {
            let l = lines.next().expect("iperf3 server exited").expect("read");
            if l.contains("Server listening") {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Iperf(child, port)
    }
}

impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A disk image file of `mib` MiB: zeros, or ext4 holding one file.
fn disk(dir: &Path, name: &str, mib: u64, ext4: bool) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(mib << 20))
        .expect("disk image");
    if ext4 {
        let content = dir.join("ext4-content");
        write(&content, "precious.txt", "do not overwrite\n");
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d", s(&content), s(&p)])
            .output()
            .expect("mkfs.ext4");
        assert!(
            o.status.success(),
            "mkfs.ext4: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    p
}

fn sha(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().unwrap_or("").to_string()
}

/// Netboots a guest (1 GiB, 2 CPUs) with the host's MAC, this SMBIOS serial and disks;
/// iPXE chains to the coordinator's script for the host's oldest pending run.
fn boot(server: &Coordinator, name: &str, serial: &str, disks: &[(PathBuf, Bus)]) -> Qemu {
    let mut b = Qemu::builder(name)
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac(VM_MAC)
        .smbios_serial(serial)
        .memory_mib(1024)
        .cpus(2);
    for (path, bus) in disks {
        b = b.disk(path, bus.clone());
    }
    b.spawn()
}

const HOST_SPEC: &str = r#"
[host.spec]
memory = "2G"
[[host.spec.disk]]
serial = "NVME-E2E-1"
model = "Samsung PM9A3"
[[host.spec.disk]]
serial = "ATA-E2E-1"
model = "KilnATA"
[[host.spec.disk]]
serial = "BLANK-A"
[[host.spec.disk]]
serial = "EXT4-C"
[[host.spec.disk]]
serial = "GONE-1"
size = "1T"
"#;

fn plan(iperf_port: u16) -> String {
    format!(
        r#"name = "hardware-e2e"
fail_fast = false

[[stage]]
name = "inventory"
kind = "inventory"

[[stage]]
name = "smart"
kind = "smart"
devices = ["/dev/nvme0n1", "/dev/sda"]
self_test = true

[[stage]]
name = "storage"
kind = "storage"
devices = ["/dev/vda", "/dev/vdb", "/dev/vdc"]
destructive = true
duration = "4s"
size = "16M"

[[stage]]
name = "cpu"
kind = "cpu_stress"
duration = "3s"

[[stage]]
name = "network"
kind = "network"
server = "10.0.2.2"
port = {iperf_port}
duration = "2s"

[[stage]]
name = "gpu"
kind = "gpu"
"#
    )
}

#[test]
fn hardware_stages_in_a_qemu_guest() {
    if !require_tool("iperf3") {
        return;
    }
    let Some((kernel, initrd)) = image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = trusted_state(dir);
    register(&state, &kernel, &initrd);
    // Bound by MAC (for iPXE's per-MAC script) and SMBIOS serial (what the agent checks).
    let o = kc(
        &state,
        &[
            "host", "add", "vm", "--mac", VM_MAC, "--serial", SERIAL, "--image", "kiln",
        ],
    );
    assert_eq!(o.code, 0, "host add: {}", o.stderr);
    let hosts = state.join("hosts.toml");
    let mut text = std::fs::read_to_string(&hosts).expect("hosts.toml");
    text.push_str(HOST_SPEC);
    std::fs::write(&hosts, text).expect("hosts.toml");
    let iperf = Iperf::start();
    let server = Coordinator::start(&state);
    let p = write(dir, "plan.toml", &plan(iperf.1));
    let o = kc(
        &state,
        &["ticket", "issue", "--plan", s(&p), "--host", "vm"],
    );
    assert_eq!(o.code, 0, "ticket issue: {}", o.stderr);
    let run = o.stdout.trim().to_string();
    let ticket = state.join("runs").join(&run).join("ticket.kiln");
    let o = kc(&state, &["ticket", "show", s(&ticket)]);
    assert!(
        o.stdout.contains(&format!("serial \"{SERIAL}\"")),
        "the ticket binds the serial: {}{}",
        o.stdout,
        o.stderr
    );

    let disks = [
        (
            disk(dir, "nvme.img", 256, false),
            Bus::Nvme {
                serial: "NVME-E2E-1",
            },
        ),
        (
            disk(dir, "ata.img", 256, false),
            Bus::Ata {
                serial: "ATA-E2E-1",
                model: "KilnATA",
            },
        ),
        (
            disk(dir, "blank-a.img", 64, false),
            Bus::VirtioSerial { serial: "BLANK-A" },
        ),
        (
            disk(dir, "blank-b.img", 64, false),
            Bus::VirtioSerial { serial: "BLANK-B" },
        ),
        (
            disk(dir, "ext4-c.img", 64, true),
            Bus::VirtioSerial { serial: "EXT4-C" },
        ),
    ];
    let before: Vec<String> = disks.iter().map(|d| sha(&d.0)).collect();
    let mut vm = boot(&server, "vm", SERIAL, &disks);
    let (t_agent, _) = vm.wait_for_line("kiln: agent", BOOT_LIMIT);
    let (t_done, line) = vm.wait_for_line("kiln: run finished", BOOT_LIMIT);
    let (status, t_off) = vm.wait_exit(Duration::from_secs(120));
    eprintln!(
        "hardware guest (TCG, netboot): qemu start -> agent {:.1}s, -> RunFinished {:.1}s, \
         -> powered off {:.1}s ({line})",
        t_agent.as_secs_f64(),
        t_done.as_secs_f64(),
        t_off.as_secs_f64()
    );
    let console = vm.console();
    assert!(status.success(), "qemu exit {status}; console:\n{console}");
    let after: Vec<String> = disks.iter().map(|d| sha(&d.0)).collect();

    let o = kc(&state, &["run", "show", &run, "--json"]);
    assert_eq!(o.code, 0, "run show: {}", o.stderr);
    let show: Value = serde_json::from_str(&o.stdout).expect("run show JSON");
    let logs = kc(&state, &["run", "logs", &run]).stdout;
    let ctx = format!("console:\n{console}\nlogs:\n{logs}");
    assert_eq!(show["state"], "finished", "{ctx}");
    assert_eq!(
        show["outcome"], "failed",
        "the spec diff fails the run: {ctx}"
    );

    // The SMBIOS serial is reported (and bound the ticket: the second boot below).
    assert!(logs.contains(&format!("serial \"{SERIAL}\"")), "{ctx}");
    let inv = stage(&show, "inventory");
    assert_eq!(inv["outcome"], "failed", "{ctx}");
    assert_eq!(part(inv, "memory")["outcome"], "failed");
    assert!(
        part(inv, "memory")["detail"]
            .as_str()
            .unwrap()
            .contains("memory 1024 MiB")
    );
    assert_eq!(part(inv, "disk GONE-1")["outcome"], "failed");
    assert_eq!(part(inv, "disk NVME-E2E-1")["outcome"], "warning");
    assert_eq!(
        part(inv, "disk /dev/vdb")["outcome"],
        "passed",
        "an extra disk is info"
    );
    assert_eq!(measure(inv, "memory.total"), Some(1024.0));
    assert_eq!(inv["artifacts"][0]["name"], "inventory.json");

    let smart = stage(&show, "smart");
    assert_eq!(smart["outcome"], "passed", "{ctx}");
    for d in ["nvme0n1", "sda"] {
        let t = measure(smart, &format!("smart.{d}.temperature"));
        assert!(
            t.is_some_and(|t| t > 0.0),
            "{d} temperature: {}",
            smart["measurements"]
        );
        assert_eq!(measure(smart, &format!("smart.{d}.health")), Some(1.0));
    }
    assert!(measure(smart, "smart.nvme0n1.media_errors").is_some());
    assert!(measure(smart, "smart.sda.reallocated").is_some());

    let st = stage(&show, "storage");
    assert_eq!(st["outcome"], "held", "{ctx}");
    assert_eq!(part(st, "/dev/vda")["outcome"], "passed", "{ctx}");
    let b = part(st, "/dev/vdb");
    assert_eq!(b["outcome"], "held");
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("not among the host's expected disks"),
        "{b}"
    );
    let c = part(st, "/dev/vdc");
    assert_eq!(c["outcome"], "held");
    assert!(c["detail"].as_str().unwrap().contains("ext2/3/4"), "{c}");
    assert_ne!(after[2], before[2], "the blank expected disk was written");
    assert_eq!(after[3], before[3], "the unexpected blank disk was touched");
    assert_eq!(after[4], before[4], "the ext4 disk was touched");
    assert_eq!(
        &after[..2],
        &before[..2],
        "smart and inventory wrote nothing"
    );
    let bw = measure(st, "storage.vda.seqwrite.write.bw").expect("write bandwidth");
    assert!(
        measure(st, "storage.vda.seqwrite.verify.bw").is_some(),
        "the write was not verified: {st}"
    );

    let cpu = stage(&show, "cpu");
    assert_eq!(cpu["outcome"], "passed", "{ctx}");
    let ops = measure(cpu, "cpu.bogo_ops_per_s").expect("ops/s");
    let net = stage(&show, "network");
    assert_eq!(net["outcome"], "passed", "{ctx}");
    let tx = measure(net, "net.tx_mbps").expect("tx");
    let rx = measure(net, "net.rx_mbps").expect("rx");
    assert!(ops > 0.0 && tx > 0.0 && rx > 0.0);
    assert_eq!(stage(&show, "gpu")["outcome"], "skipped");
    eprintln!(
        "guest (TCG): stress-ng {ops:.1} bogo ops/s, iperf3 tx {tx:.0} / rx {rx:.0} Mbit/s, \
         fio seqwrite {bw:.1} MiB/s on virtio"
    );

    // The same image on a machine with another serial refuses the ticket.
    let o = kc(
        &state,
        &["ticket", "issue", "--plan", s(&p), "--host", "vm"],
    );
    assert_eq!(o.code, 0, "ticket issue: {}", o.stderr);
    let run2 = o.stdout.trim().to_string();
    let mut vm = boot(&server, "someone-else", "SOMEONE-ELSE", &[]);
    let (_, line) = vm.wait_for_line("kiln: ticket refused", BOOT_LIMIT);
    let console = vm.console();
    assert!(console.contains("ticket refused"), "{console}");
    assert!(
        line.contains("serial is \"SOMEONE-ELSE\""),
        "refused for the serial: {line}"
    );
    vm.wait_for_line("kiln: idle", Duration::from_secs(30));
    assert!(vm.running(), "the refused machine stays on");
    drop(vm);
    let o = kc(&state, &["run", "show", &run2, "--json"]);
    let show: Value = serde_json::from_str(&o.stdout).expect("run show JSON");
    assert_eq!(
        show["frames"], 0,
        "a refused ticket reports nothing: {console}"
    );
}
