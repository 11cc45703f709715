//! `GET /` and `GET /runs/{run}`: the HTML pages.
use kiln_protocol::RunId;

use super::login::Caller;
use super::{Ctx, Reply, text};
use crate::ingest::Refusal;
use crate::store::RunDir;

const HTML: &str = "text/html; charset=utf-8";

/// Rows of each table on the index page.
pub const PAGE_ROWS: usize = 100;

/// The runs and hosts index: the newest [`PAGE_ROWS`] runs (`?before=RUN` for
/// older ones) and [`PAGE_ROWS`] hosts (`?hosts_from=N` for the next).
pub fn index(ctx: &Ctx, query: &str, caller: Option<&Caller>) -> Reply {
    let bad = |what: &str| Refusal::new(400, what.to_string());
    let before = match super::param(query, "before") {
        Some(v) => Some(
            v.parse::<RunId>()
                .map_err(|_| bad("before must be a run id"))?,
        ),
        None => None,
    };
    let hosts_from = match super::param(query, "hosts_from") {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad("hosts_from must be a number"))?,
        None => 0,
    };
    if before.is_some_and(|b| !ctx.index.has(&b)) {
        return Err(bad("no such run to list before"));
    }
    let internal = |e: anyhow::Error| Refusal::new(500, format!("{e:#}"));
    let page = ctx
        .index
        .page(PAGE_ROWS, before.as_ref())
        .map_err(internal)?;
    let table = ctx.index.hosts().unwrap_or_else(|e| {
        log::warn!("{e:#}");
        Default::default()
    });
    let hosts: Vec<(&crate::state::Host, usize)> = table
        .hosts
        .hosts
        .iter()
        .skip(hosts_from)
        .take(PAGE_ROWS)
        .map(|h| (h, ctx.index.runs_of(&h.name)))
        .collect();
    let html = crate::html::index(&crate::html::IndexPage {
        runs: &page.rows,
        total_runs: page.total,
        older: page.next.map(|n| n.to_string()),
        hosts: &hosts,
        total_hosts: table.hosts.hosts.len(),
        hosts_from,
        session: session_of(caller),
    });
    Ok(text(200, html, HTML))
}

/// What a page shows of the login: the user, and the CSRF token of a browser
/// session (forms to act appear for an operator only).
fn session_of(caller: Option<&Caller>) -> Option<crate::html::Viewer> {
    match caller {
        Some(Caller::Session(_, s)) => Some(crate::html::Viewer {
            name: s.who.name.clone(),
            operator: s.who.role == crate::auth::Role::Operator,
            csrf: s.csrf.clone(),
        }),
        _ => None,
    }
}

/// One run's live report.
pub fn run(ctx: &Ctx, run: &RunId, caller: Option<&Caller>) -> Reply {
    let rd = RunDir::new(&ctx.state, *run);
    if !rd.exists() {
        return Err(Refusal::new(404, format!("no run {run}")));
    }
    let (status, tails) = crate::status::current_with_tails(&rd, ctx.ingest.key())
        .map_err(|e| Refusal::new(500, format!("{e:#}")))?;
    let cas = ctx.state.cas();
    let page = crate::html::run_page(&status, &tails, &|sha| cas.has(sha));
    let page = match session_of(caller) {
        Some(v) => crate::html::with_session(page, &v, Some(&status)),
        None => page,
    };
    Ok(text(200, page, HTML))
}
