//! Netboot, the whole path: a qemu guest (TCG) boots through Debian's iPXE ROM from a
//! real coordinator on loopback into the image `image/build-local` assembles, runs its
//! ticket and powers itself off. Local twins of `nixos-tests/*.nix`.
use crate::common::*;
use crate::image::{image, register, trusted_state};
use crate::qemu::{Bus, Qemu, guest_url};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const VM_MAC: &str = "52:54:00:6b:00:01";
/// TCG is slow, and other tests share the CPUs: generous limits, never timed asserts.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// The plan every twin runs: a shipped test folder and a plain command.
fn exec_plan(dir: &Path) -> PathBuf {
    write(
        dir,
        "tests/smoke/run.sh",
        "#!/bin/sh\necho \"smoke on $(uname -r): $(cat data.txt)\"\n",
    );
    write(dir, "tests/smoke/data.txt", "42\n");
    let run_sh = dir.join("tests/smoke/run.sh");
    let mut perm = std::fs::metadata(&run_sh).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&run_sh, perm).unwrap();
    write(
        dir,
        "plan.toml",
        r#"name = "netboot-exec"
timeout = "10m"

[[stage]]
name = "smoke"
kind = "exec"
command = ["./run.sh"]
tests = "tests/smoke"
timeout = "2m"

[[stage]]
name = "identity"
kind = "exec"
command = ["sh", "-c", "cat /sys/class/dmi/id/product_serial; ip -4 addr show"]
timeout = "2m"
"#,
    )
}

const EXPECTED: [(&str, &str); 2] = [("smoke", "passed"), ("identity", "passed")];

fn show(state: &Path, run: &str) -> Value {
    let o = kc(state, &["run", "show", run, "--json"]);
    assert_eq!(o.code, 0, "run show failed: {}", o.stderr);
    serde_json::from_str(&o.stdout).expect("run show --json is JSON")
}

fn outcomes(v: &Value) -> Vec<(String, String)> {
    v["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            let f = |k: &str| s[k].as_str().unwrap_or_default().to_string();
            (f("name"), f("outcome"))
        })
        .collect()
}

