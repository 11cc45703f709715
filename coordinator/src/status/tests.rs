//! The fold's states and stage summaries, from hand-made frames.
use super::*;
use kiln_protocol::{
    Event, HostBinding, HostSpec, Outcome, Plan, RunId, STALE_AFTER_MS, Stage, StageKind, Stream,
    VERSION,
};

const NOW: u64 = 1_700_000_000_000;

fn ticket() -> Ticket {
    let stage = |name: &str| Stage {
        retries: 1,
        ..Stage::new(name, StageKind::Inventory)
    };
    Ticket {
        version: VERSION,
        run: RunId([7; 16]),
        issued_at: NOW / 1000 - 60,
        not_after: NOW / 1000 + 3600,
        host: HostBinding {
            name: "n".into(),
            macs: vec![],
            serial: None,
            spec: HostSpec::default(),
            agent_key: None,
        },
        coordinator: None,
        plan: Plan {
            name: "p".into(),
            stages: vec![stage("a"), stage("b")],
            fail_fast: true,
            timeout_s: 0,
            hold: Default::default(),
        },
    }
}

fn frames(events: Vec<Event>) -> Vec<Frame> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Frame {
            seq: i as u64 + 1,
            at_ms: NOW + i as u64,
            event,
        })
        .collect()
}

fn claim() -> Event {
    Event::Claim {
        agent_key: kiln_protocol::SecretKey::from_seed([1; 32]).public(),
        agent_version: "v".into(),
        boot_id: "b".into(),
    }
}

fn done(stage: u16, attempt: u32, outcome: Outcome) -> Event {
    Event::StageFinished {
        stage,
        attempt,
        outcome,
        exit_code: Some(0),
        duration_ms: 10,
        detail: String::new(),
    }
}

fn at(t: &Ticket, f: &[Frame], seen: Option<u64>, abort: Option<&str>, now: u64) -> RunStatus {
    let abort = abort.map(|reason| AbortRequest {
        reason: reason.into(),
        at_ms: NOW,
    });
    fold(Inputs {
        ticket: t,
        frames: f,
        last_seen_ms: seen,
        abort: abort.as_ref(),
        now_ms: now,
        corrupt: None,
    })
}

#[test]
fn pending_expires_or_aborts() {
    let t = ticket();
    assert_eq!(at(&t, &[], None, None, NOW).state, RunState::Pending);
    let late = (t.not_after + 1) * 1000;
    let s = at(&t, &[], None, None, late);
    assert_eq!((s.state, s.exit_status), (RunState::Expired, Some(3)));
    let s = at(&t, &[], None, Some("no"), NOW);
    assert_eq!((s.state, s.exit_status), (RunState::Aborted, Some(1)));
}

#[test]
fn an_aborted_run_whose_agent_never_returns_ends_aborted_after_the_grace() {
    let t = ticket();
    let f = frames(vec![
        claim(),
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    ]);
    // The abort was requested at NOW, the last batch came at NOW.
    let s = at(&t, &f, Some(NOW), Some("stop"), NOW + ABORT_GRACE_MS);
    assert_eq!((s.state, s.exit_status), (RunState::Running, None));
    let s = at(&t, &f, Some(NOW), Some("stop"), NOW + ABORT_GRACE_MS + 1);
    assert_eq!((s.state, s.exit_status), (RunState::Aborted, Some(1)));
    assert_eq!(s.outcome, None, "no outcome: the agent never reported one");
    assert_eq!(s.stages[0].outcome, "lost");
    assert_eq!(s.abort_requested.as_deref(), Some("stop"));
    // An agent still sending after the request gets the grace from its last batch.
    let later = NOW + 10 * ABORT_GRACE_MS;
    let s = at(&t, &f, Some(later), Some("stop"), later + ABORT_GRACE_MS);
    assert_eq!(s.state, RunState::Running);
    // A run quiet long before the request is stale until the grace has passed.
    let abort = AbortRequest {
        reason: "stop".into(),
        at_ms: later,
    };
    let s = fold(Inputs {
        ticket: &t,
        frames: &f,
        last_seen_ms: Some(NOW),
        abort: Some(&abort),
        now_ms: later + 1,
        corrupt: None,
    });
    assert_eq!(s.state, RunState::Stale);
    // Without an abort request, a quiet run stays stale: it may come back.
    let s = at(&t, &f, Some(NOW), None, later);
    assert_eq!(s.state, RunState::Stale);
}

