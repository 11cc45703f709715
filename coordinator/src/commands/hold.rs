//! Orders to a held run: `run release`, `run retry`, `run approve`.
use anyhow::Result;
use argh::FromArgs;

use crate::exit;
use crate::orders::{Request, request};
use crate::state::State;
use crate::store::RunDir;

/// End a held run: the machine powers off (or reboots) once the agent hears of it.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "release")]
pub struct RunReleaseCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
    /// reboot instead of powering off
    #[argh(switch)]
    pub reboot: bool,
}

/// Run one stage of a held run again (a new attempt; the run's outcome is
/// recomputed and the machine holds again if the hold still applies).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "retry")]
pub struct RunRetryCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
    /// the stage's name
    #[argh(option)]
    pub stage: String,
}

/// Let one disk of a held run's storage stage past the wipe gate and run the stage
/// again: an approval signed by the coordinator key, bound to run, stage and serial.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "approve")]
pub struct RunApproveCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
    /// the storage stage's name
    #[argh(option)]
    pub stage: String,
    /// the disk's serial number
    #[argh(option)]
    pub disk: String,
}

fn send(state: &State, run: &str, req: &Request) -> Result<i32> {
    let id = state.resolve_run(run)?;
    let what = request(state, &RunDir::new(state, id), &state.public_key()?, req)?;
    println!("{what} requested for run {id}: the agent gets it with its next heartbeat");
    Ok(exit::OK)
}

/// `run release`.
pub fn cmd_release(state: &State, c: &RunReleaseCmd) -> Result<i32> {
    send(state, &c.run, &Request::Release { reboot: c.reboot })
}

/// `run retry`.
pub fn cmd_retry(state: &State, c: &RunRetryCmd) -> Result<i32> {
    send(
        state,
        &c.run,
        &Request::Retry {
            stage: c.stage.clone(),
        },
    )
}

/// `run approve`.
pub fn cmd_approve(state: &State, c: &RunApproveCmd) -> Result<i32> {
    send(
        state,
        &c.run,
        &Request::Approve {
            stage: c.stage.clone(),
            serial: c.disk.clone(),
        },
    )
}
