//! Held runs on an installed host (`kiln-agent run --hold`): a failed run waits for
//! the coordinator's orders (release, retry, approve) until its `hold_for`; every
//! order and what came of it is in `run show`. The netboot twins (SSH into the held
//! image) are in `netboot.rs`.
use crate::common::*;
use crate::runs::{Fx, s, wait_exit};
use kiln_protocol::{Approval, Command, Event, RunId, SecretKey};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// A plan whose one exec stage passes only once `marker` exists.
fn marker_plan(marker: &Path, hold_for: &str) -> String {
    format!(
        "name = \"hold\"\nhold = \"on_failure\"\nhold_for = \"{hold_for}\"\n\
         [[stage]]\nname = \"check\"\nkind = \"exec\"\n\
         command = [\"sh\", \"-c\", \"test -e {} || {{ echo no marker; exit 1; }}\"]\n",
        marker.display()
    )
}

/// Polls `run show --json` until the run is `held`; returns that status.
fn wait_held(fx: &Fx, run: &str) -> Value {
    let mut last = Value::Null;
    wait_until(Duration::from_secs(60), "the run to be held", || {
        last = fx.show(run);
        last["state"] == "held"
    });
    last
}

/// The seq of the run's last stored frame (the `Held` frame an order is bound to).
fn last_seq(fx: &Fx, run: &str) -> u64 {
    fx.stored_frames(run).last().map_or(0, |f| f.seq)
}

