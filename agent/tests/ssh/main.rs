//! The `ssh` stage against a real OpenSSH sshd on loopback (the remote host is this
//! machine, so remote state can be checked directly).
mod secrets;
mod sshd;
mod stale_lock;

use kiln_agent::stages::{MemorySink, StageCtx, StageResult, Stop, ssh};
use kiln_protocol::{Event, Os, Outcome, RunId, Sha256, SshSpec, Stage, StageKind};
use smol::future::FutureExt;
use sshd::Sshd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A test folder: `run.sh` with `body`, plus a data file.
fn tests_folder(body: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::write(d.path().join("run.sh"), format!("set -e\n{body}\n")).expect("run.sh");
    std::fs::create_dir(d.path().join("data")).expect("data");
    std::fs::write(d.path().join("data/input.txt"), "from the bundle\n").expect("input");
    d
}

fn spec(s: &Sshd, base: &Path) -> SshSpec {
    SshSpec {
        host: "127.0.0.1".into(),
        port: s.port,
        user: s.user.clone(),
        os: Os::Linux,
        key: "ssh-test".into(),
        host_key: Some(s.host_pub.clone()),
        known_hosts: None,
        keep: false,
        base_dir: Some(base.display().to_string()),
    }
}

/// A stage context over `tests` with the client key as secret `ssh-test`.
fn ctx(s: &Sshd, spec: SshSpec, tests: &Path, work: &Path) -> (StageCtx, Arc<MemorySink>) {
    let stage = Stage {
        timeout_s: 60,
        env: vec![("LEVEL".into(), "it's 2".into())],
        secrets: vec!["ssh-test".into()],
        ..Stage::new("remote smoke", StageKind::Ssh(spec))
    };
    let dir = work.join("stage");
    std::fs::create_dir_all(&dir).expect("stage dir");
    let (bytes, _) = kiln_protocol::tree::pack_to_vec(tests).expect("packing tests");
    let tar = work.join("tests.tar");
    std::fs::write(&tar, bytes).expect("tests.tar");
    kiln_protocol::tree::unpack(std::fs::File::open(&tar).expect("tar"), &dir).expect("unpack");
    let (mut c, sink) = StageCtx::for_test(stage, dir);
    c.tests_tar = Some(tar);
    c.secrets.insert("ssh-test".into(), s.client_key.clone());
    (c, sink)
}

fn run(c: &StageCtx) -> StageResult {
    let StageKind::Ssh(spec) = &c.stage.kind else {
        unreachable!("an ssh stage")
    };
    smol::block_on(ssh::run(c, spec))
}

fn artifacts(sink: &MemorySink) -> Vec<(String, Sha256, u64)> {
    let ev = sink.events.lock().expect("events");
    ev.iter()
        .filter_map(|e| match e {
            Event::Artifact {
                name, sha256, size, ..
            } => Some((name.clone(), *sha256, *size)),
            _ => None,
        })
        .collect()
}

/// Waits (polling, with a deadline) until `f` holds.
fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pgrep(marker: &str) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

struct Env {
    s: Sshd,
    work: tempfile::TempDir,
    base: PathBuf,
}

fn env() -> Option<Env> {
    if !sshd::available() {
        return None;
    }
    let s = Sshd::start();
    let work = tempfile::tempdir().expect("tempdir");
    // A space in the remote base folder exercises the remote quoting.
    let base = work.path().join("remote base");
    Some(Env { s, work, base })
}

