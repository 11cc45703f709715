//! Claims made loud: every claim recorded with its source address and key, a second
//! claimant refused and the run `contested` until an operator looks, the
//! neighbour-table check (against a fake table), and enrolled hosts whose runs only
//! their host key may claim — online, offline, and refused without the key.
use kiln_protocol::{BUNDLE_MAGIC, Event, Outcome, ResultRecord, SecretKey, SignedTicket};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use crate::runs::{Fx, s, wait_exit};
use crate::server::{
    MAC, Reporter, ack, full_run, get, issue, keyed_state, new_run_id, now_s, post_batch, seed,
    stage, ticket, write_ticket,
};

fn show_json(state: &Path, run: &str) -> Value {
    let o = kc(state, &["run", "show", run, "--json"]);
    assert_eq!(o.code, 0, "run show failed: {}", o.stderr);
    serde_json::from_str(&o.stdout).expect("run show --json is JSON")
}

fn show_text(state: &Path, run: &str) -> String {
    let o = kc(state, &["run", "show", run]);
    assert_eq!(o.code, 0, "run show failed: {}", o.stderr);
    o.stdout
}

/// The claim batch (seq 1) of `r`.
fn claim_batch(r: &mut Reporter) -> Vec<u8> {
    let claim = r.claim();
    let frames = r.frames(vec![claim]);
    r.seal(frames)
}

#[test]
fn a_claim_is_recorded_with_its_source_address_and_key_fingerprint() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let id = run.to_string();
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(run);
    ack(&c.url, &run, &claim_batch(&mut r));
    let fp = r.key.public().fingerprint();

    let v = show_json(&state, &id);
    assert_eq!(v["claim"]["fingerprint"], fp.as_str(), "{v}");
    let source = v["claim"]["source"].as_str().expect("a source address");
    assert!(source.starts_with("127.0.0.1:"), "{source}");
    assert_eq!(v["contested"], false);
    // The same record in the API, the text and the page.
    let api: Value = serde_json::from_slice(&get(&c.url, &format!("/v1/runs/{id}")).body).unwrap();
    assert_eq!(api["claim"], v["claim"]);
    let text = show_text(&state, &id);
    assert!(
        text.contains(&format!("claim    from {source}, key {fp}")),
        "{text}"
    );
    let page = get(&c.url, &format!("/runs/{id}")).text();
    assert!(page.contains(&fp) && page.contains(source), "{page}");
}

