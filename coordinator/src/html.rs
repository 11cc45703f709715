//! HTML pages: the runs index and one run's live report.
//!
//! Plain HTML with a little CSS, no scripts; every piece of text goes through
//! [`escape`]. Live pages refresh themselves every 2 s.
use kiln_protocol::Sha256;
use std::fmt::Write;

use crate::fmt::{Markup, fmt_ms, fmt_unix};
use crate::state::Host;
use crate::status::{Corruption, RunState, RunStatus, Summary};

/// Escapes text for HTML element content and quoted attribute values
/// ([`Markup::Html`]: control and bidi characters become visible escapes).
pub fn escape(s: &str) -> String {
    crate::fmt::escape(s, Markup::Html)
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.2em}\
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.5em;overflow-x:auto;max-height:30em}\
code{font-size:13px}.passed{color:#176b2c}.warning,.held,.stale{color:#9a6700}\
.skipped,.not_run,.pending,.claimed{color:#666}.failed,.timed_out,.lost,.expired{color:#b3261e}\
.error,.aborted{color:#8250df}.held{color:#9a6700;font-weight:bold}.running{color:#0550ae}.corrupt,.contested{color:#b3261e;font-weight:bold}\
pre:empty{display:none}form.session{float:right}form.action{margin:.5em 0}\
.last_failed,.never_booted{color:#b3261e}.idle{color:#176b2c}";

/// The page's head and `<body>` tag. A live page updates itself: with JavaScript,
/// `/kiln.js` (a run page follows its event stream, the index page fetches itself
/// again every few seconds, neither reloads); without, a refresh every 2 s.
fn head(out: &mut String, title: &str, live: bool, run: Option<(&str, u64)>) {
    out.push_str("<!doctype html>\n<html><head><meta charset=\"utf-8\">");
    if live {
        out.push_str("<noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript>");
    }
    let _ = writeln!(
        out,
        "<title>{}</title><style>{STYLE}</style><script src=\"/kiln.js\" defer></script>\
         </head><body data-live=\"{}\" data-run=\"{}\" data-seq=\"{}\">",
        escape(title),
        u8::from(live),
        escape(run.map_or("", |r| r.0)),
        run.map_or(0, |r| r.1)
    );
}

fn badge(word: &str) -> String {
    let w = escape(word);
    format!("<span class=\"{w}\">{w}</span>")
}

/// [`state_badge`] for a listed run.
fn summary_badge(s: &Summary) -> String {
    badges(s.state, s.corrupt.as_ref(), s.contested)
}

/// The state badge, and a `contested` one while a contested claim waits.
fn state_badge(s: &RunStatus) -> String {
    badges(s.state, s.corrupt.as_ref(), s.contested)
}

fn badges(state: RunState, corrupt: Option<&Corruption>, contested: bool) -> String {
    let mut b = badge(state.as_str());
    if let Some(c) = corrupt {
        b.push_str(&format!(
            " <small>events.log record {} at byte {}</small>",
            c.record, c.offset
        ));
    }
    if contested {
        b.push(' ');
        b.push_str(&badge("contested"));
    }
    b
}

/// A lights-out run's power record (power.log): phase, queue place, the error that
/// ended the run, and a table of every power action with the BMC's answer.
fn power(out: &mut String, s: &RunStatus) {
    let Some(p) = &s.power else {
        return;
    };
    let place = p
        .queue_position
        .map(|n| format!(", place {n} in the power queue"))
        .unwrap_or_default();
    let _ = writeln!(out, "<p>power: {}{place}</p>", badge(p.phase));
    if let Some(e) = &p.error {
        let _ = writeln!(out, "<p class=\"error\">error: {}</p>", escape(e));
    }
    out.push_str("<table><tr><th>at</th><th>power</th><th>answer</th></tr>\n");
    for r in &p.records {
        let d = r.describe();
        let (what, detail) = d.split_once(": ").unwrap_or((&d, ""));
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            fmt_unix(r.at_ms / 1000),
            escape(what),
            escape(detail)
        );
    }
    out.push_str("</table>\n");
    if !p.console_tail.is_empty() {
        out.push_str("<p>console (last lines):</p>\n<pre>");
        for l in &p.console_tail {
            out.push_str(&escape(l));
            out.push('\n');
        }
        out.push_str("</pre>\n");
    }
}

/// The claim rows of a run page: source and key of the claim, the enrolled key,
/// and every contested or refused claim.
fn claims(out: &mut String, s: &RunStatus) {
    let claim = match &s.claim {
        Some(c) => format!(
            "from <code>{}</code>, key <code>{}</code>, at {}",
            escape(&c.source),
            escape(c.fingerprint.as_deref().unwrap_or("-")),
            fmt_unix(c.at_ms / 1000)
        ),
        None => "none yet".into(),
    };
    let _ = writeln!(out, "<p>claim: {claim}</p>");
    if let Some(k) = &s.enrolled_key {
        let _ = writeln!(
            out,
            "<p>enrolled host: only agent key <code>{}</code> may claim this run</p>",
            escape(k)
        );
    }
    if s.contested {
        let _ = writeln!(
            out,
            "<p class=\"contested\">contested: another agent key tried to claim this run \
             (<code>kiln-coordinator run ack-contest {}</code> once looked at)</p>",
            escape(&s.run)
        );
    }
    let others: Vec<_> = s
        .claim_events
        .iter()
        .filter(|e| e.event != crate::claims::Kind::Claim)
        .collect();
    if !others.is_empty() {
        out.push_str(
            "<table><tr><th>claim event</th><th>at</th><th>from</th><th>key</th>\
             <th>detail</th></tr>\n",
        );
        for e in others {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>\
                 <td>{}</td></tr>",
                badge(e.event.as_str()),
                fmt_unix(e.at_ms / 1000),
                escape(&e.source),
                escape(e.fingerprint.as_deref().unwrap_or("-")),
                escape(&e.detail)
            );
        }
        out.push_str("</table>\n");
    }
}

/// Who is looking at a page (a browser session).
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The user.
    pub name: String,
    /// Whether forms to act are shown.
    pub operator: bool,
    /// The session's CSRF token, carried by every form.
    pub csrf: String,
}

/// The bar at the top of a page for a logged-in viewer: who, and a log-out form;
/// for an operator on a live run, the abort form.
fn session_bar(v: &Viewer, run: Option<&RunStatus>) -> String {
    let csrf = escape(&v.csrf);
    let mut out = format!(
        "<form class=\"session\" method=\"post\" action=\"/logout\">{} · \
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">log out</button></form>\n",
        escape(&v.name)
    );
    if let Some(r) = run
        && v.operator
        && r.state.is_live()
    {
        let _ = writeln!(
            out,
            "<form class=\"action\" method=\"post\" action=\"/v1/runs/{id}/abort\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input name=\"reason\" placeholder=\"reason\" required> \
             <button type=\"submit\" id=\"abort\">abort</button></form>",
            id = escape(&r.run)
        );
    }
    if let Some(r) = run
        && v.operator
        && r.state == RunState::Held
    {
        let id = escape(&r.run);
        let stages: String = r
            .stages
            .iter()
            .map(|st| format!("<option>{}</option>", escape(&st.name)))
            .collect();
        let storage: String = r
            .stages
            .iter()
            .filter(|st| st.kind == "storage")
            .map(|st| format!("<option>{}</option>", escape(&st.name)))
            .collect();
        let hidden = format!("<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">");
        let _ = writeln!(
            out,
            "<form class=\"action\" method=\"post\" action=\"/v1/runs/{id}/release\">{hidden}\
             <button type=\"submit\" id=\"release\">release</button> \
             <label><input type=\"checkbox\" name=\"reboot\" value=\"1\"> reboot</label></form>\
             <form class=\"action\" method=\"post\" action=\"/v1/runs/{id}/retry\">{hidden}\
             <select name=\"stage\">{stages}</select> \
             <button type=\"submit\" id=\"retry\">retry stage</button></form>"
        );
        if !storage.is_empty() {
            let _ = writeln!(
                out,
                "<form class=\"action\" method=\"post\" action=\"/v1/runs/{id}/approve\">{hidden}\
                 <select name=\"stage\">{storage}</select> \
                 <input name=\"disk\" placeholder=\"disk serial\" required> \
                 <button type=\"submit\" id=\"approve\">approve disk</button></form>"
            );
        }
    }
    out
}

/// `page` with the session bar (who, log out; the abort form for an operator on a
/// live run) at the top of its body.
pub fn with_session(page: String, v: &Viewer, run: Option<&RunStatus>) -> String {
    match page
        .find("<body")
        .and_then(|i| page[i..].find('>').map(|j| i + j + 1))
    {
        Some(at) => format!("{}{}{}", &page[..at], session_bar(v, run), &page[at..]),
        None => page,
    }
}

/// One host's row on the fleet page.
#[derive(Debug)]
pub struct HostRow<'a> {
    /// The host, as in hosts.toml.
    pub host: &'a Host,
    /// Its state: `idle`, `pending`, `running`, `stale`, `last failed`, …
    pub state: &'static str,
    /// What it is doing (`stage 2/5: memtest`), if anything.
    pub doing: String,
    /// Its newest run.
    pub last: Option<Summary>,
    /// Pending tickets.
    pub pending: usize,
    /// Runs issued for it.
    pub runs: usize,
    /// Its last power reading (`on`, `off`) and that reading's age in seconds, when
    /// it has power control.
    pub power: Option<(String, u64)>,
}

/// The runs filter the fleet page shows and its links keep.
#[derive(Debug, Default, Clone)]
pub struct RunsFilter {
    /// `host=`.
    pub host: String,
    /// `plan=`.
    pub plan: String,
    /// `outcome=`.
    pub outcome: String,
    /// `since=` (a duration, e.g. `24h`).
    pub since: String,
}

impl RunsFilter {
    /// The filter as query parameters (`&host=…`), for links.
    pub fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("host", &self.host),
            ("plan", &self.plan),
            ("outcome", &self.outcome),
            ("since", &self.since),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        let q = q.finish();
        if q.is_empty() { q } else { format!("&{q}") }
    }
}

