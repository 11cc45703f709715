//! `import BUNDLE`: whole-bundle checks, idempotence, and the same status as online.
use kiln_protocol::{BUNDLE_MAGIC, Event, Outcome, ResultRecord, Sha256, SignedTicket};
use std::path::Path;

use super::*;
use crate::common::{Coordinator, kc};

/// A bundle's parts, to assemble whole or tampered.
struct Parts {
    ticket: kiln_protocol::SignedTicket,
    batches: Vec<Vec<u8>>,
    blobs: Vec<Vec<u8>>,
}

impl Parts {
    fn bytes(&self) -> Vec<u8> {
        let mut out = BUNDLE_MAGIC.to_vec();
        out.extend(ResultRecord::Ticket(self.ticket.clone()).encode());
        for b in &self.blobs {
            out.extend(ResultRecord::Blob(b.clone()).encode());
        }
        for b in &self.batches {
            out.extend(ResultRecord::Batch(b.clone()).encode());
        }
        out
    }
}

const BLOB: &[u8] = b"junit xml or a core dump";

/// The events of a whole run, with one artifact, split into three batches.
fn run_events(r: &mut Reporter) -> Vec<Vec<kiln_protocol::Frame>> {
    let claim = r.claim();
    let mut events = full_run(Outcome::Failed);
    events.insert(
        4,
        Event::Artifact {
            stage: 0,
            name: "report.xml".into(),
            sha256: Sha256::of(BLOB),
            size: BLOB.len() as u64,
        },
    );
    let mut all = r.frames([vec![claim], events].concat());
    let tail = all.split_off(6);
    let mid = all.split_off(2);
    vec![all, mid, tail]
}

fn parts(state: &Path, run: RunId) -> Parts {
    let t = ticket(
        run,
        "nightly",
        vec![stage("build", &[]), stage("test", &[])],
        now_s(),
    );
    let ticket = SignedTicket::sign(&t, &state_key(state));
    let mut r = Reporter::new(run);
    let batches = run_events(&mut r).into_iter().map(|f| r.seal(f)).collect();
    Parts {
        ticket,
        batches,
        blobs: vec![BLOB.to_vec()],
    }
}

fn import(state: &Path, dir: &Path, name: &str, bytes: &[u8]) -> crate::common::Out {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    kc(state, &["import", p.to_str().unwrap()])
}

/// Every file under `dir` with its bytes, sorted (the `lock` file aside).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "lock") {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn tampered_bundles_are_refused_whole() {
    let (d, state) = keyed_state();
    let run = new_run_id();
    let good = parts(&state, run);
    let before = snapshot(&state);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut p = parts(&state, run);
    let last = p.batches.len() - 1;
    let n = p.batches[last].len();
    p.batches[last][n - 1] ^= 1;
    cases.push(("bad signature on the last batch", p.bytes()));
    let mut p = parts(&state, run);
    p.blobs.clear();
    cases.push(("artifact missing", p.bytes()));
    let mut p = parts(&state, run);
    p.blobs.push(b"stowaway".to_vec());
    cases.push(("blob nobody names", p.bytes()));
    let mut p = parts(&state, run);
    p.batches.remove(1);
    cases.push(("a batch left out (gap)", p.bytes()));
    let mut p = parts(&state, run);
    p.ticket.body[3] ^= 1;
    cases.push(("ticket altered", p.bytes()));
    let mut torn = good.bytes();
    torn.truncate(torn.len() - 5);
    cases.push(("torn tail", torn));
    let mut magic = good.bytes();
    magic[0] = b'X';
    cases.push(("bad magic", magic));
    let mut mixed = parts(&state, run);
    mixed.batches[2] = Reporter::new(run).seal(vec![]);
    cases.push(("a batch by another key", mixed.bytes()));
    for (what, bytes) in &cases {
        let o = import(&state, d.path(), "bad.kres", bytes);
        assert_ne!(o.code, 0, "{what}: accepted");
        assert_eq!(o.stderr.trim().lines().count(), 1, "{what}: {}", o.stderr);
        assert_eq!(snapshot(&state), before, "{what}: the state folder changed");
    }
}

