//! The checks every batch passes before any of it is stored, online or imported.
use kiln_protocol::{Batch, Event, Frame, MAX_BATCH_BYTES, Outcome, PublicKey, RunId};

use super::{Cached, Mode, Refusal};

/// A batch that passed every check against a run's state: what storing it changes.
#[derive(Debug)]
pub(super) struct Verdict {
    /// The key that signed the batch.
    pub key: PublicKey,
    /// Whether this batch binds `key` as the run's claim.
    pub bind: bool,
    /// The new frames as COBS records, ready to append (empty for a resend).
    pub records: Vec<u8>,
    /// Seq of the last new frame (0 when there is none).
    pub upto: u64,
    /// Whether the new frames end the run.
    pub finished: bool,
    /// The outcome of a RunFinished among the new or the resent frames: a resend
    /// of the last batch (its ack was lost, say to a crash) queues its notification
    /// again, so none is lost between the store and the outbox.
    pub outcome: Option<Outcome>,
    /// The last new frame's seq when it is a `Held` frame.
    pub held: Option<u64>,
    /// Frames the batch resends (seqs the run already holds), as COBS records, and
    /// the seq of the first: the caller compares them with the stored records
    /// ([`super::resend`]). Empty when nothing is resent.
    pub resent: Vec<u8>,
    /// Seq of the first resent frame (0 when none is).
    pub resent_from: u64,
}

impl Cached {
    /// The state after `v` is stored.
    pub(super) fn advance(&mut self, v: &Verdict) {
        if v.bind {
            self.claim = Some(v.key);
        }
        if !v.records.is_empty() {
            self.len += v.records.len() as u64;
            self.upto = v.upto;
            self.finished |= v.finished;
            self.held = v.held;
        }
    }
}

/// Checks one sealed batch for `run` against what the run holds (`c`): size, run,
/// seq shape, signature and claim, continuity with the stored seqs, stages, and the
/// events.log cap (`max_log` bytes, [`super::MAX_EVENTS_LOG_BYTES`] but in tests). Pure:
/// nothing is read or written; resent frames are handed back to compare with the
/// stored ones ([`super::resend`]).
pub(super) fn validate(
    run: &RunId,
    body: &[u8],
    c: &Cached,
    mode: Mode,
    now_s: u64,
    max_log: u64,
) -> Result<Verdict, Refusal> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(Refusal::new(
            413,
            format!("batch exceeds {MAX_BATCH_BYTES} bytes"),
        ));
    }
    let (batch, check) = Batch::open_unverified(body)
        .map_err(|e| Refusal::new(400, format!("malformed batch: {e}")))?;
    if batch.run != *run {
        return Err(Refusal::new(
            400,
            format!("batch is for run {}, not {run}", batch.run),
        ));
    }
    check_shape(&batch.frames)?;
    // Which key must have signed this batch, and whether it is bound now.
    let (key, bind) = match c.claim {
        Some(bound) => {
            if check.verify(&bound).is_err() {
                let other = batch.claim_key();
                if other.is_some_and(|k| k != bound && check.verify(&k).is_ok()) {
                    return Err(claimed_by_other());
                }
                return Err(Refusal::new(403, "bad batch signature"));
            }
            (bound, false)
        }
        None => {
            let Some(first) = batch.frames.first() else {
                return Err(Refusal::new(
                    409,
                    format!("run {run} is not claimed yet: send its Claim frame first"),
                ));
            };
            if first.seq != 1 {
                return Err(Refusal::gap(1));
            }
            let Event::Claim { agent_key, .. } = first.event else {
                return Err(Refusal::new(
                    422,
                    "the first frame of a run must be a Claim",
                ));
            };
            if check.verify(&agent_key).is_err() {
                return Err(Refusal::new(403, "bad batch signature"));
            }
            if let Some(enrolled) = c.agent_key.filter(|k| *k != agent_key) {
                return Err(Refusal::new(
                    403,
                    format!(
                        "run {run} is for an enrolled host: only its agent key {} may claim it, not {}",
                        enrolled.fingerprint(),
                        agent_key.fingerprint()
                    ),
                ));
            }
            if mode == Mode::Online && now_s > c.not_after {
                return Err(Refusal::new(
                    409,
                    format!("the ticket of run {run} has expired"),
                ));
            }
            (agent_key, true)
        }
    };
    let split = batch
        .frames
        .iter()
        .position(|f| f.seq > c.upto)
        .unwrap_or(batch.frames.len());
    let (old, fresh) = batch.frames.split_at(split);
    check_frames(fresh, &key, c)?;
    let records = encode(fresh);
    if c.len.saturating_add(records.len() as u64) > max_log {
        return Err(Refusal::new(
            413,
            format!("events.log of run {run} would exceed its {max_log}-byte cap"),
        ));
    }
    Ok(Verdict {
        key,
        bind,
        records,
        upto: fresh.last().map_or(0, |f| f.seq),
        finished: fresh
            .iter()
            .any(|f| matches!(f.event, Event::RunFinished { .. })),
        outcome: batch.frames.iter().rev().find_map(|f| match f.event {
            Event::RunFinished { outcome } => Some(outcome),
            _ => None,
        }),
        held: fresh
            .last()
            .filter(|f| matches!(f.event, Event::Held { .. }))
            .map(|f| f.seq),
        resent: encode(old),
        resent_from: old.first().map_or(0, |f| f.seq),
    })
}