/// What the fleet page shows: a page of hosts with their state, and a page of runs.
#[derive(Debug)]
pub struct IndexPage<'a> {
    /// Runs, newest first.
    pub runs: &'a [Summary],
    /// Runs in all.
    pub total_runs: usize,
    /// The run id to list older runs before, when there are more.
    pub older: Option<String>,
    /// The runs filter in force.
    pub filter: RunsFilter,
    /// Hosts with their state.
    pub hosts: &'a [HostRow<'a>],
    /// Hosts in all.
    pub total_hosts: usize,
    /// Index in hosts.toml of the first host shown.
    pub hosts_from: usize,
    /// The logged-in viewer, if any.
    pub session: Option<Viewer>,
    /// Now, unix seconds (for ages).
    pub now: u64,
    /// Plans stored in the state folder (`plans/`), offered to operators per host.
    pub plans: Vec<String>,
}

/// A host's power cell: its last reading and, for an operator, buttons.
fn power_cell(h: &HostRow<'_>, operator: Option<&Viewer>) -> String {
    let Some((state, age_s)) = &h.power else {
        return String::new();
    };
    let mut out = format!("{} <small>{} ago</small>", escape(state), age(*age_s));
    if let Some(v) = operator {
        let _ = write!(
            out,
            "<form class=\"power\" method=\"post\" action=\"/v1/hosts/{}/power\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">{}</form>",
            escape(&h.host.name),
            escape(&v.csrf),
            ["on", "off", "cycle"]
                .iter()
                .map(|a| format!("<button name=\"action\" value=\"{a}\">{a}</button>"))
                .collect::<String>()
        );
    }
    out
}

