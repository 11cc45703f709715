//! An agent restarted after its ticket expired, with frames the coordinator never
//! acked: the run was claimed in time, so they are still delivered. The restarted
//! agent starts nothing new: the interrupted attempt is closed `interrupted`, the
//! run ends `error`. A work folder that never claimed the run gets nothing past
//! expiry.
use crate::common::*;
use crate::crash::{free_addr, serve_at};
use crate::runs::{Fx, s, wait_exit};
use kiln_protocol::{Event, Frame, Outcome, PublicKey, RecordReader, SignedTicket};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The frames in an agent's spool (`work/spool.log`), as far as they decode.
fn spooled(work: &Path) -> Vec<Frame> {
    let bytes = std::fs::read(work.join("spool.log")).unwrap_or_default();
    RecordReader::new(&bytes)
        .map_while(|r| r.ok())
        .filter_map(|p| postcard::from_bytes(&p).ok())
        .collect()
}

fn logs_of(frames: &[Frame], stage: u16) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match &f.event {
            Event::Log {
                stage: st, text, ..
            } if *st == stage => Some(text.clone()),
            _ => None,
        })
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// `kiln-agent run` with stderr forwarded and its "retrying" lines counted.
fn spawn_counting(fx: &Fx, ticket: &Path, work: &Path) -> (Child, Arc<AtomicUsize>) {
    let mut agent = Command::new(bin("kiln-agent"))
        .args(["run", "--ticket", s(ticket), "--trust", s(&fx.trust())])
        .args(["--work", s(work)])
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
            eprintln!("[agent] {l}");
        }
    });
    (agent, retries)
}

#[test]
fn an_agent_restarted_after_expiry_delivers_its_unacked_frames_and_starts_nothing() {
    let fx = Fx::new();
    let addr = free_addr();
    let url = format!("http://{addr}");
    let mut server = serve_at(&fx.state, &addr);
    let (ready, go, printed, end, after) = (
        fx.dir.join("ready"),
        fx.dir.join("go"),
        fx.dir.join("printed"),
        fx.dir.join("end"),
        fx.dir.join("after-ran"),
    );
    // 200 lines (acked), a pause until the coordinator is gone, 200 more (never
    // acked by that coordinator), then a wait the SIGKILL ends.
    let script = format!(
        "echo $$ > {pid}; seq 1 200; touch {ready}; while [ ! -e {go} ]; do sleep 0.05; done; \
         seq 201 400; touch {printed}; \
         i=0; while [ ! -e {end} ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done",
        ready = ready.display(),
        go = go.display(),
        printed = printed.display(),
        end = end.display(),
        pid = fx.dir.join("pid").display(),
    );
    let plan = fx.plan(
        "expiry.toml",
        &format!(
            "name = \"expiry\"\n\
             [[stage]]\nname = \"stream\"\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", {script:?}]\n\
             [[stage]]\nname = \"after\"\nkind = \"exec\"\ncommand = [\"touch\", {after:?}]\n",
            after = s(&after),
        ),
    );
    let o = kc(
        &fx.state,
        &[
            "ticket",
            "issue",
            "--plan",
            s(&plan),
            "--host",
            "here",
            "--url",
            &url,
            "--ttl",
            "15s",
        ],
    );
    assert_eq!(o.code, 0, "ticket issue: {}", o.stderr);
    let run = o.stdout.trim().to_string();
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let key = PublicKey::from_line(&std::fs::read_to_string(fx.trust()).unwrap()).unwrap();
    let not_after = SignedTicket::from_file(&std::fs::read(&ticket).unwrap())
        .unwrap()
        .verify(&[key])
        .unwrap()
        .not_after;
    let work = fx.dir.join("work");
    let (mut agent, retries) = spawn_counting(&fx, &ticket, &work);
    wait_until(Duration::from_secs(60), "200 lines to be stored", || {
        ready.exists() && logs_of(&fx.stored_frames(&run), 0).len() == 200
    });
    let _ = server.kill();
    let _ = server.wait();
    std::fs::write(&go, b"").unwrap();
    wait_until(Duration::from_secs(60), "400 lines to be spooled", || {
        printed.exists() && logs_of(&spooled(&work), 0).len() == 400
    });
    wait_until(
        Duration::from_secs(60),
        "the agent to meet the dead coordinator",
        || retries.load(Ordering::SeqCst) >= 1,
    );
    agent.kill().expect("SIGKILL the agent");
    let _ = agent.wait();
    let stored_before = fx.stored_frames(&run);
    assert_eq!(logs_of(&stored_before, 0).len(), 200);
    wait_until(Duration::from_secs(60), "the ticket to expire", || {
        crate::server::now_s() > not_after
    });
    // Expired: a work folder that never claimed the run is refused, untouched.
    let other = fx.dir.join("other-work");
    let (mut fresh, _) = spawn_counting(&fx, &ticket, &other);
    assert_eq!(wait_exit(&mut fresh, Duration::from_secs(60)), 2);
    assert!(!other.join("spool.log").exists());

    let mut server = serve_at(&fx.state, &addr);
    let (mut agent, _) = spawn_counting(&fx, &ticket, &work);
    let code = wait_exit(&mut agent, Duration::from_secs(120));
    let orphan = std::fs::read_to_string(fx.dir.join("pid")).unwrap();
    let orphan_alive = crate::crash::alive(orphan.trim());
    std::fs::write(&end, b"").unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, Outcome::Error.exit_status(), "the run ends error");
    assert!(!orphan_alive, "the killed start's stage still runs");

    let frames = fx.stored_frames(&run);
    assert_eq!(frames[..stored_before.len()], stored_before[..]);
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>());
    let want: Vec<String> = (1..=400).map(|i| i.to_string()).collect();
    assert_eq!(logs_of(&frames, 0), want, "every spooled line arrives once");
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f.event, Event::StageStarted { stage: 1, .. })),
        "a stage started after expiry"
    );
    assert!(!after.exists(), "the second stage ran after expiry");
    let closes: Vec<&Event> = frames
        .iter()
        .map(|f| &f.event)
        .filter(|e| matches!(e, Event::StageFinished { stage: 0, .. }))
        .collect();
    assert!(
        matches!(closes.as_slice(), [Event::StageFinished { outcome: Outcome::Error, detail, .. }] if detail.starts_with("interrupted")),
        "{closes:?}"
    );
    assert!(matches!(
        frames.last().map(|f| &f.event),
        Some(Event::RunFinished {
            outcome: Outcome::Error
        })
    ));
    let show = fx.show(&run);
    assert_eq!(show["state"], "finished", "{show}");
    assert_eq!(show["outcome"], "error", "{show}");
}