#[test]
fn claimed_running_and_stale() {
    let t = ticket();
    let f = frames(vec![claim()]);
    assert_eq!(at(&t, &f, Some(NOW), None, NOW).state, RunState::Claimed);
    let f = frames(vec![
        claim(),
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    ]);
    let s = at(&t, &f, Some(NOW), None, NOW + 1000);
    assert_eq!(s.state, RunState::Running);
    assert_eq!(s.stages[0].outcome, "running");
    assert_eq!(s.stages[1].outcome, "not_run");
    let quiet = NOW + STALE_AFTER_MS + 1;
    let s = at(&t, &f, Some(NOW), None, quiet);
    assert_eq!(s.state, RunState::Stale);
    assert_eq!(s.stages[0].outcome, "running", "a stale run may come back");
}

#[test]
fn retries_count_attempts_and_the_last_one_wins() {
    let t = ticket();
    let f = frames(vec![
        claim(),
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        Event::Log {
            stage: 0,
            stream: Stream::Stderr,
            text: "x".into(),
        },
        done(0, 1, Outcome::Failed),
        Event::StageStarted {
            stage: 0,
            attempt: 2,
        },
        done(0, 2, Outcome::Passed),
        Event::StageStarted {
            stage: 1,
            attempt: 1,
        },
        Event::Log {
            stage: 9,
            stream: Stream::Stdout,
            text: "a stage the plan lacks is ignored".into(),
        },
        Event::RunFinished {
            outcome: Outcome::Error,
        },
    ]);
    let s = at(&t, &f, Some(NOW), None, NOW);
    assert_eq!(
        (s.state, s.outcome, s.exit_status),
        (RunState::Finished, Some("error"), Some(3))
    );
    assert_eq!(
        (s.stages[0].outcome.as_str(), s.stages[0].attempts),
        ("passed", 2)
    );
    assert_eq!(s.stages[0].log_lines, 1);
    assert_eq!(
        s.stages[1].outcome, "lost",
        "started, and the run ended without it"
    );
    assert_eq!(s.frames, 9);
    assert_eq!(s.claimed_at_ms, Some(NOW));
}

/// An events.log image of `f`, and where each record starts.
fn image(f: &[Frame]) -> (Vec<u8>, Vec<usize>) {
    let (mut log, mut starts) = (Vec::new(), Vec::new());
    for fr in f {
        starts.push(log.len());
        log.extend(kiln_protocol::encode_record(
            &postcard::to_allocvec(fr).expect("encodes"),
        ));
    }
    (log, starts)
}

#[test]
fn a_corrupt_record_has_the_same_numbers_however_the_log_is_read() {
    use crate::store::{Scan, decode_frames};
    let t = ticket();
    let mut events = vec![
        claim(),
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    ];
    events.extend((0..6).map(|i| Event::Log {
        stage: 0,
        stream: Stream::Stdout,
        text: format!("line {i}"),
    }));
    events.extend([
        done(0, 1, Outcome::Passed),
        Event::RunFinished {
            outcome: Outcome::Passed,
        },
    ]);
    let f = frames(events);
    let (mut log, starts) = image(&f);
    // One byte: record 4's terminator, so records 4 and 5 read as one bad record.
    log[starts[5] - 1] = 1;
    let whole = decode_frames(&log);
    let c = whole.corrupt.clone().expect("the damage is found");
    assert_eq!((c.record, c.offset), (4, starts[4] as u64), "{c}");
    assert_eq!(whole.frames.len(), 4);
    // Read in pieces (as the fold cache and `run watch` do): the same record, counted
    // from the start of the file, never from the piece.
    for piece in [1, 3, 16, 1 << 20] {
        let (mut scan, mut buf, mut n) = (Scan::default(), Vec::new(), 0);
        for chunk in log.chunks(piece) {
            buf.extend_from_slice(chunk);
            let used = scan.feed(&buf, |_| n += 1);
            buf.drain(..used);
        }
        assert_eq!(
            (scan.corrupt.as_ref(), n),
            (Some(&c), 4),
            "pieces of {piece}"
        );
    }
    // Damage inside a record (a zero splits it) is found at that record too.
    let mut split = image(&f).0;
    split[starts[2] + 3] = 0;
    let c2 = decode_frames(&split)
        .corrupt
        .expect("a split record is corrupt");
    assert_eq!((c2.record, c2.offset), (2, starts[2] as u64), "{c2}");

    let s = fold(Inputs {
        ticket: &t,
        frames: &whole.frames,
        last_seen_ms: Some(NOW),
        abort: None,
        now_ms: NOW,
        corrupt: Some(&c),
    });
    assert_eq!((s.state, s.exit_status), (RunState::Corrupt, Some(3)));
    assert_eq!(s.stages[0].log_lines, 2, "the readable part is folded");
    assert_eq!(s.corrupt.as_ref(), Some(&c));
    let json: serde_json::Value = serde_json::from_str(&to_json(&s)).unwrap();
    assert_eq!(json["state"], "corrupt");
    assert_eq!(json["corrupt"]["offset"], starts[4] as u64);
    assert_eq!(json["corrupt"]["record"], 4);
}

