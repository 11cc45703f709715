//! Retention (`gc`) on a folder a server is serving and ingesting: old finished runs
//! and the CAS objects only they named go; a live run, a pending ticket's bundle and
//! a run still within its age stay whole; `--dry-run` changes nothing.
use kiln_protocol::{Event, Outcome, Sha256, TestBundle};
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::common::{Coordinator, kc};

/// Every file under `dir` with its bytes (sorted).
fn hashes(dir: &Path) -> Vec<(String, Sha256)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    Sha256::of(&std::fs::read(&p).unwrap()),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Claims `run`, uploads one artifact (returns its digest) and finishes it.
fn finished_with_artifact(url: &str, run: RunId, outcome: Outcome) -> Sha256 {
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    ack(url, &run, &r.seal(f));
    let data = format!("artifact of {run}").into_bytes();
    let sha = Sha256::of(&data);
    let auth = kiln_protocol::UploadAuth {
        run,
        sha256: sha,
        len: data.len() as u64,
        at_ms: now_ms(),
    }
    .header(&r.key);
    let put = call(
        ureq::put(&format!("{url}/v1/runs/{run}/artifacts/{sha}")).set("Kiln-Upload-Auth", &auth),
        Some(&data),
    );
    assert_eq!(put.status, 201, "{}", put.text());
    let mut events = vec![Event::Artifact {
        stage: 0,
        name: "out.txt".into(),
        sha256: sha,
        size: data.len() as u64,
    }];
    events.extend(full_run(outcome));
    let f = r.frames(events);
    ack(url, &run, &r.seal(f));
    sha
}

#[test]
fn gc_removes_old_runs_and_their_objects_and_keeps_what_lives() {
    let (_d, state) = keyed_state();
    let now = now_s();
    // A pending ticket whose stage names a test bundle in the CAS.
    let bundle = b"a test folder, as a tar".to_vec();
    let bsha = Sha256::of(&bundle);
    std::fs::create_dir_all(state.join("cas")).unwrap();
    std::fs::write(state.join("cas").join(bsha.to_string()), &bundle).unwrap();
    let mut with_tests = stage("a", &[]);
    with_tests.tests = Some(TestBundle {
        sha256: bsha,
        size: bundle.len() as u64,
        tree: bsha,
    });
    let pending = ticket(new_run_id(), "p", vec![with_tests], now);
    write_ticket(&state, &pending);
    // A ticket nobody claimed, expired two hours ago (past --keep-failed 1h), and one
    // that expired a minute ago (within it).
    let mut expired = ticket(new_run_id(), "p", vec![stage("a", &[])], now - 9000);
    expired.not_after = now - 7200;
    write_ticket(&state, &expired);
    let mut recent = ticket(new_run_id(), "p", vec![stage("a", &[])], now - 120);
    recent.not_after = now - 60;
    write_ticket(&state, &recent);
    // An object nothing names.
    let stray = b"nobody names me".to_vec();
    let ssha = Sha256::of(&stray);
    std::fs::write(state.join("cas").join(ssha.to_string()), &stray).unwrap();

    let c = Coordinator::start(&state);
    let two = || vec![stage("build", &[]), stage("test", &[])];
    let passed = ticket(new_run_id(), "p", two(), now - 30);
    write_ticket(&state, &passed);
    let failed = ticket(new_run_id(), "p", two(), now - 20);
    write_ticket(&state, &failed);
    let live = ticket(new_run_id(), "p", two(), now - 10);
    write_ticket(&state, &live);
    let passed_sha = finished_with_artifact(&c.url, passed.run, Outcome::Passed);
    let failed_sha = finished_with_artifact(&c.url, failed.run, Outcome::Failed);

    let gc = |extra: &[&str]| {
        let mut args = vec![
            "gc",
            "--keep",
            "0s",
            "--keep-failed",
            "1h",
            "--cas-min-age",
            "0s",
        ];
        args.extend_from_slice(extra);
        let o = kc(&state, &args);
        assert_eq!(o.code, 0, "gc: {}", o.stderr);
        o.stdout
    };
    // A dry run names what would go and changes nothing.
    let before = hashes(&state);
    let out = gc(&["--dry-run"]);
    assert!(
        out.contains(&format!("would remove run {}", passed.run)),
        "{out}"
    );
    assert!(
        out.contains(&format!("would remove run {}", expired.run)),
        "{out}"
    );
    for kept in [&failed, &recent, &pending, &live] {
        assert!(!out.contains(&kept.run.to_string()), "{out}");
    }
    assert!(out.contains("would remove 2 runs"), "{out}");
    assert!(out.contains("and 2 CAS objects"), "{out}");
    assert_eq!(hashes(&state), before, "a dry run changed the state folder");

    // The real thing, while the live run's agent keeps sending.
    let mut r = Reporter::new(live.run);
    let claim = r.claim();
    let f = r.frames(vec![
        claim,
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    ]);
    ack(&c.url, &live.run, &r.seal(f));
    let stop = AtomicBool::new(false);
    let sent = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) || n < 20 {
                let f = r.frames(vec![log(0, &format!("line {n}"))]);
                ack(&c.url, &live.run, &r.seal(f));
                n += 1;
            }
            n
        });
        let out = gc(&[]);
        let again = gc(&[]);
        stop.store(true, Ordering::Release);
        assert!(
            out.contains(&format!("removed run {}", passed.run)),
            "{out}"
        );
        assert!(
            out.contains(&format!("removed run {}", expired.run)),
            "{out}"
        );
        assert!(out.contains("removed 2 runs"), "{out}");
        assert!(out.contains("and 2 CAS objects"), "{out}");
        assert!(again.contains("removed 0 runs"), "{again}");
        sender.join().unwrap()
    });
    let cas = |sha: &Sha256| state.join("cas").join(sha.to_string()).is_file();
    assert!(!state.join("runs").join(passed.run.to_string()).exists());
    assert!(!cas(&passed_sha), "the removed run's artifact");
    assert!(!cas(&ssha), "the stray object");
    assert!(
        cas(&failed_sha),
        "the failed run (kept 1h) keeps its artifact"
    );
    assert!(cas(&bsha), "the pending ticket's bundle");
    // The live run is whole: every line once, in order.
    let o = kc(
        &state,
        &["run", "logs", &live.run.to_string(), "--stage", "build"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let want: Vec<String> = (0..sent).map(|n| format!("line {n}")).collect();
    assert_eq!(o.stdout.lines().collect::<Vec<_>>(), want);
    // The running server saw the removal at once.
    assert_eq!(get(&c.url, &format!("/v1/runs/{}", passed.run)).status, 404);
    let list: serde_json::Value = serde_json::from_slice(&get(&c.url, "/v1/runs").body).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&passed.run.to_string().as_str()), "{ids:?}");
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(state.join("runs").join(recent.run.to_string()).is_dir());
    assert_eq!(
        get(&c.url, &format!("/v1/hosts/{MAC}/ticket")).header("Kiln-Run"),
        Some(pending.run.to_string().as_str())
    );
}
