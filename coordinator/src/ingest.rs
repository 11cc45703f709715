//! Batch ingest: verify, bind the claim, dedupe, append, ack. Shared by HTTP and import.
//!
//! One writer per run at a time: a per-run mutex inside the server, and an flock on
//! `runs/<run>/lock` so `import` from the command line cannot interleave with it.
use anyhow::Result;
use kiln_protocol::{Ack, Batch, Command, Event, Frame, MAX_BATCH_BYTES, PublicKey, RunId};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use crate::fsutil::{now_s, sync_dir};
use crate::state::State;
use crate::store::{RunDir, files};

mod bundle;

pub use bundle::cmd_import;

/// A refused request: HTTP status, one-line reason, and for a seq gap the seq wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code (4xx, or 500 for a broken state folder).
    pub status: u16,
    /// One line for people.
    pub reason: String,
    /// For a gap: the seq the coordinator expects next (`Kiln-Expected-Seq`).
    pub expected_seq: Option<u64>,
}

impl Refusal {
    /// A refusal with `status` and `reason`.
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            expected_seq: None,
        }
    }

    fn gap(expected: u64) -> Self {
        Refusal {
            status: 422,
            reason: format!("seq gap: expected {expected}"),
            expected_seq: Some(expected),
        }
    }

    fn internal(e: anyhow::Error) -> Self {
        log::error!("{e:#}");
        Refusal::new(500, format!("{e:#}"))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Where a batch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// POSTed by a live agent: records last-seen, refuses claims of expired tickets.
    Online,
    /// From an offline bundle: changes nothing but the frames.
    Import,
}

/// What the writer knows about a run, valid while events.log keeps its length.
#[derive(Debug, Clone)]
struct Cached {
    len: u64,
    upto: u64,
    claim: Option<PublicKey>,
    finished: bool,
    stages: usize,
    not_after: u64,
}

/// The batch writer of one state folder.
#[derive(Debug)]
pub struct Ingester {
    state: State,
    key: PublicKey,
    runs: Mutex<HashMap<RunId, Arc<Mutex<Option<Cached>>>>>,
}

impl Ingester {
    /// A writer for `state` (reads the coordinator key once).
    pub fn new(state: &State) -> Result<Self> {
        Ok(Ingester {
            state: state.clone(),
            key: state.public_key()?,
            runs: Mutex::new(HashMap::new()),
        })
    }

    /// The coordinator's public key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Ingests one sealed batch for `run` (the run the URL names).
    pub fn ingest(&self, run: &RunId, body: &[u8], mode: Mode) -> Result<Ack, Refusal> {
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
        let rd = RunDir::new(&self.state, *run);
        if !rd.exists() {
            return Err(Refusal::new(404, format!("no run {run}")));
        }
        let slot = {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            runs.entry(*run).or_default().clone()
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let _flock = rd.lock().map_err(Refusal::internal)?;
        let c = refresh(&rd, &self.key, &mut slot)?;

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
                if mode == Mode::Online && now_s() > c.not_after {
                    return Err(Refusal::new(
                        409,
                        format!("the ticket of run {run} has expired"),
                    ));
                }
                (agent_key, true)
            }
        };
        let fresh: &[Frame] = match batch.frames.iter().position(|f| f.seq > c.upto) {
            Some(i) => &batch.frames[i..],
            None => &[],
        };
        check_frames(fresh, &key, c)?;
        if bind {
            rd.bind_claim(&key).map_err(Refusal::internal)?;
            c.claim = Some(key);
        }
        if !fresh.is_empty() {
            append(&rd, c, fresh).map_err(|e| {
                c.len = u64::MAX; // forces a rescan next time
                Refusal::internal(e)
            })?;
        }
        if mode == Mode::Online {
            rd.touch_seen();
        }
        let command = match rd.abort_request() {
            Some(reason) if !c.finished => Command::Abort { reason },
            _ => Command::Continue,
        };
        Ok(Ack {
            upto: c.upto,
            command,
        })
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

/// Appends frames and fsyncs them; updates the cache.
fn append(rd: &RunDir, c: &mut Cached, fresh: &[Frame]) -> Result<()> {
    let mut buf = Vec::new();
    for f in fresh {
        let payload = postcard::to_allocvec(f).expect("frames always encode");
        buf.extend(kiln_protocol::encode_record(&payload));
    }
    let path = rd.path(files::EVENTS);
    let created = !path.exists();
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    if let Err(e) = file.write_all(&buf).and_then(|_| file.sync_data()) {
        // Cut a partial write back so the log never holds half a batch.
        let _ = file.set_len(c.len);
        return Err(e.into());
    }
    if created {
        sync_dir(&rd.dir)?;
    }
    c.len += buf.len() as u64;
    c.upto = fresh.last().map_or(c.upto, |f| f.seq);
    c.finished |= fresh
        .iter()
        .any(|f| matches!(f.event, Event::RunFinished { .. }));
    Ok(())
}

/// Rebuilds the cache from the folder when events.log changed under it (another
/// writer, or first use); cuts a torn tail left by a crash.
fn refresh<'a>(
    rd: &RunDir,
    key: &PublicKey,
    slot: &'a mut Option<Cached>,
) -> Result<&'a mut Cached, Refusal> {
    let path = rd.path(files::EVENTS);
    let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if slot.as_ref().is_some_and(|c| c.len == len) {
        return Ok(slot.as_mut().expect("checked above"));
    }
    let (_, ticket) = rd
        .ticket(key)
        .map_err(|e| Refusal::new(409, format!("{e:#}")))?;
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Refusal::internal(e.into())),
    };
    let mut reader = kiln_protocol::RecordReader::new(&bytes);
    let records: Vec<_> = reader.by_ref().collect();
    let mut frames = Vec::with_capacity(records.len());
    for r in records {
        let frame = r
            .and_then(|p| postcard::from_bytes::<Frame>(&p).map_err(Into::into))
            .map_err(|e: kiln_protocol::Error| {
                Refusal::internal(anyhow::anyhow!("run {}: events.log: {e}", rd.id))
            })?;
        frames.push(frame);
    }
    let mut len = bytes.len() as u64;
    if reader.torn_tail() > 0 {
        let cut = reader.consumed() as u64;
        log::warn!(
            "run {}: cutting a torn tail of {} bytes off events.log",
            rd.id,
            len - cut
        );
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Refusal::internal(e.into()))?;
        f.set_len(cut)
            .and_then(|_| f.sync_all())
            .map_err(|e| Refusal::internal(e.into()))?;
        len = cut;
    }
    let claim = match rd.claim_key().map_err(Refusal::internal)? {
        Some(k) => Some(k),
        None => frames.iter().find_map(|f| match &f.event {
            Event::Claim { agent_key, .. } => Some(*agent_key),
            _ => None,
        }),
    };
    *slot = Some(Cached {
        len,
        upto: frames.last().map_or(0, |f| f.seq),
        claim,
        finished: crate::store::is_finished(&frames),
        stages: ticket.plan.stages.len(),
        not_after: ticket.not_after,
    });
    Ok(slot.as_mut().expect("just set"))
}