fn expected() -> Vec<(String, String)> {
    EXPECTED
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn ok(o: Out, what: &str) -> String {
    assert_eq!(o.code, 0, "{what} failed: {}{}", o.stdout, o.stderr);
    o.stdout
}

/// Registers the image and a netboot host bound to `VM_MAC`.
fn add_image_and_host(state: &Path, kernel: &Path, initrd: &Path) {
    register(state, kernel, initrd);
    ok(
        kc(
            state,
            &["host", "add", "node1", "--mac", VM_MAC, "--image", "kiln"],
        ),
        "host add",
    );
}

fn issue(state: &Path, plan: &Path, host: &str, out: Option<&Path>) -> String {
    let mut args = vec![
        "ticket",
        "issue",
        "--plan",
        plan.to_str().unwrap(),
        "--host",
        host,
    ];
    if let Some(o) = out {
        args.extend(["--out", o.to_str().unwrap()]);
    }
    let stdout = ok(kc(state, &args), "ticket issue");
    stdout
        .split_whitespace()
        .next()
        .expect("a run id")
        .to_string()
}

fn get(url: &str) -> (u16, Vec<u8>) {
    match ureq::get(url).call() {
        Ok(r) => {
            let code = r.status();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut r.into_reader(), &mut body).expect("body");
            (code, body)
        }
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default().into()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn get_text(url: &str) -> String {
    let (code, body) = get(url);
    assert_eq!(code, 200, "GET {url}");
    String::from_utf8(body).expect("utf-8 script")
}

#[test]
fn ipxe_scripts_exit_or_name_the_image_by_cas_urls() {
    let Some((kernel, initrd)) = image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = trusted_state(tmp.path());
    add_image_and_host(&state, &kernel, &initrd);
    let server = Coordinator::start(&state);

    let boot = get_text(&format!("{}/boot.ipxe", server.url));
    assert!(boot.starts_with("#!ipxe\n") && boot.contains("chain /ipxe/${mac:hexhyp}"));
    let unknown = get_text(&format!("{}/ipxe/52-54-00-ff-ff-ff", server.url));
    assert!(
        unknown.trim_end().ends_with("exit") && unknown.contains("unknown MAC"),
        "{unknown}"
    );
    let idle = get_text(&format!("{}/ipxe/{}", server.url, VM_MAC.replace(':', "-")));
    assert!(
        idle.trim_end().ends_with("exit") && idle.contains("nothing pending"),
        "{idle}"
    );

    let run = issue(&state, &exec_plan(tmp.path()), "node1", None);
    let script = get_text(&format!("{}/ipxe/{}", server.url, VM_MAC.replace(':', "-")));
    assert!(script.contains(&format!("kiln.run={run}")), "{script}");
    assert!(
        script.contains(&format!("kiln.url={}", server.url)),
        "{script}"
    );
    for (what, file) in [("kernel", &kernel), ("initrd", &initrd)] {
        let bytes = std::fs::read(file).unwrap();
        let sha = kiln_protocol::Sha256::of(&bytes).to_string();
        let url = format!("{}/cas/{sha}", server.url);
        assert!(
            script.contains(&url),
            "{what} is not named by {url}:\n{script}"
        );
        let (code, served) = get(&url);
        assert_eq!(
            (code, served.len()),
            (200, bytes.len()),
            "{url} serves the {what}"
        );
    }
}

#[test]
fn netboot_exec_passes() {
    let Some((kernel, initrd)) = image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = trusted_state(tmp.path());
    add_image_and_host(&state, &kernel, &initrd);
    let server = Coordinator::start(&state);
    let run = issue(&state, &exec_plan(tmp.path()), "node1", None);

    let mut vm = Qemu::builder("node1")
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac(VM_MAC)
        .smbios_serial("KILN-NETBOOT-1")
        .spawn();
    let (t_agent, _) = vm.wait_for_line("kiln: agent", BOOT_LIMIT);
    let (t_done, line) = vm.wait_for_line("kiln: run finished", BOOT_LIMIT);
    assert!(line.contains("passed"), "{line}");
    let (status, t_off) = vm.wait_exit(Duration::from_secs(120));
    assert!(
        status.success(),
        "qemu exit {status}; console:\n{}",
        vm.console()
    );
    eprintln!(
        "netboot (TCG): qemu start -> agent {:.1}s, -> RunFinished {:.1}s, -> powered off {:.1}s",
        t_agent.as_secs_f64(),
        t_done.as_secs_f64(),
        t_off.as_secs_f64()
    );

    if std::env::var_os("KILN_VM_CONSOLE").is_some() {
        eprintln!("{}", vm.console());
    }

    let v = show(&state, &run);
    assert_eq!(v["state"], "finished", "{v:#}");
    assert_eq!(v["outcome"], "passed", "{v:#}");
    assert_eq!(outcomes(&v), expected());
    let logs = ok(kc(&state, &["run", "logs", &run]), "run logs");
    assert!(
        logs.contains("smoke on 6.") && logs.contains(": 42"),
        "{logs}"
    );
    assert!(logs.contains("KILN-NETBOOT-1"), "{logs}");
}

#[test]
fn ticket_signature_mismatch_is_refused_on_the_console() {
    let Some((kernel, initrd)) = image() else {
        return;
    };
    // The coordinator signs with its own fresh key; the image trusts only the test key.
    let (tmp, state) = fresh_state();
    add_image_and_host(&state, &kernel, &initrd);
    let server = Coordinator::start(&state);
    let run = issue(&state, &exec_plan(tmp.path()), "node1", None);

    let mut vm = Qemu::builder("forged")
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac(VM_MAC)
        .spawn();
    let (_, line) = vm.wait_for_line("kiln: ticket refused", BOOT_LIMIT);
    assert!(line.contains("untrusted key"), "{line}");
    eprintln!("forged ticket, console: {line}");
    // The agent runs under a reaper (PID 1), which stays up after it exits.
    let (_, idle) = vm.wait_for_line("kiln: idle", Duration::from_secs(30));
    assert!(idle.contains("the agent ended: exit 2"), "{idle}");
    assert!(vm.running(), "the refused machine stays on");
    assert!(!vm.saw("run finished") && !vm.saw("powering off"));

    let dir = state.join("runs").join(&run);
    assert!(
        !dir.join("events.log").exists(),
        "nothing may be stored for a refused ticket"
    );
    assert!(!dir.join("claim.pub").exists(), "nobody claimed the run");
    let v = show(&state, &run);
    assert_eq!(v["state"], "pending", "{v:#}");
    assert_eq!(v["frames"], 0, "{v:#}");
}

/// The offline disk: an ext2 image (no journal, so what `sync` wrote is what
/// `debugfs` reads) holding `ticket.kiln` and its CAS folder; the agent writes
/// `result.kiln` next to them.
#[test]
fn offline_bundle_roundtrip() {
    let Some((kernel, initrd)) = image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = trusted_state(tmp.path());
    ok(
        kc(
            &state,
            &["host", "add", "offline1", "--serial", "KILN-OFFLINE-1"],
        ),
        "host add",
    );
    let disk_dir = tmp.path().join("disk");
    std::fs::create_dir_all(&disk_dir).unwrap();
    let run = issue(
        &state,
        &exec_plan(tmp.path()),
        "offline1",
        Some(&disk_dir.join("ticket.kiln")),
    );
    let img = tmp.path().join("offline.img");
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-L", "kiln", "-d"])
        .arg(&disk_dir)
        .arg(&img)
        .arg("64M")
        .output()
        .expect("mkfs.ext4");
    assert!(
        mkfs.status.success(),
        "{}",
        String::from_utf8_lossy(&mkfs.stderr)
    );

    let mut vm = Qemu::builder("offline1")
        .kernel(&kernel, &initrd, "console=ttyS0 kiln.offline=/dev/vda")
        .no_network()
        .disk(&img, Bus::Virtio)
        .smbios_serial("KILN-OFFLINE-1")
        .spawn();
    let (t_done, line) = vm.wait_for_line("kiln: run finished", BOOT_LIMIT);
    assert!(line.contains("passed"), "{line}");
    let (status, t_off) = vm.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "qemu exit {status}");
    eprintln!(
        "offline (TCG, direct kernel boot): -> RunFinished {:.1}s, -> powered off {:.1}s",
        t_done.as_secs_f64(),
        t_off.as_secs_f64()
    );

    let bundle = tmp.path().join("result.kiln");
    let dump = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /result.kiln {}", bundle.display()))
        .arg(&img)
        .output()
        .expect("debugfs");
    assert!(
        bundle.is_file() && std::fs::metadata(&bundle).unwrap().len() > 0,
        "no result.kiln on the disk: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(!state.join("runs").join(&run).join("events.log").exists());
    ok(kc(&state, &["import", bundle.to_str().unwrap()]), "import");
    let v = show(&state, &run);
    assert_eq!(v["state"], "finished", "{v:#}");
    assert_eq!(v["outcome"], "passed", "{v:#}");
    assert_eq!(outcomes(&v), expected());
    let logs = ok(kc(&state, &["run", "logs", &run]), "run logs");
    assert!(
        logs.contains("KILN-OFFLINE-1") && logs.contains(": 42"),
        "{logs}"
    );
}

/// A guest whose CMOS clock says 2001 (a dead battery).
const DEAD_CLOCK: [&str; 2] = ["-rtc", "base=2001-01-01"];

/// 2001-01-01 00:00:00 UTC: the dead clock's start.
const Y2001: f64 = 978_307_200.0;

/// A dead clock: the agent sets it forward to the coordinator's `Date` (the ticket is
/// otherwise "issued in the future" for the machine), says so on the console and in
/// the run (a log line and a measurement on the first stage), and the secrets request,
/// stamped by the set clock, is not refused for being 25 years off.
#[test]
fn netboot_on_a_dead_clock_sets_it_forward_and_runs() {
    let Some((kernel, initrd)) = image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = trusted_state(tmp.path());
    add_image_and_host(&state, &kernel, &initrd);
    let token = write(tmp.path(), "token", "tok-from-the-coordinator\n");
    ok(
        kc(
            &state,
            &["secret", "set", "token", "--file", token.to_str().unwrap()],
        ),
        "secret set",
    );
    exec_plan(tmp.path());
    let plan = write(
        tmp.path(),
        "plan.toml",
        r#"name = "netboot-dead-clock"
timeout = "10m"

[[stage]]
name = "clock"
kind = "exec"
command = ["sh", "-c", "echo year=$(date -u +%Y); test -s \"$KILN_SECRETS_DIR/token\" && echo secret-ok"]
secrets = ["token"]
timeout = "2m"
"#,
    );
    let server = Coordinator::start(&state);
    let run = issue(&state, &plan, "node1", None);

    let mut vm = Qemu::builder("deadclock")
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac(VM_MAC)
        .args(&DEAD_CLOCK)
        .spawn();
    let (_, set) = vm.wait_for_line("kiln: clock set forward", BOOT_LIMIT);
    assert!(
        set.contains("2001") && set.contains("coordinator's Date"),
        "{set}"
    );
    let (t_done, line) = vm.wait_for_line("kiln: run finished", BOOT_LIMIT);
    assert!(line.contains("passed"), "{line}\n{}", vm.console());
    let (status, _) = vm.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "qemu exit {status}");
    eprintln!(
        "dead clock (TCG): {set}; qemu start -> RunFinished {:.1}s",
        t_done.as_secs_f64()
    );

    let v = show(&state, &run);
    assert_eq!(v["outcome"], "passed", "{v:#}");
    let m = v["stages"][0]["measurements"]
        .as_array()
        .expect("measurements")
        .iter()
        .find(|m| m["name"] == "agent.clock_set_forward_s")
        .unwrap_or_else(|| panic!("no clock measurement: {v:#}"))
        .clone();
    let secs = m["value"].as_f64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // From about 2001 (plus the guest's boot) to about now.
    assert!(
        (secs - (now - Y2001)).abs() < 3600.0,
        "set forward by {secs} s, expected about {} s",
        now - Y2001
    );
    let logs = ok(kc(&state, &["run", "logs", &run]), "run logs");
    assert!(logs.contains("clock set forward"), "{logs}");
    assert!(logs.contains("secret-ok"), "the secret came: {logs}");
    assert!(!logs.contains("year=2001"), "{logs}");
}

/// A dead clock does not make an expired ticket valid: the coordinator's `Date` is
/// past its expiry, so the agent refuses it naming both times, and nothing runs.
#[test]
fn an_expired_ticket_is_refused_on_a_dead_clock() {
    let Some((kernel, initrd)) = image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = trusted_state(tmp.path());
    add_image_and_host(&state, &kernel, &initrd);
    let plan = exec_plan(tmp.path());
    let o = kc(
        &state,
        &[
            "ticket",
            "issue",
            "--plan",
            plan.to_str().unwrap(),
            "--host",
            "node1",
            "--ttl",
            "1s",
        ],
    );
    let run = ok(o, "ticket issue")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    wait_until(Duration::from_secs(30), "the ticket to expire", || {
        show(&state, &run)["state"] == "expired"
    });
    let server = Coordinator::start(&state);
    // The iPXE script offers nothing for an expired run: boot the image directly,
    // naming the run.
    let append = format!(
        "console=ttyS0 kiln.url={} kiln.run={run}",
        guest_url(&server.url)
    );
    let mut vm = Qemu::builder("deadclock-expired")
        .kernel(&kernel, &initrd, &append)
        .mac(VM_MAC)
        .args(&DEAD_CLOCK)
        .spawn();
    // "refused": a ticket refusal, or (an agent that took the ticket) the claim's.
    let (_, line) = vm.wait_for_line(" refused", BOOT_LIMIT);
    eprintln!("expired ticket on a dead clock, console: {line}");
    assert!(
        line.contains("kiln: ticket refused")
            && line.contains("expired")
            && line.contains("coordinator's clock")
            && line.contains("2001"),
        "{line}"
    );
    vm.wait_for_line("kiln: idle", Duration::from_secs(60));
    assert!(!vm.saw("clock set forward") && !vm.saw("run finished"));
    vm.kill();
    let dir = state.join("runs").join(&run);
    assert!(!dir.join("events.log").exists(), "nothing ran");
    assert!(!dir.join("claim.pub").exists(), "nobody claimed the run");
}

/// A state folder with the image, host `node1`, the test image `localhost/kiln-test-a:1`
/// saved as `image.tar` beside the plan (served from the coordinator's CAS: the guest
/// has no registry), or `None` when podman or its test images are missing.
fn container_fixture() -> Option<(tempfile::TempDir, PathBuf, PathBuf, PathBuf)> {
    let (kernel, initrd) = image()?;
    if !crate::container::require_podman() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = trusted_state(tmp.path());
    add_image_and_host(&state, &kernel, &initrd);
    let tar = tmp.path().join("image.tar");
    let o = Command::new("podman")
        .args(["save", "--quiet", "--output"])
        .arg(&tar)
        .arg(crate::container::IMAGE_A)
        .output()
        .expect("podman save");
    assert!(
        o.status.success(),
        "podman save: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some((tmp, state, kernel, initrd))
}

/// The stage named `name` in `run show --json`.
fn stage<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name}: {v:#}"))
}

/// Every artifact of a stage is in the coordinator's CAS under its digest, with its
/// size; returns (name, bytes).
fn artifacts(state: &Path, st: &Value) -> Vec<(String, Vec<u8>)> {
    st["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| {
            let sha = a["sha256"].as_str().expect("sha256");
            let bytes = std::fs::read(state.join("cas").join(sha))
                .unwrap_or_else(|e| panic!("artifact {a} is not in the CAS: {e}"));
            assert_eq!(kiln_protocol::Sha256::of(&bytes).to_string(), sha, "{a}");
            assert_eq!(a["size"].as_u64(), Some(bytes.len() as u64), "{a}");
            (a["name"].as_str().unwrap().to_string(), bytes)
        })
        .collect()
}

