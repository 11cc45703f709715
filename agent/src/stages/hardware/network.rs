//! The `network` stage.
use kiln_protocol::NetworkSpec;

use crate::stages::{StageCtx, StageResult};

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &NetworkSpec) -> StageResult {
    let _ = (ctx, spec);
    StageResult::error("the network stage is not implemented yet")
}
