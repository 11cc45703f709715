//! Ticket issuing and inspection.
use crate::cli::*;
use crate::state::State;
use anyhow::{Result, bail};

/// Not yet implemented.
pub fn cmd_issue(state: &State, c: &TicketIssueCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}

/// Not yet implemented.
pub fn cmd_show(state: &State, c: &TicketShowCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}
