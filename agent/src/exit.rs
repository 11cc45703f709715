//! The agent's exit statuses, defined once: a finished run exits with its outcome's
//! [`Outcome::exit_status`] (the protocol crate's mapping); the agent adds a refusal
//! and an infrastructure error before or around the stages.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | passed (warnings and skips included) |
//! | 1 | a stage failed (timed out, held, aborted) |
//! | 2 | refused: bad ticket, bad arguments, claim refused |
//! | 3 | infrastructure error |
use kiln_protocol::Outcome;

/// Exit status: the run passed (warnings and skips included).
pub const EXIT_PASSED: i32 = 0;
/// Exit status: a stage failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit status: refused (bad ticket, bad arguments).
pub const EXIT_REFUSED: i32 = 2;
/// Exit status: infrastructure error.
pub const EXIT_INFRA: i32 = 3;

/// The exit status of a run that finished with `outcome`.
pub fn for_outcome(outcome: Outcome) -> i32 {
    outcome.exit_status()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's names agree with the protocol crate's mapping, and a refusal has a
    /// status of its own that no outcome takes.
    #[test]
    fn statuses_agree_with_the_outcome_mapping() {
        assert_eq!(for_outcome(Outcome::Passed), EXIT_PASSED);
        assert_eq!(for_outcome(Outcome::Warning), EXIT_PASSED);
        assert_eq!(for_outcome(Outcome::Failed), EXIT_FAILED);
        assert_eq!(for_outcome(Outcome::Error), EXIT_INFRA);
        let all = [
            Outcome::Passed,
            Outcome::Warning,
            Outcome::Skipped,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::Held,
            Outcome::Aborted,
            Outcome::Error,
        ];
        assert!(all.iter().all(|o| for_outcome(*o) != EXIT_REFUSED));
        // Bad arguments (parsed by the shared command-line crate) are a refusal too.
        assert_eq!(kiln_cmdline::args::EXIT_USAGE, EXIT_REFUSED);
    }
}
