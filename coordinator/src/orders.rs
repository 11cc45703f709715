//! Orders to a held run (`run release`, `run retry`, `run approve`).
//!
//! `runs/<run>/order` holds the pending order: `postcard((held_seq, Command))`, bound
//! to the `Held` frame it was given for. The ack of every batch carries it while that
//! frame is still the run's last (the agent takes it once: the frame it emits next
//! ends the hold it was for). `runs/<run>/orders.log` records every request as one
//! JSON line ([`OrderEvent`]): who, when, what. What the agent did with it comes back
//! as its `Order` frames.
use anyhow::{Context, Result, bail};
use kiln_protocol::{Approval, Command, Event, PublicKey, StageKind};
use serde::{Deserialize, Serialize};
use std::io::Write;

use crate::fsutil::{now_ms, write_atomic};
use crate::state::State;
use crate::store::RunDir;

/// The pending order's file in a run folder.
pub const ORDER: &str = "order";
/// The request log's file in a run folder.
pub const ORDERS_LOG: &str = "orders.log";
/// Most bytes of the pending order read.
const MAX_ORDER_BYTES: u64 = 64 << 10;
/// Most bytes of the request log read (and past which requests are refused).
const MAX_LOG_BYTES: u64 = 1 << 20;

/// One order to a held run, or what the agent did with one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent {
    /// When (the coordinator's clock for requests, the agent's for its frames), unix ms.
    pub at_ms: u64,
    /// Who: `operator USER` for a request, `agent` for what the agent did.
    pub by: String,
    /// What (`release`, `retry stage "disk"`, `approve disk "SN1" for stage #2`).
    pub what: String,
    /// `requested`, `done`, or `refused: WHY`.
    pub result: String,
}

/// What an operator asks of a held run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// End the hold: power off (or reboot).
    Release {
        /// Reboot instead of powering off.
        reboot: bool,
    },
    /// Run a stage (by name) once more.
    Retry {
        /// The stage's name.
        stage: String,
    },
    /// Let a disk (by serial) of a storage stage past the wipe gate and run the stage.
    Approve {
        /// The stage's name.
        stage: String,
        /// The disk's serial.
        serial: String,
    },
}

/// The seq of the run's last frame when it is a `Held` frame: the hold an order is for.
pub fn held_seq(rd: &RunDir) -> Result<Option<u64>> {
    let frames = rd.frames()?;
    Ok(frames.last().and_then(|f| match f.event {
        Event::Held { .. } => Some(f.seq),
        _ => None,
    }))
}

/// Records an operator's request for a held run and makes it the pending order; the
/// agent gets it with its next ack (its heartbeat, every 2 s). Refused (one line) when
/// the run is not held, or names no such stage (for `approve`: no storage stage).
/// Returns the order's words.
pub fn request(state: &State, rd: &RunDir, key: &PublicKey, req: &Request) -> Result<String> {
    request_by(state, rd, key, req, &format!("operator {}", who()))
}

/// [`request`] recorded as made by `by` (`operator NAME (web)` from the pages).
pub fn request_by(
    state: &State,
    rd: &RunDir,
    key: &PublicKey,
    req: &Request,
    by: &str,
) -> Result<String> {
    let (_, ticket) = rd.ticket(key)?;
    let _lock = rd.lock()?;
    let Some(seq) = held_seq(rd)? else {
        bail!(
            "run {} is not held (kiln-coordinator run show {} says what it is doing)",
            rd.id,
            rd.id
        );
    };
    let stage_index = |name: &str| -> Result<u16> {
        ticket
            .plan
            .stages
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as u16)
            .with_context(|| {
                let names: Vec<&str> = ticket.plan.stages.iter().map(|s| s.name.as_str()).collect();
                format!(
                    "run {} has no stage {name:?} (its stages: {})",
                    rd.id,
                    names.join(", ")
                )
            })
    };
    let (what, cmd) = match req {
        Request::Release { reboot } => (
            if *reboot {
                "release (reboot)"
            } else {
                "release"
            }
            .to_string(),
            Command::Release { reboot: *reboot },
        ),
        Request::Retry { stage } => (
            format!("retry stage {stage:?}"),
            Command::RetryStage {
                stage: stage_index(stage)?,
            },
        ),
        Request::Approve { stage, serial } => {
            let i = stage_index(stage)?;
            if !matches!(ticket.plan.stages[i as usize].kind, StageKind::Storage(_)) {
                bail!("stage {stage:?} of run {} is no storage stage", rd.id);
            }
            let serial = serial.trim();
            if serial.is_empty() || serial.len() > kiln_protocol::limits::MAX_NAME_LEN {
                bail!("give the disk's serial (--disk SERIAL, at most 128 bytes)");
            }
            let approval = Approval::sign(rd.id, i, serial, &state.signing_key()?);
            (
                format!("approve disk {serial:?} for stage {stage:?}"),
                Command::Approve(approval),
            )
        }
    };
    set_order(rd, seq, &cmd)?;
    append_log(
        rd,
        &OrderEvent {
            at_ms: now_ms(),
            by: by.to_string(),
            what: what.clone(),
            result: "requested".into(),
        },
    )?;
    crate::journal::note_run(state, &rd.id);
    Ok(what)
}

/// Makes `cmd` the pending order for the `Held` frame `held_seq` (replacing any).
/// Tests use it to hand the agent an order the CLI would never make.
pub fn set_order(rd: &RunDir, held_seq: u64, cmd: &Command) -> Result<()> {
    let bytes = postcard::to_allocvec(&(held_seq, cmd)).context("encoding the order")?;
    write_atomic(&rd.path(ORDER), &bytes, 0o644)
}

/// The pending order for the run, if it was given for the `Held` frame `held_seq`.
pub fn pending(rd: &RunDir, held_seq: u64) -> Option<Command> {
    let bytes =
        kiln_protocol::io::read_file_capped(&rd.path(ORDER), MAX_ORDER_BYTES, "an order").ok()?;
    let ((seq, cmd), rest) = postcard::take_from_bytes::<(u64, Command)>(&bytes).ok()?;
    (rest.is_empty() && seq == held_seq).then_some(cmd)
}

fn who() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.is_empty() && u.len() <= 64 && !u.contains(char::is_whitespace))
        .unwrap_or_else(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self")
                .map_or_else(|_| "unknown".into(), |m| format!("uid {}", m.uid()))
        })
}

fn append_log(rd: &RunDir, e: &OrderEvent) -> Result<()> {
    let p = rd.path(ORDERS_LOG);
    if std::fs::metadata(&p).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        bail!("{} is full ({MAX_LOG_BYTES} bytes)", p.display());
    }
    let mut line = serde_json::to_string(e).context("encoding an order")?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_data())
        .with_context(|| format!("writing {}", p.display()))
}

/// The operator's requests for the run, oldest first (lines that do not parse are
/// skipped: the log is the coordinator's own).
pub fn read(rd: &RunDir) -> Result<Vec<OrderEvent>> {
    let p = rd.path(ORDERS_LOG);
    let text = match kiln_protocol::io::read_text_capped(&p, 2 * MAX_LOG_BYTES, "an orders log") {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
