//! Run commands: `runs`, `run show|logs|abort|ack-contest`, `import`, `report`.
use anyhow::{Context, Result, bail};
use argh::FromArgs;
use std::io::Write;
use std::path::PathBuf;

use crate::exit;
use crate::limits::Limits;
use crate::report::{log_lines, runs_table, show_text, stage_index, stage_name};
use crate::state::State;
use crate::status::load;
use crate::store::{Events, RunDir, files};
use crate::visible::{json_safe, shown, visible};

/// `runs`.
/// Oldest first, as before paging existed; with `--limit` the newest N (before
/// `--before`), still oldest first, and where the next page starts on stderr.
pub fn cmd_runs(state: &State, c: &RunsCmd) -> Result<i32> {
    if let Some(n) = c.limit
        && !(1..=crate::index::MAX_PAGE).contains(&n)
    {
        bail!("--limit must be 1 to {}", crate::index::MAX_PAGE);
    }
    let before = match &c.before {
        Some(r) => Some(state.resolve_run(r)?),
        None => None,
    };
    let (index, _) = crate::index::Index::build(state, false)?;
    let mut list = match (c.limit, before) {
        (None, None) => index.all()?,
        (limit, before) => {
            let page = index.page(limit.unwrap_or(crate::index::MAX_PAGE), before.as_ref())?;
            if let Some(next) = page.next {
                eprintln!(
                    "older runs: kiln-coordinator runs --limit {} --before {next}",
                    page.rows.len()
                );
            }
            page.rows
        }
    };
    list.reverse();
    if c.json {
        println!("{}", json_safe(serde_json::to_string_pretty(&list)?));
    } else {
        print!("{}", runs_table(&list));
    }
    Ok(exit::OK)
}

/// `run show`: text from the run goes through [`visible`] unless `--raw`.
pub fn cmd_show(state: &State, c: &RunShowCmd) -> Result<i32> {
    let id = state.resolve_run(&c.run)?;
    let l = load(&RunDir::new(state, id), &state.public_key()?)?;
    let s = &l.status;
    if c.json {
        println!("{}", crate::status::to_json(s));
        return Ok(exit::OK);
    }
    let text = show_text(s, c.raw);
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(exit::OK)
}

/// `run logs`: every Log line once, in seq order; control characters are shown as
/// escapes unless `--raw`.
pub fn cmd_logs(state: &State, c: &RunLogsCmd) -> Result<i32> {
    let id = state.resolve_run(&c.run)?;
    let rd = RunDir::new(state, id);
    let (_, ticket) = rd.ticket(&state.public_key()?)?;
    if c.console {
        // console.log is written safe already (controls made visible, capped).
        let text = std::fs::read_to_string(rd.path(crate::lights::CONSOLE_LOG)).unwrap_or_default();
        print!("{text}");
        return Ok(exit::OK);
    }
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
            return Ok(exit::OK); // the reader went away (e.g. `| head`)
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
        return Ok(exit::REFUSED);
    }
    Ok(exit::OK)
}

/// `run abort`: records the request; the agent gets it with its next ack.
pub fn cmd_abort(state: &State, c: &RunAbortCmd) -> Result<i32> {
    let id = state.resolve_run(&c.run)?;
    crate::store::request_abort(&RunDir::new(state, id), &state.public_key()?, &c.reason)?;
    println!("abort requested for run {id}: the agent gets it with its next ack");
    Ok(exit::OK)
}

/// `run ack-contest`: the operator has looked at the contested claims; the run stops
/// showing `contested` (the record stays).
pub fn cmd_ack_contest(state: &State, c: &RunAckContestCmd) -> Result<i32> {
    let id = state.resolve_run(&c.run)?;
    let rd = RunDir::new(state, id);
    rd.ticket(&state.public_key()?)?;
    let n = crate::claims::acknowledge(&rd)?;
    println!(
        "run {id}: {n} contested claim(s) acknowledged; the record stays in {}",
        rd.path(files::CLAIMS).display()
    );
    Ok(exit::OK)
}

