//! Run status as a fold over the ticket and events.log.
//!
//! [`fold`] is pure: ticket + frames + last-seen + abort request + now give the whole
//! status, so a restart rebuilds it from the folder. Its JSON is the one shape behind
//! `run show --json`, `GET /v1/runs/{run}` and `report --format json`; clock values
//! live only in fields ending in `_ms` or `_at`.
use anyhow::Result;
use kiln_protocol::{Event, Frame, Outcome, PublicKey, STALE_AFTER_MS, Sha256, Ticket};
use serde::Serialize;

use crate::fsutil::now_ms;
use crate::store::RunDir;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Issued, not yet claimed by an agent.
    Pending,
    /// An agent claimed it; no stage has started.
    Claimed,
    /// Stages are running.
    Running,
    /// Ended with an outcome.
    Finished,
    /// Ended on an abort (or aborted before anyone claimed it).
    Aborted,
    /// Nobody claimed it before the ticket's `not_after`.
    Expired,
    /// Claimed, unfinished, and no batch for [`STALE_AFTER_MS`].
    Stale,
}

impl RunState {
    /// The lowercase name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Claimed => "claimed",
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Aborted => "aborted",
            RunState::Expired => "expired",
            RunState::Stale => "stale",
        }
    }

    /// Whether more frames may still arrive.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            RunState::Pending | RunState::Claimed | RunState::Running | RunState::Stale
        )
    }
}

/// A run's derived status.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    /// Run id (32 hex digits).
    pub run: String,
    /// Plan name.
    pub plan: String,
    /// Host name of the ticket's binding.
    pub host: String,
    /// Life-cycle state.
    pub state: RunState,
    /// The run's outcome once it finished (`passed`, `failed`, …).
    pub outcome: Option<&'static str>,
    /// The agent-like exit status once the run ended (0 passed, 1 failed, 3 error).
    pub exit_status: Option<i32>,
    /// The operator's abort reason, if an abort was requested.
    pub abort_requested: Option<String>,
    /// Version string of the agent that claimed the run.
    pub agent_version: Option<String>,
    /// Hostname the agent reported.
    pub hostname: Option<String>,
    /// Frames stored.
    pub frames: u64,
    /// Ticket issue time, unix seconds.
    pub issued_at: u64,
    /// Ticket expiry, unix seconds.
    pub expires_at: u64,
    /// Agent clock of the claim, unix ms.
    pub claimed_at_ms: Option<u64>,
    /// Agent clock of the RunFinished frame, unix ms.
    pub finished_at_ms: Option<u64>,
    /// Coordinator clock of the last batch, unix ms.
    pub last_seen_ms: Option<u64>,
    /// One entry per plan stage, in plan order.
    pub stages: Vec<StageStatus>,
}

/// One stage's derived status.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    /// Index in the plan.
    pub index: u16,
    /// Stage name.
    pub name: String,
    /// Stage kind (`exec`, `container`, …).
    pub kind: &'static str,
    /// `not_run`, `running`, `lost` (started, and the run ended without it), or the
    /// last attempt's outcome.
    pub outcome: String,
    /// Finished attempts.
    pub attempts: u32,
    /// Exit code of the last finished attempt.
    pub exit_code: Option<i32>,
    /// Wall time of the last finished attempt.
    pub duration_ms: Option<u64>,
    /// One line from the last finished attempt.
    pub detail: String,
    /// Named measurements, in arrival order.
    pub measurements: Vec<Measurement>,
    /// Files the stage produced.
    pub artifacts: Vec<ArtifactRef>,
    /// Parts (matrix cells, disks, spec differences).
    pub parts: Vec<Part>,
    /// Log lines received.
    pub log_lines: u64,
    /// Agent clock of the last attempt's start, unix ms.
    pub started_at_ms: Option<u64>,
}

/// A measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Dotted name.
    pub name: String,
    /// Value.
    pub value: f64,
    /// Unit.
    pub unit: String,
}

/// An artifact named by digest.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactRef {
    /// Relative path in the stage's artifacts folder.
    pub name: String,
    /// sha256, the CAS name.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// A part of a stage.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    /// Name.
    pub name: String,
    /// Outcome (`passed`, `failed`, …).
    pub outcome: &'static str,
    /// One line.
    pub detail: String,
    /// Last lines of output.
    pub tail: Vec<String>,
}

