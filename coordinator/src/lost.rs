//! Lost agents of runs without power control: a claimed, unfinished run whose agent
//! sent nothing for `lost_after` ends `error: agent lost` with the last lines it sent,
//! recorded in the run's power.log as the power loop does for lights-out runs
//! (`powerq.rs` watches those). A late agent is then refused and recorded by ingest.
//! The watch walks the index's live runs only, never every run folder.
use kiln_protocol::{PublicKey, RunId};
use std::time::Duration;

use crate::fsutil::now_ms;
use crate::lights::{self, Event, Record, Settings};
use crate::state::State;
use crate::status::RunState;
use crate::store::RunDir;

/// How often the live runs are looked at.
pub const EVERY: Duration = Duration::from_secs(5);

/// Ends run `id` `agent lost` when it is claimed, unfinished, without power control,
/// and its agent has been silent for `lost_after`; returns whether it did.
pub fn check(state: &State, key: &PublicKey, id: &RunId, lost_after: Duration) -> bool {
    let rd = RunDir::new(state, *id);
    if rd.path(lights::POWER_LOG).exists() {
        return false; // the power loop's, or already ended
    }
    let Ok((s, tails)) = crate::status::current_with_tails(&rd, key) else {
        return false;
    };
    if !matches!(
        s.state,
        RunState::Claimed | RunState::Running | RunState::Stale
    ) {
        return false;
    }
    let last = s
        .last_seen_ms
        .or(s.claim.as_ref().map(|c| c.at_ms))
        .unwrap_or(0);
    let silent = now_ms().saturating_sub(last);
    if silent < lost_after.as_millis() as u64 {
        return false;
    }
    let lines: Vec<String> = tails.into_iter().flatten().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    let mut detail = format!(
        "agent lost: nothing from it for {} (lost_after {})",
        crate::fmt::fmt_ms(silent),
        crate::fmt::fmt_ms(lost_after.as_millis() as u64)
    );
    if !tail.is_empty() {
        detail += &format!("; its last lines: {tail}");
    }
    let mut watched = Record::new(
        Event::Requested,
        "watched for a lost agent (no power control)",
    );
    watched.settings = Some(Settings {
        boot_timeout_s: 0,
        lost_after_s: lost_after.as_secs(),
        power_off: false,
    });
    let ended = lights::append(&rd, &watched)
        .and_then(|()| lights::append(&rd, &Record::new(Event::Ended, detail)));
    match ended {
        Ok(()) => {
            log::warn!("run {id}: agent lost after {}", crate::fmt::fmt_ms(silent));
            true
        }
        Err(e) => {
            log::error!("run {id}: recording its lost agent: {e:#}");
            false
        }
    }
}
