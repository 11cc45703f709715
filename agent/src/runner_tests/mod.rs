//! In-process tests of whole runs: offline into a bundle here, online against a stub
//! in `online.rs` (the e2e tests use the real coordinator).
use kiln_protocol::{
    BUNDLE_MAGIC, Batch, Event, Frame, HostBinding, Outcome, Plan, RecordReader, ResultRecord,
    RunId, SecretKey, SignedTicket, Stage, StageKind, Ticket,
};
use std::collections::BTreeMap;
use std::path::Path;

use crate::end::RunEnd;
use crate::hostinfo::HostInfo;
use crate::runner::{RunOptions, run_ticket};

mod guards;
mod online;

fn exec(name: &str, script: &str) -> Stage {
    Stage::new(
        name,
        StageKind::Exec {
            command: vec!["sh".into(), "-c".into(), script.into()],
        },
    )
}

/// The MAC of the fake sysfs tree every test in this crate reads as "this machine"
/// (a fake: CI machines may have no network card but loopback).
pub(crate) const FAKE_MAC: kiln_protocol::Mac =
    kiln_protocol::Mac([0x52, 0x54, 0x00, 0x4b, 0x11, 0x4e]);

/// Points [`HostInfo::detect`] at a fake sysfs tree with one network card.
pub(crate) fn fake_sysfs() {
    crate::hostinfo::TEST_SYSFS.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("kiln-fake-sysfs-{}", std::process::id()));
        let nic = root.join("class/net/eth0");
        std::fs::create_dir_all(&nic).unwrap();
        std::fs::write(nic.join("address"), format!("{FAKE_MAC}\n")).unwrap();
        std::fs::create_dir_all(root.join("class/net/lo")).unwrap();
        std::fs::write(root.join("class/net/lo/address"), "00:00:00:00:00:00\n").unwrap();
        root
    });
}

/// A ticket for this machine (bound to the fake sysfs tree's MAC).
fn ticket(stages: Vec<Stage>, url: Option<String>) -> (Vec<u8>, SecretKey, RunId) {
    ticket_for(
        Plan {
            name: "t".into(),
            stages,
            fail_fast: false,
            timeout_s: 0,
            hold: Default::default(),
        },
        url,
    )
}

/// The key the test tickets are signed with (the stub coordinator's).
fn ticket_key() -> SecretKey {
    SecretKey::from_seed([9; 32])
}

fn ticket_for(plan: Plan, url: Option<String>) -> (Vec<u8>, SecretKey, RunId) {
    fake_sysfs();
    let mac = *HostInfo::detect()
        .macs
        .first()
        .expect("the fake sysfs has a NIC");
    assert_eq!(mac, FAKE_MAC);
    let key = ticket_key();
    let mut run = [0u8; 16];
    getrandom::getrandom(&mut run).unwrap();
    let t = Ticket {
        version: kiln_protocol::VERSION,
        run: RunId(run),
        issued_at: 0,
        not_after: u64::MAX / 2,
        host: HostBinding {
            name: "here".into(),
            macs: vec![mac],
            serial: None,
            spec: Default::default(),
            agent_key: None,
        },
        coordinator: url,
        plan,
    };
    (SignedTicket::sign(&t, &key).to_file(), key, RunId(run))
}

fn opts(bytes: Vec<u8>, key: &SecretKey, work: &Path, out: Option<&Path>) -> RunOptions {
    RunOptions {
        clock: None,
        hold: crate::hold::HoldMode::Off,
        ticket_bytes: bytes,
        ticket_path: None,
        trusted: vec![key.public()],
        url: None,
        out: out.map(Path::to_path_buf),
        work: Some(work.to_path_buf()),
        cas_dir: None,
        secrets: BTreeMap::new(),
        agent_key: None,
    }
}

fn finals(frames: &[Frame]) -> Vec<(u16, u32, Outcome)> {
    frames
        .iter()
        .filter_map(|f| match &f.event {
            Event::StageFinished {
                stage,
                attempt,
                outcome,
                ..
            } => Some((*stage, *attempt, *outcome)),
            _ => None,
        })
        .collect()
}

