//! As PID 1 the reaper waits for orphans re-parented to it, so none stays a zombie.
//! Runs in a child copy of this test binary that is PID 1 of a new PID namespace
//! (`unshare -pf --mount-proc`, root only).
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "KILN_REAPER_TEST_CHILD";

fn zombies() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.contains(") Z"))
        .collect()
}

fn unshare_works() -> bool {
    let probe = Command::new("unshare")
        .args(["-pf", "--mount-proc", "true"])
        .status();
    if probe.is_ok_and(|s| s.success()) {
        return true;
    }
    kiln_testkit::skip("unshare -pf --mount-proc does not work here (root, util-linux)");
    false
}

#[test]
fn boot_as_pid_1_runs_the_agent_as_a_child_and_stays_up() {
    if !unshare_works() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let cmdline = d.path().join("cmdline");
    std::fs::write(&cmdline, "quiet\n").unwrap();
    let mut init = Command::new("unshare")
        .args(["-pf", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_kiln-agent"))
        .arg("boot")
        .arg("--cmdline")
        .arg(&cmdline)
        .args(["--trust", "/nonexistent", "--no-poweroff"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = init.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = vec![];
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        seen.push(line);
        if seen
            .last()
            .unwrap()
            .contains("kiln: idle; the machine stays on")
        {
            break;
        }
    }
    // PID 1 outlives its agent: still running after the agent refused and exited.
    let still_up = init.try_wait().unwrap().is_none();
    let _ = init.kill();
    let _ = init.wait();
    let text = seen.join("\n");
    assert!(text.contains("no kiln.url="), "{text}");
    assert!(text.contains("(the agent ended: exit 2)"), "{text}");
    assert!(still_up, "{text}");
}

#[test]
#[allow(clippy::zombie_processes)] // reap_all waits for it
fn orphans_of_the_agent_are_reaped_as_pid_1() {
    if std::env::var_os(CHILD_ENV).is_some() {
        assert_eq!(std::process::id(), 1);
        // The "agent" leaves two orphans behind and exits 7.
        let agent = Command::new("sh")
            .args(["-c", "sleep 0.3 & sleep 0.5 & exit 7"])
            .spawn()
            .unwrap();
        let mut status = String::new();
        let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
        kiln_agent::reaper::reap_all(pid, |s| status = s.to_string());
        assert_eq!(status, "exit 7");
        let z = zombies();
        assert!(z.is_empty(), "zombies left: {z:?}");
        // Both orphans ended and were reaped: nothing but PID 1 is left.
        let pids: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        assert_eq!(pids, ["1"]);
        println!("REAPED-OK");
        return;
    }
    if !unshare_works() {
        return;
    }
    let out = Command::new("unshare")
        .args(["-pf", "--mount-proc"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "orphans_of_the_agent_are_reaped_as_pid_1",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("REAPED-OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
