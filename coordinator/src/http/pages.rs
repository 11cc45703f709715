//! `GET /` and `GET /runs/{run}`: the HTML pages.
use kiln_protocol::RunId;

use super::login::Caller;
use super::{Ctx, Reply, text};
use crate::ingest::Refusal;
use crate::store::RunDir;

const HTML: &str = "text/html; charset=utf-8";

/// Rows of each table on the index page.
pub const PAGE_ROWS: usize = 100;

/// The fleet page: [`PAGE_ROWS`] hosts (`?hosts_from=N` for the next) with their
/// state, and the newest [`PAGE_ROWS`] runs (`?before=RUN` for older ones) that the
/// filter (`host`, `plan`, `outcome`, `since` = a duration) lets through.
pub fn index(ctx: &Ctx, query: &str, caller: Option<&Caller>) -> Reply {
    let bad = |what: &str| Refusal::new(400, what.to_string());
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .take(16)
        .collect();
    let param = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty() && v.len() <= 256)
    };
    let before = match param("before") {
        Some(v) => Some(
            v.parse::<RunId>()
                .map_err(|_| bad("before must be a run id"))?,
        ),
        None => None,
    };
    let hosts_from = match param("hosts_from") {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad("hosts_from must be a number"))?,
        None => 0,
    };
    if before.is_some_and(|b| !ctx.index.has(&b)) {
        return Err(bad("no such run to list before"));
    }
    let now = crate::fsutil::now_s();
    let since = match param("since") {
        Some(v) => Some(now.saturating_sub(
            crate::units::parse_duration(&v).map_err(|e| bad(&format!("since: {e}")))?,
        )),
        None => None,
    };
    let shown = crate::html::RunsFilter {
        host: param("host").unwrap_or_default(),
        plan: param("plan").unwrap_or_default(),
        outcome: param("outcome").unwrap_or_default(),
        since: param("since").unwrap_or_default(),
    };
    let filter = crate::index::Filter {
        host: param("host"),
        plan: param("plan"),
        outcome: param("outcome"),
        since,
    };
    let internal = |e: anyhow::Error| Refusal::new(500, format!("{e:#}"));
    let page = ctx
        .index
        .page_where(PAGE_ROWS, before.as_ref(), &filter)
        .map_err(internal)?;
    let table = ctx.index.hosts().unwrap_or_else(|e| {
        log::warn!("{e:#}");
        Default::default()
    });
    let hosts: Vec<crate::html::HostRow<'_>> = table
        .hosts
        .hosts
        .iter()
        .skip(hosts_from)
        .take(PAGE_ROWS)
        .map(|h| host_row(ctx, h))
        .collect();
    let html = crate::html::index(&crate::html::IndexPage {
        runs: &page.rows,
        total_runs: page.total,
        older: page.next.map(|n| n.to_string()),
        filter: shown,
        hosts: &hosts,
        total_hosts: table.hosts.hosts.len(),
        hosts_from,
        session: session_of(caller),
        now,
        plans: super::actions::stored_plans(&ctx.state),
    });
    Ok(text(200, html, HTML))
}

