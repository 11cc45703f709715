//! Crashes mid-run: the coordinator SIGKILLed and restarted on the same address while
//! an agent streams 20000 lines; the agent SIGKILLed and restarted with the same
//! ticket and work folder. Every frame is stored exactly once, in order. And the
//! agent stopped: SIGTERM aborts the running stage; a SIGKILLed agent's orphaned
//! stage is killed by the restarted agent before its next attempt.
use crate::common::*;
use crate::runs::{Fx, s, wait_exit};
use kiln_protocol::Event;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// `serve --listen ADDR` (a fixed address, so a restart is reachable at the same URL),
/// waiting on its address file.
pub(crate) fn serve_at(state: &Path, addr: &str) -> Child {
    let addr_file = state.join("addr.crash");
    let _ = std::fs::remove_file(&addr_file);
    let mut child = Command::new(bin("kiln-coordinator"))
        .arg("--state")
        .arg(state)
        .args(["serve", "--listen", addr, "--addr-file", s(&addr_file)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kiln-coordinator serve");
    let mut exited = None;
    wait_until(Duration::from_secs(20), "the coordinator to listen", || {
        exited = child.try_wait().expect("try_wait");
        exited.is_some() || std::fs::read_to_string(&addr_file).is_ok_and(|a| a.ends_with('\n'))
    });
    assert!(exited.is_none(), "coordinator exited early: {exited:?}");
    if let Some(e) = child.stderr.take() {
        std::thread::spawn(move || {
            for l in BufReader::new(e).lines().map_while(Result::ok) {
                eprintln!("[coordinator] {l}");
            }
        });
    }
    child
}

/// A loopback address nobody listens on right now.
pub(crate) fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

fn log_lines(fx: &Fx, run: &str, stage: &str) -> Vec<String> {
    let o = kc(&fx.state, &["run", "logs", run, "--stage", stage]);
    assert_eq!(o.code, 0, "run logs failed: {}", o.stderr);
    o.stdout.lines().map(str::to_string).collect()
}

#[test]
fn a_coordinator_killed_mid_run_loses_no_frame_and_stores_none_twice() {
    let fx = Fx::new();
    let addr = free_addr();
    let url = format!("http://{addr}");
    let mut server = serve_at(&fx.state, &addr);
    let go = fx.dir.join("go");
    // 10000 lines, a pause until the test has killed the coordinator, 10000 more.
    let script = format!(
        "i=1; while [ $i -le 10000 ]; do echo line $i; i=$((i+1)); done; \
         while [ ! -e {go} ]; do sleep 0.05; done; \
         while [ $i -le 20000 ]; do echo line $i; i=$((i+1)); done",
        go = go.display()
    );
    let plan = fx.plan(
        "stream.toml",
        &format!(
            "name = \"stream\"\n[[stage]]\nname = \"stream\"\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", {script:?}]\n"
        ),
    );
    let run = fx.issue(&plan, Some(&url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut agent = Command::new(bin("kiln-agent"))
        .args(["run", "--ticket", s(&ticket), "--trust", s(&fx.trust())])
        .args(["--work", s(&fx.dir.join("work"))])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kiln-agent");
    let retries = Arc::new(AtomicUsize::new(0));
    let seen = retries.clone();
    let err = agent.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if l.contains("retrying") {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            eprintln!("{l}");
        }
    });
    wait_until(Duration::from_secs(60), "some lines to be stored", || {
        fx.stored_frames(&run).len() > 100
    });
    let _ = server.kill();
    let _ = server.wait();
    let stored_at_kill = fx.stored_frames(&run).len();
    std::fs::write(&go, b"").unwrap();
    // Restart only once the agent has met the dead address at least twice.
    wait_until(Duration::from_secs(60), "the agent to retry", || {
        retries.load(Ordering::SeqCst) >= 2
    });
    let mut server = serve_at(&fx.state, &addr);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(180)), 0);
    let _ = server.kill();
    let _ = server.wait();

    eprintln!("frames stored when the coordinator was killed: {stored_at_kill}");
    let frames = fx.stored_frames(&run);
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>());
    let want: Vec<String> = (1..=20000).map(|i| format!("line {i}")).collect();
    assert_eq!(log_lines(&fx, &run, "stream"), want);
    assert_eq!(fx.show(&run)["outcome"], "passed");
}

