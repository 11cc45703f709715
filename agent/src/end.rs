//! How a run ends, and how long the agent waits for acks: shared by the run loop
//! (`runner`), the session it drives (`session`) and the reporter, none of which
//! imports the others for it.
use kiln_protocol::Outcome;
use std::time::Duration;

use crate::exit::{EXIT_INFRA, EXIT_REFUSED};

/// How long the agent keeps trying to get its claim and its final frame acked.
pub const ACK_LIMIT: Duration = Duration::from_secs(300);

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
    /// The agent's exit status for this end ([`crate::exit`]).
    pub fn exit_status(&self) -> i32 {
        match self {
            RunEnd::Refused(_) => EXIT_REFUSED,
            RunEnd::Finished { outcome, .. } => crate::exit::for_outcome(*outcome),
            RunEnd::Infra(_) => EXIT_INFRA,
        }
    }
}