#[test]
fn a_summary_serializes_the_headline_fields_of_its_status_in_order() {
    let t = ticket();
    let f = frames(vec![
        claim(),
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        done(0, 1, Outcome::Passed),
    ]);
    let s = at(&t, &f, Some(NOW), None, NOW);
    let json = serde_json::to_string(&Summary::from(&s)).unwrap();
    assert_eq!(
        json,
        format!(
            "{{\"run\":\"{}\",\"plan\":\"p\",\"host\":\"n\",\"state\":\"running\",\
             \"outcome\":null,\"exit_status\":null,\"frames\":3,\"stages\":2,\
             \"stages_done\":1,\"issued_at\":{},\"expires_at\":{},\"last_seen_ms\":{NOW},\
             \"corrupt\":null,\"contested\":false}}",
            t.run, t.issued_at, t.not_after
        )
    );
}

fn held(until_ms: u64) -> Event {
    Event::Held {
        outcome: Outcome::Failed,
        until_ms,
        addrs: vec!["10.0.2.15".into()],
        host_key: Some("SHA256:abc".into()),
    }
}

#[test]
fn a_held_run_shows_how_to_log_in_until_its_next_frame() {
    let t = ticket();
    let start = Event::StageStarted {
        stage: 0,
        attempt: 1,
    };
    let mut f = frames(vec![
        claim(),
        start,
        done(0, 1, Outcome::Failed),
        held(NOW + 60_000),
    ]);
    let s = at(&t, &f, Some(NOW), None, NOW);
    assert_eq!(
        (s.state, s.outcome, s.exit_status),
        (RunState::Held, None, None)
    );
    let h = s.hold.expect("hold");
    assert_eq!(h.ssh, ["ssh root@10.0.2.15"]);
    assert_eq!(
        (h.host_key.as_deref(), h.until_ms, h.outcome),
        (Some("SHA256:abc"), NOW + 60_000, "failed")
    );
    // Heartbeats stop: stale, as any live run; the hold is not shown as current.
    let s = at(&t, &f, Some(NOW), None, NOW + STALE_AFTER_MS + 1);
    assert_eq!((s.state, s.hold), (RunState::Stale, None));
    // An abort request does not end a hold (the agent takes no abort while held).
    assert_eq!(at(&t, &f, Some(NOW), Some("x"), NOW).state, RunState::Held);
    // The agent takes an order: no longer held; its Order frame is listed.
    let n = f.len() as u64;
    f.push(Frame {
        seq: n + 1,
        at_ms: NOW + 5,
        event: Event::Order {
            what: "release".into(),
            refused: None,
        },
    });
    let s = at(&t, &f, Some(NOW), None, NOW);
    assert_eq!((s.state, s.hold), (RunState::Running, None));
    assert_eq!(s.orders.len(), 1);
    assert_eq!(
        (s.orders[0].by.as_str(), s.orders[0].result.as_str()),
        ("agent", "done")
    );
}
