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
