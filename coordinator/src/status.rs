//! Run status as a fold over the ticket and events.log.
//!
//! [`fold`] is pure: ticket + frames + last-seen + abort request + now give the whole
//! status, so a restart rebuilds it from the folder. Its JSON is the one shape behind
//! `run show --json`, `GET /v1/runs/{run}` and `report --format json`; clock values
//! live only in fields ending in `_ms` or `_at`.
use anyhow::Result;
use kiln_protocol::{Frame, PublicKey, Ticket};
use serde::{Deserialize, Serialize};

use crate::claims::{ClaimEvent, Kind};
use crate::fsutil::now_ms;
pub use crate::store::AbortRequest;
pub use crate::store::Corruption;
use crate::store::{Events, RunDir, files};

/// How long a claimed, unfinished run with an abort request waits for its agent:
/// once nothing came for this long after the later of the request and the last
/// batch, the run is [`RunState::Aborted`] (its running stages `lost`), not stale
/// for ever. The agent would have had the abort with its next heartbeat (every few
/// seconds), so this is the stale threshold.
pub const ABORT_GRACE_MS: u64 = kiln_protocol::STALE_AFTER_MS;

/// Log lines per stage the fold keeps as the stage's tail (shown on a run's page).
pub const LOG_TAIL: usize = 50;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Issued, not yet claimed by an agent.
    Pending,
    /// Lights-out: taken from the power queue; the boot override and power-on are
    /// being sent to the host's BMC (`power.log`).
    Powering,
    /// Lights-out: powered on, waiting for the agent's claim (the boot watchdog
    /// runs).
    Booting,
    /// An agent claimed it; no stage has started.
    Claimed,
    /// Stages are running.
    Running,
    /// Ended with an outcome.
    Finished,
    /// Ended on an abort (or aborted before anyone claimed it, or its agent sent
    /// nothing for [`ABORT_GRACE_MS`] after the abort request).
    Aborted,
    /// Nobody claimed it before the ticket's `not_after`.
    Expired,
    /// Claimed, unfinished, and no batch for [`kiln_protocol::STALE_AFTER_MS`] (with
    /// an abort request, only until [`ABORT_GRACE_MS`] passed: then `Aborted`).
    Stale,
    /// The stages are done and the machine waits for a person (the plan's `hold`):
    /// [`RunStatus::hold`] says until when and how to log in.
    Held,
    /// events.log holds a record that does not decode ([`RunStatus::corrupt`] says
    /// which); the status is that of the records before it, and nothing more is
    /// stored for the run.
    Corrupt,
}

impl RunState {
    /// The lowercase name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Powering => "powering",
            RunState::Booting => "booting",
            RunState::Claimed => "claimed",
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Aborted => "aborted",
            RunState::Expired => "expired",
            RunState::Stale => "stale",
            RunState::Corrupt => "corrupt",
            RunState::Held => "held",
        }
    }

    /// Whether more frames may still arrive.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            RunState::Pending
                | RunState::Powering
                | RunState::Booting
                | RunState::Claimed
                | RunState::Running
                | RunState::Stale
                | RunState::Held
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
    /// The first corrupt record of events.log, when state is `corrupt`.
    pub corrupt: Option<Corruption>,
    /// One entry per plan stage, in plan order.
    pub stages: Vec<StageStatus>,
    /// The claim that bound the run, as the coordinator recorded it: its clock, the
    /// source address (`ip:port`, or `import`) and the agent key's fingerprint.
    pub claim: Option<ClaimEvent>,
    /// Another key tried to claim the run and no operator has acknowledged it yet
    /// (`run ack-contest`).
    pub contested: bool,
    /// Every recorded claim event: the claim, contested and refused claims, and the
    /// operator's acknowledgements, in order.
    pub claim_events: Vec<ClaimEvent>,
    /// Fingerprint of the enrolled agent key the ticket names (the only key that may
    /// claim the run).
    pub enrolled_key: Option<String>,
    /// Lights-out runs (`ticket issue --boot`): the coordinator's power record
    /// (`power.log`): phase, queue place, every power action, the infrastructure
    /// error that ended the run.
    pub power: Option<crate::lights::PowerView>,
    /// While the run is held: until when, and how to log in.
    pub hold: Option<HoldStatus>,
    /// Every order to a held run and what came of it: the operator's requests (as
    /// the coordinator recorded them) and the agent's `Order` frames, in time order.
    pub orders: Vec<OrderEvent>,
}

