//! HTML pages: the runs index and one run's live report.
//!
//! Plain HTML with a little CSS, no scripts; every piece of text goes through
//! [`escape`]. Live pages refresh themselves every 2 s.
use kiln_protocol::Sha256;
use std::fmt::Write;

use crate::fmt::{Markup, fmt_ms, fmt_unix};
use crate::state::Hosts;
use crate::status::RunStatus;

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
.error,.aborted{color:#8250df}.running{color:#0550ae}.corrupt,.contested{color:#b3261e;font-weight:bold}";

fn head(out: &mut String, title: &str, live: bool) {
    out.push_str("<!doctype html>\n<html><head><meta charset=\"utf-8\">");
    if live {
        out.push_str("<meta http-equiv=\"refresh\" content=\"2\">");
    }
    let _ = writeln!(
        out,
        "<title>{}</title><style>{STYLE}</style></head><body>",
        escape(title)
    );
}

fn badge(word: &str) -> String {
    let w = escape(word);
    format!("<span class=\"{w}\">{w}</span>")
}

/// The state badge, and a `contested` one while a contested claim waits.
fn state_badge(s: &RunStatus) -> String {
    let mut b = badge(s.state.as_str());
    if let Some(c) = &s.corrupt {
        b.push_str(&format!(
            " <small>events.log record {} at byte {}</small>",
            c.record, c.offset
        ));
    }
    if s.contested {
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

/// The index: every run (newest first) and every host.
pub fn index(runs: &[RunStatus], hosts: &Hosts) -> String {
    let mut out = String::new();
    let live = runs
        .iter()
        .any(|r| r.state.is_live() && r.state.as_str() != "pending");
    head(&mut out, "kiln", live);
    out.push_str("<h1>kiln</h1>\n<h2>Runs</h2>\n");
    if runs.is_empty() {
        out.push_str("<p>No runs yet: <code>kiln-coordinator ticket issue</code>.</p>\n");
    } else {
        out.push_str(
            "<table><tr><th>run</th><th>plan</th><th>host</th><th>state</th>\
            <th>outcome</th><th>stages</th><th>issued</th></tr>\n",
        );
        let mut sorted: Vec<&RunStatus> = runs.iter().collect();
        sorted.sort_by(|a, b| (b.issued_at, &b.run).cmp(&(a.issued_at, &a.run)));
        for r in sorted {
            let done = r.stages.iter().filter(|s| s.attempts > 0).count();
            let _ = writeln!(
                out,
                "<tr><td><a href=\"/runs/{id}\"><code>{short}</code></a></td><td>{plan}</td>\
                 <td>{host}</td><td>{state}</td><td>{outcome}</td><td>{done}/{total}</td>\
                 <td>{issued}</td></tr>",
                id = escape(&r.run),
                short = escape(r.run.get(..12).unwrap_or(&r.run)),
                plan = escape(&r.plan),
                host = escape(&r.host),
                state = state_badge(r),
                outcome = r.outcome.map(badge).unwrap_or_default(),
                total = r.stages.len(),
                issued = fmt_unix(r.issued_at),
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>Hosts</h2>\n");
    if hosts.hosts.is_empty() {
        out.push_str("<p>No hosts: <code>kiln-coordinator host add</code>.</p>\n");
    } else {
        out.push_str(
            "<table><tr><th>name</th><th>MACs</th><th>serial</th><th>image</th>\
            <th>runs</th></tr>\n",
        );
        for h in &hosts.hosts {
            let n = runs.iter().filter(|r| r.host == h.name).count();
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{n}</td></tr>",
                escape(&h.name),
                escape(&h.macs.join(", ")),
                escape(h.serial.as_deref().unwrap_or("")),
                escape(h.image.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</table>\n");
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
        log_tail(&mut out, tail, st.log_lines, &s.run, &st.name);
    }
    out.push_str("</body></html>\n");
    out
}

fn log_tail(out: &mut String, tail: &[String], total: u64, run: &str, name: &str) {
    if total == 0 {
        return;
    }
    if total > tail.len() as u64 {
        let _ = writeln!(
            out,
            "<p>last {} of {total} lines; all: <code>kiln-coordinator run logs {} --stage {}</code></p>",
            tail.len(),
            escape(run),
            escape(name)
        );
    }
    let _ = writeln!(out, "<pre>{}</pre>", escape(&tail.join("\n")));
}