#[test]
fn import_twice_changes_nothing_and_matches_online() {
    let (d, state) = keyed_state();
    let offline = new_run_id();
    let bundle = parts(&state, offline).bytes();
    let o = import(&state, d.path(), "run.kres", &bundle);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let once = snapshot(&state);
    assert!(
        state
            .join("cas")
            .join(Sha256::of(BLOB).to_string())
            .is_file()
    );
    let o = import(&state, d.path(), "run.kres", &bundle);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(snapshot(&state), once, "a second import changed the state");

    // The same frames, sent online to another run, fold to the same status.
    let online = new_run_id();
    let t = ticket(
        online,
        "nightly",
        vec![stage("build", &[]), stage("test", &[])],
        now_s(),
    );
    write_ticket(&state, &t);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(online);
    for f in run_events(&mut r) {
        ack(&c.url, &online, &r.seal(f));
    }
    let show = |run: &RunId| {
        let o = kc(&state, &["report", &run.to_string(), "--format", "json"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let mut v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        strip(&mut v);
        v
    };
    assert_eq!(show(&offline), show(&online));
    assert_eq!(show(&offline)["state"], "finished");
    assert_eq!(show(&offline)["outcome"], "failed");

    let o = kc(
        &state,
        &["report", &offline.to_string(), "--format", "junit"],
    );
    assert!(
        o.stdout.contains("<testcase name=\"build\""),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("<failure message=\"failed: 1 test failed\"")
    );
    assert!(o.stdout.contains("failures=\"1\""));
}

/// A bundle of `batches` (frame lists), sealed by one fresh key, no blobs.
fn crafted(
    state: &Path,
    run: RunId,
    batches: Vec<Vec<kiln_protocol::Frame>>,
    r: &Reporter,
) -> Vec<u8> {
    let t = ticket(
        run,
        "nightly",
        vec![stage("build", &[]), stage("test", &[])],
        now_s(),
    );
    Parts {
        ticket: SignedTicket::sign(&t, &state_key(state)),
        batches: batches.into_iter().map(|f| r.seal(f)).collect(),
        blobs: vec![],
    }
    .bytes()
}

fn hello() -> Event {
    Event::Hello {
        hostname: "node1".into(),
        macs: vec![],
        serial: None,
    }
}

fn frame(seq: u64, event: Event) -> kiln_protocol::Frame {
    kiln_protocol::Frame {
        seq,
        at_ms: 1_700_000_000_000 + seq,
        event,
    }
}

#[test]
fn a_bad_later_batch_stores_nothing_and_a_good_bundle_still_imports() {
    let (d, state) = keyed_state();
    let run = new_run_id();
    let before = snapshot(&state);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let r = Reporter::new(run);
    let started = Event::StageStarted {
        stage: 0,
        attempt: 1,
    };
    cases.push((
        "a later batch with seqs out of order",
        crafted(
            &state,
            run,
            vec![
                vec![frame(1, r.claim()), frame(2, hello())],
                vec![frame(3, started.clone()), frame(2, hello())],
            ],
            &r,
        ),
    ));
    cases.push((
        "a later batch over MAX_BATCH_BYTES",
        crafted(
            &state,
            run,
            vec![
                vec![frame(1, r.claim()), frame(2, hello())],
                vec![frame(
                    3,
                    log(0, &"x".repeat(kiln_protocol::MAX_BATCH_BYTES + 1)),
                )],
            ],
            &r,
        ),
    ));
    cases.push((
        "a later batch that starts at a seq already stored, then skips",
        crafted(
            &state,
            run,
            vec![
                vec![frame(1, r.claim()), frame(2, hello())],
                vec![frame(2, hello()), frame(3, started.clone())],
                vec![frame(5, started.clone())],
            ],
            &r,
        ),
    ));
    cases.push((
        "a later batch naming a stage the plan lacks",
        crafted(
            &state,
            run,
            vec![
                vec![frame(1, r.claim())],
                vec![frame(
                    2,
                    Event::StageStarted {
                        stage: 9,
                        attempt: 1,
                    },
                )],
            ],
            &r,
        ),
    ));
    for (what, bytes) in &cases {
        let o = import(&state, d.path(), "bad.kres", bytes);
        assert_eq!(o.code, 2, "{what}: {}{}", o.stdout, o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "{what}: {}", o.stderr);
        assert!(
            o.stderr.contains("nothing imported"),
            "{what}: {}",
            o.stderr
        );
        assert_eq!(snapshot(&state), before, "{what}: the state folder changed");
    }
    // Nothing was bound, so a good bundle from another agent key imports.
    let good = parts(&state, run).bytes();
    let o = import(&state, d.path(), "good.kres", &good);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let show = kc(&state, &["report", &run.to_string(), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(v["state"], "finished", "{}", show.stdout);
}

/// A bundle's frames are checked against what an earlier import stored, and a
/// later batch's resend against what the bundle's earlier batches hold: every batch
/// here is well formed (consecutive seqs from 1, the same key), so only those
/// comparisons can refuse them.
#[test]
fn a_bundle_that_would_refork_a_stored_run_is_refused_whole() {
    let (d, state) = keyed_state();
    let run = new_run_id();
    let r = Reporter::new(run);
    let first = crafted(
        &state,
        run,
        vec![vec![frame(1, r.claim()), frame(2, hello())]],
        &r,
    );
    let o = import(&state, d.path(), "first.kres", &first);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let once = snapshot(&state);
    // Same key, restarting at seq 1 with another frame 2, then running on.
    let fork = crafted(
        &state,
        run,
        vec![vec![
            frame(1, r.claim()),
            frame(2, log(0, "another history")),
            frame(3, hello()),
            frame(4, hello()),
        ]],
        &r,
    );
    let o = import(&state, d.path(), "fork.kres", &fork);
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(
        o.stderr
            .contains("conflicting resend: seq 2 differs from the stored frame"),
        "{}",
        o.stderr
    );
    assert_eq!(snapshot(&state), once, "a refused bundle changed the run");
    // Within one bundle: batch 3 resends seq 3 of batch 2 with other content.
    let inner = crafted(
        &state,
        run,
        vec![
            vec![frame(1, r.claim()), frame(2, hello())],
            vec![frame(3, hello()), frame(4, hello())],
            vec![
                frame(3, log(1, "not what batch 2 said")),
                frame(4, hello()),
                frame(5, hello()),
            ],
        ],
        &r,
    );
    let o = import(&state, d.path(), "inner.kres", &inner);
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(
        o.stderr
            .contains("batch 3: conflicting resend: seq 3 differs from the stored frame"),
        "{}",
        o.stderr
    );
    assert_eq!(snapshot(&state), once, "a refused bundle changed the run");
    // The same bundle with faithful resends imports, and adds only the new frames.
    let good = crafted(
        &state,
        run,
        vec![
            vec![frame(1, r.claim()), frame(2, hello())],
            vec![frame(3, hello()), frame(4, hello())],
            vec![frame(3, hello()), frame(4, hello()), frame(5, hello())],
        ],
        &r,
    );
    let o = import(&state, d.path(), "good.kres", &good);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value =
        serde_json::from_str(&kc(&state, &["run", "show", &run.to_string(), "--json"]).stdout)
            .expect("json");
    assert_eq!(v["frames"], 5);
}

/// Drops the run id, every clock field (`*_ms`, `*_at`) and the claim record (its
/// source and key differ between an import and an online run).
fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|k, _| {
                !["run", "claim", "claim_events"].contains(&k.as_str())
                    && !k.ends_with("_ms")
                    && !k.ends_with("_at")
            });
            m.values_mut().for_each(strip);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

#[test]
fn an_imported_failed_run_queues_its_notification() {
    let (d, state) = keyed_state();
    let o = kc(
        &state,
        &[
            "notify",
            "add",
            "ops",
            "--webhook",
            "http://127.0.0.1:9/",
            "--on",
            "failed",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = new_run_id();
    let o = import(&state, d.path(), "run.kres", &parts(&state, run).bytes());
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = kc(&state, &["notify", "status", "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let s: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    let q = s["queued"].as_array().expect("queued");
    assert_eq!(q.len(), 1, "{s}");
    assert_eq!(q[0]["run"], run.to_string());
    assert_eq!(q[0]["event"], "failed");
    assert_eq!(q[0]["host"], "node1");
}