/// What the agent did with orders: `(what, result)` of its `Order` frames.
fn agent_orders(show: &Value) -> Vec<(String, String)> {
    show["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .filter(|o| o["by"] == "agent")
        .map(|o| {
            (
                o["what"].as_str().unwrap().to_string(),
                o["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_held_run_is_retried_in_place_and_passes_with_both_attempts() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let marker = fx.dir.join("fixed");
    let plan = fx.plan("hold.toml", &marker_plan(&marker, "10m"));
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut agent = fx.spawn_agent(s(&ticket), &fx.dir.join("work"), &["--hold"]);
    let shown = kc(&fx.state, &["ticket", "show", s(&ticket)]).stdout;
    assert!(
        shown.contains("hold         on_failure for 10m0s, 0 SSH key(s)"),
        "{shown}"
    );
    let held = wait_held(&fx, &run);
    assert_eq!(held["stages"][0]["outcome"], "failed");
    assert_eq!(held["outcome"], Value::Null, "a held run has not finished");
    let h = &held["hold"];
    assert_eq!(h["outcome"], "failed");
    assert_eq!(
        h["host_key"],
        Value::Null,
        "run --hold starts no SSH server"
    );
    let text = kc(&fx.state, &["run", "show", &run]).stdout;
    assert!(text.contains("state    held (until "), "{text}");
    assert!(text.contains("no SSH server"), "{text}");
    // The condition is fixed, then the stage retried: a second attempt, and the run
    // (hold = on_failure no longer applies) finishes passed.
    std::fs::write(&marker, "").unwrap();
    let o = kc(&fx.state, &["run", "retry", &run, "--stage", "check"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(60)), 0);
    let show = fx.show(&run);
    assert_eq!(
        (&show["state"], &show["outcome"]),
        (&"finished".into(), &"passed".into())
    );
    assert_eq!(show["stages"][0]["outcome"], "passed");
    assert_eq!(show["stages"][0]["attempts"], 2);
    let attempts: Vec<(u32, String)> = fx
        .stored_frames(&run)
        .iter()
        .filter_map(|f| match &f.event {
            Event::StageFinished {
                attempt, outcome, ..
            } => Some((*attempt, outcome.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [(1, "failed".into()), (2, "passed".into())]);
    assert_eq!(
        agent_orders(&show),
        [("retry stage \"check\"".to_string(), "done".to_string())]
    );
    let requested: Vec<&Value> = show["orders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["by"].as_str().unwrap().starts_with("operator "))
        .collect();
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0]["what"], "retry stage \"check\"");
    // A finished run takes no orders.
    let o = kc(&fx.state, &["run", "release", &run]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("is not held"), "{}", o.stderr);
}

#[test]
fn a_held_run_survives_a_coordinator_sigkill_and_is_released_after_the_restart() {
    let fx = Fx::new();
    let mut server = Coordinator::start(&fx.state);
    let plan = fx.plan("hold.toml", &marker_plan(&fx.dir.join("never"), "10m"));
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut agent = fx.spawn_agent(s(&ticket), &fx.dir.join("work"), &["--hold"]);
    let watch = std::process::Command::new(bin("kiln-coordinator"))
        .arg("--state")
        .arg(&fx.state)
        .args(["run", "watch", &run])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run watch");
    wait_held(&fx, &run);
    // The run's page says so too.
    let page = ureq::get(&format!("{}/runs/{run}", server.url))
        .call()
        .expect("run page")
        .into_string()
        .unwrap();
    assert!(
        page.contains("held until") && page.contains("no SSH server"),
        "{page}"
    );
    // An order for a stage the plan does not have is refused by the CLI.
    let o = kc(&fx.state, &["run", "retry", &run, "--stage", "nope"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("no stage \"nope\""), "{}", o.stderr);
    let listen = server.url.trim_start_matches("http://").to_string();
    server.kill();
    let _server = Coordinator::start_at(&fx.state, &listen, &[]);
    assert_eq!(fx.show(&run)["state"], "held");
    let o = kc(&fx.state, &["run", "release", &run]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Released: the run ends with the stages' outcome, the agent exits 1 (failed).
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(60)), 1);
    let show = fx.show(&run);
    assert_eq!(
        (&show["state"], &show["outcome"]),
        (&"finished".into(), &"failed".into())
    );
    assert_eq!(
        agent_orders(&show),
        [("release".to_string(), "done".to_string())]
    );
    let text = kc(&fx.state, &["run", "show", &run]).stdout;
    assert!(text.contains("release by agent: done"), "{text}");
    // `run watch` followed it all: the hold, the order, the end.
    let out = watch.wait_with_output().expect("run watch");
    let out = String::from_utf8_lossy(&out.stdout);
    for want in [
        "== stages done (failed): holding the machine",
        &format!("== run {run} is held until "),
        "login    no SSH server",
        "== order release: done",
        "== run finished: failed",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
}

#[test]
fn a_hold_ends_by_itself_and_without_hold_the_agent_does_not_wait() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let plan = fx.plan("hold.toml", &marker_plan(&fx.dir.join("never"), "2s"));
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut agent = fx.spawn_agent(s(&ticket), &fx.dir.join("work"), &["--hold"]);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(60)), 1);
    let show = fx.show(&run);
    assert_eq!(show["outcome"], "failed");
    assert_eq!(
        agent_orders(&show),
        [("hold ended after 2s".to_string(), "done".to_string())]
    );
    assert!(
        fx.stored_frames(&run)
            .iter()
            .any(|f| matches!(f.event, Event::Held { .. })),
        "the run was held"
    );
    // The same plan without --hold: no Held frame, the run ends at once.
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut agent = fx.spawn_agent(s(&ticket), &fx.dir.join("work2"), &[]);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(60)), 1);
    assert!(
        !fx.stored_frames(&run)
            .iter()
            .any(|f| matches!(f.event, Event::Held { .. }))
    );
}

/// Writes the pending order file as the coordinator does (`postcard((held_seq,
/// Command))`): for orders the CLI would never make.
fn set_order(fx: &Fx, run: &str, held_seq: u64, cmd: &Command) {
    let bytes = postcard::to_allocvec(&(held_seq, cmd)).unwrap();
    std::fs::write(fx.state.join("runs").join(run).join("order"), bytes).unwrap();
}

#[test]
fn approvals_for_another_serial_run_or_key_are_refused_and_recorded() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    // A storage stage whose device does not exist: held by the gate, so the run holds.
    let plan = fx.plan(
        "disk.toml",
        "name = \"disk\"\nhold = \"on_failure\"\n\
         [[stage]]\nname = \"disk\"\nkind = \"storage\"\ndestructive = true\n\
         devices = [\"/dev/kiln-no-such-disk\"]\nduration = \"1s\"\n",
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let id: RunId = run.parse().unwrap();
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut agent = fx.spawn_agent(s(&ticket), &fx.dir.join("work"), &["--hold"]);
    let held = wait_held(&fx, &run);
    assert_eq!(held["stages"][0]["outcome"], "held");
    // Through the CLI: a serial no disk of the stage has.
    let o = kc(
        &fx.state,
        &[
            "run", "approve", &run, "--stage", "disk", "--disk", "SN-OTHER",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let refused = |n: usize| {
        wait_until(Duration::from_secs(30), "the refusal", || {
            let v = fx.show(&run);
            agent_orders(&v).len() == n && v["state"] == "held"
        })
    };
    refused(1);
    // Signed by another key, and for another run (by the right key): written as the
    // coordinator would write an order, each bound to the hold it is sent to.
    let key = kiln_protocol::SecretKey::from_line(
        &std::fs::read_to_string(fx.state.join("key/coordinator.key")).unwrap(),
    )
    .unwrap();
    let stranger = SecretKey::from_seed([9; 32]);
    for (i, a) in [
        Approval::sign(id, 0, "SN-OTHER", &stranger),
        Approval::sign(RunId([1; 16]), 0, "SN-OTHER", &key),
    ]
    .into_iter()
    .enumerate()
    {
        set_order(&fx, &run, last_seq(&fx, &run), &Command::Approve(a));
        refused(2 + i);
    }
    let results: Vec<String> = agent_orders(&fx.show(&run))
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert!(
        results[0].contains("no disk of stage \"disk\" has serial \"SN-OTHER\""),
        "{results:?}"
    );
    assert!(
        results[1].contains("not signed by the coordinator key"),
        "{results:?}"
    );
    assert!(
        results[2].contains(&format!("for run {}", RunId([1; 16]))),
        "{results:?}"
    );
    // Still one attempt: nothing ran again.
    assert_eq!(fx.show(&run)["stages"][0]["attempts"], 1);
    let o = kc(&fx.state, &["run", "release", &run]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(60)), 1);
}

/// SIGTERM to a holding agent ends the hold as its end would: the run finishes with
/// the stages' outcome and says why.
#[test]
fn a_stop_signal_ends_the_hold() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let plan = fx.plan("hold.toml", &marker_plan(&fx.dir.join("never"), "10m"));
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut agent = fx.spawn_agent(s(&ticket), &fx.dir.join("work"), &["--hold"]);
    wait_held(&fx, &run);
    let o = std::process::Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .expect("kill");
    assert!(o.success());
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(60)), 1);
    let show = fx.show(&run);
    assert_eq!(
        (&show["state"], &show["outcome"]),
        (&"finished".into(), &"failed".into())
    );
    assert_eq!(
        agent_orders(&show),
        [(
            "hold ended: agent stopped by SIGTERM".to_string(),
            "done".to_string()
        )]
    );
}