/// `import BUNDLE`: all of the bundle or, on any refusal or error, none of it.
pub fn cmd_import(state: &State, c: &ImportCmd) -> Result<i32> {
    let limits = Limits::from_env()?;
    let file = std::fs::File::open(&c.bundle)
        .with_context(|| format!("reading {}", c.bundle.display()))?;
    let i = crate::ingest::import_bundle(state, file, &limits)?;
    println!(
        "imported run {} ({}): {} frames in the bundle, {} stored, {} artifacts",
        i.run,
        visible(&i.plan),
        i.frames,
        i.upto,
        i.artifacts
    );
    Ok(exit::OK)
}

/// `report`: the run as JSON, HTML (the run page, loaded as `GET /runs/{run}` loads
/// it) or JUnit.
pub fn cmd_report(state: &State, c: &ReportCmd) -> Result<i32> {
    let id = state.resolve_run(&c.run)?;
    let rd = RunDir::new(state, id);
    let key = state.public_key()?;
    let l = load(&rd, &key)?;
    let body = match c.format.as_str() {
        "json" => format!("{}\n", crate::status::to_json(&l.status)),
        "html" => {
            let cas = state.cas();
            let (status, tails) = crate::status::current_with_tails(&rd, &key)?;
            crate::html::run_page(&status, &tails, &|sha| cas.has(sha))
        }
        "junit" => crate::report::junit::render(&l),
        other => bail!("unknown report format {other:?} (json, html or junit)"),
    };
    match &c.out {
        Some(p) => std::fs::write(p, body).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{body}"),
    }
    Ok(exit::OK)
}

/// List runs and their status.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "runs")]
pub struct RunsCmd {
    /// JSON output
    #[argh(switch)]
    pub json: bool,
    /// only the newest N runs (1 to 1000; all when not given)
    #[argh(option)]
    pub limit: Option<usize>,
    /// only runs older than this one (the run id or prefix printed as the next
    /// page's cursor)
    #[argh(option)]
    pub before: Option<String>,
}

/// Stages, outcomes, measurements, artifacts.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "show")]
pub struct RunShowCmd {
    /// run id or unique prefix (8+ hex digits)
    #[argh(positional)]
    pub run: String,
    /// JSON output
    #[argh(switch)]
    pub json: bool,
    /// print text from the run as stored, control characters included (by default
    /// they are shown as escapes such as \x1b)
    #[argh(switch)]
    pub raw: bool,
}

/// The full log, every line once, in order.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "logs")]
pub struct RunLogsCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
    /// only this stage
    #[argh(option)]
    pub stage: Option<String>,
    /// print the lines' exact bytes, control characters included (by default they
    /// are shown as escapes such as \x1b)
    #[argh(switch)]
    pub raw: bool,
    /// the host's console as the coordinator read it (IPMI serial-over-LAN, from
    /// power-on to the claim) instead of the agent's lines
    #[argh(switch)]
    pub console: bool,
}

/// Abort a run: reaches the agent with its next ack.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "abort")]
pub struct RunAbortCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
    /// why
    #[argh(option, default = "String::from(\"aborted by operator\")")]
    pub reason: String,
}

/// Acknowledge a run's contested claims: it stops showing `contested` (the record
/// of every claim stays in runs/<run>/claims).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "ack-contest")]
// The doc comment is argh's --help text, where `<run>` reads as a placeholder.
#[allow(rustdoc::invalid_html_tags)]
pub struct RunAckContestCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
}

/// Ingest an offline result bundle (same path as online reports).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "import")]
pub struct ImportCmd {
    /// bundle file
    #[argh(positional)]
    pub bundle: PathBuf,
}

/// Write a run's report.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "report")]
pub struct ReportCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
    /// html, json or junit (default json)
    #[argh(option, default = "String::from(\"json\")")]
    pub format: String,
    /// output file (default stdout)
    #[argh(option)]
    pub out: Option<PathBuf>,
}
