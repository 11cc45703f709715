//! Run listings, reports and logs for people and scripts.
use anyhow::{Context, Result, bail};
use kiln_protocol::{Event, Frame, PublicKey, Ticket};
use serde::Serialize;
use std::io::Write;

use crate::claims::Kind;
use crate::cli::*;
use crate::state::State;
use crate::status::{Corruption, RunState, RunStatus, load};
use crate::store::{Events, RunDir};
use crate::visible::{json_safe, shown, visible};

mod junit;
mod watch;

pub use watch::cmd_watch;

/// One line of `runs --json` and `GET /v1/runs`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Run id.
    pub run: String,
    /// Plan name.
    pub plan: String,
    /// Host name.
    pub host: String,
    /// Life-cycle state.
    pub state: RunState,
    /// Outcome once finished.
    pub outcome: Option<&'static str>,
    /// Agent-like exit status once ended.
    pub exit_status: Option<i32>,
    /// Frames stored.
    pub frames: u64,
    /// Stages in the plan.
    pub stages: usize,
    /// Stages with at least one finished attempt.
    pub stages_done: usize,
    /// Ticket issue time, unix seconds.
    pub issued_at: u64,
    /// Ticket expiry, unix seconds.
    pub expires_at: u64,
    /// Coordinator clock of the last batch, unix ms.
    pub last_seen_ms: Option<u64>,
    /// The first corrupt record of events.log, when state is `corrupt`.
    pub corrupt: Option<Corruption>,
    /// Another key tried to claim the run and no operator has acknowledged it yet.
    pub contested: bool,
}

impl From<&RunStatus> for Summary {
    fn from(s: &RunStatus) -> Self {
        Summary {
            run: s.run.clone(),
            plan: s.plan.clone(),
            host: s.host.clone(),
            state: s.state,
            outcome: s.outcome,
            exit_status: s.exit_status,
            frames: s.frames,
            stages: s.stages.len(),
            stages_done: s.stages.iter().filter(|st| st.attempts > 0).count(),
            issued_at: s.issued_at,
            expires_at: s.expires_at,
            last_seen_ms: s.last_seen_ms,
            corrupt: s.corrupt.clone(),
            contested: s.contested,
        }
    }
}

/// Every readable run's status, in run id order; broken run folders are logged and
/// left out.
pub fn statuses(state: &State, key: &PublicKey) -> Result<Vec<RunStatus>> {
    let mut out = Vec::new();
    for id in state.run_ids()? {
        let rd = RunDir::new(state, id);
        if !rd.exists() {
            continue;
        }
        match crate::status::current(&rd, key) {
            Ok(s) => out.push(s),
            Err(e) => log::warn!("{e:#}"),
        }
    }
    Ok(out)
}

/// Every run's summary, oldest first.
pub fn summaries(state: &State, key: &PublicKey) -> Result<Vec<Summary>> {
    let mut list: Vec<Summary> = statuses(state, key)?.iter().map(Summary::from).collect();
    list.sort_by(|a, b| (a.issued_at, &a.run).cmp(&(b.issued_at, &b.run)));
    Ok(list)
}

