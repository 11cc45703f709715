//! The `inventory` stage.
use crate::stages::{StageCtx, StageResult};

/// Runs the stage.
pub async fn run(ctx: &StageCtx) -> StageResult {
    let _ = ctx;
    StageResult::error("the inventory stage is not implemented yet")
}
