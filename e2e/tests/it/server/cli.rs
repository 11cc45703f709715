//! `runs`, `run watch`, `run show` and `report` read the state folder the server writes.
use kiln_protocol::{Event, Outcome};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::common::{Coordinator, bin, kc};

#[test]
fn watch_follows_a_live_run_and_exits_like_the_agent() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let mut watch = Command::new(bin("kiln-coordinator"))
        .arg("--state")
        .arg(&state)
        .args(["run", "watch", &run.to_string()[..10]])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run watch");
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("watch output").expect("utf-8");
    assert!(next().contains("pending"));

    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![
        claim,
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        log(0, "first line"),
    ]);
    ack(&c.url, &run, &r.seal(f));
    assert!(next().contains("claimed by agent"));
    assert!(next().contains("build: attempt 1 started"));
    assert_eq!(next(), "[build] first line");
    // The rest of the run, in two batches; the watcher prints each line once.
    let mut rest = r.frames(full_run(Outcome::Failed)[2..].to_vec());
    let tail = rest.split_off(3);
    ack(&c.url, &run, &r.seal(rest));
    ack(&c.url, &run, &r.seal(tail));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = watch.try_wait().unwrap() {
            for l in lines.by_ref() {
                seen.push(l.unwrap());
            }
            assert_eq!(st.code(), Some(1), "a failed run exits 1: {seen:?}");
            break;
        }
        assert!(Instant::now() < deadline, "watch did not exit: {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen,
        [
            "[build] done",
            "== build: passed after 1.5s, exit 0",
            "== test: attempt 1 started",
            "[test] running tests",
            "== test: failed after 1.5s, exit 1: 1 test failed",
            "== run finished: failed",
        ]
    );

    let o = kc(&state, &["runs"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains(&run.to_string()) && o.stdout.contains("failed"));
    let o = kc(&state, &["runs", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v[0]["state"], "finished");
    assert_eq!(v[0]["stages_done"], 2);
    let o = kc(&state, &["run", "show", &run.to_string()[..8]]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("1 test failed"), "{}", o.stdout);
    assert!(o.stdout.contains("build.seconds = 1.5 s"), "{}", o.stdout);
    let out = state.join("report.html");
    let o = kc(
        &state,
        &[
            "report",
            &run.to_string(),
            "--format",
            "html",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("running tests")
    );
    let o = kc(&state, &["report", &run.to_string(), "--format", "pdf"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("unknown report format"));
    let o = kc(&state, &["run", "show", "1234"]);
    assert_ne!(o.code, 0, "a prefix under 8 digits is refused");
}
