//! The `stale` notification: a run that was claimed and then went quiet. The ingest
//! leaves a marker, `notify/live/<run>`, when it binds a claim; the sender thread
//! looks at the markers now and then ([`check`]): a run quiet for longer than the
//! stale threshold whose status is `stale` is notified once (the marker becomes
//! `<run>.notified`); a marker whose run ended or is gone is removed. Only runs
//! claimed since markers exist are watched; the cost is one `stat`-sized read per
//! live run per check.
use anyhow::{Context, Result};
use kiln_protocol::{RunId, STALE_AFTER_MS};
use std::path::PathBuf;

use super::{DIR, Kind, MAX_LISTED, emit};
use crate::fsutil::{now_ms, write_atomic};
use crate::state::State;
use crate::status::RunState;
use crate::store::RunDir;

/// Suffix of a marker whose stale notification was queued.
const NOTIFIED: &str = ".notified";

/// The folder of live-run markers.
pub fn live_dir(state: &State) -> PathBuf {
    state.root.join(DIR).join("live")
}

/// Starts watching `run` for going stale (the ingest calls it when a claim binds).
/// An error is logged: a missed marker costs that run's stale notification only.
pub fn watch(state: &State, run: &RunId) {
    if let Err(e) = write_atomic(&live_dir(state).join(run.to_string()), b"", 0o644) {
        log::warn!("run {run}: marking it live for stale notifications: {e:#}");
    }
}

/// One look at the live runs: queues `stale` for each newly stale one, forgets the
/// ended. Returns how many were queued.
pub fn check(state: &State) -> Result<usize> {
    let dir = live_dir(state);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let key = state.public_key()?;
    let now = now_ms();
    let mut queued = 0;
    for e in rd.take(MAX_LISTED) {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let (id, notified) = match name.strip_suffix(NOTIFIED) {
            Some(id) => (id, true),
            None => (name, false),
        };
        let Ok(run) = id.parse::<RunId>() else {
            continue;
        };
        let run_dir = RunDir::new(state, run);
        if !run_dir.exists() {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let quiet = run_dir
            .last_seen_ms()
            .is_none_or(|s| now.saturating_sub(s) > STALE_AFTER_MS);
        if !quiet {
            continue;
        }
        let s = match crate::status::current(&run_dir, &key) {
            Ok(s) => s,
            Err(err) => {
                log::warn!("notify: run {run}: {err:#}");
                continue;
            }
        };
        match s.state {
            RunState::Stale if !notified => {
                let secs = run_dir
                    .last_seen_ms()
                    .map_or(0, |seen| now.saturating_sub(seen) / 1000);
                queued += emit(state, &run, Kind::Stale, &format!("no report for {secs} s"))?;
                std::fs::rename(e.path(), dir.join(format!("{run}{NOTIFIED}")))
                    .with_context(|| format!("renaming {}", e.path().display()))?;
            }
            st if !st.is_live() => {
                let _ = std::fs::remove_file(e.path());
            }
            _ => {}
        }
    }
    Ok(queued)
}