/// An age: `3m`, `2h`, `5d`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The fleet page: every host (a page of them) with its state, what it runs and its
/// last outcome; below, runs with filters. Bounded pages, links to the next.
pub fn index(p: &IndexPage<'_>) -> String {
    let mut out = String::new();
    let live = p
        .runs
        .iter()
        .any(|r| r.state.is_live() && r.state.as_str() != "pending")
        || p.hosts
            .iter()
            .any(|h| matches!(h.state, "running" | "powering" | "booting" | "held"));
    head(&mut out, "kiln", live, None);
    if let Some(v) = &p.session {
        out.push_str(&session_bar(v, None));
    }
    out.push_str("<h1>kiln</h1>\n<h2>Hosts</h2>\n");
    if p.total_hosts == 0 {
        out.push_str("<p>No hosts: <code>kiln-coordinator host add</code>.</p>\n");
    } else {
        out.push_str(
            "<table><tr><th>host</th><th>state</th><th>power</th><th>last run</th>\
             <th>pending</th><th>runs</th><th>MACs</th><th>image</th><th></th></tr>\n",
        );
        let operator = p.session.as_ref().filter(|v| v.operator);
        let act = operator.filter(|_| !p.plans.is_empty());
        let options: String = p
            .plans
            .iter()
            .map(|n| format!("<option>{}</option>", escape(n)))
            .collect();
        for h in p.hosts {
            let last = match &h.last {
                Some(r) => format!(
                    "<a href=\"/runs/{id}\"><code>{short}</code></a> {plan} {state} {age} ago",
                    id = escape(&r.run),
                    short = escape(r.run.get(..8).unwrap_or(&r.run)),
                    plan = escape(&r.plan),
                    state = r.outcome.as_deref().map_or_else(|| summary_badge(r), badge),
                    age = age(p.now.saturating_sub(r.issued_at)),
                ),
                None => String::new(),
            };
            let state_class = h.state.replace(' ', "_");
            let _ = writeln!(
                out,
                "<tr><td><a href=\"/?host={name}\">{name}</a></td><td><span class=\"{cls}\">{state}</span>{doing}</td>\
                 <td>{power}</td><td>{last}</td><td>{pending}</td><td>{runs}</td><td><code>{macs}</code></td><td>{image}</td><td>{issue}</td></tr>",
                name = escape(&h.host.name),
                cls = escape(&state_class),
                state = escape(h.state),
                doing = if h.doing.is_empty() {
                    String::new()
                } else {
                    format!(" {}", escape(&h.doing))
                },
                pending = h.pending,
                runs = h.runs,
                power = power_cell(h, operator),
                macs = escape(&h.host.macs.join(", ")),
                image = escape(h.host.image.as_deref().unwrap_or("")),
                issue = act.map_or_else(String::new, |v| format!(
                    "<form method=\"post\" action=\"/v1/hosts/{name}/tickets\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <select name=\"plan\">{options}</select> \
                     <button type=\"submit\">issue</button></form>",
                    name = escape(&h.host.name),
                    csrf = escape(&v.csrf),
                )),
            );
        }
        out.push_str("</table>\n");
        let shown_to = p.hosts_from + p.hosts.len();
        if p.hosts_from > 0 || shown_to < p.total_hosts {
            let _ = write!(
                out,
                "<p>hosts {} to {} of {}",
                p.hosts_from + 1,
                shown_to,
                p.total_hosts
            );
            if shown_to < p.total_hosts {
                let _ = write!(out, " · <a href=\"/?hosts_from={shown_to}\">more hosts</a>");
            }
            out.push_str("</p>\n");
        }
    }
    let f = &p.filter;
    let _ = writeln!(
        out,
        "<h2>Runs</h2>\n<form method=\"get\" action=\"/\" class=\"filter\">\
         <input name=\"host\" placeholder=\"host\" value=\"{}\"> \
         <input name=\"plan\" placeholder=\"plan\" value=\"{}\"> \
         <select name=\"outcome\">{}</select> \
         <input name=\"since\" placeholder=\"since (24h, 7d)\" value=\"{}\"> \
         <button type=\"submit\">filter</button></form>",
        escape(&f.host),
        escape(&f.plan),
        [
            "",
            "passed",
            "warning",
            "failed",
            "error",
            "aborted",
            "timed_out",
            "skipped"
        ]
        .iter()
        .map(|o| format!(
            "<option value=\"{o}\"{}>{}</option>",
            if *o == f.outcome { " selected" } else { "" },
            if o.is_empty() { "any outcome" } else { o }
        ))
        .collect::<String>(),
        escape(&f.since),
    );
    if p.runs.is_empty() {
        out.push_str("<p>No runs here: <code>kiln-coordinator ticket issue</code>.</p>\n");
    } else {
        out.push_str(
            "<table><tr><th>run</th><th>plan</th><th>host</th><th>state</th>\
            <th>outcome</th><th>stages</th><th>issued</th></tr>\n",
        );
        for r in p.runs {
            let _ = writeln!(
                out,
                "<tr><td><a href=\"/runs/{id}\"><code>{short}</code></a></td><td>{plan}</td>\
                 <td>{host}</td><td>{state}</td><td>{outcome}</td><td>{done}/{total}</td>\
                 <td>{issued}</td></tr>",
                id = escape(&r.run),
                short = escape(r.run.get(..12).unwrap_or(&r.run)),
                plan = escape(&r.plan),
                host = escape(&r.host),
                state = summary_badge(r),
                outcome = r.outcome.as_deref().map(badge).unwrap_or_default(),
                done = r.stages_done,
                total = r.stages,
                issued = fmt_unix(r.issued_at),
            );
        }
        out.push_str("</table>\n");
        let _ = write!(out, "<p>{} of {} runs", p.runs.len(), p.total_runs);
        if let Some(older) = &p.older {
            let _ = write!(
                out,
                " · <a href=\"/?before={}{}\">older runs</a>",
                escape(older),
                escape(&f.query())
            );
        }
        out.push_str("</p>\n");
    }
    out.push_str("</body></html>\n");
    out
}

