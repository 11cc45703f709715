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
    fold(Inputs {
        ticket: t,
        frames: f,
        last_seen_ms: seen,
        abort,
        now_ms: now,
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
