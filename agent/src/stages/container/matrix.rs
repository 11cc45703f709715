//! The matrix scheduler: cells run `concurrency` at a time; under `fail_fast` the
//! first failing cell stops its running siblings and keeps the rest from starting.
use kiln_protocol::Outcome;
use std::cell::{Cell as Slot, RefCell};

use super::args::Cell;
use super::cell::{self, CellRun, Shared};
use crate::stages::ctx::{StageCtx, Stop, StopSignal};

/// A cell's result, and whether fail_fast cut it short (such cells do not count
/// towards the stage's outcome: the failure that stopped them does).
#[derive(Debug, Clone)]
pub struct Ended {
    /// How the cell ended.
    pub run: CellRun,
    /// Stopped or never started because a sibling failed first.
    pub cancelled: bool,
}

/// The same stage context with the cell's own stop signal.
fn cell_ctx(ctx: &StageCtx, stop: StopSignal) -> StageCtx {
    StageCtx {
        run: ctx.run,
        index: ctx.index,
        stage: ctx.stage.clone(),
        host: ctx.host.clone(),
        attempt: ctx.attempt,
        dir: ctx.dir.clone(),
        tests_tar: ctx.tests_tar.clone(),
        secrets: ctx.secrets.clone(),
        sink: ctx.sink.clone(),
        stop,
        approved: ctx.approved.clone(),
    }
}

/// Runs every cell; reports each one's `Part` as it ends. Results in cell order.
pub async fn run(ctx: &StageCtx, shared: &Shared<'_>, cells: &[Cell]) -> Vec<Ended> {
    let spec = shared.spec;
    let stops: Vec<StopSignal> = cells.iter().map(|_| StopSignal::default()).collect();
    let next = Slot::new(0usize);
    let cut: RefCell<Option<Stop>> = RefCell::new(None);
    let results: RefCell<Vec<Option<Ended>>> = RefCell::new(vec![None; cells.len()]);
    let report = |c: &Cell, r: &CellRun| {
        let label = c.label();
        ctx.note(&format!("[{label}] {}: {}", r.outcome, r.detail));
        ctx.part(&label, r.outcome, &r.detail, r.tail.clone());
    };

    let worker = || async {
        loop {
            if cut.borrow().is_some() || ctx.stop.reason().is_some() {
                break;
            }
            let i = next.get();
            let Some(c) = cells.get(i) else { break };
            next.set(i + 1);
            let run = cell::run(&cell_ctx(ctx, stops[i].clone()), shared, c).await;
            let failed = run.stopped.is_none() && !run.outcome.is_ok();
            let cancelled = run.stopped.is_some() && run.stopped == *cut.borrow();
            report(c, &run);
            results.borrow_mut()[i] = Some(Ended { run, cancelled });
            if spec.fail_fast && failed && cut.borrow().is_none() {
                let why = Stop::Abort(format!("fail_fast: {} failed", c.label()));
                *cut.borrow_mut() = Some(why.clone());
                for (j, s) in stops.iter().enumerate() {
                    if j != i {
                        s.fire(why.clone());
                    }
                }
            }
        }
    };
    let forward = async {
        let why = ctx.stopped().await;
        for s in &stops {
            s.fire(why.clone());
        }
        std::future::pending::<()>().await
    };
    let width = (spec.concurrency.max(1) as usize).min(cells.len()).max(1);
    let ex = smol::LocalExecutor::new();
    let tasks: Vec<_> = (0..width).map(|_| ex.spawn(worker())).collect();
    smol::future::or(
        ex.run(async {
            for t in tasks {
                t.await;
            }
        }),
        forward,
    )
    .await;
    drop(ex);

    let cut = cut.into_inner();
    let stage_stop = ctx.stop.reason();
    results
        .into_inner()
        .into_iter()
        .zip(cells)
        .map(|(r, c)| {
            r.unwrap_or_else(|| {
                let (why, cancelled) = match (&cut, &stage_stop) {
                    (Some(why), _) => (why.clone(), true),
                    (None, Some(why)) => (why.clone(), false),
                    (None, None) => (Stop::Abort("not started".into()), false),
                };
                let mut run = CellRun {
                    outcome: why.outcome(),
                    exit_code: None,
                    detail: format!("not started: {}", why.detail(ctx.stage.timeout_s)),
                    tail: vec![],
                    stopped: Some(why),
                    kept: vec![],
                };
                if cancelled {
                    run.outcome = Outcome::Aborted;
                }
                report(c, &run);
                Ended { run, cancelled }
            })
        })
        .collect()
}