/// A host's state on the fleet page, from its newest run and its pending tickets.
fn host_row<'h>(ctx: &Ctx, h: &'h crate::state::Host) -> crate::html::HostRow<'h> {
    use crate::status::RunState;
    let pending = ctx.index.pending_of(&h.name);
    let latest = ctx.index.latest_of(&h.name).and_then(|id| {
        crate::status::current(&RunDir::new(&ctx.state, id), ctx.ingest.key())
            .map_err(|e| log::warn!("{e:#}"))
            .ok()
    });
    let (state, doing) = match &latest {
        Some(s) if matches!(s.state, RunState::Claimed | RunState::Running) => {
            let at = s
                .stages
                .iter()
                .position(|st| st.outcome == "running")
                .or_else(|| s.stages.iter().position(|st| st.attempts == 0));
            let doing = match at {
                Some(i) => format!("stage {}/{}: {}", i + 1, s.stages.len(), s.stages[i].name),
                None => String::new(),
            };
            ("running", doing)
        }
        Some(s) if s.state == RunState::Stale => ("stale", String::new()),
        Some(s) if s.state == RunState::Held => {
            let login = s.hold.as_ref().map_or_else(String::new, |h| {
                let key = h.host_key.as_deref().unwrap_or("");
                match h.ssh.first() {
                    Some(line) => format!("{line} (host key {key})"),
                    None => String::new(),
                }
            });
            ("held", login)
        }
        Some(s) if s.state == RunState::Powering => ("powering", String::new()),
        Some(s) if s.state == RunState::Booting => ("booting", String::new()),
        Some(s)
            if s.power
                .as_ref()
                .and_then(|p| p.error.as_deref())
                .is_some_and(|e| e.starts_with("never booted")) =>
        {
            ("never booted", String::new())
        }
        _ if pending > 0 => ("pending", String::new()),
        Some(s)
            if s.state == RunState::Finished
                && !matches!(s.outcome, Some("passed" | "warning")) =>
        {
            ("last failed", String::new())
        }
        _ => ("idle", String::new()),
    };
    crate::html::HostRow {
        host: h,
        state,
        doing,
        last: latest.as_ref().map(crate::status::Summary::from),
        pending,
        runs: ctx.index.runs_of(&h.name),
        power: h
            .power
            .as_ref()
            .map(|_| match crate::power::reading(&ctx.state, &h.name) {
                Some(r) => (
                    r.state.to_string(),
                    crate::fsutil::now_ms().saturating_sub(r.at_ms) / 1000,
                ),
                None => ("unknown".into(), 0),
            }),
    }
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

/// Lines on one page of a stage's log.
pub const LOG_PAGE: usize = 500;

/// `GET /runs/{run}/log?stage=N[&before=K]`: [`LOG_PAGE`] lines of stage `N`'s log
/// ending before line `K` (0-based; default: the end), with a link to the page
/// before. The log is streamed through once a MiB at a time; only the page's lines
/// are held, so a run of any length answers in bounded memory.
pub fn log_page(ctx: &Ctx, run: &RunId, query: &str, caller: Option<&Caller>) -> Reply {
    use std::io::Read;
    let rd = RunDir::new(&ctx.state, *run);
    if !rd.exists() {
        return Err(Refusal::new(404, format!("no run {run}")));
    }
    let bad = |what: &str| Refusal::new(400, what.to_string());
    let stage: u16 = super::param(query, "stage")
        .ok_or_else(|| bad("stage= is required"))?
        .parse()
        .map_err(|_| bad("stage must be a stage index"))?;
    let before: Option<u64> = match super::param(query, "before") {
        Some(v) => Some(v.parse().map_err(|_| bad("before must be a line number"))?),
        None => None,
    };
    let (_, ticket) = rd
        .ticket(ctx.ingest.key())
        .map_err(|e| Refusal::new(500, format!("{e:#}")))?;
    let name = crate::report::stage_name(&ticket, stage);
    // One pass: count the stage's lines and keep the last LOG_PAGE before `before`.
    let mut window: std::collections::VecDeque<String> = Default::default();
    let (mut n, mut scan) = (0u64, crate::store::Scan::default());
    if let Ok(mut f) = std::fs::File::open(rd.path(crate::store::files::EVENTS)) {
        let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 1 << 20]);
        loop {
            let got = f
                .read(&mut chunk)
                .map_err(|e| Refusal::new(500, format!("reading run {run} events: {e}")))?;
            if got == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..got]);
            let used = scan.feed(&buf, |frame| {
                if let kiln_protocol::Event::Log { stage: s, text, .. } = frame.event
                    && s == stage
                {
                    if before.is_none_or(|b| n < b) {
                        window.push_back(text);
                        if window.len() > LOG_PAGE {
                            window.pop_front();
                        }
                    }
                    n += 1;
                }
            });
            buf.drain(..used);
            if scan.corrupt.is_some() {
                break;
            }
        }
    }
    let end = before.map_or(n, |b| b.min(n));
    let first = end - window.len() as u64;
    let lines: Vec<String> = window.into_iter().collect();
    let page = crate::html::log_page(&crate::html::LogPage {
        run: &run.to_string(),
        stage,
        name: &name,
        lines: &lines,
        first,
        total: n,
    });
    let page = match session_of(caller) {
        Some(v) => crate::html::with_session(page, &v, None),
        None => page,
    };
    Ok(text(200, page, HTML))
}
