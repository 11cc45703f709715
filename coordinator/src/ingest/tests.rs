//! Every refusal of the ingest check, one case each, against a real state folder:
//! the batch is refused with its status and reason, and nothing of it is stored.
use super::*;
use kiln_protocol::{
    Batch, Event, Frame, HostBinding, HostSpec, MAX_BATCH_BYTES, Outcome, Plan, SecretKey,
    SignedTicket, Stage, StageKind, Stream, VERSION,
};
use std::net::SocketAddr;

/// The events.log cap the table's writer has: low, so one batch can reach it.
const CAP: u64 = 64 << 10;

/// What the run holds before the case's batch.
#[derive(Clone, Copy)]
enum Before {
    /// A ticket, nothing else.
    Pending,
    /// A ticket that expired a minute ago.
    Expired,
    /// A ticket naming an enrolled agent key that is not the claimant's.
    Enrolled,
    /// Claimed by the case's key: seqs 1 (Claim), 2 and 3 (logs) stored.
    Claimed,
    /// Claimed and finished: seqs 1..=4, the last a RunFinished.
    Finished,
}

struct Fx {
    _dir: tempfile::TempDir,
    state: State,
    ing: Ingester,
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = State::init(&dir.path().join("s")).unwrap();
        let ing = Ingester::new(&state).unwrap().with_max_log(CAP);
        Fx {
            _dir: dir,
            state,
            ing,
        }
    }

    /// A fresh run set up as `before`, claimed (if at all) by `key`.
    fn run(&self, before: Before, key: &SecretKey) -> RunId {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).unwrap();
        let run = RunId(id);
        let now = now_s();
        let t = Ticket {
            version: VERSION,
            run,
            issued_at: now - 120,
            not_after: match before {
                Before::Expired => now - 60,
                _ => now + 3600,
            },
            host: HostBinding {
                name: "node1".into(),
                macs: vec![],
                serial: None,
                spec: HostSpec::default(),
                agent_key: match before {
                    Before::Enrolled => Some(SecretKey::from_seed([9; 32]).public()),
                    _ => None,
                },
            },
            coordinator: None,
            plan: Plan {
                name: "p".into(),
                stages: vec![Stage::new("only", StageKind::Inventory)],
                fail_fast: true,
                timeout_s: 0,
                hold: Default::default(),
            },
        };
        let st = SignedTicket::sign(&t, &self.state.signing_key().unwrap());
        let rd = RunDir::new(&self.state, run);
        std::fs::create_dir_all(&rd.dir).unwrap();
        std::fs::write(rd.path(files::TICKET), st.to_file()).unwrap();
        let stored = match before {
            Before::Claimed => vec![frame(1, claim(key)), frame(2, log("a")), frame(3, log("b"))],
            Before::Finished => vec![
                frame(1, claim(key)),
                frame(2, log("a")),
                frame(3, log("b")),
                frame(
                    4,
                    Event::RunFinished {
                        outcome: Outcome::Passed,
                    },
                ),
            ],
            _ => vec![],
        };
        if !stored.is_empty() {
            let n = stored.len() as u64;
            let ack = self.post(&run, &seal(run, stored, key)).unwrap();
            assert_eq!(ack.upto, n);
        }
        run
    }

    fn post(&self, run: &RunId, body: &[u8]) -> Result<Ack, Refusal> {
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        self.ing.ingest(run, body, Mode::Online, Source::Net(from))
    }

    /// The run's events.log and claim.pub, as stored.
    fn stored(&self, run: &RunId) -> (Vec<u8>, Vec<u8>) {
        let rd = RunDir::new(&self.state, *run);
        let read = |f| std::fs::read(rd.path(f)).unwrap_or_default();
        (read(files::EVENTS), read(files::CLAIM))
    }
}

fn frame(seq: u64, event: Event) -> Frame {
    Frame {
        seq,
        at_ms: 1_700_000_000_000 + seq,
        event,
    }
}

fn claim(key: &SecretKey) -> Event {
    Event::Claim {
        agent_key: key.public(),
        agent_version: "test".into(),
        boot_id: "boot".into(),
    }
}

fn log(text: &str) -> Event {
    Event::Log {
        stage: 0,
        stream: Stream::Stdout,
        text: text.into(),
    }
}

fn seal(run: RunId, frames: Vec<Frame>, key: &SecretKey) -> Vec<u8> {
    Batch { run, frames }.seal(key)
}

