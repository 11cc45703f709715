//! `POST /v1/runs/{run}/events`: acks, dedupe, gaps, claims, refusals.
use kiln_protocol::{Command, Event, Outcome};

use super::*;
use crate::common::{Coordinator, kc};

#[test]
fn batches_are_acked_deduped_and_logged_once() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let first = r.frames(vec![
        claim,
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        log(0, "line one"),
    ]);
    let b1 = r.seal(first.clone());
    let a = ack(&c.url, &run, &b1);
    assert_eq!((a.upto, a.command), (3, Command::Continue));
    // The same batch again (a lost ack) changes nothing.
    assert_eq!(ack(&c.url, &run, &b1).upto, 3);
    // A resend that overlaps stored frames: only the new ones are kept.
    let more = r.frames(vec![log(0, "line two"), log(0, "line three")]);
    let mut overlap = first[1..].to_vec();
    overlap.extend(more);
    assert_eq!(ack(&c.url, &run, &r.seal(overlap.clone())).upto, 5);
    assert_eq!(ack(&c.url, &run, &r.seal(overlap)).upto, 5);
    // A heartbeat (empty batch) is acked with the same upto.
    assert_eq!(ack(&c.url, &run, &r.seal(vec![])).upto, 5);

    let o = kc(
        &state,
        &["run", "logs", &run.to_string()[..8], "--stage", "build"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "line one\nline two\nline three\n");
    let o = kc(&state, &["run", "logs", &run.to_string()]);
    assert_eq!(
        o.stdout,
        "[build] line one\n[build] line two\n[build] line three\n"
    );

    // One JSON shape for the CLI and the API.
    let cli = kc(&state, &["run", "show", &run.to_string(), "--json"]);
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    let cli: serde_json::Value = serde_json::from_str(&cli.stdout).expect("json");
    let api: serde_json::Value =
        serde_json::from_slice(&get(&c.url, &format!("/v1/runs/{run}")).body).expect("json");
    assert_eq!(cli, api);
    assert_eq!(api["state"], "running");
    assert_eq!(api["stages"][0]["outcome"], "running");
    assert_eq!(api["stages"][0]["log_lines"], 3);
    assert_eq!(api["stages"][1]["outcome"], "not_run");
}

#[test]
fn refusals_name_a_reason_and_the_server_keeps_serving() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let url = &c.url;

    // Unclaimed run: a batch that does not start with the claim is a gap at 1.
    let mut r = Reporter::new(run);
    r.next = 2;
    let early = r.clone_frames(vec![log(0, "early")]);
    let late = r.seal(early);
    let a = post_batch(url, &run, &late);
    assert_eq!(a.status, 422, "{}", a.text());
    assert_eq!(a.header("Kiln-Expected-Seq"), Some("1"));

    let mut r = Reporter::new(run);
    let claim = r.claim();
    let frames = r.frames(vec![claim]);
    assert_eq!(ack(url, &run, &r.seal(frames)).upto, 1);

    // A second agent with its own, validly signed claim.
    let mut other = Reporter::new(run);
    let oclaim = other.claim();
    let oframes = other.frames(vec![oclaim]);
    let a = post_batch(url, &run, &other.seal(oframes));
    assert_eq!(a.status, 409);
    assert!(
        a.text()
            .contains("run already claimed by another agent key"),
        "{}",
        a.text()
    );
    // The other agent's later batches: signed by a key the run does not know.
    let a = post_batch(url, &run, &other.seal(vec![]));
    assert_eq!(a.status, 403);
    assert!(a.text().contains("bad batch signature"));

    // A flipped signature byte.
    let good = r.frames(vec![log(0, "hello")]);
    let mut bad = r.seal(good.clone());
    let n = bad.len();
    bad[n - 1] ^= 1;
    let a = post_batch(url, &run, &bad);
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.text().contains("bad batch signature"));

    // A gap: frames 3.. while 2 is missing.
    let mut skip = Reporter {
        next: 3,
        ..r.clone_key()
    };
    let gap = skip.frames(vec![log(0, "too far")]);
    let a = post_batch(url, &run, &r.seal(gap));
    assert_eq!(a.status, 422);
    assert_eq!(a.header("Kiln-Expected-Seq"), Some("2"));
    assert_eq!(a.text().trim(), "seq gap: expected 2");

    // Over the cap, garbage, wrong run, unknown run, bad ids, methods, routes.
    let huge = vec![0u8; kiln_protocol::MAX_BATCH_BYTES + 1];
    let a = post_batch(url, &run, &huge);
    assert_eq!(a.status, 413, "{}", a.text());
    let a = post_batch(url, &run, b"\xff\xfe definitely not a batch");
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(a.text().starts_with("malformed batch"), "{}", a.text());
    let neighbour = issue(&state);
    let a = post_batch(url, &neighbour, &r.seal(good.clone()));
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(a.text().starts_with("batch is for run"), "{}", a.text());
    let elsewhere = new_run_id();
    let a = post_batch(url, &elsewhere, &r.seal(good.clone()));
    assert_eq!(a.status, 404, "{}", a.text());
    let mut stranger = Reporter::new(elsewhere);
    let sclaim = stranger.claim();
    let sframes = stranger.frames(vec![sclaim]);
    let a = post_batch(url, &elsewhere, &stranger.seal(sframes));
    assert_eq!(a.status, 404, "{}", a.text());
    let a = call(
        ureq::post(&format!("{url}/v1/runs/..%2F..%2Fkey/events")),
        Some(b"x"),
    );
    assert_eq!(a.status, 400, "{}", a.text());
    let a = get(url, &format!("/v1/runs/{run}/events"));
    assert_eq!(a.status, 405, "{}", a.text());
    let a = get(url, "/no/such/route");
    assert_eq!(a.status, 404);
    assert_eq!(a.text(), "no route /no/such/route\n", "a one-line reason");

    // Still serving: the good batch is acked.
    assert_eq!(ack(url, &run, &r.seal(good)).upto, 2);
    assert!(!state.join("key/events").exists());
}