#[test]
fn passing_folder_streams_output_and_artifacts_arrive_intact() {
    let Some(e) = env() else { return };
    let t = tests_folder(
        "echo \"cwd-ok=$(cat data/input.txt)\"\necho \"level=$LEVEL\"\necho to-stderr >&2\n\
         mkdir -p 'artifacts/nested/deeper'\nprintf 'deep\\n' > artifacts/nested/deeper/d.txt\n\
         printf 'has spaces\\n' > 'artifacts/a file with spaces.txt'\n\
         head -c 100000 /dev/urandom > artifacts/blob.bin\n\
         cp artifacts/blob.bin ../blob.copy",
    );
    let (c, sink) = ctx(&e.s, spec(&e.s, &e.base), t.path(), e.work.path());
    let r = run(&c);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    assert_eq!(r.exit_code, Some(0));
    let lines = sink.lines();
    for want in ["cwd-ok=from the bundle", "level=it's 2", "to-stderr"] {
        assert!(
            lines.iter().any(|l| l == want),
            "missing {want:?} in {lines:?}"
        );
    }
    // The blob's copy sits beside the (now removed) run folder: its expected digest.
    let runs = e.base.join("runs");
    let blob = std::fs::read(runs.join("blob.copy")).expect("blob copy");
    let mut got = artifacts(&sink);
    got.sort();
    let want = vec![
        (
            "a file with spaces.txt".to_string(),
            Sha256::of(b"has spaces\n"),
            11,
        ),
        ("blob.bin".to_string(), Sha256::of(&blob), 100_000),
        ("nested/deeper/d.txt".to_string(), Sha256::of(b"deep\n"), 5),
    ];
    assert_eq!(got, want);
    for (_, sha, _) in &want {
        let blobs = sink.blobs.lock().expect("blobs");
        assert_eq!(Sha256::of(&blobs[sha]), *sha);
    }
    // Clean host: run folders gone, lock released, no key left in the stage folder.
    let left: Vec<_> = std::fs::read_dir(&runs)
        .expect("runs")
        .map(|d| d.expect("entry").file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("blob.copy")]);
    assert!(!e.base.join("lock").exists(), "lock left behind");
    let stage_dir: Vec<_> = std::fs::read_dir(&c.dir)
        .expect("stage")
        .map(|d| d.expect("e").file_name())
        .collect();
    assert!(
        stage_dir
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".kiln-ssh")),
        "{stage_dir:?}"
    );
}

#[test]
fn failing_folder_is_failed_and_warning_is_warning_and_keep_keeps() {
    let Some(e) = env() else { return };
    for (code, outcome) in [
        (3, Outcome::Failed),
        (42, Outcome::Warning),
        (255, Outcome::Failed),
    ] {
        let t = tests_folder(&format!(
            "mkdir artifacts; echo partial > artifacts/log.txt; echo failing; exit {code}"
        ));
        let mut sp = spec(&e.s, &e.base);
        sp.keep = true;
        let work = e.work.path().join(format!("w{code}"));
        let (c, sink) = ctx(&e.s, sp, t.path(), &work);
        let r = run(&c);
        assert_eq!(
            (r.outcome, r.exit_code),
            (outcome, Some(code)),
            "{r:?} {:?}",
            sink.lines()
        );
        assert!(sink.lines().iter().any(|l| l == "failing"));
        assert_eq!(
            artifacts(&sink).len(),
            1,
            "artifacts of a failed test still arrive"
        );
        let kept = e
            .base
            .join("runs")
            .join(format!("{}-remote_smoke-1", c.run));
        assert!(
            kept.join("artifacts/log.txt").is_file(),
            "keep = true keeps {}",
            kept.display()
        );
        std::fs::remove_dir_all(&kept).expect("removing kept folder");
        assert!(!e.base.join("lock").exists(), "lock left behind");
    }
}

fn expect_error(r: &StageResult, sink: &MemorySink, reason: &str) {
    assert_eq!(r.outcome, Outcome::Error, "{r:?} {:?}", sink.lines());
    assert!(
        r.detail.contains(reason),
        "detail {:?} lacks {reason:?}",
        r.detail
    );
    assert_eq!(r.exit_code, None);
}

#[test]
fn wrong_host_key_is_an_error_not_a_failure() {
    let Some(e) = env() else { return };
    let (_, other) = sshd::keygen(e.work.path(), "impostor");
    let mut sp = spec(&e.s, &e.base);
    sp.host_key = Some(other);
    let (c, sink) = ctx(&e.s, sp, tests_folder("true").path(), e.work.path());
    expect_error(&run(&c), &sink, "host key mismatch");
    assert!(!e.base.exists(), "nothing may reach an unverified host");
}

