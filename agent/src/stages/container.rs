//! The `container` stage.
use kiln_protocol::ContainerSpec;

use super::{StageCtx, StageResult};

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &ContainerSpec) -> StageResult {
    let _ = (ctx, spec);
    StageResult::error("the container stage is not implemented yet")
}
