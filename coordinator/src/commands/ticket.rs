//! `ticket issue` and `ticket show`.
use anyhow::Result;

use crate::cli::{TicketIssueCmd, TicketShowCmd};
use crate::exit;
use crate::state::State;
use crate::ticket::{issue, show, write_out};
use crate::units::parse_duration;

/// `ticket issue`: prints only the run id on stdout.
pub fn cmd_issue(state: &State, c: &TicketIssueCmd) -> Result<i32> {
    let ttl_s = parse_duration(&c.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let issued = issue(state, &c.plan, &c.host, ttl_s, c.url.as_deref())?;
    if let Some(out) = &c.out {
        write_out(state, &issued, out)?;
    }
    println!("{}", issued.run);
    Ok(exit::OK)
}

/// `ticket show`: decode, verify against this coordinator's key, print.
pub fn cmd_show(state: &State, c: &TicketShowCmd) -> Result<i32> {
    show::show(state, &c.file, c.json)
}
