//! An operator's abort: what the agent sends until its RunFinished is kept, and a run
//! whose agent never comes back for the abort ends `aborted`, not stale for ever.
use kiln_protocol::{Command, Event, Outcome};
use std::time::{Duration, SystemTime};

use super::*;
use crate::common::{Coordinator, kc};

fn show(state: &Path, run: &RunId) -> serde_json::Value {
    let o = kc(state, &["run", "show", &run.to_string(), "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    serde_json::from_str(&o.stdout).expect("json")
}

fn abort(state: &Path, run: &RunId) {
    let o = kc(
        state,
        &["run", "abort", &run.to_string(), "--reason", "stop it"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn frames_sent_after_the_abort_request_are_all_stored() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![
        claim,
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        log(0, "before"),
    ]);
    assert_eq!(ack(&c.url, &run, &r.seal(f)).upto, 3);
    abort(&state, &run);
    let stop = Command::Abort {
        reason: "stop it".into(),
    };
    // The agent had these in flight, or writes them while it stops its stage.
    let f = r.frames(vec![log(0, "in flight 1"), log(0, "in flight 2")]);
    let a = ack(&c.url, &run, &r.seal(f));
    assert_eq!((a.upto, a.command), (5, stop.clone()));
    let f = r.frames(vec![
        log(0, "stopping"),
        finished(0, Outcome::Aborted, "aborted: stop it"),
    ]);
    let a = ack(&c.url, &run, &r.seal(f));
    assert_eq!((a.upto, a.command), (7, stop));
    let f = r.frames(vec![Event::RunFinished {
        outcome: Outcome::Aborted,
    }]);
    let a = ack(&c.url, &run, &r.seal(f));
    assert_eq!((a.upto, a.command), (8, Command::Continue));

    let o = kc(&state, &["run", "logs", &run.to_string()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "[build] before\n[build] in flight 1\n[build] in flight 2\n[build] stopping\n"
    );
    let s = show(&state, &run);
    assert_eq!(s["frames"], 8, "{s}");
    assert_eq!(s["state"], "aborted", "{s}");
    assert_eq!(s["outcome"], "aborted", "{s}");
    assert_eq!(s["stages"][0]["outcome"], "aborted", "{s}");
}

/// Sets a file's mtime `ago` in the past.
fn backdate(path: &Path, ago: Duration) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to backdate");
    f.set_modified(SystemTime::now() - ago).expect("set mtime");
}

#[test]
fn an_aborted_run_whose_agent_never_returns_ends_aborted_after_the_grace() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![
        claim,
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    ]);
    ack(&c.url, &run, &r.seal(f));
    abort(&state, &run);
    // Just requested: the agent gets it with its next batch.
    let s = show(&state, &run);
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["abort_requested"], "stop it", "{s}");

    // The agent never came back: its last batch and the request are both older
    // than the grace (the stale threshold, a minute). Written as the coordinator
    // writes them, only earlier.
    let dir = state.join("runs").join(run.to_string());
    let long_ago = Duration::from_millis(kiln_protocol::STALE_AFTER_MS + 60_000);
    let seen = now_ms() - long_ago.as_millis() as u64;
    std::fs::write(dir.join("seen"), seen.to_string()).expect("write seen");
    backdate(&dir.join("abort"), long_ago);

    let s = show(&state, &run);
    assert_eq!(s["state"], "aborted", "{s}");
    assert_eq!(s["exit_status"], 1, "{s}");
    assert_eq!(s["outcome"], serde_json::Value::Null, "{s}");
    assert_eq!(s["stages"][0]["outcome"], "lost", "{s}");
    let api: serde_json::Value =
        serde_json::from_slice(&get(&c.url, &format!("/v1/runs/{run}")).body).expect("json");
    assert_eq!(api["state"], "aborted", "{api}");
    // `run watch` ends with it instead of waiting for an agent that is gone.
    let o = kc(&state, &["run", "watch", &run.to_string()]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("was aborted"), "{}", o.stdout);

    // Only the abort is old: the agent's last batch is recent, so it has its grace.
    let (_d2, state2) = keyed_state();
    let run2 = issue(&state2);
    let c2 = Coordinator::start(&state2);
    let mut r2 = Reporter::new(run2);
    let claim = r2.claim();
    let f = r2.frames(vec![claim]);
    ack(&c2.url, &run2, &r2.seal(f));
    abort(&state2, &run2);
    backdate(
        &state2.join("runs").join(run2.to_string()).join("abort"),
        long_ago,
    );
    assert_eq!(show(&state2, &run2)["state"], "claimed");
}