#[test]
fn offline_run_writes_a_bundle_with_every_outcome() {
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("flaky.marker");
    let mut timeout = exec("slow", "sleep 30");
    timeout.timeout_s = 1;
    let mut flaky = exec(
        "flaky",
        &format!("test -e {0} && exit 0; touch {0}; exit 1", marker.display()),
    );
    flaky.retries = 1;
    let stages = vec![
        exec(
            "ok",
            "echo hello; mkdir artifacts; echo art > artifacts/a.txt",
        ),
        exec("bad", "exit 3"),
        exec("warn", "exit 42"),
        exec("skip", "exit 43"),
        timeout,
        flaky,
    ];
    let (bytes, key, run) = ticket(stages, None);
    let out = d.path().join("result.kiln");
    let end = run_ticket(opts(bytes, &key, &d.path().join("work"), Some(&out)));
    assert_eq!(
        end,
        RunEnd::Finished {
            outcome: Outcome::TimedOut,
            shutdown: false
        }
    );
    assert_eq!(end.exit_status(), 1);
    let bundle = std::fs::read(&out).unwrap();
    assert_eq!(&bundle[..8], BUNDLE_MAGIC);
    let mut frames = Vec::new();
    let mut blobs = 0;
    let mut claim = None;
    for rec in RecordReader::new(&bundle[8..]) {
        match ResultRecord::decode(&rec.unwrap()).unwrap() {
            ResultRecord::Ticket(_) => assert!(frames.is_empty() && claim.is_none()),
            ResultRecord::Blob(b) => {
                assert_eq!(b, b"art\n");
                blobs += 1;
            }
            ResultRecord::Batch(sealed) => {
                let (b, check) = Batch::open_unverified(&sealed).unwrap();
                claim = claim.or(b.claim_key());
                check.verify(claim.as_ref().unwrap()).unwrap();
                assert_eq!(b.run, run);
                frames.extend(b.frames);
            }
        }
    }
    assert_eq!(blobs, 1);
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        finals(&frames),
        [
            (0, 1, Outcome::Passed),
            (1, 1, Outcome::Failed),
            (2, 1, Outcome::Warning),
            (3, 1, Outcome::Skipped),
            (4, 1, Outcome::TimedOut),
            (5, 1, Outcome::Failed),
            (5, 2, Outcome::Passed),
        ]
    );
    assert!(frames.iter().any(|f| matches!(&f.event,
        Event::Log { stage: 0, text, .. } if text == "hello")));
    assert!(matches!(
        frames.last().unwrap().event,
        Event::RunFinished {
            outcome: Outcome::TimedOut
        }
    ));
}

#[test]
fn a_ticket_for_another_key_is_refused_before_anything_runs() {
    let d = tempfile::tempdir().unwrap();
    let (bytes, _key, _) = ticket(vec![exec("x", "true")], None);
    let other = SecretKey::from_seed([1; 32]);
    let work = d.path().join("work");
    let end = run_ticket(opts(bytes, &other, &work, Some(&d.path().join("o"))));
    assert!(
        matches!(&end, RunEnd::Refused(r) if r.contains("ticket refused")),
        "{end:?}"
    );
    assert_eq!(end.exit_status(), 2);
    assert!(
        !work.exists(),
        "a refused ticket must not create a work folder"
    );
}

/// Runs `plan` offline; returns how it ended and the bundle's frames.
fn offline(plan: Plan) -> (RunEnd, Vec<Frame>) {
    let d = tempfile::tempdir().unwrap();
    let (bytes, key, _) = ticket_for(plan, None);
    let out = d.path().join("r.kiln");
    let end = run_ticket(opts(bytes, &key, &d.path().join("work"), Some(&out)));
    (end, bundle_frames(&out))
}

/// The frames of a bundle file, in order.
fn bundle_frames(out: &Path) -> Vec<Frame> {
    let bundle = std::fs::read(out).unwrap();
    assert_eq!(&bundle[..8], BUNDLE_MAGIC);
    let mut frames = Vec::new();
    for rec in RecordReader::new(&bundle[8..]) {
        if let ResultRecord::Batch(b) = ResultRecord::decode(&rec.unwrap()).unwrap() {
            frames.extend(Batch::open_unverified(&b).unwrap().0.frames);
        }
    }
    frames
}

fn details(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match &f.event {
            Event::StageFinished { detail, .. } => Some(detail.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn fail_fast_stops_after_a_failure_unless_the_stage_may_fail() {
    let mut may_fail = exec("may-fail", "exit 1");
    may_fail.continue_on_failure = true;
    let plan = Plan {
        name: "ff".into(),
        stages: vec![may_fail, exec("fails", "exit 2"), exec("never", "true")],
        fail_fast: true,
        timeout_s: 0,
        hold: Default::default(),
    };
    let (end, frames) = offline(plan);
    assert_eq!(end.exit_status(), 1);
    assert_eq!(
        finals(&frames),
        [(0, 1, Outcome::Failed), (1, 1, Outcome::Failed)]
    );
}

#[test]
fn the_plan_timeout_bounds_the_whole_run() {
    let plan = Plan {
        name: "slow".into(),
        stages: vec![exec("sleeps", "sleep 30"), exec("never", "true")],
        fail_fast: false,
        timeout_s: 1,
        hold: Default::default(),
    };
    let (end, frames) = offline(plan);
    assert!(
        matches!(
            end,
            RunEnd::Finished {
                outcome: Outcome::TimedOut,
                ..
            }
        ),
        "{end:?}"
    );
    assert_eq!(finals(&frames), [(0, 1, Outcome::TimedOut)]);
    assert_eq!(details(&frames), ["run timed out after 1s"]);
}

#[test]
fn a_missing_test_bundle_is_an_infrastructure_error_and_is_retried() {
    let mut st = exec("tests", "true");
    st.retries = 1;
    st.tests = Some(kiln_protocol::TestBundle {
        sha256: kiln_protocol::Sha256::of(b"not there"),
        size: 9,
        tree: kiln_protocol::Sha256::of(b""),
    });
    let plan = Plan {
        name: "t".into(),
        stages: vec![st],
        fail_fast: false,
        timeout_s: 0,
        hold: Default::default(),
    };
    let (end, frames) = offline(plan);
    assert_eq!(end.exit_status(), 3);
    assert_eq!(
        finals(&frames),
        [(0, 1, Outcome::Error), (0, 2, Outcome::Error)]
    );
    assert!(
        details(&frames)[0].starts_with("test bundle: "),
        "{:?}",
        details(&frames)
    );
}
