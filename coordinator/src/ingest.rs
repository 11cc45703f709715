//! Batch ingest: verify, bind the claim, dedupe, append, ack. Shared by HTTP and import:
//! both go through one check (`check`) before anything is written.
//!
//! One writer per run at a time: a per-run mutex inside the server, and an flock on
//! `runs/<run>/lock` so `import` from the command line cannot interleave with it.
use anyhow::Result;
use kiln_protocol::{Ack, Command, PublicKey, RunId, Ticket};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::claims::{self, Source};
use crate::fsutil::now_s;
use crate::neigh::{ClaimCheck, Finding};
use crate::state::State;
use crate::store::{RunDir, files};

mod bundle;
mod check;
mod logfile;
mod resend;
mod stage;
#[cfg(test)]
mod tests;

use check::{claimant, validate};
use logfile::{Cached, refresh, store};
use stage::Import;

#[doc(hidden)]
pub use bundle::{Imported, bundle_cap, import_bundle};

/// A refused request: HTTP status, one-line reason, and for a seq gap the seq wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code (4xx; 500 for a broken state folder, 507 for a full one).
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

    /// A failure of the state folder: 507 when the disk or quota is full (the
    /// request may succeed later, so clients retry it like any 5xx), 500 otherwise.
    pub(crate) fn internal(e: anyhow::Error) -> Self {
        log::error!("{e:#}");
        Refusal::new(storage_status(&e), format!("{e:#}"))
    }
}

/// 507 (Insufficient Storage) for an error caused by a full disk or quota (ENOSPC,
/// EDQUOT anywhere in its chain), else 500.
pub(crate) fn storage_status(e: &anyhow::Error) -> u16 {
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|n| n == libc::ENOSPC || n == libc::EDQUOT)
    });
    if full { 507 } else { 500 }
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

/// The most bytes a run's events.log may hold; a batch that would pass it is refused
/// (413), so one agent cannot fill the disk or make every listing slow.
pub const MAX_EVENTS_LOG_BYTES: u64 = 512 << 20;

/// Records a refused batch that opened with a valid Claim: `contested` when another
/// key holds the run, `refused` otherwise. Only logged when it cannot be written.
fn note_refused_claim(rd: &RunDir, c: &Cached, body: &[u8], from: Source, r: &Refusal) {
    let Some(k) = claimant(body) else {
        return;
    };
    let kind = match c.claim {
        Some(bound) if bound == k => return,
        Some(_) => claims::Kind::Contested,
        None => claims::Kind::Refused,
    };
    log::warn!(
        "run {}: {} claim from {from} by {}: {} {}",
        rd.id,
        kind.as_str(),
        k.fingerprint(),
        r.status,
        r.reason
    );
    let detail = format!("{} {}", r.status, r.reason);
    // Notified when the run becomes contested (queued before it is recorded, so a
    // crash in between notifies at the next attempt), not at every further attempt
    // of the same claimant: the notification is the same key, and the claimant's
    // rate is not the receivers' business.
    if kind == claims::Kind::Contested
        && let Some(state) = rd.state()
        && !claims::read(rd).is_ok_and(|l| l.contested())
    {
        let detail = format!("claim from {from} by {}: {detail}", k.fingerprint());
        if let Err(e) = crate::notify::emit(&state, &rd.id, crate::notify::Kind::Contested, &detail)
        {
            log::error!("run {}: queueing its contested notification: {e:#}", rd.id);
        }
    }
    match claims::append(rd, kind, from, Some(&k), &detail) {
        Ok(_) => {
            if let Some(state) = rd.state() {
                crate::journal::note_run(&state, &rd.id);
            }
        }
        Err(e) => log::error!("run {}: recording a {} claim: {e:#}", rd.id, kind.as_str()),
    }
}

/// What the request handlers need to know about a run before reading a body.
#[derive(Debug, Clone, Copy)]
pub struct RunView {
    /// The bound claim key.
    pub claim: Option<PublicKey>,
    /// Whether a RunFinished frame is stored.
    pub finished: bool,
    /// Bytes of events.log.
    pub log_len: u64,
}

/// The batch writer of one state folder.
#[derive(Debug)]
pub struct Ingester {
    state: State,
    key: PublicKey,
    runs: Mutex<HashMap<RunId, Arc<Mutex<Option<Cached>>>>>,
    claim_check: ClaimCheck,
    /// The events.log cap: [`MAX_EVENTS_LOG_BYTES`] (lower only in tests).
    max_log: u64,
}

