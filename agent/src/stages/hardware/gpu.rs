//! The `gpu` stage.
use kiln_protocol::GpuSpec;

use crate::stages::{StageCtx, StageResult};

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &GpuSpec) -> StageResult {
    let _ = (ctx, spec);
    StageResult::error("the gpu stage is not implemented yet")
}
