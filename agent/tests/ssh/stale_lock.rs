//! Recovering the busy lock of a run whose agent died: taken over only when the
//! holder's test is gone (finished or never started), refused while it runs.
use super::*;
use std::os::unix::process::CommandExt;

/// The base folder's lock and the takeover's scratch names are all gone.
fn assert_released(base: &Path) {
    let left: Vec<_> = std::fs::read_dir(base)
        .expect("base")
        .map(|d| d.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("lock"))
        .collect();
    assert!(left.is_empty(), "lock files left behind: {left:?}");
}

/// Whether process `pid` is running (exists and is not a zombie).
fn running(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')),
        Err(_) => false,
    }
}

/// Writes a lock as the stage does: `lock/{pid,run,dir}`.
fn write_lock(base: &Path, run: &str, dir: &str, pid: Option<u32>) {
    let lock = base.join("lock");
    std::fs::create_dir_all(&lock).expect("lock");
    if let Some(p) = pid {
        std::fs::write(lock.join("pid"), format!("{p}\n")).expect("pid");
    }
    std::fs::write(lock.join("run"), format!("{run}\n")).expect("run");
    std::fs::write(lock.join("dir"), format!("{dir}\n")).expect("dir");
}

fn took_over(sink: &MemorySink, run: &str) -> bool {
    let want = format!("taking over stale lock of run {run}");
    sink.lines().iter().any(|l| l.starts_with(&want))
}

#[test]
fn stale_lock_of_a_dead_agent_is_taken_over_by_another_run() {
    let Some(e) = env() else { return };
    let go = e.work.path().join("go");
    let t = tests_folder(&format!(
        "echo before-crash\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho after",
        go.display()
    ));
    let (c1, sink1) = ctx(
        &e.s,
        spec(&e.s, &e.base),
        t.path(),
        &e.work.path().join("a"),
    );
    // The agent dies holding the host: its stage future is dropped mid-run.
    crash_after(&c1, &sink1, "before-crash");
    // The test finishes on its own; nobody fetches it or releases the lock.
    std::fs::write(&go, "").expect("go");
    let m = e.base.join(format!("runs/{}-remote_smoke-1.kiln", c1.run));
    wait_until("the orphaned test to finish", 30, || {
        m.join("exit").exists()
    });
    if let Ok(f) = std::fs::read_to_string(m.join("fetch")) {
        wait_until("the dead agent's fetch session to end", 30, || {
            !running(f.trim())
        });
    }
    assert!(e.base.join("lock").exists(), "the dead agent left its lock");

    let (mut c2, sink2) = ctx(
        &e.s,
        spec(&e.s, &e.base),
        tests_folder("echo second-run").path(),
        &e.work.path().join("b"),
    );
    c2.run = RunId([9; 16]);
    let r = run(&c2);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink2.lines());
    assert!(sink2.lines().iter().any(|l| l == "second-run"));
    assert!(
        took_over(&sink2, &c1.run.to_string()),
        "{:?}",
        sink2.lines()
    );
    assert_released(&e.base);

    // A run whose agent died after taking the lock, before its test started.
    let mut gone = std::process::Command::new("true").spawn().expect("true");
    let dead_pid = gone.id();
    gone.wait().expect("true");
    write_lock(
        &e.base,
        "feedfacefeedface",
        "never-started-1",
        Some(dead_pid),
    );
    let (mut c3, sink3) = ctx(
        &e.s,
        spec(&e.s, &e.base),
        tests_folder("echo third-run").path(),
        &e.work.path().join("c"),
    );
    c3.run = RunId([7; 16]);
    let r = run(&c3);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink3.lines());
    assert!(took_over(&sink3, "feedfacefeedface"), "{:?}", sink3.lines());
    assert_released(&e.base);
}

#[test]
fn lock_whose_holder_still_runs_stays_busy() {
    let Some(e) = env() else { return };
    let holder = "abcdefabcdefabcdefabcdefabcdefab";
    let dir = format!("{holder}-remote_smoke-1");
    let m = e.base.join(format!("runs/{dir}.kiln"));
    std::fs::create_dir_all(&m).expect("bookkeeping");
    // The holder's test: a process group of its own, recorded as the stage records it.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .expect("sleep");
    std::fs::write(m.join("pgid"), format!("{}\n", sleeper.id())).expect("pgid");
    write_lock(&e.base, holder, &dir, None);

    let (mut c, sink) = ctx(
        &e.s,
        spec(&e.s, &e.base),
        tests_folder("echo newcomer").path(),
        e.work.path(),
    );
    c.run = RunId([9; 16]);
    let busy = format!("host busy (run {holder})");
    expect_error(&run(&c), &sink, &busy);
    assert!(!sink.lines().iter().any(|l| l == "newcomer"));

    // Killed without an exit status: not known to be over, still busy.
    sleeper.kill().expect("kill");
    sleeper.wait().expect("wait");
    expect_error(&run(&c), &sink, &busy);
    assert_eq!(
        std::fs::read_to_string(e.base.join("lock/run")).expect("lock"),
        format!("{holder}\n"),
        "the holder keeps its lock"
    );

    // Once its exit status is there, the holder is over and the lock is taken over.
    std::fs::write(m.join("exit"), "0\n").expect("exit");
    let r = run(&c);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    assert!(took_over(&sink, holder), "{:?}", sink.lines());
    assert_released(&e.base);
}
