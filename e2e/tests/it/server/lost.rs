//! A claimed run without power control whose agent goes silent ends `error: agent
//! lost` after `serve --lost-after`, with the last lines it sent; an agent that comes
//! back later is refused and recorded, never merged.
use std::time::{Duration, Instant};

use super::*;
use crate::common::{Coordinator, kc};

#[test]
fn a_silent_agent_is_lost_and_a_late_one_is_refused() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let quiet = issue(&state);
    let c = Coordinator::start_with(&state, &["--lost-after", "2s"]);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![
        claim,
        kiln_protocol::Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        log(0, "memtest pass 3 of 8"),
    ]);
    ack(&c.url, &run, &r.seal(f));
    // The agent goes silent; the watch ends the run within a few of its rounds.
    let t0 = Instant::now();
    let show = loop {
        let o = kc(&state, &["run", "show", &run.to_string(), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        if v["outcome"] == "error" {
            break v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never lost: {}",
            o.stdout
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(show["state"], "finished");
    let why = show["power"]["error"].as_str().unwrap_or_default();
    assert!(why.starts_with("agent lost"), "{show}");
    assert!(why.contains("memtest pass 3 of 8"), "{why}");
    // A run nobody claimed is not lost: it is pending.
    let v: serde_json::Value =
        serde_json::from_str(&kc(&state, &["run", "show", &quiet.to_string(), "--json"]).stdout)
            .unwrap();
    assert_eq!(v["state"], "pending");
    // The agent comes back: refused, and the refusal is on record.
    let f = r.frames(vec![log(0, "back again")]);
    let a = post_batch(&c.url, &run, &r.seal(f));
    assert_eq!(a.status, 409, "{}", a.text());
    assert!(a.text().contains("agent lost"), "{}", a.text());
    let logs = kc(&state, &["run", "logs", &run.to_string()]).stdout;
    assert!(!logs.contains("back again"), "{logs}");
    let power = std::fs::read_to_string(state.join("runs").join(run.to_string()).join("power.log"))
        .unwrap();
    assert!(power.contains("late_agent"), "{power}");
}