/// One run's report: summary, stage table, then each stage's measurements,
/// artifacts (linked to /cas, marked when missing), parts and log tail.
/// `tails` holds each stage's last log lines (see [`crate::status::Folder::tails`]).
pub fn run_page(s: &RunStatus, tails: &[Vec<String>], in_cas: &dyn Fn(&Sha256) -> bool) -> String {
    let mut out = String::new();
    head(
        &mut out,
        &format!("kiln run {} ({})", s.plan, s.run),
        s.state.is_live(),
        Some((&s.run, s.frames)),
    );
    let _ = writeln!(
        out,
        "<p><a href=\"/\">all runs</a></p>\n<h1>{plan} <small><code>{run}</code></small></h1>\n\
         <table><tr><th>host</th><td>{host}</td></tr><tr><th>state</th><td>{state}</td></tr>\
         <tr><th>outcome</th><td>{outcome}</td></tr><tr><th>agent</th><td>{agent}</td></tr>\
         <tr><th>issued</th><td>{issued}</td></tr><tr><th>expires</th><td>{expires}</td></tr>\
         <tr><th>frames</th><td>{frames}</td></tr></table>",
        plan = escape(&s.plan),
        run = escape(&s.run),
        host = escape(&format!(
            "{}{}",
            s.host,
            s.hostname
                .as_ref()
                .map(|h| format!(" (reports as {h})"))
                .unwrap_or_default()
        )),
        state = state_badge(s),
        outcome = s.outcome.map(badge).unwrap_or_else(|| "—".into()),
        agent = escape(s.agent_version.as_deref().unwrap_or("—")),
        issued = fmt_unix(s.issued_at),
        expires = fmt_unix(s.expires_at),
        frames = s.frames,
    );
    claims(&mut out, s);
    power(&mut out, s);
    if let Some(r) = &s.abort_requested {
        let _ = writeln!(
            out,
            "<p class=\"aborted\">abort requested: {}</p>",
            escape(r)
        );
    }
    if let Some(h) = &s.hold {
        let _ = writeln!(
            out,
            "<p class=\"held\">held until {} (stages so far: {})</p>",
            fmt_unix(h.until_ms / 1000),
            h.outcome
        );
        match &h.host_key {
            Some(fp) => {
                for cmd in &h.ssh {
                    let _ = writeln!(
                        out,
                        "<p>login: <code>{}</code> — host key <code>{}</code></p>",
                        escape(cmd),
                        escape(fp)
                    );
                }
            }
            None => out.push_str("<p>no SSH server (kiln-agent run --hold)</p>\n"),
        }
    }
    if !s.orders.is_empty() {
        out.push_str("<table><tr><th>order</th><th>at</th><th>by</th><th>result</th></tr>\n");
        for e in &s.orders {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&e.what),
                fmt_unix(e.at_ms / 1000),
                escape(&e.by),
                escape(&e.result)
            );
        }
        out.push_str("</table>\n");
    }
    if let Some(c) = &s.corrupt {
        let _ = writeln!(
            out,
            "<p class=\"corrupt\">{}; shown below: the {} record(s) before it.</p>",
            escape(&c.to_string()),
            c.record
        );
    }
    out.push_str(
        "<h2>Stages</h2>\n<table><tr><th>#</th><th>stage</th><th>kind</th>\
        <th>outcome</th><th>attempts</th><th>exit</th><th>duration</th><th>detail</th></tr>\n",
    );
    for st in &s.stages {
        let flaky = if st.outcome == "passed" && st.attempts > 1 {
            " (flaky)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><a href=\"#stage-{}\">{}</a></td><td>{}</td><td>{}{flaky}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            st.index,
            st.index,
            escape(&st.name),
            st.kind,
            badge(&st.outcome),
            st.attempts,
            st.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            st.duration_ms.map(fmt_ms).unwrap_or_default(),
            escape(&st.detail),
        );
    }
    out.push_str("</table>\n");
    for st in &s.stages {
        let _ = writeln!(
            out,
            "<h3 id=\"stage-{}\">{} {}</h3>",
            st.index,
            escape(&st.name),
            badge(&st.outcome)
        );
        if !st.measurements.is_empty() {
            out.push_str("<table><tr><th>measurement</th><th>value</th><th>unit</th></tr>\n");
            for m in &st.measurements {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&m.name),
                    m.value,
                    escape(&m.unit)
                );
            }
            out.push_str("</table>\n");
        }
        if !st.artifacts.is_empty() {
            out.push_str("<table><tr><th>artifact</th><th>size</th><th>sha256</th></tr>\n");
            for a in &st.artifacts {
                let stored = a.sha256.parse().is_ok_and(|h| in_cas(&h));
                let link = if stored {
                    format!(
                        "<a href=\"/cas/{0}\">{1}</a>",
                        escape(&a.sha256),
                        escape(&a.name)
                    )
                } else {
                    format!("{} <em>(not uploaded)</em>", escape(&a.name))
                };
                let _ = writeln!(
                    out,
                    "<tr><td>{link}</td><td>{}</td><td><code>{}</code></td></tr>",
                    a.size,
                    escape(&a.sha256)
                );
            }
            out.push_str("</table>\n");
        }
        for p in &st.parts {
            let _ = writeln!(
                out,
                "<p>{} {} {}</p>",
                escape(&p.name),
                badge(p.outcome),
                escape(&p.detail)
            );
            if !p.tail.is_empty() {
                let _ = writeln!(out, "<pre>{}</pre>", escape(&p.tail.join("\n")));
            }
        }
        let tail = tails.get(st.index as usize).map_or(&[][..], Vec::as_slice);
        log_tail(&mut out, tail, st, &s.run);
    }
    out.push_str("</body></html>\n");
    out
}

