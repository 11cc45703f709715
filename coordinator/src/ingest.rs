//! Batch ingest: verify, bind the claim, dedupe, append, ack. Shared by HTTP and import:
//! both go through one check (`check`) before anything is written.
//!
//! One writer per run at a time: a per-run mutex inside the server, and an flock on
//! `runs/<run>/lock` so `import` from the command line cannot interleave with it.
use anyhow::Result;
use kiln_protocol::{Ack, Command, PublicKey, RunId, Ticket};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::fsutil::now_s;
use crate::state::State;
use crate::store::{RunDir, files};

mod bundle;
mod check;
mod logfile;

use check::validate;
use logfile::{Cached, refresh, store};

#[doc(hidden)]
pub use bundle::check_for_fuzzing as check_bundle_for_fuzzing;
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

    pub(crate) fn internal(e: anyhow::Error) -> Self {
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

/// The most bytes a run's events.log may hold; a batch that would pass it is refused
/// (413), so one agent cannot fill the disk or make every listing slow.
pub const MAX_EVENTS_LOG_BYTES: u64 = 512 << 20;

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

    /// Ingests one sealed batch for `run` (the run the URL names).
    pub fn ingest(&self, run: &RunId, body: &[u8], mode: Mode) -> Result<Ack, Refusal> {
        let rd = RunDir::new(&self.state, *run);
        if !rd.exists() {
            return Err(Refusal::new(404, format!("no run {run}")));
        }
        self.with_run(run, |rd, slot| {
            let c = refresh(rd, &self.key, slot)?;
            let v = validate(run, body, c, mode, now_s())?;
            store(rd, c, &v).map_err(|e| {
                c.len = u64::MAX; // forces a rescan next time
                Refusal::internal(e)
            })?;
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
        })
    }

    /// Imports a bundle's batches whole: every batch is checked against the stored
    /// state and the ones before it, and only when all pass is anything written:
    /// the ticket (when the run is new), then `before_store` (the bundle's blobs),
    /// then the frames. Returns the last stored seq.
    pub(crate) fn import(
        &self,
        ticket: &Ticket,
        ticket_file: &[u8],
        batches: &[Vec<u8>],
        before_store: impl FnOnce() -> Result<()>,
    ) -> Result<u64, Refusal> {
        let run = ticket.run;
        self.with_run(&run, |rd, slot| {
            let new = !rd.exists();
            if new {
                *slot = Some(Cached::empty(ticket));
            }
            let c = if new {
                slot.as_mut().expect("just set")
            } else {
                refresh(rd, &self.key, slot)?
            };
            let mut sim = c.clone();
            let mut verdicts = Vec::with_capacity(batches.len());
            for (i, b) in batches.iter().enumerate() {
                let v = validate(&run, b, &sim, Mode::Import, now_s()).map_err(|r| Refusal {
                    reason: format!("batch {}: {}", i + 1, r.reason),
                    ..r
                })?;
                sim.advance(&v);
                verdicts.push(v);
            }
            let write = || -> Result<()> {
                if new {
                    crate::fsutil::write_atomic(&rd.path(files::TICKET), ticket_file, 0o644)?;
                }
                before_store()?;
                for v in &verdicts {
                    store(rd, c, v)?;
                }
                Ok(())
            };
            write().map_err(|e| {
                c.len = u64::MAX;
                Refusal::internal(e)
            })?;
            Ok(c.upto)
        })
    }
}
