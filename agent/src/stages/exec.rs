//! The `exec` stage: a command on the agent's host, in the stage's folder.
use kiln_protocol::Outcome;

use super::proc::{ProcEnd, ProcSpec, run_streamed};
use super::{StageCtx, StageResult};

/// Runs the command; exit 0 passed, 42 warning, 43 skipped, other failed,
/// could-not-start error; a stop ends it timed_out or aborted.
pub async fn run(ctx: &StageCtx, command: &[String]) -> StageResult {
    let mut spec = ProcSpec::new(command.iter().cloned());
    spec.env = ctx.env();
    let out = run_streamed(ctx, &spec).await;
    match out.end {
        ProcEnd::Exited(code) => StageResult {
            outcome: Outcome::from_exit(code),
            exit_code: Some(code),
            detail: format!("exit {code}"),
        },
        ProcEnd::Signaled(sig) => StageResult {
            outcome: Outcome::Failed,
            exit_code: None,
            detail: format!("killed by signal {sig}"),
        },
        ProcEnd::Stopped(stop) => {
            StageResult::new(stop.outcome(), stop.detail(ctx.stage.timeout_s))
        }
        ProcEnd::SpawnFailed(e) => StageResult::error(format!("could not start: {e}")),
    }
}