/// `runs`.
pub fn cmd_runs(state: &State, c: &RunsCmd) -> Result<i32> {
    let list = summaries(state, &state.public_key()?)?;
    if c.json {
        println!("{}", json_safe(serde_json::to_string_pretty(&list)?));
        return Ok(0);
    }
    if list.is_empty() {
        println!("no runs");
        return Ok(0);
    }
    println!(
        "{:<32}  {:<16} {:<12} {:<9} {:<9} {:>6}  ISSUED",
        "RUN", "PLAN", "HOST", "STATE", "OUTCOME", "STAGES"
    );
    for s in &list {
        println!(
            "{:<32}  {:<16} {:<12} {:<9} {:<9} {:>6}  {}",
            s.run,
            visible(&s.plan),
            visible(&s.host),
            state_word(s.state, s.contested),
            s.outcome.unwrap_or("-"),
            format!("{}/{}", s.stages_done, s.stages),
            fmt_unix(s.issued_at)
        );
    }
    for s in &list {
        if let Some(c) = &s.corrupt {
            println!("{}  corrupt: {}", s.run, visible(&c.to_string()));
        }
    }
    Ok(0)
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

/// The claim lines of `run show`: who claimed the run from where, the enrolled key,
/// and contested or refused claims; `v` makes recorded text visible (or not, raw).
fn claims_text(o: &mut String, s: &RunStatus, v: &dyn Fn(&str) -> String) {
    use std::fmt::Write as _;
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

/// `run show`: text from the run goes through [`visible`] unless `--raw`.
pub fn cmd_show(state: &State, c: &RunShowCmd) -> Result<i32> {
    let id = state.resolve_run(&c.run)?;
    let l = load(&RunDir::new(state, id), &state.public_key()?)?;
    let s = &l.status;
    if c.json {
        println!("{}", crate::status::to_json(s));
        return Ok(0);
    }
    let text = show_text(s, c.raw);
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(0)
}

/// What `run show` prints; `raw` leaves control characters in.
pub fn show_text(s: &RunStatus, raw: bool) -> String {
    use std::fmt::Write as _;
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
    let state = state_word(s.state, s.contested);
    let _ = match s.outcome {
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
    let _ = writeln!(
        o,
        "issued   {}, expires {}",
        fmt_unix(s.issued_at),
        fmt_unix(s.expires_at)
    );
    if let Some(r) = &s.abort_requested {
        let _ = writeln!(o, "abort    requested: {}", v(r));
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

/// `run logs`: every Log line once, in seq order; control characters are shown as
/// escapes unless `--raw`.
pub fn cmd_logs(state: &State, c: &RunLogsCmd) -> Result<i32> {
    let id = state.resolve_run(&c.run)?;
    let rd = RunDir::new(state, id);
    let (_, ticket) = rd.ticket(&state.public_key()?)?;
    let only = match &c.stage {
        Some(name) => Some(stage_index(&ticket, name)?),
        None => None,
    };
    let Events { frames, corrupt } = rd.events()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (stage, text) in log_lines(&frames) {
        let text = shown(text, c.raw);
        let line = match only {
            Some(i) if i != stage => continue,
            Some(_) => format!("{text}\n"),
            None => format!("[{}] {text}\n", shown(&stage_name(&ticket, stage), c.raw)),
        };
        if out.write_all(line.as_bytes()).is_err() {
            return Ok(0); // the reader went away (e.g. `| head`)
        }
    }
    let _ = out.flush();
    if let Some(c) = corrupt {
        // The readable part is printed; the exit status says it is not all.
        eprintln!(
            "error: run {id}: {}; the lines above are those of the {} records before it",
            visible(&c.to_string()),
            c.record
        );
        return Ok(2);
    }
    Ok(0)
}

/// `(stage, text)` of every Log frame, in order.
pub fn log_lines(frames: &[Frame]) -> impl Iterator<Item = (u16, &str)> {
    frames.iter().filter_map(|f| match &f.event {
        Event::Log { stage, text, .. } => Some((*stage, text.as_str())),
        _ => None,
    })
}

fn stage_index(t: &Ticket, name: &str) -> Result<u16> {
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

/// `report`.
pub fn cmd_report(state: &State, c: &ReportCmd) -> Result<i32> {
    let id = state.resolve_run(&c.run)?;
    let l = load(&RunDir::new(state, id), &state.public_key()?)?;
    let body = match c.format.as_str() {
        "json" => format!("{}\n", crate::status::to_json(&l.status)),
        "html" => {
            let cas = state.cas();
            let tails = crate::status::with_folded(
                &RunDir::new(state, id),
                &state.public_key()?,
                |_, f| f.tails(),
            )?;
            crate::html::run_page(&l.status, &tails, &|sha| cas.has(sha))
        }
        "junit" => junit::render(&l),
        other => bail!("unknown report format {other:?} (json, html or junit)"),
    };
    match &c.out {
        Some(p) => std::fs::write(p, body).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{body}"),
    }
    Ok(0)
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn fmt_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_unix(1_709_210_096), "2024-02-29 12:34:56 UTC");
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(12_345), "12.3s");
        assert_eq!(fmt_ms(245_000), "4m05s");
        assert_eq!(fmt_ms(7_380_000), "2h03m");
    }
}
