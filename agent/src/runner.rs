//! The run loop: claim, stages in order with timeouts and retries, fail_fast, outcome.
use crate::cli::RunCmd;

/// `run`: returns the exit status.
pub fn cmd_run(c: &RunCmd) -> i32 {
    let _ = c;
    eprintln!("kiln-agent: run is not implemented yet");
    crate::cli::EXIT_INFRA
}
