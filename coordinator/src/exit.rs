//! The coordinator's exit statuses, defined once. A run's status maps through
//! [`kiln_protocol::Outcome::exit_status`] (0 passed, 1 failed or aborted, 3 error),
//! so `run watch` exits as the agent that ran it did.
use kiln_protocol::Outcome;

/// The command did what it was asked.
pub const OK: i32 = 0;
/// Refused: bad arguments, an error, or output known to be partial (a corrupt
/// events.log under `run logs`).
pub const REFUSED: i32 = kiln_cmdline::args::EXIT_USAGE;

/// The exit status of a run that ended in error, expired or is corrupt (3), the
/// agent's status for [`Outcome::Error`].
pub fn error() -> i32 {
    Outcome::Error.exit_status()
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_is_the_agents_three() {
        assert_eq!(super::error(), 3);
        assert_ne!(super::REFUSED, super::error());
    }
}
