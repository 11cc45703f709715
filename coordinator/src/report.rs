//! Text views of runs for people: the `runs` table, `run show`, log lines; and
//! (in [`junit`]) the JUnit report.
use anyhow::{Result, bail};
use kiln_protocol::{Event, Frame, Ticket};
use std::fmt::Write as _;

use crate::claims::Kind;
use crate::fmt::{fmt_ms, fmt_unix};
use crate::status::{RunState, RunStatus, Summary};
use crate::visible::{shown, visible};

pub mod junit;

/// The `runs` table: one line per run, then a line per corrupt run.
pub fn runs_table(list: &[Summary]) -> String {
    let mut o = String::new();
    if list.is_empty() {
        o.push_str("no runs\n");
        return o;
    }
    let _ = writeln!(
        o,
        "{:<32}  {:<16} {:<12} {:<9} {:<9} {:>6}  ISSUED",
        "RUN", "PLAN", "HOST", "STATE", "OUTCOME", "STAGES"
    );
    for s in list {
        let _ = writeln!(
            o,
            "{:<32}  {:<16} {:<12} {:<9} {:<9} {:>6}  {}",
            s.run,
            visible(&s.plan),
            visible(&s.host),
            state_word(s.state, s.contested),
            s.outcome.as_deref().unwrap_or("-"),
            format!("{}/{}", s.stages_done, s.stages),
            fmt_unix(s.issued_at)
        );
    }
    for s in list {
        if let Some(c) = &s.corrupt {
            let _ = writeln!(o, "{}  corrupt: {}", s.run, visible(&c.to_string()));
        }
    }
    o
}

/// The state as listed: `running`, or `running,contested` while a contested claim
/// waits for an operator.
pub fn state_word(state: RunState, contested: bool) -> String {
    if contested {
        format!("{},contested", state.as_str())
    } else {
        state.as_str().to_string()
    }
}

/// How to reach a held run's machine, for `run show` and `run watch`: the exact
/// `ssh root@ADDR` lines with the host key to check, and the orders it takes.
pub fn hold_lines(h: &crate::status::HoldStatus) -> Vec<String> {
    let mut out = Vec::new();
    match &h.host_key {
        Some(fp) => {
            for cmd in &h.ssh {
                out.push(format!("login    {cmd}    (host key {fp})"));
            }
            if h.ssh.is_empty() {
                out.push(format!("login    no address reported (host key {fp})"));
            }
        }
        None => out.push("login    no SSH server (kiln-agent run --hold)".into()),
    }
    out.push(
        "orders   kiln-coordinator run release|retry --stage NAME|approve --stage NAME --disk SERIAL"
            .into(),
    );
    out
}

/// The claim lines of `run show`: who claimed the run from where, the enrolled key,
/// and contested or refused claims; `v` makes recorded text visible (or not, raw).
fn claims_text(o: &mut String, s: &RunStatus, v: &dyn Fn(&str) -> String) {
    let _ = match &s.claim {
        Some(c) => writeln!(
            o,
            "claim    from {}, key {}, at {}",
            v(&c.source),
            v(c.fingerprint.as_deref().unwrap_or("-")),
            fmt_unix(c.at_ms / 1000)
        ),
        None => writeln!(o, "claim    none yet"),
    };
    if let Some(k) = &s.enrolled_key {
        let _ = writeln!(o, "enrolled only agent key {} may claim this run", v(k));
    }
    if s.contested {
        let _ = writeln!(
            o,
            "CONTESTED another agent key tried to claim this run; look at the claims below, \
             then `kiln-coordinator run ack-contest {}`",
            s.run
        );
    }
    for e in s.claim_events.iter().filter(|e| e.event != Kind::Claim) {
        let detail = if e.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", v(&e.detail))
        };
        let _ = writeln!(
            o,
            "  {} {} from {} key {}{detail}",
            fmt_unix(e.at_ms / 1000),
            e.event.as_str(),
            v(&e.source),
            v(e.fingerprint.as_deref().unwrap_or("-")),
        );
    }
}