#[test]
fn wrong_client_key_is_an_error_not_a_failure() {
    let Some(e) = env() else { return };
    let (c, sink) = ctx(
        &e.s,
        spec(&e.s, &e.base),
        tests_folder("true").path(),
        e.work.path(),
    );
    let (other, _) = sshd::keygen(e.work.path(), "stranger");
    let mut c = c;
    c.secrets.insert("ssh-test".into(), other);
    expect_error(&run(&c), &sink, "authentication failed");
}

#[test]
fn closed_port_is_an_error_not_a_failure() {
    let Some(e) = env() else { return };
    let mut sp = spec(&e.s, &e.base);
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    sp.port = l.local_addr().expect("addr").port();
    drop(l);
    let (c, sink) = ctx(&e.s, sp, tests_folder("true").path(), e.work.path());
    expect_error(&run(&c), &sink, "connection refused");
}

#[test]
fn upload_problems_are_errors_with_the_reason() {
    let Some(e) = env() else { return };
    // A base folder that cannot be created (even by root).
    let mut sp = spec(&e.s, &e.base);
    sp.base_dir = Some("/proc/kiln-cannot".into());
    let (c, sink) = ctx(
        &e.s,
        sp,
        tests_folder("true").path(),
        &e.work.path().join("a"),
    );
    expect_error(&run(&c), &sink, "cannot create /proc/kiln-cannot/runs");
    // A bundle without the entrypoint.
    let t = tests_folder("true");
    std::fs::rename(t.path().join("run.sh"), t.path().join("other.sh")).expect("rename");
    let (c, sink) = ctx(
        &e.s,
        spec(&e.s, &e.base),
        t.path(),
        &e.work.path().join("b"),
    );
    expect_error(&run(&c), &sink, "the bundle has no run.sh");
    assert!(!e.base.join("lock").exists(), "lock left behind");
    assert_eq!(
        std::fs::read_dir(e.base.join("runs"))
            .expect("runs")
            .count(),
        0
    );
}

#[test]
fn missing_host_key_refuses_trust_on_first_use() {
    let Some(e) = env() else { return };
    let mut sp = spec(&e.s, &e.base);
    sp.host_key = None;
    let (c, sink) = ctx(&e.s, sp, tests_folder("true").path(), e.work.path());
    expect_error(&run(&c), &sink, "trust on first use");
}

#[test]
fn known_hosts_secret_pins_the_host() {
    let Some(e) = env() else { return };
    let mut sp = spec(&e.s, &e.base);
    sp.host_key = None;
    sp.known_hosts = Some("kh".into());
    let (mut c, sink) = ctx(
        &e.s,
        sp,
        tests_folder("echo via-known-hosts").path(),
        e.work.path(),
    );
    let line = format!("[127.0.0.1]:{} {}\n", e.s.port, e.s.host_pub);
    c.secrets.insert("kh".into(), line.into_bytes());
    let r = run(&c);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    assert!(sink.lines().iter().any(|l| l == "via-known-hosts"));
}

#[test]
fn timeout_kills_the_remote_process_tree() {
    let Some(e) = env() else { return };
    let marker = format!("kilnmark{}", std::process::id());
    let t = tests_folder(&format!(
        "sh -c 'sleep 1000; : {marker}' &\nsh -c 'sleep 1001; : {marker}' &\necho started\nwait"
    ));
    let (c, sink) = ctx(&e.s, spec(&e.s, &e.base), t.path(), e.work.path());
    let stop = c.stop.clone();
    let watcher = {
        let sink = sink.clone();
        let marker = marker.clone();
        std::thread::spawn(move || {
            wait_until("the remote test to start", 30, || {
                sink.lines().iter().any(|l| l == "started")
            });
            let before = pgrep(&marker);
            stop.fire(Stop::Timeout);
            before
        })
    };
    let r = run(&c);
    let before = watcher.join().expect("watcher");
    assert_eq!(
        before.len(),
        2,
        "the remote test's processes were running: {before:?}"
    );
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    wait_until("the remote processes to end", 5, || {
        pgrep(&marker).is_empty()
    });
    assert!(!e.base.join("lock").exists(), "lock left behind");
}

