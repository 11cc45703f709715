//! Held machines in qemu (TCG, netbooted into the image): a failed run keeps the VM
//! up with dropbear and the ticket's keys; the test logs in through user-net
//! `hostfwd`, checks the host key against the reported fingerprint, fixes the failed
//! stage's condition over SSH, retries it, survives a coordinator SIGKILL, releases;
//! a `hold_for` ends by itself; a disk held by the wipe gate is approved, and forged
//! approvals are refused with the disk untouched.
use crate::common::*;
use crate::image::{image, register, trusted_state};
use crate::qemu::{Bus, Qemu, guest_url};
use kiln_protocol::{Approval, Command as Order, Event, Frame, RecordReader, RunId, SecretKey};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT_LIMIT: Duration = Duration::from_secs(600);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 test path")
}

fn ok(o: Out, what: &str) -> String {
    assert_eq!(o.code, 0, "{what} failed: {}{}", o.stdout, o.stderr);
    o.stdout
}

fn show(state: &Path, run: &str) -> Value {
    serde_json::from_str(&ok(kc(state, &["run", "show", run, "--json"]), "run show"))
        .expect("run show --json is JSON")
}

fn frames(state: &Path, run: &str) -> Vec<Frame> {
    let bytes = std::fs::read(state.join("runs").join(run).join("events.log")).unwrap_or_default();
    RecordReader::new(&bytes)
        .map(|r| postcard::from_bytes(&r.expect("record")).expect("a frame"))
        .collect()
}

/// What the agent did with orders: `(what, result)`.
fn agent_orders(v: &Value) -> Vec<(String, String)> {
    v["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .filter(|o| o["by"] == "agent")
        .map(|o| {
            let f = |k: &str| o[k].as_str().unwrap_or_default().to_string();
            (f("what"), f("result"))
        })
        .collect()
}

/// Waits until the run is held with `n` orders taken by the agent; returns its status.
fn wait_held(state: &Path, run: &str, n: usize, vm: &Qemu) -> Value {
    let deadline = Instant::now() + BOOT_LIMIT;
    loop {
        let v = show(state, run);
        if v["state"] == "held" && agent_orders(&v).len() == n {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "run not held with {n} orders: {v:#}\nconsole:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A free TCP port on loopback for `hostfwd`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An ed25519 key pair made by ssh-keygen: (private key path, public key line).
fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let p = dir.join(name);
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&p)
        .output()
        .expect("ssh-keygen");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    (p, public.trim().to_string())
}

/// `ssh root@127.0.0.1 -p PORT CMD` with `key`, trusting only `known_hosts`.
fn ssh(port: u16, key: &Path, known_hosts: &Path, cmd: &str) -> Out {
    let o = Command::new("ssh")
        .args(["-p", &port.to_string(), "-i", s(key)])
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=60"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", s(known_hosts)))
        .args(["root@127.0.0.1", cmd])
        .output()
        .expect("ssh");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// The guest's host key as `ssh-keyscan` sees it through the forward, written as a
/// known_hosts file; returns its `SHA256:` fingerprint (from `ssh-keygen -lf`).
fn scan_host_key(port: u16, known_hosts: &Path) -> String {
    let o = Command::new("ssh-keyscan")
        .args([
            "-T",
            "60",
            "-t",
            "ed25519",
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ])
        .output()
        .expect("ssh-keyscan");
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.contains("ssh-ed25519"))
        .unwrap_or_else(|| panic!("no host key: {}", String::from_utf8_lossy(&o.stderr)))
        .to_string();
    std::fs::write(known_hosts, format!("{line}\n")).unwrap();
    let o = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(known_hosts)
        .output()
        .expect("ssh-keygen -lf");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_string()
}

fn issue(state: &Path, plan: &Path) -> String {
    ok(
        kc(
            state,
            &["ticket", "issue", "--plan", s(plan), "--host", "node1"],
        ),
        "ticket issue",
    )
    .split_whitespace()
    .next()
    .expect("a run id")
    .to_string()
}

/// A state folder with the image, host `node1` (this MAC, optional extra hosts.toml
/// text) and the operators' keys as secret `ops`.
fn setup(dir: &Path, mac: &str, ops_pub: &str, extra_hosts: &str) -> PathBuf {
    let (kernel, initrd) = image().expect("checked by the caller");
    let state = trusted_state(dir);
    register(&state, &kernel, &initrd);
    ok(
        kc(
            &state,
            &["host", "add", "node1", "--mac", mac, "--image", "kiln"],
        ),
        "host add",
    );
    if !extra_hosts.is_empty() {
        let hosts = state.join("hosts.toml");
        let mut text = std::fs::read_to_string(&hosts).unwrap();
        text.push_str(extra_hosts);
        std::fs::write(&hosts, text).unwrap();
    }
    let p = write(dir, "ops.pub", &format!("{ops_pub}\n"));
    ok(
        kc(&state, &["secret", "set", "ops", "--file", s(&p)]),
        "secret set",
    );
    state
}

