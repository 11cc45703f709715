//! Online runs against a tiny HTTP stub standing in for the coordinator: 5xx
//! retries, connection resets, 422 resends, aborts in acks, resumes from the spool,
//! and impostors whose acks must never end a run as passed.
use kiln_protocol::{Ack, Batch, Command, Event, Frame, Outcome, PublicKey, SecretKey};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::{exec, finals, opts, ticket, ticket_key};
use crate::end::RunEnd;
use crate::runner::run_ticket;

/// How the stub lies instead of acking what it stored.
#[derive(Default, Clone, Copy, PartialEq)]
enum Forge {
    /// It does not.
    #[default]
    No,
    /// Acks seqs never sent, signed with the coordinator key.
    Overreach,
    /// Acks everything sent, signed with a key nobody trusts.
    OtherKey,
    /// Acks everything sent, unsigned (the bytes of an ack before acks were signed).
    Unsigned,
    /// A correctly signed ack for another run.
    OtherRun,
    /// Claims with a 422 that seqs far beyond what was sent are stored.
    Gap,
}

/// What the stub coordinator does with the next batches.
#[derive(Default)]
struct Stub {
    stored: Vec<Frame>,
    /// Answer the next N batches with 503.
    fail_next: usize,
    /// Reset the next N connections once their request body arrives.
    reset_next: usize,
    /// Answer with Abort once this many frames are stored.
    abort_after: Option<usize>,
    batches: usize,
    /// The claim key acks are signed for (else the first stored Claim's).
    claim: Option<PublicKey>,
    forge: Forge,
    /// A `Date` header on every answer (the coordinator's clock).
    date: Option<String>,
}

/// A minimal HTTP/1.1 server for `POST /v1/runs/*/events`: dedupes by seq, refuses
/// gaps with 422 and `Kiln-Expected-Seq`, acks with a sealed ack signed by the
/// tickets' key (or lies as `forge` says).
fn serve_stub(stub: Arc<Mutex<Stub>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let stub = stub.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let reset = {
                        let mut s = stub.lock().unwrap();
                        let reset = s.reset_next > 0;
                        s.reset_next = s.reset_next.saturating_sub(1);
                        reset
                    };
                    if reset {
                        // A zero linger time makes the close a RST.
                        use nix::sys::socket::{setsockopt, sockopt::Linger};
                        let linger = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        setsockopt(&w, Linger, &linger).unwrap();
                        return;
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let (status, mut extra, reply) = answer(&stub, &body);
                    if let Some(d) = &stub.lock().unwrap().date {
                        extra.push_str(&format!("Date: {d}\r\n"));
                    }
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n",
                        reply.len()
                    );
                    w.write_all(head.as_bytes()).unwrap();
                    w.write_all(&reply).unwrap();
                }
            });
        }
    });
    format!("http://{addr}")
}

fn answer(stub: &Mutex<Stub>, body: &[u8]) -> (&'static str, String, Vec<u8>) {
    let mut s = stub.lock().unwrap();
    s.batches += 1;
    if body.len() > kiln_protocol::MAX_BATCH_BYTES {
        // As the coordinator does (its body cap).
        return (
            "413 Payload Too Large",
            String::new(),
            b"too large".to_vec(),
        );
    }
    if s.fail_next > 0 {
        s.fail_next -= 1;
        return ("503 Service Unavailable", String::new(), b"busy".to_vec());
    }
    let (batch, _) = Batch::open_unverified(body).unwrap();
    let (run, sent) = (batch.run, batch.frames.last().map(|f| f.seq));
    if s.forge == Forge::Gap {
        let extra = "Kiln-Expected-Seq: 1000000\r\n".to_string();
        return ("422 Unprocessable Entity", extra, b"gap".to_vec());
    }
    for f in batch.frames {
        let next = s.stored.len() as u64 + 1;
        if f.seq < next {
            continue;
        }
        if f.seq > next {
            let extra = format!("Kiln-Expected-Seq: {next}\r\n");
            return ("422 Unprocessable Entity", extra, b"gap".to_vec());
        }
        s.stored.push(f);
    }
    let command = match s.abort_after {
        Some(n) if s.stored.len() >= n => Command::Abort {
            reason: "stop it".into(),
        },
        _ => Command::Continue,
    };
    let claim = s.claim.or_else(|| {
        s.stored.iter().find_map(|f| match f.event {
            Event::Claim { agent_key, .. } => Some(agent_key),
            _ => None,
        })
    });
    let Some(claim) = claim else {
        return ("409 Conflict", String::new(), b"not claimed".to_vec());
    };
    let mut ack = Ack {
        run,
        upto: s.stored.len() as u64,
        command,
    };
    let mut key = ticket_key();
    match s.forge {
        Forge::No | Forge::Gap => {}
        Forge::Overreach => ack.upto = sent.unwrap_or(0) + 1000,
        Forge::OtherKey => key = SecretKey::from_seed([7; 32]),
        Forge::OtherRun => ack.run = kiln_protocol::RunId([0xee; 16]),
        Forge::Unsigned => {
            ack.upto = 1_000_000;
            let bytes = postcard::to_allocvec(&ack).unwrap();
            return ("200 OK", String::new(), bytes);
        }
    }
    ("200 OK", String::new(), ack.seal(&key, &claim))
}