#[test]
fn busy_host_refuses_a_second_run_with_the_first_runs_id() {
    let Some(e) = env() else { return };
    let go = e.work.path().join("go");
    let t = tests_folder(&format!(
        "echo holding\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho released",
        go.display()
    ));
    let (c1, sink1) = ctx(
        &e.s,
        spec(&e.s, &e.base),
        t.path(),
        &e.work.path().join("a"),
    );
    let (mut c2, sink2) = ctx(
        &e.s,
        spec(&e.s, &e.base),
        t.path(),
        &e.work.path().join("b"),
    );
    c2.run = RunId([9; 16]);
    std::thread::scope(|sc| {
        let first = sc.spawn(|| run(&c1));
        wait_until("the first run to hold the host", 30, || {
            sink1.lines().iter().any(|l| l == "holding")
        });
        let r2 = run(&c2);
        expect_error(&r2, &sink2, &format!("host busy (run {})", c1.run));
        std::fs::write(&go, "").expect("go");
        let r1 = first.join().expect("first run");
        assert_eq!(r1.outcome, Outcome::Passed, "{r1:?}");
    });
    // Once the first has released the host, the second may run.
    let r2 = run(&c2);
    assert_eq!(r2.outcome, Outcome::Passed, "{r2:?} {:?}", sink2.lines());
}

#[test]
fn same_run_resuming_reattaches_instead_of_starting_over() {
    let Some(e) = env() else { return };
    let go = e.work.path().join("go");
    let count = e.work.path().join("starts");
    let t = tests_folder(&format!(
        "echo x >> '{}'\necho before-crash\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho after\nmkdir artifacts; echo r > artifacts/r.txt",
        count.display(),
        go.display()
    ));
    let (c1, sink1) = ctx(
        &e.s,
        spec(&e.s, &e.base),
        t.path(),
        &e.work.path().join("a"),
    );
    // The agent "crashes": its stage future is dropped once the test is running.
    crash_after(&c1, &sink1, "before-crash");
    drop(c1);
    // The same run (same stage and attempt) comes back.
    let (c2, sink2) = ctx(
        &e.s,
        spec(&e.s, &e.base),
        t.path(),
        &e.work.path().join("b"),
    );
    // The crashed agent's fetch session may live on (its ssh outlives the agent):
    // stand one up by hand, as a session that has since lost ownership.
    let mut stale = ssh::RemoteRun::new(&c2, ssh_spec(&c2)).expect("remote run");
    stale.token = "stale".into();
    let mut stale = std::process::Command::new("sh")
        .args(["-c", &ssh::linux::fetch_when_done(&stale)])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("stale fetch session");
    let go2 = go.clone();
    let releaser = std::thread::spawn(move || {
        wait_until("the reattached output", 30, || {
            sink2.lines().iter().any(|l| l == "before-crash")
        });
        std::fs::write(&go2, "").expect("go");
        sink2
    });
    let r = run(&c2);
    let sink2 = releaser.join().expect("releaser");
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink2.lines());
    assert!(
        sink2.lines().iter().any(|l| l.contains("reattaching")),
        "{:?}",
        sink2.lines()
    );
    assert!(sink2.lines().iter().any(|l| l == "after"));
    assert_eq!(
        std::fs::read_to_string(&count).expect("starts"),
        "x\n",
        "run.sh started once"
    );
    assert_eq!(artifacts(&sink2).len(), 1);
    assert!(!e.base.join("lock").exists(), "lock left behind");
    let code = stale.wait().expect("stale session").code();
    assert!(
        matches!(code, Some(3 | 4)),
        "the stale session neither fetched nor cleaned: {code:?}"
    );
}

/// Runs the stage until the test prints `line`, then drops its future: the agent
/// "crashes" mid-run, leaving the remote test running and the host locked.
fn crash_after(c: &StageCtx, sink: &MemorySink, line: &str) {
    let crashed = smol::block_on(async { Some(ssh::run(c, ssh_spec(c)).await) }.or(async {
        while !sink.lines().iter().any(|l| l == line) {
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        None
    }));
    assert!(
        crashed.is_none(),
        "the stage ended before the test printed {line:?}"
    );
}

fn ssh_spec(c: &StageCtx) -> &SshSpec {
    let StageKind::Ssh(spec) = &c.stage.kind else {
        unreachable!("an ssh stage")
    };
    spec
}
