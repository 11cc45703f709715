//! A run's stored state as the writer sees it, and appending checked batches.
use anyhow::{Context, Result};
use kiln_protocol::{Event, Mac, PublicKey, Ticket};
use std::fs;
use std::io::Write;

use super::Refusal;
use super::check::Verdict;
use crate::claims::{self, Source};
use crate::fsutil::sync_dir;
use crate::store::{RunDir, files};

/// What the writer knows about a run, valid while events.log keeps its length.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    /// Bytes of events.log.
    pub len: u64,
    /// Last stored seq.
    pub upto: u64,
    /// The bound claim key.
    pub claim: Option<PublicKey>,
    /// Whether a RunFinished is stored.
    pub finished: bool,
    /// Stages in the plan.
    pub stages: usize,
    /// The ticket's expiry, unix s.
    pub not_after: u64,
    /// The enrolled agent key the ticket names: the only key that may claim the run.
    pub agent_key: Option<PublicKey>,
    /// The ticket's MACs (for the neighbour-table claim check).
    pub macs: Vec<Mac>,
    /// The last stored frame's seq when it is a `Held` frame: the run waits for an
    /// order ([`crate::orders`]).
    pub held: Option<u64>,
}

impl Cached {
    /// A run with a ticket and nothing else yet.
    pub(super) fn empty(t: &Ticket) -> Self {
        Cached {
            len: 0,
            upto: 0,
            claim: None,
            finished: false,
            stages: t.plan.stages.len(),
            not_after: t.not_after,
            agent_key: t.host.agent_key,
            macs: t.host.macs.clone(),
            held: None,
        }
    }
}

/// Stores a checked batch: records and binds the claim, appends and fsyncs the new
/// frames (cut back on a failed write), then updates the cache.
pub(super) fn store(rd: &RunDir, c: &mut Cached, v: &Verdict, from: Source) -> Result<()> {
    if v.bind {
        // Recorded and bound, or (a full disk) neither: the claim record is cut back,
        // so a retried claim is recorded once.
        let record = rd.path(files::CLAIMS);
        let old = fs::metadata(&record).map(|m| m.len()).ok();
        let bound = claims::append(rd, claims::Kind::Claim, from, Some(&v.key), "")
            .and_then(|_| rd.bind_claim(&v.key));
        if let Err(e) = bound {
            match old {
                Some(len) => {
                    if let Ok(f) = fs::OpenOptions::new().write(true).open(&record) {
                        let _ = f.set_len(len);
                    }
                }
                None => {
                    let _ = fs::remove_file(&record);
                }
            }
            return Err(e.context(format!("binding the claim of run {}", rd.id)));
        }
    }
    if !v.records.is_empty() {
        let path = rd.path(files::EVENTS);
        let created = !path.exists();
        let what = || format!("storing frames of run {}", rd.id);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(what)?;
        if let Err(e) = file.write_all(&v.records).and_then(|_| file.sync_data()) {
            // Cut a partial write back so the log never holds half a batch (a full
            // disk included: truncating needs no space).
            let _ = file.set_len(c.len);
            return Err(anyhow::Error::from(e).context(what()));
        }
        if created {
            sync_dir(&rd.dir)?;
        }
    }
    c.advance(v);
    Ok(())
}

/// Rebuilds the cache from the folder when events.log changed under it (another
/// writer, or first use); cuts a torn tail left by a crash.
pub(super) fn refresh<'a>(
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
    let (mut upto, mut finished, mut first_claim, mut held) = (0, false, None, None);
    let mut scan = crate::store::Scan::default();
    let used = scan.feed(&bytes, |frame| {
        upto = frame.seq;
        held = matches!(frame.event, Event::Held { .. }).then_some(frame.seq);
        match frame.event {
            Event::RunFinished { .. } => finished = true,
            Event::Claim { agent_key, .. } if first_claim.is_none() => {
                first_claim = Some(agent_key)
            }
            _ => {}
        }
    });
    if let Some(c) = scan.corrupt {
        // Nothing is appended after a record nobody can read: the same numbers as
        // every listing give, for the operator to repair it.
        return Err(Refusal::internal(anyhow::anyhow!(
            "run {}: {c}; nothing more is stored for this run",
            rd.id
        )));
    }
    let mut len = bytes.len() as u64;
    if used < bytes.len() {
        let cut = used as u64;
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
    let claim = rd.claim_key().map_err(Refusal::internal)?.or(first_claim);
    *slot = Some(Cached {
        len,
        upto,
        claim,
        finished,
        held,
        ..Cached::empty(&ticket)
    });
    Ok(slot.as_mut().expect("just set"))
}