#[test]
fn online_run_survives_5xx_and_stores_every_frame_once() {
    let stub = Arc::new(Mutex::new(Stub {
        fail_next: 2,
        ..Default::default()
    }));
    let url = serve_stub(stub.clone());
    let d = tempfile::tempdir().unwrap();
    let (bytes, key, _) = ticket(vec![exec("many", "seq 1 3000")], Some(url));
    let end = run_ticket(opts(bytes, &key, &d.path().join("work"), None));
    assert_eq!(
        end,
        RunEnd::Finished {
            outcome: Outcome::Passed,
            shutdown: false
        }
    );
    let s = stub.lock().unwrap();
    let lines: Vec<&str> = s
        .stored
        .iter()
        .filter_map(|f| match &f.event {
            Event::Log { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let want: Vec<String> = (1..=3000).map(|i| i.to_string()).collect();
    assert_eq!(lines, want);
    assert!(s.batches >= 3, "{}", s.batches);
}

#[test]
fn abort_in_an_ack_stops_the_running_stage() {
    let stub = Arc::new(Mutex::new(Stub {
        abort_after: Some(3),
        ..Default::default()
    }));
    let url = serve_stub(stub.clone());
    let d = tempfile::tempdir().unwrap();
    let stages = vec![exec("long", "sleep 60"), exec("never", "true")];
    let (bytes, key, _) = ticket(stages, Some(url));
    let end = run_ticket(opts(bytes, &key, &d.path().join("work"), None));
    assert_eq!(
        end,
        RunEnd::Finished {
            outcome: Outcome::Aborted,
            shutdown: false
        }
    );
    let s = stub.lock().unwrap();
    assert_eq!(finals(&s.stored), [(0, 1, Outcome::Aborted)]);
}

#[test]
fn a_restart_resumes_from_the_spool_without_rerunning_finished_stages() {
    resume_case(3);
}

#[test]
fn a_coordinator_behind_the_acked_mark_gets_the_gap_resent_after_422() {
    // The spool says 3 are acked, the coordinator has 1: it answers 422 and the
    // agent resends from seq 2.
    resume_case(1);
}

fn resume_case(coordinator_has: usize) {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    let marker = d.path().join("ran-first");
    let stages = vec![
        exec("first", &format!("touch {}", marker.display())),
        exec("second", "echo again"),
    ];
    let stub = Arc::new(Mutex::new(Stub::default()));
    let url = serve_stub(stub.clone());
    let (bytes, key, run) = ticket(stages, Some(url));
    // What a previous start left: stage 0 done, stage 1 interrupted, 3 frames acked.
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("run"), format!("{run}\n")).unwrap();
    let claim = crate::runner::claim_key(&work).unwrap();
    let (mut spool, _) = crate::spool::Spool::open(&work).unwrap();
    let events = [
        Event::Claim {
            agent_key: claim.public(),
            agent_version: "old".into(),
            boot_id: "old".into(),
        },
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        Event::StageFinished {
            stage: 0,
            attempt: 1,
            outcome: Outcome::Passed,
            exit_code: Some(0),
            duration_ms: 1,
            detail: "exit 0".into(),
        },
        Event::StageStarted {
            stage: 1,
            attempt: 1,
        },
    ];
    for (i, event) in events.into_iter().enumerate() {
        let f = Frame {
            seq: i as u64 + 1,
            at_ms: 1,
            event,
        };
        spool.append(&f).unwrap();
        if i < coordinator_has {
            stub.lock().unwrap().stored.push(f);
        }
    }
    spool.store_acked(3).unwrap();
    drop(spool);

    let end = run_ticket(opts(bytes, &key, &work, None));
    assert_eq!(
        end,
        RunEnd::Finished {
            outcome: Outcome::Passed,
            shutdown: false
        }
    );
    assert!(!marker.exists(), "the finished stage ran again");
    let s = stub.lock().unwrap();
    let seqs: Vec<u64> = s.stored.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=s.stored.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        finals(&s.stored),
        [
            (0, 1, Outcome::Passed),
            (1, 1, Outcome::Error),
            (1, 2, Outcome::Passed)
        ]
    );
    // The resumed start claims again under the same key.
    let claims: Vec<_> = s
        .stored
        .iter()
        .filter_map(|f| match &f.event {
            Event::Claim { agent_key, .. } => Some(*agent_key),
            _ => None,
        })
        .collect();
    assert_eq!(claims, [claim.public(), claim.public()]);
}

#[test]
fn a_restart_after_the_run_finished_only_resends_what_was_not_acked() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    let stub = Arc::new(Mutex::new(Stub::default()));
    let url = serve_stub(stub.clone());
    let (bytes, key, _) = ticket(vec![exec("a", "echo a")], Some(url));
    // A first start runs it all and is acked; then the spool forgets the acks, as
    // if the agent died before storing the mark.
    let end = run_ticket(opts(bytes.clone(), &key, &work, None));
    assert!(matches!(
        end,
        RunEnd::Finished {
            outcome: Outcome::Passed,
            ..
        }
    ));
    let first = stub.lock().unwrap().stored.clone();
    std::fs::write(work.join(crate::spool::ACKED_FILE), "0\n").unwrap();
    let end = run_ticket(opts(bytes, &key, &work, None));
    assert!(matches!(
        end,
        RunEnd::Finished {
            outcome: Outcome::Passed,
            ..
        }
    ));
    assert_eq!(
        stub.lock().unwrap().stored,
        first,
        "frames were added after RunFinished"
    );
}