/// SSH in with the ticket's key (host key checked against the reported fingerprint),
/// a key not in the ticket refused; the failed stage's condition fixed over SSH and
/// the stage retried (two attempts, stage and run passed); the coordinator SIGKILLed
/// and restarted; `run release` powers the VM off.
#[test]
fn netboot_hold_ssh_retry_and_release() {
    if image().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (op_key, op_pub) = keypair(dir, "operator");
    let (stranger, _) = keypair(dir, "stranger");
    let mac = "52:54:00:6b:01:01";
    let state = setup(dir, mac, &op_pub, "");
    let plan = write(
        dir,
        "plan.toml",
        r#"name = "netboot-hold"
hold = "always"
hold_for = "30m"
hold_keys = "ops"

[[stage]]
name = "check"
kind = "exec"
command = ["sh", "-c", "test -e /tmp/fixed || { echo /tmp/fixed is missing; exit 1; }"]
"#,
    );
    let mut server = Coordinator::start(&state);
    let listen = server.url.trim_start_matches("http://").to_string();
    let run = issue(&state, &plan);
    let port = free_port();
    let mut vm = Qemu::builder("hold-ssh")
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac(mac)
        .hostfwd(port, 22)
        .spawn();
    let (t_held, line) = vm.wait_for_line("kiln: run failed, held", BOOT_LIMIT);
    eprintln!(
        "held guest (TCG): qemu start -> held {:.1}s: {line}",
        t_held.as_secs_f64()
    );
    let v = wait_held(&state, &run, 0, &vm);
    let hold = &v["hold"];
    let reported = hold["host_key"].as_str().expect("a host key").to_string();
    assert!(
        hold["ssh"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "ssh root@10.0.2.15"),
        "{hold:#}"
    );
    let text = ok(kc(&state, &["run", "show", &run]), "run show");
    assert!(
        text.contains(&format!(
            "login    ssh root@10.0.2.15    (host key {reported})"
        )),
        "{text}"
    );
    assert!(text.contains("state    held (until "), "{text}");

    let kh = dir.join("known_hosts");
    let seen = scan_host_key(port, &kh);
    assert_eq!(
        seen, reported,
        "the host key behind the forward is the reported one"
    );
    let o = ssh(
        port,
        &op_key,
        &kh,
        "uname -r; touch /tmp/fixed && echo fixed",
    );
    assert_eq!(o.code, 0, "ssh with the ticket's key: {}", o.stderr);
    assert!(o.stdout.contains("fixed"), "{}", o.stdout);
    let o = ssh(port, &stranger, &kh, "echo in");
    assert_ne!(o.code, 0, "a key not in the ticket got in: {}", o.stdout);
    assert!(o.stderr.contains("Permission denied"), "{}", o.stderr);

    ok(
        kc(&state, &["run", "retry", &run, "--stage", "check"]),
        "run retry",
    );
    let v = wait_held(&state, &run, 1, &vm);
    assert_eq!(v["hold"]["outcome"], "passed", "{v:#}");
    assert_eq!(v["stages"][0]["outcome"], "passed");
    assert_eq!(v["stages"][0]["attempts"], 2);
    let attempts: Vec<(u32, String)> = frames(&state, &run)
        .iter()
        .filter_map(|f| match &f.event {
            Event::StageFinished {
                attempt, outcome, ..
            } => Some((*attempt, outcome.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [(1, "failed".into()), (2, "passed".into())]);

    // The coordinator dies and comes back on the address the guest knows.
    server.kill();
    let _server = Coordinator::start_at(&state, &listen, &[]);
    ok(kc(&state, &["run", "release", &run]), "run release");
    let released = Instant::now();
    let (status, _) = vm.wait_exit(Duration::from_secs(300));
    assert!(status.success(), "qemu exit {status}");
    eprintln!(
        "held guest (TCG): run release -> powered off {:.1}s",
        released.elapsed().as_secs_f64()
    );
    let v = show(&state, &run);
    assert_eq!(
        (&v["state"], &v["outcome"]),
        (&"finished".into(), &"passed".into()),
        "{v:#}"
    );
    assert_eq!(
        agent_orders(&v),
        [
            ("retry stage \"check\"".to_string(), "done".to_string()),
            ("release".to_string(), "done".to_string())
        ]
    );
}

/// `hold_for = "1m"`: the VM powers itself off with no release.
#[test]
fn netboot_hold_ends_by_itself() {
    if image().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, op_pub) = keypair(dir, "operator");
    let mac = "52:54:00:6b:01:02";
    let state = setup(dir, mac, &op_pub, "");
    let plan = write(
        dir,
        "plan.toml",
        "name = \"netboot-hold-for\"\nhold = \"on_failure\"\nhold_for = \"1m\"\nhold_keys = \"ops\"\n\
         [[stage]]\nname = \"fail\"\nkind = \"exec\"\ncommand = [\"false\"]\n",
    );
    let server = Coordinator::start(&state);
    let run = issue(&state, &plan);
    let mut vm = Qemu::builder("hold-for")
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac(mac)
        .spawn();
    let (t_held, _) = vm.wait_for_line("kiln: run failed, held", BOOT_LIMIT);
    let (status, t_off) = vm.wait_exit(Duration::from_secs(600));
    assert!(status.success(), "qemu exit {status}");
    eprintln!(
        "hold_for 1m (TCG): held at {:.1}s, powered itself off at {:.1}s",
        t_held.as_secs_f64(),
        t_off.as_secs_f64()
    );
    assert!(vm.saw("kiln: hold ended after 1m"));
    let v = show(&state, &run);
    assert_eq!(
        (&v["state"], &v["outcome"]),
        (&"finished".into(), &"failed".into()),
        "{v:#}"
    );
    assert_eq!(
        agent_orders(&v),
        [("hold ended after 1m".to_string(), "done".to_string())]
    );
}

fn sha(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// An NVMe disk with ext4 on it holds the storage stage; approvals for another serial,
/// another stage, another run or signed by another key are refused (disk unchanged);
/// the right one re-runs the stage, which writes the disk and passes.
#[test]
fn netboot_hold_approve_a_held_disk() {
    if image().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, op_pub) = keypair(dir, "operator");
    let mac = "52:54:00:6b:01:03";
    const SERIAL: &str = "KILN-HOLD-NVME";
    let state = setup(
        dir,
        mac,
        &op_pub,
        &format!("\n[host.spec]\n[[host.spec.disk]]\nserial = \"{SERIAL}\"\n"),
    );
    let plan = write(
        dir,
        "plan.toml",
        r#"name = "netboot-approve"
hold = "on_failure"
hold_keys = "ops"
fail_fast = false

[[stage]]
name = "disk"
kind = "storage"
devices = ["/dev/nvme0n1"]
destructive = true
duration = "2s"
size = "8M"

[[stage]]
name = "hello"
kind = "exec"
command = ["true"]
"#,
    );
    let img = dir.join("nvme.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();
    let content = dir.join("ext4");
    write(&content, "precious.txt", "do not overwrite\n");
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", s(&content), s(&img)])
        .output()
        .expect("mkfs.ext4");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = sha(&img);

    let server = Coordinator::start(&state);
    let run = issue(&state, &plan);
    let id: RunId = run.parse().unwrap();
    let mut vm = Qemu::builder("hold-approve")
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac(mac)
        .disk(&img, Bus::Nvme { serial: SERIAL })
        .spawn();
    vm.wait_for_line("kiln: run held, held", BOOT_LIMIT);
    let v = wait_held(&state, &run, 0, &vm);
    assert_eq!(v["stages"][0]["outcome"], "held", "{v:#}");

    // Another serial, through the CLI.
    ok(
        kc(
            &state,
            &[
                "run",
                "approve",
                &run,
                "--stage",
                "disk",
                "--disk",
                "OTHER-SERIAL",
            ],
        ),
        "run approve (other serial)",
    );
    wait_held(&state, &run, 1, &vm);
    // Written as the coordinator writes orders, each for the hold it is sent to:
    // another stage, another run, another key.
    let key =
        SecretKey::from_line(&std::fs::read_to_string(state.join("key/coordinator.key")).unwrap())
            .unwrap();
    let forged = [
        Approval::sign(id, 1, SERIAL, &key),
        Approval::sign(RunId([1; 16]), 0, SERIAL, &key),
        Approval::sign(id, 0, SERIAL, &SecretKey::from_seed([9; 32])),
    ];
    for (i, a) in forged.into_iter().enumerate() {
        let seq = frames(&state, &run).last().unwrap().seq;
        let bytes = postcard::to_allocvec(&(seq, Order::Approve(a))).unwrap();
        std::fs::write(state.join("runs").join(&run).join("order"), bytes).unwrap();
        wait_held(&state, &run, 2 + i, &vm);
    }
    let results: Vec<String> = agent_orders(&show(&state, &run))
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert!(
        results[0].contains("no disk of stage \"disk\" has serial \"OTHER-SERIAL\""),
        "{results:?}"
    );
    assert!(
        results[1].contains("stage \"hello\" is no storage stage"),
        "{results:?}"
    );
    assert!(results[2].contains("for run 0101"), "{results:?}");
    assert!(
        results[3].contains("not signed by the coordinator key"),
        "{results:?}"
    );
    assert_eq!(sha(&img), before, "a refused approval touched the disk");

    ok(
        kc(
            &state,
            &["run", "approve", &run, "--stage", "disk", "--disk", SERIAL],
        ),
        "run approve",
    );
    let (status, _) = vm.wait_exit(Duration::from_secs(600));
    assert!(status.success(), "qemu exit {status}");
    let v = show(&state, &run);
    assert_eq!(
        (&v["state"], &v["outcome"]),
        (&"finished".into(), &"passed".into()),
        "{v:#}"
    );
    assert_eq!(v["stages"][0]["outcome"], "passed", "{v:#}");
    assert_eq!(v["stages"][0]["attempts"], 2);
    assert_ne!(sha(&img), before, "the approved disk was written");
    let last = agent_orders(&v).pop().unwrap();
    assert_eq!(
        last,
        (
            format!("approve disk \"{SERIAL}\" for stage #0"),
            "done".to_string()
        )
    );
}
