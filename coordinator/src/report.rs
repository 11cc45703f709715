//! Run listings, reports and logs for people and scripts.
use crate::cli::*;
use crate::state::State;
use anyhow::{Result, bail};

/// Not yet implemented.
pub fn cmd_runs(state: &State, c: &RunsCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}

/// Not yet implemented.
pub fn cmd_show(state: &State, c: &RunShowCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}

/// Not yet implemented.
pub fn cmd_watch(state: &State, c: &RunWatchCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}

/// Not yet implemented.
pub fn cmd_logs(state: &State, c: &RunLogsCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}

/// Not yet implemented.
pub fn cmd_report(state: &State, c: &ReportCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}