#[test]
fn a_frame_over_the_batch_cap_is_cut_and_the_run_goes_on() {
    let stub = Arc::new(Mutex::new(Stub {
        claim: Some(kiln_protocol::SecretKey::from_seed([5; 32]).public()),
        ..Default::default()
    }));
    let url = serve_stub(stub.clone());
    let d = tempfile::tempdir().unwrap();
    let control = Arc::new(crate::reporter::Control::default());
    let (r, _) = crate::reporter::Reporter::open(
        kiln_protocol::RunId([5; 16]),
        kiln_protocol::SecretKey::from_seed([5; 32]),
        d.path(),
        crate::reporter::Mode::Online {
            client: crate::client::Client::new(&url),
            coordinator: ticket_key().public(),
        },
        control.clone(),
    )
    .unwrap();
    let sender = r.start_sender().unwrap();
    let tail: Vec<String> = (0..200)
        .map(|i| format!("{i:03}{}", "x".repeat(6000)))
        .collect();
    r.emit_seq(Event::Part {
        stage: 0,
        name: "debian:12".into(),
        outcome: Outcome::Failed,
        detail: "exit 1".into(),
        tail,
    });
    let last = r.emit_seq(Event::RunFinished {
        outcome: Outcome::Failed,
    });
    let acked = r.wait_acked(last, std::time::Duration::from_secs(30));
    r.close();
    sender.join().unwrap();
    assert_eq!(acked, Ok(()));
    assert_eq!(control.aborted(), None);
    let s = stub.lock().unwrap();
    let Event::Part { tail, .. } = &s.stored[0].event else {
        panic!("first frame is not the part")
    };
    assert!(
        tail[0].starts_with(crate::reporter::TRUNCATED),
        "{}",
        &tail[0][..30]
    );
    assert!(
        tail.last().unwrap().starts_with("199"),
        "the newest line is kept"
    );
}