/// A stage's last log lines, in `<pre id="tail-N">` (empty, and hidden, until the
/// stage logs: a live page appends to it).
fn log_tail(out: &mut String, tail: &[String], st: &crate::status::StageStatus, run: &str) {
    let (total, name) = (st.log_lines, &st.name);
    if total > tail.len() as u64 {
        let _ = writeln!(
            out,
            "<p>last {} of {total} lines (<a href=\"/runs/{}/log?stage={}\">page back through \
             them</a>; all: <code>kiln-coordinator run logs {} --stage {}</code>)</p>",
            tail.len(),
            escape(run),
            st.index,
            escape(run),
            escape(name)
        );
    }
    let _ = writeln!(
        out,
        "<pre id=\"tail-{}\">{}</pre>",
        st.index,
        escape(&tail.join("\n"))
    );
}

/// One page of a stage's log (`GET /runs/{run}/log`).
#[derive(Debug)]
pub struct LogPage<'a> {
    /// The run id.
    pub run: &'a str,
    /// The stage's index.
    pub stage: u16,
    /// The stage's name.
    pub name: &'a str,
    /// The page's lines.
    pub lines: &'a [String],
    /// The number (0-based) of the first line shown.
    pub first: u64,
    /// The stage's lines in all.
    pub total: u64,
}