/// A held run's machine, from its last `Held` frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HoldStatus {
    /// The outcome of the stages so far.
    pub outcome: &'static str,
    /// When the hold ends by itself (agent clock), unix ms.
    pub until_ms: u64,
    /// The machine's addresses.
    pub addrs: Vec<String>,
    /// The SSH server's host key fingerprint (`SHA256:…`); none without a server.
    pub host_key: Option<String>,
    /// `ssh root@ADDR` per address (empty without an SSH server).
    pub ssh: Vec<String>,
}

pub use crate::orders::OrderEvent;

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
    /// The operator's abort request.
    pub abort: Option<&'a AbortRequest>,
    /// Now, unix ms.
    pub now_ms: u64,
    /// The corrupt record `frames` stop before, if any.
    pub corrupt: Option<&'a Corruption>,
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
    let Events { frames, corrupt } = rd.events()?;
    let abort = rd.abort();
    let mut status = fold(Inputs {
        ticket: &ticket,
        frames: &frames,
        last_seen_ms: rd.last_seen_ms(),
        abort: abort.as_ref(),
        now_ms: now_ms(),
        corrupt: corrupt.as_ref(),
    });
    annotate(rd, &mut status)?;
    Ok(Loaded {
        ticket,
        frames,
        status,
    })
}

/// A run's status from the per-process fold cache (only new frames are decoded).
pub fn current(rd: &RunDir, key: &PublicKey) -> Result<RunStatus> {
    let (last_seen, abort) = (rd.last_seen_ms(), rd.abort());
    let mut s = with_folded(rd, key, |t, f| {
        f.status(t, last_seen, abort.as_ref(), now_ms())
    })?;
    annotate(rd, &mut s)?;
    Ok(s)
}

/// Adds what the run folder records beside the frames: the claim's source and key,
/// contested and refused claims. A run bound before claims were recorded shows its
/// key with source `unknown`.
pub fn annotate(rd: &RunDir, s: &mut RunStatus) -> Result<()> {
    let log = crate::claims::read(rd)?;
    s.contested = log.contested();
    s.claim = log.claim().cloned();
    if s.claim.is_none()
        && let Some(k) = rd.claim_key()?
    {
        let at_ms = std::fs::metadata(rd.path(files::CLAIM))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        s.claim = Some(ClaimEvent {
            event: Kind::Claim,
            at_ms,
            source: "unknown".into(),
            fingerprint: Some(k.fingerprint()),
            detail: String::new(),
        });
    }
    s.claim_events = log.events;
    let mut orders = crate::orders::read(rd)?;
    orders.append(&mut s.orders);
    orders.sort_by_key(|o| o.at_ms);
    s.orders = orders;
    annotate_power(rd, s);
    Ok(())
}

/// Adds a lights-out run's power record: `pending` becomes `powering` or `booting`,
/// and a run the coordinator ended (never booted, agent lost) is finished with
/// outcome `error`.
fn annotate_power(rd: &RunDir, s: &mut RunStatus) {
    let claimed = !matches!(s.state, RunState::Pending | RunState::Expired) || s.claim.is_some();
    let Some(v) = crate::lights::view(rd, &s.run, claimed) else {
        return;
    };
    match (s.state, v.phase) {
        (RunState::Pending, "powering") => s.state = RunState::Powering,
        (RunState::Pending, "booting") => s.state = RunState::Booting,
        _ => {}
    }
    if v.error.is_some() && s.state.is_live() {
        s.state = RunState::Finished;
        s.outcome = Some("error");
        s.exit_status = Some(kiln_protocol::Outcome::Error.exit_status());
    }
    s.power = Some(v);
}

/// A run's status and per-stage log tails, from the fold cache: the one loader of
/// the run page, served (`GET /runs/{run}`) or written (`report --format html`).
pub fn current_with_tails(rd: &RunDir, key: &PublicKey) -> Result<(RunStatus, Vec<Vec<String>>)> {
    let (last_seen, abort) = (rd.last_seen_ms(), rd.abort());
    let (mut s, tails) = with_folded(rd, key, |t, f| {
        (f.status(t, last_seen, abort.as_ref(), now_ms()), f.tails())
    })?;
    annotate(rd, &mut s)?;
    Ok((s, tails))
}

/// Pretty JSON of a status (one shape for the CLI, the API and reports), with the
/// characters a terminal would act on escaped ([`crate::visible::json_safe`]).
pub fn to_json(s: &RunStatus) -> String {
    crate::visible::json_safe(serde_json::to_string_pretty(s).expect("statuses always encode"))
}

mod cache;
mod folder;
mod query;

pub use query::{Summary, statuses, summaries};

pub use folder::{Folder, fold};
#[cfg(test)]
mod tests;

pub use cache::{forget, with_folded};