#[test]
fn heartbeats_abort_and_the_end_of_a_run() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    ack(&c.url, &run, &r.seal(f));
    let s: serde_json::Value =
        serde_json::from_slice(&get(&c.url, &format!("/v1/runs/{run}")).body).unwrap();
    assert_eq!(s["state"], "claimed");

    let o = kc(
        &state,
        &[
            "run",
            "abort",
            &run.to_string(),
            "--reason",
            "operator <said> stop",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let a = ack(&c.url, &run, &r.seal(vec![]));
    assert_eq!(
        a.command,
        Command::Abort {
            reason: "operator <said> stop".into()
        }
    );
    let f = r.frames(vec![Event::RunFinished {
        outcome: Outcome::Aborted,
    }]);
    let a = ack(&c.url, &run, &r.seal(f));
    assert_eq!((a.upto, a.command), (2, Command::Continue));
    let after = r.frames(vec![log(0, "too late")]);
    let a = post_batch(&c.url, &run, &r.seal(after));
    assert_eq!(a.status, 409, "{}", a.text());
    assert!(a.text().contains("finished"));
    let s: serde_json::Value =
        serde_json::from_slice(&get(&c.url, &format!("/v1/runs/{run}")).body).unwrap();
    assert_eq!(s["state"], "aborted");
    assert_eq!(s["exit_status"], 1);
    let o = kc(&state, &["run", "abort", &run.to_string()]);
    assert_ne!(o.code, 0, "aborting a finished run is refused");
}

#[test]
fn a_torn_tail_is_cut_before_the_next_append() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![claim, log(0, "before the crash")]);
    {
        let c = Coordinator::start(&state);
        ack(&c.url, &run, &r.seal(f));
    }
    // A crash mid-write leaves half a record behind.
    let log_path = state.join("runs").join(run.to_string()).join("events.log");
    let clean = std::fs::read(&log_path).unwrap();
    let mut torn = clean.clone();
    torn.extend_from_slice(&[0x05, 0x41, 0x42]);
    std::fs::write(&log_path, &torn).unwrap();
    let c = Coordinator::start(&state);
    let f = r.frames(vec![log(0, "after the crash")]);
    assert_eq!(ack(&c.url, &run, &r.seal(f)).upto, 3);
    let now = std::fs::read(&log_path).unwrap();
    assert!(now.starts_with(&clean) && !now[clean.len()..].starts_with(&[0x05, 0x41, 0x42]));
    let o = kc(&state, &["run", "logs", &run.to_string()]);
    assert_eq!(
        o.stdout,
        "[build] before the crash\n[build] after the crash\n"
    );
}

impl Reporter {
    /// Frames numbered from `next` without advancing it.
    fn clone_frames(&mut self, events: Vec<Event>) -> Vec<kiln_protocol::Frame> {
        let keep = self.next;
        let f = self.frames(events);
        self.next = keep;
        f
    }

    /// A reporter with the same key and run.
    fn clone_key(&self) -> Reporter {
        Reporter {
            run: self.run,
            key: self.key.clone(),
            next: self.next,
        }
    }
}

#[test]
fn acks_are_signed_for_the_run_and_its_claimant() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let coordinator = state_key(&state).public();
    let mut r = Reporter::new(run);
    let claim = r.claim();
    for events in [vec![claim], vec![log(0, "x")], vec![]] {
        let f = r.frames(events);
        let a = post_batch(&c.url, &run, &r.seal(f));
        assert_eq!(a.status, 200, "{}", a.text());
        let ack = kiln_protocol::Ack::open(&a.body, &coordinator, &r.key.public())
            .expect("the ack verifies against the coordinator key and our claim key");
        assert_eq!((ack.run, ack.upto), (run, r.next - 1));
        // Good for this claimant only: another agent key does not verify it.
        let other = SecretKey::from_seed(seed()).public();
        assert!(kiln_protocol::Ack::open(&a.body, &coordinator, &other).is_err());
    }
}

/// A resend whose frames differ from the stored ones is refused whole over HTTP, and
/// the agent's faithful resend still goes through.
#[test]
fn a_resend_that_differs_from_the_stored_frames_is_refused() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let first = r.frames(vec![claim, log(0, "one"), log(0, "two")]);
    assert_eq!(ack(&c.url, &run, &r.seal(first.clone())).upto, 3);
    let events = state.join("runs").join(run.to_string()).join("events.log");
    let stored = std::fs::read(&events).expect("events.log");
    // Seq 3 again, other text, plus a new seq 4.
    let mut forked = first[1..].to_vec();
    forked[1].event = log(0, "not two");
    forked.extend(r.clone_frames(vec![log(0, "three")]));
    let a = post_batch(&c.url, &run, &r.seal(forked));
    assert_eq!(a.status, 409, "{}", a.text());
    assert_eq!(
        a.text().trim(),
        "conflicting resend: seq 3 differs from the stored frame"
    );
    assert_eq!(std::fs::read(&events).expect("events.log"), stored);
    let mut faithful = first[1..].to_vec();
    faithful.extend(r.frames(vec![log(0, "three")]));
    assert_eq!(ack(&c.url, &run, &r.seal(faithful)).upto, 4);
    let o = kc(&state, &["run", "logs", &run.to_string()]);
    assert_eq!(o.stdout, "[build] one\n[build] two\n[build] three\n");
}