/// Everything the fold reads.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The verified ticket.
    pub ticket: &'a Ticket,
    /// The stored frames, in seq order.
    pub frames: &'a [Frame],
    /// Coordinator clock of the last batch.
    pub last_seen_ms: Option<u64>,
    /// The operator's abort reason.
    pub abort: Option<&'a str>,
    /// Now, unix ms.
    pub now_ms: u64,
}

/// Folds ticket and frames into a status.
pub fn fold(i: Inputs<'_>) -> RunStatus {
    let mut f = Folder::new(i.ticket);
    i.frames.iter().for_each(|fr| f.push(fr));
    f.status(i.ticket, i.last_seen_ms, i.abort, i.now_ms)
}

/// The fold over frames, one frame at a time, so a cache can feed it only the frames
/// appended since it last looked; the clock-dependent part comes at the end.
#[derive(Debug, Clone)]
pub struct Folder {
    stages: Vec<StageStatus>,
    /// Per stage, the last [`crate::html::LOG_TAIL`] log lines.
    tails: Vec<std::collections::VecDeque<String>>,
    claimed: Option<u64>,
    finished: Option<u64>,
    outcome: Option<Outcome>,
    started_any: bool,
    agent_version: Option<String>,
    hostname: Option<String>,
    last_seq: u64,
}

impl Folder {
    /// The fold of a run with no frames.
    pub fn new(t: &Ticket) -> Self {
        let stages: Vec<StageStatus> = t
            .plan
            .stages
            .iter()
            .enumerate()
            .map(|(n, s)| StageStatus {
                index: n as u16,
                name: s.name.clone(),
                kind: s.kind.name(),
                outcome: "not_run".into(),
                attempts: 0,
                exit_code: None,
                duration_ms: None,
                detail: String::new(),
                measurements: Vec::new(),
                artifacts: Vec::new(),
                parts: Vec::new(),
                log_lines: 0,
                started_at_ms: None,
            })
            .collect();
        Folder {
            tails: vec![Default::default(); stages.len()],
            stages,
            claimed: None,
            finished: None,
            outcome: None,
            started_any: false,
            agent_version: None,
            hostname: None,
            last_seq: 0,
        }
    }

    /// Per stage, the last log lines (at most [`crate::html::LOG_TAIL`]).
    pub fn tails(&self) -> Vec<Vec<String>> {
        self.tails
            .iter()
            .map(|t| t.iter().cloned().collect())
            .collect()
    }

    /// Folds in the next frame.
    pub fn push(&mut self, f: &Frame) {
        self.last_seq = f.seq;
        let idx = f.event.stage().map(usize::from);
        let stage = idx.and_then(|s| self.stages.get_mut(s));
        match (&f.event, stage) {
            (
                Event::Claim {
                    agent_version: v, ..
                },
                _,
            ) => {
                self.claimed.get_or_insert(f.at_ms);
                self.agent_version = Some(v.clone());
            }
            (Event::Hello { hostname: h, .. }, _) => self.hostname = Some(h.clone()),
            (Event::RunFinished { outcome: o }, _) => {
                self.outcome = Some(*o);
                self.finished = Some(f.at_ms);
            }
            (Event::StageStarted { .. }, Some(s)) => {
                self.started_any = true;
                s.outcome = "running".into();
                s.started_at_ms = Some(f.at_ms);
            }
            (Event::Log { text, .. }, Some(s)) => {
                s.log_lines += 1;
                if let Some(t) = idx.and_then(|i| self.tails.get_mut(i)) {
                    if t.len() == crate::html::LOG_TAIL {
                        t.pop_front();
                    }
                    t.push_back(text.clone());
                }
            }
            (
                Event::Measure {
                    name, value, unit, ..
                },
                Some(s),
            ) => s.measurements.push(Measurement {
                name: name.clone(),
                value: *value,
                unit: unit.clone(),
            }),
            (
                Event::Artifact {
                    name, sha256, size, ..
                },
                Some(s),
            ) => s.artifacts.push(artifact(name, sha256, *size)),
            (
                Event::StageFinished {
                    outcome,
                    exit_code,
                    duration_ms,
                    detail,
                    ..
                },
                Some(s),
            ) => {
                s.attempts += 1;
                s.outcome = outcome.as_str().into();
                s.exit_code = *exit_code;
                s.duration_ms = Some(*duration_ms);
                s.detail = detail.clone();
            }
            (
                Event::Part {
                    name,
                    outcome,
                    detail,
                    tail,
                    ..
                },
                Some(s),
            ) => s.parts.push(Part {
                name: name.clone(),
                outcome: outcome.as_str(),
                detail: detail.clone(),
                tail: tail.clone(),
            }),
            _ => {}
        }
    }

