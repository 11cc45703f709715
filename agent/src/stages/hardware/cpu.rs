//! The `cpu` stage.
use kiln_protocol::CpuStressSpec;

use crate::stages::{StageCtx, StageResult};

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &CpuStressSpec) -> StageResult {
    let _ = (ctx, spec);
    StageResult::error("the cpu stage is not implemented yet")
}