/// A page of a stage's log, with links to the page before and after.
pub fn log_page(p: &LogPage<'_>) -> String {
    let mut out = String::new();
    head(
        &mut out,
        &format!("kiln run {} {}", p.run, p.name),
        false,
        None,
    );
    let _ = writeln!(
        out,
        "<p><a href=\"/runs/{run}\">run {short}</a></p><h1>{name} <small>lines {from} to {to} of {total}</small></h1>",
        run = escape(p.run),
        short = escape(p.run.get(..12).unwrap_or(p.run)),
        name = escape(p.name),
        from = p.first + 1,
        to = p.first + p.lines.len() as u64,
        total = p.total,
    );
    let mut nav = String::from("<p>");
    if p.first > 0 {
        let _ = write!(
            nav,
            "<a href=\"/runs/{}/log?stage={}&amp;before={}\">earlier lines</a> ",
            escape(p.run),
            p.stage,
            p.first
        );
    }
    let to = p.first + p.lines.len() as u64;
    if to < p.total {
        let _ = write!(
            nav,
            "<a href=\"/runs/{}/log?stage={}&amp;before={}\">later lines</a>",
            escape(p.run),
            p.stage,
            (to + p.lines.len() as u64).min(p.total)
        );
    }
    nav.push_str("</p>\n");
    out.push_str(&nav);
    let _ = writeln!(out, "<pre>{}</pre>", escape(&p.lines.join("\n")));
    out.push_str(&nav);
    out.push_str("</body></html>\n");
    out
}