    /// The status now: the folded frames plus last-seen, abort request and clock.
    pub fn status(
        &self,
        t: &Ticket,
        last_seen_ms: Option<u64>,
        abort: Option<&str>,
        now_ms: u64,
    ) -> RunStatus {
        let mut stages = self.stages.clone();
        let (outcome, claimed) = (self.outcome, self.claimed);
        let state = match (outcome, claimed) {
            (Some(Outcome::Aborted), _) => RunState::Aborted,
            (Some(_), _) => RunState::Finished,
            (None, None) if abort.is_some() => RunState::Aborted,
            (None, None) if now_ms / 1000 > t.not_after => RunState::Expired,
            (None, None) => RunState::Pending,
            (None, Some(_)) => {
                let quiet = last_seen_ms.is_some_and(|s| now_ms.saturating_sub(s) > STALE_AFTER_MS);
                match (quiet, self.started_any) {
                    (true, _) => RunState::Stale,
                    (false, true) => RunState::Running,
                    (false, false) => RunState::Claimed,
                }
            }
        };
        if !state.is_live() {
            for s in stages.iter_mut().filter(|s| s.outcome == "running") {
                s.outcome = "lost".into();
            }
        }
        let exit_status = match state {
            RunState::Finished | RunState::Aborted => {
                Some(outcome.unwrap_or(Outcome::Aborted).exit_status())
            }
            RunState::Expired => Some(3),
            _ => None,
        };
        RunStatus {
            run: t.run.to_string(),
            plan: t.plan.name.clone(),
            host: t.host.name.clone(),
            state,
            outcome: outcome.map(Outcome::as_str),
            exit_status,
            abort_requested: abort.map(str::to_string),
            agent_version: self.agent_version.clone(),
            hostname: self.hostname.clone(),
            frames: self.last_seq,
            issued_at: t.issued_at,
            expires_at: t.not_after,
            claimed_at_ms: claimed,
            finished_at_ms: self.finished,
            last_seen_ms,
            stages,
        }
    }
}

fn artifact(name: &str, sha: &Sha256, size: u64) -> ArtifactRef {
    ArtifactRef {
        name: name.to_string(),
        sha256: sha.to_string(),
        size,
    }
}

/// A run read from its folder: ticket, frames, and the folded status.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The verified ticket.
    pub ticket: Ticket,
    /// Stored frames.
    pub frames: Vec<Frame>,
    /// The fold of both.
    pub status: RunStatus,
}

/// Reads a run folder and folds it (now = the wall clock).
pub fn load(rd: &RunDir, key: &PublicKey) -> Result<Loaded> {
    let (_, ticket) = rd.ticket(key)?;
    let frames = rd.frames()?;
    let abort = rd.abort_request();
    let status = fold(Inputs {
        ticket: &ticket,
        frames: &frames,
        last_seen_ms: rd.last_seen_ms(),
        abort: abort.as_deref(),
        now_ms: now_ms(),
    });
    Ok(Loaded {
        ticket,
        frames,
        status,
    })
}

/// A run's status from the per-process fold cache (only new frames are decoded).
pub fn current(rd: &RunDir, key: &PublicKey) -> Result<RunStatus> {
    let (last_seen, abort) = (rd.last_seen_ms(), rd.abort_request());
    with_folded(rd, key, |t, f| {
        f.status(t, last_seen, abort.as_deref(), now_ms())
    })
}

/// A run's status and per-stage log tails, from the fold cache (for the HTML page).
pub fn current_with_tails(rd: &RunDir, key: &PublicKey) -> Result<(RunStatus, Vec<Vec<String>>)> {
    let (last_seen, abort) = (rd.last_seen_ms(), rd.abort_request());
    with_folded(rd, key, |t, f| {
        (
            f.status(t, last_seen, abort.as_deref(), now_ms()),
            f.tails(),
        )
    })
}

/// Pretty JSON of a status (one shape for the CLI, the API and reports).
pub fn to_json(s: &RunStatus) -> String {
    serde_json::to_string_pretty(s).expect("statuses always encode")
}

mod cache;
#[cfg(test)]
mod tests;

pub use cache::with_folded;