#[test]
fn an_agent_killed_mid_run_resumes_from_its_spool() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let (ready, go, once) = (fx.dir.join("ready"), fx.dir.join("go"), fx.dir.join("once"));
    let plan = fx.plan(
        "resume.toml",
        &format!(
            "name = \"resume\"\n\
             [[stage]]\nname = \"first\"\nkind = \"exec\"\n\
             command = [\"sh\", \"-c\", \"echo ran >> {once}; echo first\"]\n\
             [[stage]]\nname = \"second\"\nkind = \"exec\"\n\
             command = [\"sh\", \"-c\", \"seq 1 500; touch {ready}; while [ ! -e {go} ]; do sleep 0.05; done; echo done\"]\n",
            once = once.display(),
            ready = ready.display(),
            go = go.display()
        ),
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let work = fx.dir.join("work");
    let mut agent = fx.spawn_agent(s(&ticket), &work, &[]);
    wait_until(
        Duration::from_secs(60),
        "the second stage to stream",
        || {
            ready.exists()
                && fx
                    .stored_frames(&run)
                    .iter()
                    .any(|f| matches!(&f.event, Event::Log { stage: 1, text, .. } if text == "500"))
        },
    );
    agent.kill().expect("SIGKILL the agent");
    let _ = agent.wait();
    let before = fx.stored_frames(&run);
    // Let the orphaned stage process finish; the restarted agent runs a new attempt.
    std::fs::write(&go, b"").unwrap();
    let mut agent = fx.spawn_agent(s(&ticket), &work, &[]);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(120)), 0);

    let after = fx.stored_frames(&run);
    assert_eq!(after[..before.len()], before[..], "acked frames changed");
    let seqs: Vec<u64> = after.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=after.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        std::fs::read_to_string(&once).unwrap(),
        "ran\n",
        "stage 1 ran twice"
    );
    assert_eq!(log_lines(&fx, &run, "first"), ["first"]);
    let second = log_lines(&fx, &run, "second");
    assert_eq!(second.last().map(String::as_str), Some("done"));
    let show = fx.show(&run);
    assert_eq!(show["outcome"], "passed");
    assert_eq!(show["stages"][0]["attempts"], 1);
    // The interrupted attempt is closed as an error; the new attempt passes.
    assert_eq!(show["stages"][1]["outcome"], "passed");
    assert_eq!(show["stages"][1]["attempts"], 2);
    let claims = after
        .iter()
        .filter(|f| matches!(f.event, Event::Claim { .. }))
        .count();
    assert_eq!(claims, 2, "the restart claims again under the same key");
}

/// Whether process `pid` runs (exists and is not a zombie).
pub(crate) fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with(['Z', 'X']))
    })
}

/// An online run of one exec stage that records its shell's pid and sleeps, the first
/// time (later attempts pass at once), with its agent started and the stage running.
struct Sleeper {
    fx: Fx,
    _server: Coordinator,
    run: String,
    ticket: PathBuf,
    work: PathBuf,
    agent: Child,
    /// The stage shell's pid.
    pid: String,
}

impl Sleeper {
    fn start() -> Sleeper {
        let fx = Fx::new();
        let server = Coordinator::start(&fx.state);
        let (pid_file, once) = (fx.dir.join("pid"), fx.dir.join("once"));
        let plan = fx.plan(
            "sleeper.toml",
            &format!(
                "name = \"sleeper\"\n[[stage]]\nname = \"sleeper\"\nkind = \"exec\"\n\
                 command = [\"sh\", \"-c\", \"[ -e {once} ] && exit 0; touch {once}; \
                 echo $$ > {pid}.tmp && mv {pid}.tmp {pid}; sleep 300\"]\n",
                once = once.display(),
                pid = pid_file.display()
            ),
        );
        let run = fx.issue(&plan, Some(&server.url), None);
        let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
        let work = fx.dir.join("work");
        let agent = fx.spawn_agent(s(&ticket), &work, &[]);
        wait_until(Duration::from_secs(60), "the stage to start", || {
            pid_file.exists()
        });
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_string();
        Sleeper {
            fx,
            _server: server,
            run,
            ticket,
            work,
            agent,
            pid,
        }
    }
}

#[test]
fn sigterm_to_the_agent_aborts_the_stage_and_kills_its_group() {
    let mut t = Sleeper::start();
    let st = Command::new("kill")
        .args(["-TERM", &t.agent.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let code = wait_exit(&mut t.agent, Duration::from_secs(30));
    assert_ne!(code, 0, "an aborted run is no pass");
    assert!(
        !alive(&t.pid),
        "the stage's shell {} outlived the agent",
        t.pid
    );
    let show = t.fx.show(&t.run);
    assert_eq!(show["stages"][0]["outcome"], "aborted", "{show}");
    assert!(
        show["stages"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("SIGTERM")),
        "{show}"
    );
}

#[test]
fn a_restarted_agent_first_kills_the_group_a_killed_agent_left() {
    let mut t = Sleeper::start();
    t.agent.kill().expect("SIGKILL the agent");
    let _ = t.agent.wait();
    assert!(
        alive(&t.pid),
        "the orphaned stage should outlive a SIGKILLed agent"
    );
    let mut agent = t.fx.spawn_agent(s(&t.ticket), &t.work, &[]);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(120)), 0);
    assert!(!alive(&t.pid), "the orphaned stage {} still runs", t.pid);
    assert_eq!(t.fx.show(&t.run)["stages"][0]["attempts"], 2);
}