#[test]
fn a_second_claimant_is_refused_recorded_and_the_run_is_contested_until_acknowledged() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let id = run.to_string();
    let c = Coordinator::start(&state);
    let mut first = Reporter::new(run);
    ack(&c.url, &run, &claim_batch(&mut first));

    let mut second = Reporter::new(run);
    let a = post_batch(&c.url, &run, &claim_batch(&mut second));
    assert_eq!(a.status, 409, "{}", a.text());
    let intruder = second.key.public().fingerprint();

    let v = show_json(&state, &id);
    assert_eq!(v["contested"], true, "{v}");
    assert_eq!(v["claim"]["fingerprint"], first.key.public().fingerprint());
    let ev = &v["claim_events"][1];
    assert_eq!(ev["event"], "contested", "{v}");
    assert_eq!(ev["fingerprint"], intruder.as_str());
    assert!(ev["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(ev["at_ms"].as_u64().unwrap() > 0);
    let text = show_text(&state, &id);
    assert!(text.contains("state    claimed,contested"), "{text}");
    assert!(
        text.contains("CONTESTED") && text.contains("run ack-contest"),
        "{text}"
    );
    assert!(text.contains("contested from 127.0.0.1:"), "{text}");
    assert!(text.contains(&intruder), "{text}");
    // The listing, the API listing, the index and the page say so too.
    let runs = kc(&state, &["runs"]);
    assert!(runs.stdout.contains("claimed,contested"), "{}", runs.stdout);
    let list: Value = serde_json::from_slice(&get(&c.url, "/v1/runs").body).unwrap();
    assert_eq!(list[0]["contested"], true);
    assert!(get(&c.url, "/").text().contains("contested"));
    assert!(
        get(&c.url, &format!("/runs/{id}"))
            .text()
            .contains(&intruder)
    );

    // The first agent carries on.
    let more = first.frames(vec![Event::StageStarted {
        stage: 0,
        attempt: 1,
    }]);
    assert_eq!(ack(&c.url, &run, &first.seal(more)).upto, 2);

    // The operator looks and acknowledges: the flag goes, the record stays.
    let o = kc(&state, &["run", "ack-contest", &id[..8]]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("1 contested claim(s) acknowledged"),
        "{}",
        o.stdout
    );
    let v = show_json(&state, &id);
    assert_eq!(v["contested"], false, "{v}");
    let kinds: Vec<&str> = v["claim_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["claim", "contested", "resolved"]);
    let text = show_text(&state, &id);
    assert!(
        text.contains("state    running\n") && !text.contains("CONTESTED"),
        "{text}"
    );
    let o = kc(&state, &["run", "ack-contest", &id]);
    assert_ne!(o.code, 0, "nothing to acknowledge");
    assert!(o.stderr.contains("not contested"), "{}", o.stderr);

    // Another claimant later raises the flag again.
    let mut third = Reporter::new(run);
    assert_eq!(
        post_batch(&c.url, &run, &claim_batch(&mut third)).status,
        409
    );
    assert_eq!(show_json(&state, &id)["contested"], true);
}

/// A fake `/proc/net/arp` in the kernel's format: `127.0.0.1` at `mac`.
fn fake_arp(path: &Path, mac: &str) {
    std::fs::write(
        path,
        format!(
            "IP address       HW type     Flags       HW address            Mask     Device\n\
             127.0.0.1        0x1         0x2         {mac}     *        lo\n"
        ),
    )
    .unwrap();
}

#[test]
fn the_neighbour_table_check_refuses_a_claim_from_a_foreign_mac_unless_off() {
    let (d, state) = keyed_state();
    let fake = d.path().join("fake-proc-net-arp");
    let foreign = "02:00:00:00:00:0b";
    fake_arp(&fake, foreign);
    let c = Coordinator::start_with(&state, &["--neigh-table", s(&fake)]);
    let run = issue(&state);
    let id = run.to_string();
    let mut r = Reporter::new(run);
    let claim = claim_batch(&mut r);
    let a = post_batch(&c.url, &run, &claim);
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(
        a.text().contains("neighbour table") && a.text().contains(foreign),
        "{}",
        a.text()
    );
    let v = show_json(&state, &id);
    assert_eq!(v["state"], "pending", "{v}");
    assert_eq!(v["claim"], Value::Null);
    assert_eq!(v["claim_events"][0]["event"], "refused", "{v}");

    // The table maps the source to the ticket's MAC: the same claim passes.
    fake_arp(&fake, MAC);
    assert_eq!(ack(&c.url, &run, &claim).upto, 1);
    drop(c);

    // `--claim-check off` does not read the table.
    fake_arp(&fake, foreign);
    let c = Coordinator::start_with(&state, &["--claim-check", "off", "--neigh-table", s(&fake)]);
    let run = issue(&state);
    let mut r = Reporter::new(run);
    assert_eq!(ack(&c.url, &run, &claim_batch(&mut r)).upto, 1);
}

/// A bundle: the ticket, then each batch.
fn bundle(t: &SignedTicket, batches: &[Vec<u8>]) -> Vec<u8> {
    let mut out = BUNDLE_MAGIC.to_vec();
    out.extend(ResultRecord::Ticket(t.clone()).encode());
    for b in batches {
        out.extend(ResultRecord::Batch(b.clone()).encode());
    }
    out
}

#[test]
fn an_enrolled_run_takes_claims_and_bundles_only_from_its_host_key() {
    let (d, state) = keyed_state();
    let host_key = SecretKey::from_seed(seed());
    let enrolled = |run| {
        let mut t = ticket(
            run,
            "nightly",
            vec![stage("build", &[]), stage("test", &[])],
            now_s(),
        );
        t.host.agent_key = Some(host_key.public());
        write_ticket(&state, &t)
    };
    let run = new_run_id();
    enrolled(run);
    let c = Coordinator::start(&state);
    let mut stranger = Reporter::new(run);
    let a = post_batch(&c.url, &run, &claim_batch(&mut stranger));
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.text().contains("enrolled host"), "{}", a.text());
    let v = show_json(&state, &run.to_string());
    assert_eq!(v["state"], "pending");
    assert_eq!(v["enrolled_key"], host_key.public().fingerprint());
    assert_eq!(v["claim_events"][0]["event"], "refused");

    let mut r = Reporter {
        run,
        key: host_key.clone(),
        next: 1,
    };
    ack(&c.url, &run, &claim_batch(&mut r));
    let rest = r.frames(full_run(Outcome::Passed));
    ack(&c.url, &run, &r.seal(rest));
    let v = show_json(&state, &run.to_string());
    assert_eq!(v["state"], "finished");
    assert_eq!(v["claim"]["fingerprint"], host_key.public().fingerprint());

    // Offline: a bundle claimed by another key is refused whole; the host key's is taken.
    let run = new_run_id();
    let st = enrolled(run);
    std::fs::remove_dir_all(state.join("runs").join(run.to_string())).unwrap();
    let mut stranger = Reporter::new(run);
    let mut frames = vec![claim_batch(&mut stranger)];
    let rest = stranger.frames(full_run(Outcome::Passed));
    frames.push(stranger.seal(rest));
    let p = d.path().join("stranger.kres");
    std::fs::write(&p, bundle(&st, &frames)).unwrap();
    let o = kc(&state, &["import", s(&p)]);
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(o.stderr.contains("enrolled host"), "{}", o.stderr);
    assert!(
        !state
            .join("runs")
            .join(run.to_string())
            .join("events.log")
            .exists()
    );

    let mut r = Reporter {
        run,
        key: host_key.clone(),
        next: 1,
    };
    let mut frames = vec![claim_batch(&mut r)];
    let rest = r.frames(full_run(Outcome::Passed));
    frames.push(r.seal(rest));
    std::fs::write(&p, bundle(&st, &frames)).unwrap();
    let o = kc(&state, &["import", s(&p)]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v = show_json(&state, &run.to_string());
    assert_eq!(v["claim"]["source"], "import", "{v}");
    assert_eq!(v["claim"]["fingerprint"], host_key.public().fingerprint());
}

#[test]
fn an_enrolled_host_runs_with_its_key_online_and_offline_and_never_without_it() {
    let fx = Fx::new();
    let key = fx.dir.join("var/lib/kiln/agent.key");
    let o = agent(&["enroll", "--key", s(&key)]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let line = o.stdout.trim().to_string();
    assert!(line.starts_with("kiln-ed25519 "), "{line}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // A second enroll keeps the key and prints the same line.
    let again = agent(&["enroll", "--key", s(&key)]);
    assert_eq!((again.code, again.stdout.trim()), (0, line.as_str()));
    let fp = kiln_protocol::PublicKey::from_line(&line)
        .unwrap()
        .fingerprint();

    let o = kc(&fx.state, &["host", "add", "here", "--agent-key", &line]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(kc(&fx.state, &["host", "list"]).stdout.contains(&fp));
    let server = Coordinator::start(&fx.state);
    let plan = fx.plan(
        "p.toml",
        "name = \"enrolled\"\n[[stage]]\nname = \"ok\"\nkind = \"exec\"\ncommand = [\"true\"]\n",
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let t = fx.state.join("runs").join(&run).join("ticket.kiln");
    let shown = kc(&fx.state, &["ticket", "show", s(&t)]);
    assert!(
        shown.stdout.contains(&format!("enrolled agent key {fp}")),
        "{}",
        shown.stdout
    );

    // Without the key (missing, or another one): exit 2, one line, nothing claimed.
    let other = fx.dir.join("other.key");
    assert_eq!(agent(&["enroll", "--key", s(&other)]).code, 0);
    for k in [fx.dir.join("missing.key"), other] {
        let o = agent(&[
            "run",
            "--ticket",
            s(&t),
            "--trust",
            s(&fx.trust()),
            "--work",
            s(&fx.dir.join("work-refused")),
            "--agent-key",
            s(&k),
        ]);
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
        assert!(
            o.stderr.contains("does not hold") && o.stderr.contains(&fp),
            "{}",
            o.stderr
        );
        assert_eq!(show_json(&fx.state, &run)["state"], "pending");
        assert!(
            !fx.dir.join("work-refused").exists(),
            "a refused ticket made a work folder"
        );
    }

    // With its key the run passes, claimed by that key.
    let mut a = fx.spawn_agent(
        s(&t),
        &fx.dir.join("work-online"),
        &["--agent-key", s(&key)],
    );
    assert_eq!(wait_exit(&mut a, Duration::from_secs(120)), 0);
    let v = show_json(&fx.state, &run);
    assert_eq!(
        (v["state"].as_str(), v["outcome"].as_str()),
        (Some("finished"), Some("passed"))
    );
    assert_eq!(v["claim"]["fingerprint"], fp.as_str());
    assert_eq!(v["enrolled_key"], fp.as_str());

    // Offline: the bundle is signed by the host key and imports.
    let ticket = fx.dir.join("offline.kiln");
    let offline = fx.issue(&plan, None, Some(&ticket));
    let out = fx.dir.join("result.kiln");
    let mut a = fx.spawn_agent(
        s(&ticket),
        &fx.dir.join("work-offline"),
        &["--out", s(&out), "--agent-key", s(&key)],
    );
    assert_eq!(wait_exit(&mut a, Duration::from_secs(120)), 0);
    let o = kc(&fx.state, &["import", s(&out)]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v = show_json(&fx.state, &offline);
    assert_eq!(v["outcome"], "passed");
    assert_eq!(v["claim"]["source"], "import");
    assert_eq!(v["claim"]["fingerprint"], fp.as_str());
}
