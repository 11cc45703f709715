//! The `ssh` stage.
use kiln_protocol::SshSpec;

use super::{StageCtx, StageResult};

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &SshSpec) -> StageResult {
    let _ = (ctx, spec);
    StageResult::error("the ssh stage is not implemented yet")
}