/// One refusal: the run before, the batch (made from the run, its claimant's key
/// and another key), and the status and reason it gets.
struct Case {
    name: &'static str,
    before: Before,
    batch: fn(RunId, &SecretKey, &SecretKey) -> Vec<u8>,
    status: u16,
    reason: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "an oversize batch",
            before: Before::Claimed,
            batch: |_, _, _| vec![0; MAX_BATCH_BYTES + 1],
            status: 413,
            reason: "batch exceeds 1048576 bytes",
        },
        Case {
            name: "bytes that are no batch",
            before: Before::Claimed,
            batch: |_, _, _| b"\xff\xfe not a batch".to_vec(),
            status: 400,
            reason: "malformed batch",
        },
        Case {
            name: "a batch for another run",
            before: Before::Claimed,
            batch: |_, k, _| seal(RunId([3; 16]), vec![frame(4, log("c"))], k),
            status: 400,
            reason: "batch is for run 03030303",
        },
        Case {
            name: "seq 0",
            before: Before::Claimed,
            batch: |run, k, _| seal(run, vec![frame(0, log("c")), frame(1, log("d"))], k),
            status: 400,
            reason: "frame seqs start at 1",
        },
        Case {
            name: "non-consecutive seqs",
            before: Before::Claimed,
            batch: |run, k, _| seal(run, vec![frame(4, log("c")), frame(6, log("d"))], k),
            status: 400,
            reason: "frames of a batch must have consecutive seqs",
        },
        Case {
            name: "a bad signature on a claimed run",
            before: Before::Claimed,
            batch: |run, k, _| {
                let mut b = seal(run, vec![frame(4, log("c"))], k);
                *b.last_mut().unwrap() ^= 1;
                b
            },
            status: 403,
            reason: "bad batch signature",
        },
        Case {
            name: "another key's claim of a claimed run",
            before: Before::Claimed,
            batch: |run, _, o| seal(run, vec![frame(1, claim(o))], o),
            status: 409,
            reason: "run already claimed by another agent key",
        },
        Case {
            name: "an empty batch on an unclaimed run",
            before: Before::Pending,
            batch: |run, k, _| seal(run, vec![], k),
            status: 409,
            reason: "is not claimed yet: send its Claim frame first",
        },
        Case {
            name: "an unclaimed run's first batch not starting at seq 1",
            before: Before::Pending,
            batch: |run, k, _| seal(run, vec![frame(2, claim(k))], k),
            status: 422,
            reason: "seq gap: expected 1",
        },
        Case {
            name: "a first frame that is not a Claim",
            before: Before::Pending,
            batch: |run, k, _| seal(run, vec![frame(1, log("c"))], k),
            status: 422,
            reason: "the first frame of a run must be a Claim",
        },
        Case {
            name: "a Claim signed by another key than it names",
            before: Before::Pending,
            batch: |run, k, o| seal(run, vec![frame(1, claim(k))], o),
            status: 403,
            reason: "bad batch signature",
        },
        Case {
            name: "a claim by a key other than the enrolled one",
            before: Before::Enrolled,
            batch: |run, k, _| seal(run, vec![frame(1, claim(k))], k),
            status: 403,
            reason: "is for an enrolled host: only its agent key",
        },
        Case {
            name: "a claim on an expired ticket",
            before: Before::Expired,
            batch: |run, k, _| seal(run, vec![frame(1, claim(k))], k),
            status: 409,
            reason: "has expired",
        },
        Case {
            name: "a gap after the stored seqs",
            before: Before::Claimed,
            batch: |run, k, _| seal(run, vec![frame(5, log("c"))], k),
            status: 422,
            reason: "seq gap: expected 4",
        },
        Case {
            name: "frames after a stored RunFinished",
            before: Before::Finished,
            batch: |run, k, _| seal(run, vec![frame(5, log("c"))], k),
            status: 409,
            reason: "run already finished",
        },
        Case {
            name: "a Claim for another key mid-run",
            before: Before::Claimed,
            batch: |run, k, o| seal(run, vec![frame(4, claim(o))], k),
            status: 409,
            reason: "run already claimed by another agent key",
        },
        Case {
            name: "frames after RunFinished in the same batch",
            before: Before::Claimed,
            batch: |run, k, _| {
                let end = Event::RunFinished {
                    outcome: Outcome::Passed,
                };
                seal(run, vec![frame(4, end), frame(5, log("c"))], k)
            },
            status: 409,
            reason: "frames after RunFinished",
        },
        Case {
            name: "a frame naming a stage the plan lacks",
            before: Before::Claimed,
            batch: |run, k, _| {
                let e = Event::StageStarted {
                    stage: 1,
                    attempt: 1,
                };
                seal(run, vec![frame(4, e)], k)
            },
            status: 422,
            reason: "frame 4 names stage 1; the plan has 1",
        },
        Case {
            name: "a batch that would pass the events.log cap",
            before: Before::Claimed,
            batch: |run, k, _| seal(run, vec![frame(4, log(&"x".repeat(CAP as usize)))], k),
            status: 413,
            reason: "would exceed its 65536-byte cap",
        },
        Case {
            name: "a resend of a stored seq with different content",
            before: Before::Claimed,
            batch: |run, k, _| {
                seal(
                    run,
                    vec![frame(2, log("a")), frame(3, log("B")), frame(4, log("c"))],
                    k,
                )
            },
            status: 409,
            reason: "conflicting resend: seq 3 differs from the stored frame",
        },
    ]
}

