//! SIGTERM to the agent kills the running stage's process group (it used to outlive
//! the agent, re-parented to init); a second signal exits at once. Each case runs
//! in a child copy of this test binary, so the signal never reaches the harness.
use kiln_agent::stages::{StageCtx, run_stage};
use kiln_protocol::{Stage, StageKind};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "KILN_SIGNAL_TEST_CHILD";
const BLOCKED_ENV: &str = "KILN_SIGNAL_TEST_BLOCKED";

/// In the child: install the handlers, run an exec stage `script` in `dir`, print
/// its result.
///
/// `install_stop_signals` must run before any other thread starts (as in `main`), but
/// libtest starts its threads first; so the child blocks the signals and re-executes
/// itself: the blocked set survives `execve`, every thread of the new image has it.
fn child_body(name: &str, script: &str, dir: &Path) {
    if std::env::var_os(BLOCKED_ENV).is_none() {
        use std::ffi::CString;
        let mut set = nix::sys::signal::SigSet::empty();
        for s in [
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::Signal::SIGHUP,
        ] {
            set.add(s);
        }
        set.thread_block().unwrap();
        let exe = CString::new(
            std::env::current_exe()
                .unwrap()
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        let args: Vec<CString> = [exe.to_str().unwrap(), name, "--exact", "--nocapture"]
            .iter()
            .map(|a| CString::new(*a).unwrap())
            .collect();
        let env: Vec<CString> = std::env::vars()
            .chain([(BLOCKED_ENV.to_string(), "1".to_string())])
            .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap())
            .collect();
        let Err(e) = nix::unistd::execve(&exe, &args, &env);
        panic!("re-exec: {e}");
    }
    kiln_agent::signals::install_stop_signals();
    let stage = Stage::new(
        "s",
        StageKind::Exec {
            command: vec!["sh".into(), "-c".into(), script.into()],
        },
    );
    let (ctx, _sink) = StageCtx::for_test(stage, dir.to_path_buf());
    let r = smol::block_on(run_stage(&ctx));
    println!("RESULT {} {}", r.outcome, r.detail);
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs test `name` as a child agent whose stage writes the pid of its `sleep` to a
/// file; sends `signals` once that sleep runs; returns (exit code, stdout, sleep pid).
fn drive(name: &str, signals: &[&str]) -> (Option<i32>, String, i32) {
    let d = tempfile::tempdir().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture"])
        .env(CHILD_ENV, d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pidfile = d.path().join("sleep.pid");
    wait_for("the stage's sleep", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let sleep: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for s in signals {
        assert!(
            Command::new("kill")
                .args([&format!("-{s}"), &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), stdout, sleep)
}

#[test]
fn sigterm_aborts_the_stage_and_kills_its_group() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let script = format!("sleep 300 & echo $! > {dir}/sleep.pid; wait");
        let name = "sigterm_aborts_the_stage_and_kills_its_group";
        return child_body(name, &script, Path::new(&dir));
    }
    let (code, stdout, sleep) = drive("sigterm_aborts_the_stage_and_kills_its_group", &["TERM"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("RESULT aborted aborted: agent stopped by SIGTERM"),
        "{stdout}"
    );
    wait_for("the stage's sleep to die", || !alive(sleep));
}

#[test]
fn a_second_signal_exits_at_once_and_kills_the_group() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        // Ignores SIGTERM: the first signal's stop waits out its grace period.
        let script = format!("trap '' TERM; sleep 300 & echo $! > {dir}/sleep.pid; wait");
        let name = "a_second_signal_exits_at_once_and_kills_the_group";
        return child_body(name, &script, Path::new(&dir));
    }
    let (code, stdout, sleep) = drive(
        "a_second_signal_exits_at_once_and_kills_the_group",
        &["INT", "HUP"],
    );
    assert_eq!(code, Some(3), "{stdout}");
    assert!(!stdout.contains("RESULT"), "{stdout}");
    wait_for("the stage's sleep to die", || !alive(sleep));
}