/// The frames as COBS records, as events.log holds them.
fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut records = Vec::new();
    for f in frames {
        let payload = postcard::to_allocvec(f).expect("frames always encode");
        records.extend(kiln_protocol::encode_record(&payload));
    }
    records
}

/// The key of a batch that opens with a Claim signed by that key (checked or not
/// against the run): for recording refused and contested claims.
pub(super) fn claimant(body: &[u8]) -> Option<PublicKey> {
    if body.len() > MAX_BATCH_BYTES {
        return None;
    }
    let (batch, check) = Batch::open_unverified(body).ok()?;
    match batch.frames.first()?.event {
        Event::Claim { agent_key, .. } if check.verify(&agent_key).is_ok() => Some(agent_key),
        _ => None,
    }
}

fn claimed_by_other() -> Refusal {
    Refusal::new(409, "run already claimed by another agent key")
}

/// Seqs start at 1 and run without gaps inside a batch.
fn check_shape(frames: &[Frame]) -> Result<(), Refusal> {
    if frames.first().is_some_and(|f| f.seq == 0) {
        return Err(Refusal::new(400, "frame seqs start at 1"));
    }
    if frames
        .windows(2)
        .any(|w| w[1].seq != w[0].seq.wrapping_add(1))
    {
        return Err(Refusal::new(
            400,
            "frames of a batch must have consecutive seqs",
        ));
    }
    Ok(())
}

/// Checks the new frames against what is stored: no gap, nothing after the end,
/// stages that exist, no claim for another key.
fn check_frames(fresh: &[Frame], key: &PublicKey, c: &Cached) -> Result<(), Refusal> {
    let Some(first) = fresh.first() else {
        return Ok(());
    };
    if first.seq != c.upto + 1 {
        return Err(Refusal::gap(c.upto + 1));
    }
    if c.finished {
        return Err(Refusal::new(409, "run already finished"));
    }
    for (i, f) in fresh.iter().enumerate() {
        match &f.event {
            Event::Claim { agent_key, .. } if agent_key != key => return Err(claimed_by_other()),
            Event::RunFinished { .. } if i + 1 != fresh.len() => {
                return Err(Refusal::new(409, "frames after RunFinished"));
            }
            e => {
                if let Some(s) = e.stage().filter(|s| *s as usize >= c.stages) {
                    return Err(Refusal::new(
                        422,
                        format!("frame {} names stage {s}; the plan has {}", f.seq, c.stages),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::MAX_EVENTS_LOG_BYTES;
    use super::*;
    use kiln_protocol::SecretKey;

    fn run_with_log(len: u64, key: &SecretKey) -> Cached {
        Cached {
            len,
            upto: 1,
            claim: Some(key.public()),
            finished: false,
            stages: 1,
            not_after: u64::MAX,
            agent_key: None,
            macs: Vec::new(),
            held: None,
        }
    }

    #[test]
    fn a_batch_that_would_pass_the_events_log_cap_is_refused() {
        let key = SecretKey::from_seed([7; 32]);
        let run = RunId([1; 16]);
        let log = |seq| Frame {
            seq,
            at_ms: 0,
            event: Event::Log {
                stage: 0,
                stream: kiln_protocol::Stream::Stdout,
                text: "x".repeat(1000),
            },
        };
        let body = Batch {
            run,
            frames: vec![log(2)],
        }
        .seal(&key);
        let near = run_with_log(MAX_EVENTS_LOG_BYTES - 500, &key);
        let r = validate(&run, &body, &near, Mode::Online, 0, MAX_EVENTS_LOG_BYTES).unwrap_err();
        assert_eq!(r.status, 413, "{r}");
        assert!(r.reason.contains("cap"), "{r}");
        let roomy = run_with_log(MAX_EVENTS_LOG_BYTES - 5000, &key);
        let v = validate(&run, &body, &roomy, Mode::Online, 0, MAX_EVENTS_LOG_BYTES).unwrap();
        assert_eq!(v.upto, 2);
        // A resend of what is stored adds nothing, so it is acked even at the cap.
        let mut full = run_with_log(MAX_EVENTS_LOG_BYTES, &key);
        full.upto = 2;
        let v = validate(&run, &body, &full, Mode::Online, 0, MAX_EVENTS_LOG_BYTES).unwrap();
        assert!(v.records.is_empty());
    }
}
