//! The `smart` stage.
use kiln_protocol::SmartSpec;

use crate::stages::{StageCtx, StageResult};

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &SmartSpec) -> StageResult {
    let _ = (ctx, spec);
    StageResult::error("the smart stage is not implemented yet")
}