/// The issue's whole path: one netbooted VM runs a ticket with an `exec`, a
/// `container` (image archive from the CAS, podman in the guest, hardened defaults), an
/// `ssh` (to an sshd on the host, reached at 10.0.2.2, host key pinned by the plan's
/// `known_hosts` secret) and an `inventory` stage; all pass, every artifact comes back
/// to the CAS and is checked by hash, and the VM powers itself off.
#[test]
fn netboot_runs_every_stage_kind() {
    let Some((tmp, state, _, initrd)) = container_fixture() else {
        return;
    };
    if !crate::ssh::sshd::available() {
        return;
    }
    let sshd = crate::ssh::sshd::Sshd::start();
    let d = tmp.path();
    let key = write(d, "client.key", &String::from_utf8_lossy(&sshd.client_key));
    // Pinned for the address the guest dials: never trusted on first use.
    let known = write(
        d,
        "known_hosts",
        &format!("[10.0.2.2]:{} {}\n", sshd.port, sshd.host_pub),
    );
    for (name, file) in [("ssh-key", &key), ("ssh-known-hosts", &known)] {
        ok(
            kc(
                &state,
                &["secret", "set", name, "--file", file.to_str().unwrap()],
            ),
            "secret set",
        );
    }
    write(
        d,
        "tests/remote/run.sh",
        "echo remote-hello from $(hostname)\nmkdir -p artifacts\necho remote-ok > artifacts/remote.txt\n",
    );
    let plan = write(
        d,
        "plan.toml",
        &format!(
            r#"name = "netboot-every-kind"
timeout = "15m"

[[stage]]
name = "exec"
kind = "exec"
command = ["sh", "-c", "mkdir -p \"$KILN_ARTIFACTS\" && echo exec-ok > \"$KILN_ARTIFACTS/exec.txt\" && echo exec-hello"]
timeout = "2m"

[[stage]]
name = "container"
kind = "container"
image = {{ archive = "image.tar", name = "{image}" }}
command = ["sh", "-c", ". /etc/os-release; echo container-$ID uid=$(id -u) > /artifacts/container.txt; cat /artifacts/container.txt"]
timeout = "5m"

[[stage]]
name = "ssh"
kind = "ssh"
host = "10.0.2.2"
port = {port}
user = "{user}"
os = "linux"
key = "ssh-key"
known_hosts = "ssh-known-hosts"
tests = "tests/remote"
base_dir = "{base}"
timeout = "3m"

[[stage]]
name = "inventory"
kind = "inventory"
timeout = "3m"
"#,
            image = crate::container::IMAGE_A,
            port = sshd.port,
            user = sshd.user,
            base = d.join("remote base").display(),
        ),
    );
    let server = Coordinator::start(&state);
    let run = issue(&state, &plan, "node1", None);

    let mut vm = Qemu::builder("every-kind")
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac(VM_MAC)
        .memory_mib(1536)
        .smbios_serial("KILN-EVERY-KIND")
        .spawn();
    let (t_done, line) = vm.wait_for_line("kiln: run finished", BOOT_LIMIT);
    let (status, t_off) = vm.wait_exit(Duration::from_secs(120));
    let v = show(&state, &run);
    let logs = ok(kc(&state, &["run", "logs", &run]), "run logs");
    assert!(
        line.contains("passed"),
        "{line}\n{v:#}\n{}\nrun logs:\n{logs}\nsshd: {}",
        vm.console(),
        sshd.log()
    );
    assert!(status.success(), "qemu exit {status}");
    assert_eq!(v["state"], "finished", "{v:#}");
    assert_eq!(
        outcomes(&v),
        ["exec", "container", "ssh", "inventory"].map(|s| (s.to_string(), "passed".to_string()))
    );

    let exec = artifacts(&state, stage(&v, "exec"));
    assert_eq!(exec, [("exec.txt".to_string(), b"exec-ok\n".to_vec())]);
    let container = artifacts(&state, stage(&v, "container"));
    assert_eq!(
        container,
        [(
            "container.txt".to_string(),
            b"container-kiln-a uid=65534\n".to_vec()
        )],
        "the image from the archive, run as nobody"
    );
    let ssh = artifacts(&state, stage(&v, "ssh"));
    assert_eq!(ssh, [("remote.txt".to_string(), b"remote-ok\n".to_vec())]);
    let inventory = artifacts(&state, stage(&v, "inventory"));
    assert_eq!(inventory.len(), 1, "{inventory:?}");
    let inv: Value = serde_json::from_slice(&inventory[0].1).expect("inventory.json is JSON");
    assert!(
        inv.to_string().contains("KILN-EVERY-KIND"),
        "the guest's serial in {inv}"
    );
    let logs = ok(kc(&state, &["run", "logs", &run]), "run logs");
    assert!(
        logs.contains("exec-hello") && logs.contains("remote-hello"),
        "{logs}"
    );

    let initrd_mib = std::fs::metadata(&initrd).unwrap().len() as f64 / 1048576.0;
    eprintln!(
        "every stage kind (TCG): initrd {initrd_mib:.1} MiB compressed; qemu start -> RunFinished {:.1}s, -> powered off {:.1}s; stages: {}",
        t_done.as_secs_f64(),
        t_off.as_secs_f64(),
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!(
                "{} {:.1}s",
                s["name"].as_str().unwrap(),
                s["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A shell line a busybox container runs to GET the coordinator's `/boot.ipxe` from the
/// guest (busybox's `nc`; TOML-escaped for a basic string).
fn get_boot_ipxe(host_url: &str) -> String {
    let port = host_url.rsplit(':').next().expect("a port");
    format!("printf 'GET /boot.ipxe HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | nc -w 20 10.0.2.2 {port}")
}

/// The hardening holds inside the image as on a host: a container stage whose command
/// writes to `/` fails (read-only root), and one without `network = true` cannot reach
/// the coordinator while one with it can. The same guest gives the figures: a container
/// stage's time against `podman run` by hand with the same hardened flags, and the
/// agent's peak RSS.
#[test]
fn netboot_container_root_is_read_only_and_figures() {
    let Some((tmp, state, _, _)) = container_fixture() else {
        return;
    };
    let image = crate::container::IMAGE_A;
    let by_hand = format!(
        "podman run --rm --pull=never --read-only --cap-drop ALL --security-opt no-new-privileges \
         --user 65534:65534 --network none --memory 536870912 --pids-limit 256 {image} true"
    );
    let server = Coordinator::start(&state);
    let plan = write(
        tmp.path(),
        "plan.toml",
        &format!(
            r#"name = "netboot-container-hardening"
timeout = "15m"

[[stage]]
name = "timed"
kind = "container"
image = {{ archive = "image.tar", name = "{image}" }}
command = ["true"]
timeout = "5m"

[[stage]]
name = "by-hand"
kind = "exec"
command = ["sh", "-c", "a=$(cut -d' ' -f1 /proc/uptime); {by_hand} || exit 1; b=$(cut -d' ' -f1 /proc/uptime); echo by-hand $a $b; for p in $(pidof kiln-agent); do echo agent-rss $(grep VmHWM /proc/$p/status); done"]
timeout = "5m"

[[stage]]
name = "no-network"
kind = "container"
image = {{ archive = "image.tar", name = "{image}" }}
command = ["sh", "-c", "if {get}; then echo reached-the-coordinator; else echo no-network; fi"]
timeout = "5m"

[[stage]]
name = "network"
kind = "container"
image = {{ archive = "image.tar", name = "{image}" }}
network = true
command = ["sh", "-c", "{get}"]
timeout = "5m"

[[stage]]
name = "root-write"
kind = "container"
image = {{ archive = "image.tar", name = "{image}" }}
command = ["sh", "-c", "echo x > /written && echo wrote-root"]
timeout = "5m"
"#,
            get = get_boot_ipxe(&server.url),
        ),
    );
    let run = issue(&state, &plan, "node1", None);
    let mut vm = Qemu::builder("hardening")
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac(VM_MAC)
        .memory_mib(1536)
        .spawn();
    let (_, line) = vm.wait_for_line("kiln: run finished", BOOT_LIMIT);
    let (status, _) = vm.wait_exit(Duration::from_secs(120));
    let v = show(&state, &run);
    assert!(status.success(), "qemu exit {status}");
    let logs = ok(kc(&state, &["run", "logs", &run]), "run logs");
    assert!(line.contains("failed"), "{line}\n{v:#}\n{}", vm.console());
    assert_eq!(
        outcomes(&v),
        [
            ("timed", "passed"),
            ("by-hand", "passed"),
            ("no-network", "passed"),
            ("network", "passed"),
            ("root-write", "failed")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "{logs}"
    );
    assert!(logs.contains("Read-only file system"), "{logs}");
    assert!(!logs.contains("wrote-root"), "{logs}");
    // --network none by default; `network = true` shares the machine's network.
    assert!(
        logs.contains("[no-network] no-network")
            && logs.contains("Network is unreachable")
            && !logs.contains("reached-the-coordinator"),
        "{logs}"
    );
    assert!(logs.contains("[network] #!ipxe"), "{logs}");

    let hand = logs
        .lines()
        .find_map(|l| l.split_once("by-hand ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| panic!("no by-hand timing: {logs}"));
    let t: Vec<f64> = hand
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(t.len(), 2, "{hand}");
    let rss_kib = logs
        .lines()
        .filter(|l| l.contains("agent-rss"))
        .filter_map(|l| l.split_whitespace().rev().nth(1)?.parse::<u64>().ok())
        .max()
        .unwrap_or_else(|| panic!("no agent RSS: {logs}"));
    let timed = stage(&v, "timed")["duration_ms"].as_f64().unwrap() / 1000.0;
    eprintln!(
        "in the guest (TCG): container stage {timed:.2}s (archive load included) vs podman run by hand {:.2}s; agent peak RSS {:.1} MiB",
        t[1] - t[0],
        rss_kib as f64 / 1024.0
    );
}
