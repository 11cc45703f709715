//! Stage kinds and what every stage gets: its settings, a folder, secrets, a way to
//! report, and a stop signal (timeout or abort).
//!
//! A stage is `async fn run(ctx: &StageCtx, spec) -> StageResult`. It streams output
//! through `ctx.log`, reports numbers through `ctx.measure`, files through
//! `ctx.artifact`, and must end promptly (killing what it started) once
//! `ctx.stopped()` resolves. Timeouts, retries and fail_fast belong to the runner.
//!
//! This module only dispatches ([`run_stage`]); the context, the sink and the stop
//! signal live in [`ctx`].
use kiln_protocol::StageKind;

pub mod artifacts;
pub mod container;
pub mod ctx;
pub mod exec;
pub mod groups;
pub mod hardware;
pub mod lines;
pub mod proc;
pub mod ssh;

pub use ctx::{MemorySink, Sink, StageCtx, StageResult, Stop, StopSignal, stop_all};

/// Runs one attempt of the stage in `ctx`.
pub async fn run_stage(ctx: &StageCtx) -> StageResult {
    match &ctx.stage.kind {
        StageKind::Exec { command } => exec::run(ctx, command).await,
        StageKind::Container(spec) => container::run(ctx, spec).await,
        StageKind::Ssh(spec) => ssh::run(ctx, spec).await,
        StageKind::Inventory => hardware::inventory::run(ctx).await,
        StageKind::Smart(spec) => hardware::smart::run(ctx, spec).await,
        StageKind::CpuStress(spec) => hardware::cpu::run(ctx, spec).await,
        StageKind::Storage(spec) => hardware::storage::run(ctx, spec).await,
        StageKind::Network(spec) => hardware::network::run(ctx, spec).await,
        StageKind::Gpu(spec) => hardware::gpu::run(ctx, spec).await,
    }
}
