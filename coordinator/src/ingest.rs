//! Batch ingest: verify, bind the claim, dedupe, append, ack. Shared by HTTP and import.
use crate::cli::*;
use crate::state::State;
use anyhow::{Result, bail};

/// Not yet implemented.
pub fn cmd_import(state: &State, c: &ImportCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}
