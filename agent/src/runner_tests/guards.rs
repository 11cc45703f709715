//! Runs that used to go wrong: a stage interrupted twice, two agents on one work
//! folder, a full disk under the spool, huge timeouts, an unreachable ticket URL.
use kiln_protocol::{Event, Frame, Outcome, Plan};

use super::{bundle_frames, exec, finals, opts, ticket, ticket_for};
use crate::end::RunEnd;
use crate::runner::{fetch_ticket, lock_work, run_ticket};
use crate::spool::Spool;

fn frame(seq: u64, event: Event) -> Frame {
    Frame {
        seq,
        at_ms: 1,
        event,
    }
}

#[test]
fn a_stage_interrupted_twice_runs_again_and_keeps_its_retry() {
    let d = tempfile::tempdir().unwrap();
    let (bytes, key, run) = ticket(vec![exec("s", "true")], None);
    // What two dead starts left: attempt 1 began, the restart closed it as
    // interrupted, then died before attempt 2 began.
    let work = d.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("run"), format!("{run}\n")).unwrap();
    let (mut spool, _) = Spool::open(&work).unwrap();
    let events = [
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        Event::StageFinished {
            stage: 0,
            attempt: 1,
            outcome: Outcome::Error,
            exit_code: None,
            duration_ms: 0,
            detail: crate::resume::INTERRUPTED.into(),
        },
    ];
    for (i, e) in events.into_iter().enumerate() {
        spool.append(&frame(i as u64 + 1, e)).unwrap();
    }
    drop(spool);
    let out = d.path().join("r.kiln");
    let end = run_ticket(opts(bytes, &key, &work, Some(&out)));
    assert_eq!(
        end,
        RunEnd::Finished {
            outcome: Outcome::Passed,
            shutdown: false
        }
    );
    assert_eq!(
        finals(&bundle_frames(&out)),
        [(0, 1, Outcome::Error), (0, 2, Outcome::Passed)]
    );
}

#[test]
fn a_second_agent_on_a_work_folder_in_use_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (bytes, key, _) = ticket(vec![exec("s", "true")], None);
    let work = d.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let held = lock_work(&work).unwrap();
    let end = run_ticket(opts(bytes.clone(), &key, &work, Some(&d.path().join("r"))));
    let want = format!(
        "work folder {} is in use (pid {})",
        work.display(),
        std::process::id()
    );
    assert_eq!(end, RunEnd::Infra(want));
    assert_eq!(end.exit_status(), 3);
    assert!(
        !work.join("spool.log").exists(),
        "the loser touched the spool"
    );
    drop(held);
    let end = run_ticket(opts(bytes, &key, &work, Some(&d.path().join("r"))));
    assert_eq!(end.exit_status(), 0, "{end:?}");
}

#[test]
fn a_full_disk_under_the_spool_still_writes_the_bundle_of_what_was_spooled() {
    let Some(fs) = crate::spool::smallfs::SmallFs::mount("64k") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let stages = vec![exec("loud", "seq 1 40000"), exec("after", "echo after")];
    let (bytes, key, _) = ticket(stages, None);
    let out = d.path().join("r.kiln");
    let end = run_ticket(opts(bytes, &key, &fs.path().join("work"), Some(&out)));
    let RunEnd::Infra(why) = &end else {
        panic!("a full spool must end as an infrastructure error: {end:?}")
    };
    assert!(why.starts_with("spool write failed"), "{why}");
    let frames = bundle_frames(&out);
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>());
    assert!(matches!(frames[0].event, Event::Claim { .. }));
    let lines: Vec<&str> = frames
        .iter()
        .filter_map(|f| match &f.event {
            Event::Log { stage: 0, text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(lines.len() > 100, "{} lines", lines.len());
    let want: Vec<String> = (1..=lines.len()).map(|i| i.to_string()).collect();
    assert_eq!(lines, want, "spooled lines are whole and in order");
}

#[test]
fn huge_timeouts_mean_no_limit_not_a_panic() {
    let mut st = exec("s", "echo ok");
    st.timeout_s = u64::MAX;
    let plan = Plan {
        name: "huge".into(),
        stages: vec![st],
        fail_fast: true,
        timeout_s: i64::MAX as u64,
        hold: Default::default(),
    };
    let d = tempfile::tempdir().unwrap();
    let (bytes, key, _) = ticket_for(plan, None);
    let out = d.path().join("r.kiln");
    let end = run_ticket(opts(bytes, &key, &d.path().join("work"), Some(&out)));
    assert_eq!(end.exit_status(), 0, "{end:?}");
    assert_eq!(finals(&bundle_frames(&out)), [(0, 1, Outcome::Passed)]);
}

#[test]
fn an_unreachable_ticket_url_is_an_infrastructure_error_on_one_line() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/runs/x/ticket", l.local_addr().unwrap());
    drop(l);
    let (code, why) = fetch_ticket(&url).unwrap_err();
    assert_eq!(code, 3, "{why}");
    assert_eq!(why.matches(&url).count(), 1, "{why}");
    assert!(
        why.starts_with(&format!("fetching ticket {url}: ")),
        "{why}"
    );
    assert_eq!(why.lines().count(), 1, "{why}");
}
