//! Per-run storage: ticket.kiln, events.log (append-only COBS frames), control files.
use crate::cli::*;
use crate::state::State;
use anyhow::{Result, bail};

/// Not yet implemented.
pub fn cmd_abort(state: &State, c: &RunAbortCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}
