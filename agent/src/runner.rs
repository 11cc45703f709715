//! The run loop: claim, stages in order with timeouts and retries, fail_fast, outcome.
use kiln_protocol::{Outcome, PublicKey};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cli::RunCmd;

/// Everything a run needs; built by `run` from flags and by `boot` from the kernel
/// command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The ticket file's bytes.
    pub ticket_bytes: Vec<u8>,
    /// Where the ticket came from (a file's `<path>.cas` folder holds offline CAS objects).
    pub ticket_path: Option<PathBuf>,
    /// Keys the ticket must be signed by.
    pub trusted: Vec<PublicKey>,
    /// Coordinator URL (overrides the ticket's); `None` and no ticket URL: offline.
    pub url: Option<String>,
    /// Offline bundle to write.
    pub out: Option<PathBuf>,
    /// Work folder (spool, claim key, stage folders).
    pub work: Option<PathBuf>,
    /// Folder of CAS objects for offline runs.
    pub cas_dir: Option<PathBuf>,
    /// Offline secrets by name.
    pub secrets: BTreeMap<String, Vec<u8>>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    /// The ticket was refused before anything ran (one-line reason).
    Refused(String),
    /// The stages ran; `shutdown` when the coordinator asked the machine to power off.
    Finished {
        /// The folded outcome.
        outcome: Outcome,
        /// A `Shutdown` command arrived.
        shutdown: bool,
    },
    /// Infrastructure failure outside any stage (one-line reason).
    Infra(String),
}

impl RunEnd {
    /// The agent's exit status for this end (DESIGN.md).
    pub fn exit_status(&self) -> i32 {
        match self {
            RunEnd::Refused(_) => crate::cli::EXIT_REFUSED,
            RunEnd::Finished { outcome, .. } => outcome.exit_status(),
            RunEnd::Infra(_) => crate::cli::EXIT_INFRA,
        }
    }
}

/// Verifies the ticket, claims the run, runs the stages, reports; blocking.
pub fn run_ticket(opts: RunOptions) -> RunEnd {
    let _ = opts;
    RunEnd::Infra("run is not implemented yet".into())
}

/// `run`: returns the exit status.
pub fn cmd_run(c: &RunCmd) -> i32 {
    let _ = c;
    eprintln!("kiln-agent: run is not implemented yet");
    crate::cli::EXIT_INFRA
}