#[test]
fn every_refusal_of_the_ingest_check_stores_nothing() {
    let fx = Fx::new();
    let key = SecretKey::from_seed([1; 32]);
    let other = SecretKey::from_seed([2; 32]);
    for c in cases() {
        let run = fx.run(c.before, &key);
        let before = fx.stored(&run);
        let r = fx
            .post(&run, &(c.batch)(run, &key, &other))
            .expect_err(c.name);
        assert_eq!(r.status, c.status, "{}: {r}", c.name);
        assert!(r.reason.contains(c.reason), "{}: {r}", c.name);
        assert!(!r.reason.contains('\n'), "{}: {r}", c.name);
        assert_eq!(
            fx.stored(&run),
            before,
            "{}: the refused batch stored",
            c.name
        );
    }
}

/// The control for the resend case: a faithful resend with a new frame is acked and
/// stores only the new frame, and the same resend again changes nothing.
#[test]
fn a_faithful_resend_is_acked_and_adds_only_new_frames() {
    let fx = Fx::new();
    let key = SecretKey::from_seed([1; 32]);
    let run = fx.run(Before::Claimed, &key);
    let (log_before, _) = fx.stored(&run);
    let body = seal(
        run,
        vec![frame(2, log("a")), frame(3, log("b")), frame(4, log("c"))],
        &key,
    );
    assert_eq!(fx.post(&run, &body).unwrap().upto, 4);
    let (grown, _) = fx.stored(&run);
    assert!(grown.starts_with(&log_before));
    assert_eq!(fx.post(&run, &body).unwrap().upto, 4);
    assert_eq!(fx.stored(&run).0, grown);
    // A resend reaching back to the claim is compared too.
    let all = seal(run, vec![frame(1, claim(&key)), frame(2, log("a"))], &key);
    assert_eq!(fx.post(&run, &all).unwrap().upto, 4);
    let forged = seal(run, vec![frame(1, claim(&key)), frame(2, log("z"))], &key);
    let r = fx.post(&run, &forged).unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str()),
        (
            409,
            "conflicting resend: seq 2 differs from the stored frame"
        )
    );
    assert_eq!(fx.stored(&run).0, grown);
}

/// A held run's ack carries the pending order only while the `Held` frame it was
/// given for is the run's last; an abort request is not sent to a held run.
#[test]
fn a_held_runs_ack_carries_its_order_while_the_hold_lasts() {
    use kiln_protocol::Command;
    let fx = Fx::new();
    let key = SecretKey::from_seed([1; 32]);
    let run = fx.run(Before::Claimed, &key);
    let rd = RunDir::new(&fx.state, run);
    let held = Event::Held {
        outcome: Outcome::Failed,
        until_ms: 1,
        addrs: vec![],
        host_key: None,
    };
    let release = Command::Release { reboot: false };
    // An order bound to a hold that is not the last frame (seq 4 is yet to come).
    crate::orders::set_order(&rd, 4, &release).unwrap();
    std::fs::write(rd.path(files::ABORT), "stop\n").unwrap();
    let ack = fx
        .post(&run, &seal(run, vec![frame(4, held.clone())], &key))
        .unwrap();
    assert_eq!(ack.command, release, "the order for the hold at seq 4");
    // A heartbeat: the same order again (the agent takes it once).
    let ack = fx.post(&run, &seal(run, vec![], &key)).unwrap();
    assert_eq!(ack.command, release);
    // The agent's next frame ends that hold: no order, and the abort request again.
    let order = Event::Order {
        what: "release".into(),
        refused: None,
    };
    let ack = fx
        .post(&run, &seal(run, vec![frame(5, order)], &key))
        .unwrap();
    assert_eq!(
        ack.command,
        Command::Abort {
            reason: "stop".into()
        }
    );
    // A new hold: the old order (for seq 4) is not sent.
    std::fs::remove_file(rd.path(files::ABORT)).unwrap();
    let ack = fx
        .post(&run, &seal(run, vec![frame(6, held)], &key))
        .unwrap();
    assert_eq!(ack.command, Command::Continue);
    // After a restart (a fresh writer reads the log): the order for seq 6 is sent.
    crate::orders::set_order(&rd, 6, &release).unwrap();
    let fresh = Ingester::new(&fx.state).unwrap();
    let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let ack = fresh
        .ingest(
            &run,
            &seal(run, vec![], &key),
            Mode::Online,
            Source::Net(from),
        )
        .unwrap();
    assert_eq!(ack.command, release);
}