#[test]
fn connection_resets_are_retried_and_the_run_completes() {
    let stub = Arc::new(Mutex::new(Stub {
        reset_next: 3,
        ..Default::default()
    }));
    let url = serve_stub(stub.clone());
    let d = tempfile::tempdir().unwrap();
    let (bytes, key, _) = ticket(vec![exec("a", "echo a")], Some(url));
    let end = run_ticket(opts(bytes, &key, &d.path().join("work"), None));
    assert_eq!(end.exit_status(), 0, "{end:?}");
    let s = stub.lock().unwrap();
    assert_eq!(s.reset_next, 0, "every reset connection was tried again");
    assert_eq!(finals(&s.stored), [(0, 1, Outcome::Passed)]);
}

/// A run against a stub that lies as `forge` says: it must end as an
/// infrastructure error (a protocol error), with nothing of the plan run.
fn impostor(forge: Forge) {
    let stub = Arc::new(Mutex::new(Stub {
        forge,
        ..Default::default()
    }));
    let url = serve_stub(stub.clone());
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("ran");
    let stage = exec("a", &format!("touch {}", marker.display()));
    let (bytes, key, _) = ticket(vec![stage], Some(url));
    let end = run_ticket(opts(bytes, &key, &d.path().join("work"), None));
    let RunEnd::Infra(why) = &end else {
        panic!("an impostor's acks ended the run as {end:?}");
    };
    assert_eq!(end.exit_status(), 3);
    assert!(why.contains("protocol error"), "{why}");
    assert!(!marker.exists(), "the stage ran on an unverified ack");
}

#[test]
fn an_ack_for_frames_never_sent_is_a_protocol_error() {
    impostor(Forge::Overreach);
}

#[test]
fn an_ack_signed_by_another_key_is_a_protocol_error() {
    impostor(Forge::OtherKey);
}

#[test]
fn an_unsigned_ack_is_a_protocol_error() {
    impostor(Forge::Unsigned);
}

#[test]
fn an_ack_for_another_run_is_a_protocol_error() {
    impostor(Forge::OtherRun);
}

#[test]
fn a_422_claiming_unsent_seqs_are_stored_is_a_protocol_error() {
    impostor(Forge::Gap);
}

/// `kiln-agent run` on a host whose clock is an hour behind the coordinator's: the
/// clock is left alone, the skew is reported (a log line and `agent.clock_skew_s` on
/// the first stage), and frames after the first ack carry the coordinator's time.
#[test]
fn run_mode_reports_skew_and_stamps_by_the_coordinators_clock() {
    let ahead = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let stub = Arc::new(Mutex::new(Stub {
        date: Some(httpdate::fmt_http_date(ahead)),
        ..Default::default()
    }));
    let url = serve_stub(stub.clone());
    let d = tempfile::tempdir().unwrap();
    let (bytes, key, _) = ticket(vec![exec("one", "echo hi")], Some(url));
    let before = crate::verify::now_s();
    let end = run_ticket(opts(bytes, &key, &d.path().join("work"), None));
    assert!(
        matches!(
            end,
            RunEnd::Finished {
                outcome: Outcome::Passed,
                ..
            }
        ),
        "{end:?}"
    );
    // The host's clock was not set (it would be an hour on).
    assert!(crate::verify::now_s() < before + 600);
    let s = stub.lock().unwrap();
    let skew = s
        .stored
        .iter()
        .find_map(|f| match &f.event {
            Event::Measure {
                stage: 0,
                name,
                value,
                unit,
            } if name == "agent.clock_skew_s" => Some((*value, unit.clone())),
            _ => None,
        })
        .expect("a skew measurement");
    assert!(
        (3500.0..3700.0).contains(&skew.0) && skew.1 == "s",
        "{skew:?}"
    );
    assert!(s.stored.iter().any(|f| matches!(&f.event,
        Event::Log { stage: 0, text, .. } if text.contains("behind the coordinator's"))));
    let last = s.stored.last().unwrap();
    assert!(matches!(last.event, Event::RunFinished { .. }));
    let want = ahead
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        last.at_ms.abs_diff(want) < 120_000,
        "{} vs {want}",
        last.at_ms
    );
}