impl Ingester {
    /// A writer for `state` (reads the coordinator key once).
    pub fn new(state: &State) -> Result<Self> {
        Ok(Ingester {
            state: state.clone(),
            key: state.public_key()?,
            runs: Mutex::new(HashMap::new()),
            claim_check: ClaimCheck::Off,
            max_log: MAX_EVENTS_LOG_BYTES,
        })
    }

    /// The same writer checking online claims against the neighbour table.
    pub fn with_claim_check(self, claim_check: ClaimCheck) -> Self {
        Ingester {
            claim_check,
            ..self
        }
    }

    /// The same writer with a lower events.log cap, so a test can reach it.
    #[cfg(test)]
    fn with_max_log(self, max_log: u64) -> Self {
        Ingester { max_log, ..self }
    }

    /// The coordinator's public key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Runs `f` on the run's writer state, holding its mutex and flock.
    fn with_run<R>(
        &self,
        run: &RunId,
        f: impl FnOnce(&RunDir, &mut Option<Cached>) -> Result<R, Refusal>,
    ) -> Result<R, Refusal> {
        let rd = RunDir::new(&self.state, *run);
        let slot = {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            runs.entry(*run).or_default().clone()
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let _flock = rd.lock().map_err(Refusal::internal)?;
        f(&rd, &mut slot)
    }

    /// The run's claim and end as stored (cheap once cached): 404 for an unknown
    /// run, 409 when its ticket does not verify. Reads no request body.
    pub fn view(&self, run: &RunId) -> Result<RunView, Refusal> {
        if !RunDir::new(&self.state, *run).exists() {
            return Err(Refusal::new(404, format!("no run {run}")));
        }
        self.with_run(run, |rd, slot| {
            let c = refresh(rd, &self.key, slot)?;
            Ok(RunView {
                claim: c.claim,
                finished: c.finished,
                log_len: c.len,
            })
        })
    }

    /// Ingests one sealed batch for `run` (the run the URL names), sent from `from`.
    /// A claim that binds the run is recorded with its source; a refused claim (a
    /// second claimant: `contested`) is recorded too.
    pub fn ingest(
        &self,
        run: &RunId,
        body: &[u8],
        mode: Mode,
        from: Source,
    ) -> Result<Ack, Refusal> {
        let rd = RunDir::new(&self.state, *run);
        if !rd.exists() {
            return Err(Refusal::new(404, format!("no run {run}")));
        }
        self.with_run(run, |rd, slot| {
            if mode == Mode::Online
                && let Some(why) = crate::lights::ended(rd)
            {
                // The coordinator ended this lights-out run (never booted, agent
                // lost): a late agent is refused and recorded, never merged.
                let _ = crate::lights::append(
                    rd,
                    &crate::lights::Record::new(
                        crate::lights::Event::LateAgent,
                        format!("refused a batch from {from} ({} bytes)", body.len()),
                    ),
                );
                return Err(Refusal::new(
                    409,
                    format!("run {run} was ended by the coordinator: {why}"),
                ));
            }
            let c = refresh(rd, &self.key, slot)?;
            let checked = validate(run, body, c, mode, now_s(), self.max_log).and_then(|v| {
                resend::check_stored(rd, c, &v)?;
                if v.bind {
                    self.neighbour_check(run, c, from)?;
                }
                Ok(v)
            });
            let v = match checked {
                Ok(v) => v,
                Err(r) => {
                    if mode == Mode::Online {
                        note_refused_claim(rd, c, body, from, &r);
                    }
                    return Err(r);
                }
            };
            let (was_finished, was_held) = (c.finished, c.held);
            store(rd, c, &v, from).map_err(|e| {
                c.len = u64::MAX; // forces a rescan next time
                Refusal::internal(e)
            })?;
            if mode == Mode::Online {
                rd.touch_seen();
                if v.bind {
                    crate::notify::stale::watch(&self.state, run);
                }
            }
            // The index cares when a run stops being pending, when it ends, and when
            // a hold begins or ends.
            if v.bind || c.finished != was_finished || c.held != was_held {
                crate::journal::note_run(&self.state, run);
            }
            // Queued (durably) before the ack: an agent that gets no ack resends, and
            // the resend queues it again, so a crash in between loses nothing.
            if let Some(outcome) = v.outcome {
                crate::notify::emit_finished(&self.state, run, outcome)
                    .map_err(Refusal::internal)?;
            }
            // A machine held for a person: someone should come and look.
            if v.held.is_some() {
                crate::notify::emit(
                    &self.state,
                    run,
                    crate::notify::Kind::Held,
                    "held for a person (run show has the ssh line)",
                )
                .map_err(Refusal::internal)?;
            }
            // A held run gets its pending order (`run release|retry|approve`) while
            // the hold it was given for lasts; an abort request does not stop it.
            let command = match c.held {
                Some(seq) => crate::orders::pending(rd, seq).unwrap_or(Command::Continue),
                None => match rd.abort_request() {
                    Some(reason) if !c.finished => Command::Abort { reason },
                    _ => Command::Continue,
                },
            };
            Ok(Ack {
                run: *run,
                upto: c.upto,
                command,
            })
        })
    }

    /// The neighbour-table check of a claim that would bind `run` (online only).
    fn neighbour_check(&self, run: &RunId, c: &Cached, from: Source) -> Result<(), Refusal> {
        let Source::Net(addr) = from else {
            return Ok(());
        };
        match self.claim_check.check(addr.ip(), &c.macs) {
            Finding::Pass(why) => {
                log::debug!("run {run}: claim from {addr} passes the claim check: {why}");
                Ok(())
            }
            Finding::Foreign(seen) => {
                let seen: Vec<String> = seen.iter().map(ToString::to_string).collect();
                let want: Vec<String> = c.macs.iter().map(ToString::to_string).collect();
                Err(Refusal::new(
                    403,
                    format!(
                        "claim from {} refused: the neighbour table maps it to {}, not one of the ticket's MACs ({})",
                        addr.ip(),
                        seen.join(","),
                        want.join(",")
                    ),
                ))
            }
        }
    }

    /// Imports a bundle: `feed` reads it into an [`Import`], which checks every
    /// batch against the stored run and the batches before it (the same check as
    /// online) and stages batches and blobs where nobody looks. Only when `feed` and
    /// the blob check pass is the import committed, all of it or, on any error (a
    /// full disk included), none of it: see `stage`. Returns the last stored seq.
    pub(crate) fn import(
        &self,
        ticket: &Ticket,
        ticket_file: &[u8],
        feed: impl FnOnce(&mut Import) -> Result<(), Refusal>,
    ) -> Result<u64, Refusal> {
        let cas = self.state.cas();
        let made_cas = !cas.dir().exists();
        let go = |rd: &RunDir, c: Cached, ticket_file: Option<&[u8]>| {
            let failed = |e: anyhow::Error| Refusal::new(500, format!("{e:#}"));
            let mut import = Import::begin(rd, c, cas.clone(), ticket_file).map_err(failed)?;
            feed(&mut import)?;
            import.check_blobs()?;
            import.commit(rd).map_err(failed)
        };
        let rd = RunDir::new(&self.state, ticket.run);
        // What was stored before, to tell the index only of a change (a repeated
        // import writes nothing at all).
        let mut before = None;
        let result = if !rd.dir.exists() {
            // Nobody writes a run without a folder: no lock until it exists.
            go(&rd, Cached::empty(ticket), Some(ticket_file)).map(|c| (c.upto, c.finished))
        } else {
            self.with_run(&ticket.run, |rd, slot| {
                let had_ticket = rd.exists();
                let c = if had_ticket {
                    refresh(rd, &self.key, slot)?.clone()
                } else if [files::EVENTS, files::CLAIM]
                    .iter()
                    .any(|f| rd.path(f).exists())
                {
                    return Err(Refusal::new(
                        409,
                        format!("{} holds frames but no ticket", rd.dir.display()),
                    ));
                } else {
                    Cached::empty(ticket)
                };
                if had_ticket {
                    before = Some(c.upto);
                }
                let stored = go(rd, c, (!had_ticket).then_some(ticket_file));
                *slot = stored.as_ref().ok().cloned();
                stored.map(|c| (c.upto, c.finished))
            })
        };
        if result.is_err() && made_cas {
            let _ = std::fs::remove_dir(cas.dir());
        }
        if let Ok((upto, _)) = result
            && before != Some(upto)
        {
            crate::journal::note_run(&self.state, &ticket.run);
        }
        if let Ok((_, true)) = result
            && crate::notify::has_receivers(&self.state)
        {
            // A finished run's notification, as online: queued again by a repeated
            // import (at-least-once: an error here is the import's, and running it
            // again stores nothing twice but queues this).
            let outcome = rd
                .frames()
                .map_err(Refusal::internal)?
                .iter()
                .rev()
                .find_map(|f| match f.event {
                    kiln_protocol::Event::RunFinished { outcome } => Some(outcome),
                    _ => None,
                });
            if let Some(o) = outcome {
                crate::notify::emit_finished(&self.state, &ticket.run, o)
                    .map_err(Refusal::internal)?;
            }
        }
        result.map(|(upto, _)| upto)
    }
}
