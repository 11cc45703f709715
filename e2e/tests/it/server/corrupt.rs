//! One damaged record in a run's events.log: the run stays listed as `corrupt`, its
//! readable part is shown, every command and page names the same record by the same
//! byte offset and index, and nothing more is appended to it.
use kiln_protocol::{Event, Outcome, RunId};
use serde_json::Value;
use std::path::Path;

use super::*;
use crate::common::{Coordinator, kc};

fn events_log(state: &Path, run: &RunId) -> std::path::PathBuf {
    state.join("runs").join(run.to_string()).join("events.log")
}

/// Damages one byte in the middle of events.log: the terminator of the middle record,
/// so it runs into the next one. Returns (record index, byte offset) of that record.
fn corrupt_middle(path: &Path) -> (u64, u64) {
    let mut bytes = std::fs::read(path).expect("events.log");
    let ends: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] == 0).collect();
    assert!(ends.len() >= 4, "too few records: {}", ends.len());
    let m = ends.len() / 2;
    bytes[ends[m]] = 1;
    std::fs::write(path, &bytes).expect("write events.log");
    (m as u64, ends[m - 1] as u64 + 1)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn a_corrupt_record_keeps_the_run_listed_with_one_offset_everywhere() {
    let (_d, state) = keyed_state();
    let (good, bad, live) = (issue(&state), issue(&state), issue(&state));
    let mut r_live = {
        let c = Coordinator::start(&state);
        for run in [good, bad] {
            let mut r = Reporter::new(run);
            let claim = r.claim();
            let mut f = r.frames(vec![claim]);
            f.extend(r.frames(full_run(Outcome::Passed)));
            ack(&c.url, &run, &r.seal(f));
        }
        let mut r = Reporter::new(live);
        let claim = r.claim();
        let f = r.frames(vec![
            claim,
            Event::StageStarted {
                stage: 0,
                attempt: 1,
            },
            log(0, "one"),
            log(0, "two"),
            log(0, "three"),
        ]);
        ack(&c.url, &live, &r.seal(f));
        r
    };
    let (record, offset) = corrupt_middle(&events_log(&state, &bad));
    let (live_record, live_offset) = corrupt_middle(&events_log(&state, &live));
    let at = format!("record {record} at byte {offset}");
    let bad_s = bad.to_string();

    // `runs`: every run listed, the bad one as corrupt with its record.
    let o = kc(&state, &["runs"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    for run in [good, bad, live] {
        assert!(
            o.stdout.contains(&run.to_string()),
            "{run} missing:\n{}",
            o.stdout
        );
    }
    let line = o.stdout.lines().find(|l| l.starts_with(&bad_s)).unwrap();
    assert!(line.contains("corrupt"), "{}", o.stdout);
    assert!(o.stdout.contains(&at), "{}", o.stdout);
    let list = json(&kc(&state, &["runs", "--json"]).stdout);
    let entry = |v: &Value, run: &RunId| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|e| e["run"] == run.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("{run} not listed: {v}"))
    };
    assert_eq!(entry(&list, &good)["state"], "finished");
    let e = entry(&list, &bad);
    assert_eq!(e["state"], "corrupt");
    assert_eq!(
        (
            e["corrupt"]["record"].as_u64(),
            e["corrupt"]["offset"].as_u64()
        ),
        (Some(record), Some(offset))
    );

    // `run show`: the readable part (stage build's measurement) and the record.
    let o = kc(&state, &["run", "show", &bad_s]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("state    corrupt"), "{}", o.stdout);
    assert!(o.stdout.contains(&at), "{}", o.stdout);
    assert!(o.stdout.contains("build.seconds = 1.5 s"), "{}", o.stdout);
    let v = json(&kc(&state, &["run", "show", &bad_s, "--json"]).stdout);
    assert_eq!(
        (
            v["corrupt"]["record"].as_u64(),
            v["corrupt"]["offset"].as_u64()
        ),
        (Some(record), Some(offset))
    );
    assert_eq!(v["state"], "corrupt");

    // `run logs`: the readable lines, then the record, and a failing exit status.
    let o = kc(&state, &["run", "logs", &bad_s]);
    assert_eq!(o.code, 2, "{o:?}");
    assert_eq!(o.stdout, "[build] compiling\n[build] done\n");
    assert!(o.stderr.contains(&at), "{}", o.stderr);

    // The server: the index and the run's page answer 200 and say the same.
    let c = Coordinator::start(&state);
    let a = get(&c.url, "/");
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.text().contains(&format!("/runs/{bad}")), "{}", a.text());
    assert!(a.text().contains(&at), "{}", a.text());
    let a = get(&c.url, &format!("/runs/{bad}"));
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.text().contains(&at), "{}", a.text());
    assert!(a.text().contains("compiling") && a.text().contains("build.seconds"));
    let a = get(&c.url, &format!("/v1/runs/{bad}"));
    assert_eq!(a.status, 200, "{}", a.text());
    let v = json(&a.text());
    assert_eq!(
        (
            v["corrupt"]["record"].as_u64(),
            v["corrupt"]["offset"].as_u64()
        ),
        (Some(record), Some(offset))
    );
    let e = entry(&json(&get(&c.url, "/v1/runs").text()), &bad);
    assert_eq!(e["corrupt"]["offset"].as_u64(), Some(offset));

    // Ingest into a corrupt run is refused with the record named; nothing appended.
    let path = events_log(&state, &live);
    let before = std::fs::read(&path).unwrap();
    let f = r_live.frames(vec![log(0, "four")]);
    let a = post_batch(&c.url, &live, &r_live.seal(f));
    assert!(a.status >= 400, "{}: {}", a.status, a.text());
    assert!(
        a.text()
            .contains(&format!("record {live_record} at byte {live_offset}")),
        "{}",
        a.text()
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing appended");
    assert_eq!(get(&c.url, "/").status, 200, "the server keeps serving");
}

#[test]
fn a_serving_coordinator_sees_damage_and_repair_of_a_run_it_already_listed() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let mut f = r.frames(vec![claim]);
    f.extend(r.frames(full_run(Outcome::Passed)));
    ack(&c.url, &run, &r.seal(f));
    let status = || json(&get(&c.url, &format!("/v1/runs/{run}")).text());
    assert_eq!(status()["state"], "finished");
    assert!(status()["corrupt"].is_null());

    // Damaged in place (same length): the cached fold is redone and finds it.
    let path = events_log(&state, &run);
    let (record, offset) = corrupt_middle(&path);
    // The fold cache notices a change by (length, mtime); the kernel's mtime clock
    // ticks coarsely, so a write within the same tick as the last append is dated
    // apart by hand (real damage does not follow an append within milliseconds).
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    f.set_modified(mtime + std::time::Duration::from_secs(1))
        .unwrap();
    drop(f);
    let v = status();
    assert_eq!(v["state"], "corrupt", "{v}");
    assert_eq!(
        (
            v["corrupt"]["record"].as_u64(),
            v["corrupt"]["offset"].as_u64()
        ),
        (Some(record), Some(offset))
    );
    let page = get(&c.url, "/").text();
    assert!(
        page.contains(&format!("record {record} at byte {offset}")),
        "{page}"
    );

    // The operator's repair: cut the log at the named offset. The run is readable
    // again (its first records: claimed and running, not corrupt).
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(offset).unwrap();
    drop(f);
    let v = status();
    assert!(v["corrupt"].is_null(), "{v}");
    assert_eq!(v["frames"].as_u64(), Some(record), "{v}");
    assert!(
        ["running", "stale"].contains(&v["state"].as_str().unwrap_or("")),
        "{v}"
    );
}