/// The lights-out lines of `run show` (power.log): phase, queue place, the error
/// that ended the run, and every power record.
fn power_text(o: &mut String, s: &RunStatus, v: &dyn Fn(&str) -> String) {
    let Some(p) = &s.power else {
        return;
    };
    let place = p
        .queue_position
        .map(|n| format!(", place {n} in the power queue"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "power    {}{place} (boot timeout {}, lost after {}, {})",
        p.phase,
        crate::fmt::fmt_ms(p.boot_timeout_s * 1000),
        crate::fmt::fmt_ms(p.lost_after_s * 1000),
        if p.power_off {
            "powered off after"
        } else {
            "kept on after"
        }
    );
    if let Some(e) = &p.error {
        let _ = writeln!(o, "error    {}", v(e));
    }
    for r in &p.records {
        let _ = writeln!(o, "  {} {}", fmt_unix(r.at_ms / 1000), v(&r.describe()));
    }
    if !p.console_tail.is_empty() {
        let _ = writeln!(
            o,
            "console  (last lines; all: run logs {} --console)",
            s.run
        );
        for l in &p.console_tail {
            let _ = writeln!(o, "  {}", v(l));
        }
    }
}

/// What `run show` prints; `raw` leaves control characters in.
pub fn show_text(s: &RunStatus, raw: bool) -> String {
    let v = |t: &str| shown(t, raw).into_owned();
    let mut o = String::new();
    let _ = writeln!(o, "run      {}", s.run);
    let _ = writeln!(o, "plan     {}", v(&s.plan));
    match &s.hostname {
        Some(h) if *h != s.host => {
            let _ = writeln!(o, "host     {} (reports as {})", v(&s.host), v(h));
        }
        _ => {
            let _ = writeln!(o, "host     {}", v(&s.host));
        }
    }
    let mut state = state_word(s.state, s.contested);
    if let Some(h) = &s.hold {
        state = format!("{state} (until {})", fmt_unix(h.until_ms / 1000));
    }
    let _ = match s.outcome.or(s.hold.as_ref().map(|h| h.outcome)) {
        Some(oc) => writeln!(o, "state    {state} ({oc})"),
        None => writeln!(o, "state    {state}"),
    };
    if let Some(c) = &s.corrupt {
        let _ = writeln!(
            o,
            "corrupt  {c}; shown: the {} record(s) before it",
            c.record
        );
    }
    if let Some(a) = &s.agent_version {
        let _ = writeln!(o, "agent    {}", v(a));
    }
    claims_text(&mut o, s, &v);
    power_text(&mut o, s, &v);
    let _ = writeln!(
        o,
        "issued   {}, expires {}",
        fmt_unix(s.issued_at),
        fmt_unix(s.expires_at)
    );
    if let Some(r) = &s.abort_requested {
        let _ = writeln!(o, "abort    requested: {}", v(r));
    }
    if let Some(h) = &s.hold {
        for line in hold_lines(h) {
            let _ = writeln!(o, "{}", v(&line));
        }
    }
    for e in &s.orders {
        let _ = writeln!(
            o,
            "order    {} {} by {}: {}",
            fmt_unix(e.at_ms / 1000),
            v(&e.what),
            v(&e.by),
            v(&e.result)
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "  {:>2}  {:<20} {:<10} {:<10} {:>8} {:>5} {:>9}  DETAIL",
        "#", "STAGE", "KIND", "OUTCOME", "ATTEMPTS", "EXIT", "DURATION"
    );
    for st in &s.stages {
        let _ = writeln!(
            o,
            "  {:>2}  {:<20} {:<10} {:<10} {:>8} {:>5} {:>9}  {}",
            st.index,
            v(&st.name),
            st.kind,
            v(&st.outcome),
            st.attempts,
            st.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            st.duration_ms.map(fmt_ms).unwrap_or_default(),
            v(&st.detail)
        );
    }
    for st in &s.stages {
        let name = v(&st.name);
        for m in &st.measurements {
            let _ = writeln!(o, "  {name}: {} = {} {}", v(&m.name), m.value, v(&m.unit));
        }
        for a in &st.artifacts {
            let _ = writeln!(
                o,
                "  {name}: artifact {} ({} bytes) {}",
                v(&a.name),
                a.size,
                v(&a.sha256)
            );
        }
        for p in &st.parts {
            let _ = writeln!(
                o,
                "  {name} / {}: {} {}",
                v(&p.name),
                p.outcome,
                v(&p.detail)
            );
        }
    }
    o
}

/// `(stage, text)` of every Log frame, in order.
pub fn log_lines(frames: &[Frame]) -> impl Iterator<Item = (u16, &str)> {
    frames.iter().filter_map(|f| match &f.event {
        Event::Log { stage, text, .. } => Some((*stage, text.as_str())),
        _ => None,
    })
}

/// The index of the plan's stage named `name`; refused, naming the stages, when
/// there is none.
pub fn stage_index(t: &Ticket, name: &str) -> Result<u16> {
    match t.plan.stages.iter().position(|s| s.name == name) {
        Some(i) => Ok(i as u16),
        None => {
            let names: Vec<&str> = t.plan.stages.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "no stage {name:?} in plan {} (stages: {})",
                visible(&t.plan.name),
                visible(&names.join(", "))
            )
        }
    }
}

/// A stage's name, or `#N` for an index the plan lacks.
pub fn stage_name(t: &Ticket, stage: u16) -> String {
    t.plan
        .stages
        .get(stage as usize)
        .map(|s| s.name.clone())
        .unwrap_or_else(|| format!("#{stage}"))
}
