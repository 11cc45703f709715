//! The `storage` stage.
use kiln_protocol::StorageSpec;

use crate::stages::{StageCtx, StageResult};

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &StorageSpec) -> StageResult {
    let _ = (ctx, spec);
    StageResult::error("the storage stage is not implemented yet")
}
