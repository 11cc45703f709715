//! `GET /` and `GET /runs/{run}`: the HTML pages.
use kiln_protocol::RunId;

use super::{Ctx, Reply, text};
use crate::ingest::Refusal;
use crate::store::RunDir;

const HTML: &str = "text/html; charset=utf-8";

/// The runs and hosts index.
pub fn index(ctx: &Ctx) -> Reply {
    let runs = crate::status::statuses(&ctx.state, ctx.ingest.key())
        .map_err(|e| Refusal::new(500, format!("{e:#}")))?;
    let hosts = ctx.state.hosts().unwrap_or_else(|e| {
        log::warn!("{e:#}");
        Default::default()
    });
    Ok(text(200, crate::html::index(&runs, &hosts), HTML))
}

/// One run's live report.
pub fn run(ctx: &Ctx, run: &RunId) -> Reply {
    let rd = RunDir::new(&ctx.state, *run);
    if !rd.exists() {
        return Err(Refusal::new(404, format!("no run {run}")));
    }
    let (status, tails) = crate::status::current_with_tails(&rd, ctx.ingest.key())
        .map_err(|e| Refusal::new(500, format!("{e:#}")))?;
    let cas = ctx.state.cas();
    let page = crate::html::run_page(&status, &tails, &|sha| cas.has(sha));
    Ok(text(200, page, HTML))
}
