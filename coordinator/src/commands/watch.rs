//! `run watch`: follows events.log as it grows and prints stage and log lines.
use anyhow::{Context, Result};
use argh::FromArgs;
use kiln_protocol::{Event, Frame, Ticket};
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use crate::exit;
use crate::fmt::fmt_ms;
use crate::fsutil::now_ms;
use crate::report::stage_name;
use crate::state::State;
use crate::status::{Inputs, RunState, fold};
use crate::store::{RunDir, Scan, files};
use crate::visible::visible;

const POLL: Duration = Duration::from_millis(200);

/// `run watch`: prints until the run ends; exits like the agent would (0 passed,
/// 1 failed or aborted, 3 error or expired: [`crate::exit`]).
pub fn cmd_watch(state: &State, c: &RunWatchCmd) -> Result<i32> {
    let id = state.resolve_run(&c.run)?;
    let rd = RunDir::new(state, id);
    let (_, ticket) = rd.ticket(&state.public_key()?)?;
    let mut tail = Tail::default();
    let mut frames: Vec<Frame> = Vec::new();
    let mut last_state = None;
    let mut power_shown = 0usize;
    let stdout = std::io::stdout();
    loop {
        let new = tail.poll(&rd)?;
        {
            let mut out = stdout.lock();
            for f in &new {
                if let Some(line) = describe(&ticket, f) {
                    let _ = writeln!(out, "{}", visible(&line));
                }
            }
            let _ = out.flush();
        }
        frames.extend(new);
        let abort = rd.abort();
        let mut s = fold(Inputs {
            ticket: &ticket,
            frames: &frames,
            last_seen_ms: rd.last_seen_ms(),
            abort: abort.as_ref(),
            now_ms: now_ms(),
            corrupt: tail.scan.corrupt.as_ref(),
        });
        // A lights-out run: its power steps, and the coordinator's end of the run
        // (never booted, agent lost), come from power.log.
        if rd.path(files::POWER_LOG).exists() {
            let recs = crate::lights::records(&rd);
            for r in recs.iter().skip(power_shown) {
                println!("== power: {}", visible(&r.describe()));
            }
            power_shown = power_shown.max(recs.len());
            crate::status::annotate(&rd, &mut s)?;
        }
        if last_state != Some(s.state) {
            match s.state {
                RunState::Pending => println!("== run {id} is pending: waiting for an agent"),
                RunState::Powering => println!("== run {id} is powering its host on"),
                RunState::Booting => {
                    println!("== run {id} is booting: waiting for the agent's claim")
                }
                RunState::Stale => println!("== run {id} is stale: no report for a minute"),
                RunState::Held => {
                    if let Some(h) = &s.hold {
                        println!(
                            "== run {id} is held until {}",
                            crate::fmt::fmt_unix(h.until_ms / 1000)
                        );
                        for line in crate::report::hold_lines(h) {
                            println!("{}", visible(&line));
                        }
                    }
                }
                RunState::Expired => println!("== run {id} expired before an agent claimed it"),
                RunState::Aborted if s.outcome.is_none() => println!("== run {id} was aborted"),
                RunState::Corrupt => {
                    if let Some(c) = &s.corrupt {
                        println!("== run {id}: {}", visible(&c.to_string()));
                    }
                }
                _ => {}
            }
            last_state = Some(s.state);
        }
        if !s.state.is_live() {
            if let Some(e) = s.power.as_ref().and_then(|p| p.error.as_ref()) {
                println!("== run {id} ended: error: {}", visible(e));
            }
            return Ok(s.exit_status.unwrap_or_else(exit::error));
        }
        std::thread::sleep(POLL);
    }
}

/// Reads complete records appended to events.log since the last poll.
#[derive(Default)]
struct Tail {
    /// Bytes and records consumed, and the corrupt record met, if any.
    scan: Scan,
    /// Bytes read past `scan.offset` that do not yet end a record.
    partial: Vec<u8>,
}

impl Tail {
    fn poll(&mut self, rd: &RunDir) -> Result<Vec<Frame>> {
        if self.scan.corrupt.is_some() {
            return Ok(Vec::new());
        }
        let mut f = match std::fs::File::open(rd.path(files::EVENTS)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("opening events.log"),
        };
        let len = f.metadata()?.len();
        let read_to = self.scan.offset + self.partial.len() as u64;
        if len < read_to {
            // A torn tail was cut by the writer: drop what we held of it.
            self.partial.clear();
        }
        f.seek(SeekFrom::Start(
            self.scan.offset + self.partial.len() as u64,
        ))?;
        f.read_to_end(&mut self.partial)?;
        let mut out = Vec::new();
        let used = self.scan.feed(&self.partial, |frame| out.push(frame));
        self.partial.drain(..used);
        Ok(out)
    }
}

/// The line `watch` prints for a frame, if any.
fn describe(t: &Ticket, f: &Frame) -> Option<String> {
    Some(match &f.event {
        Event::Claim { agent_version, .. } => format!("== claimed by agent {agent_version}"),
        Event::StageStarted { stage, attempt } => {
            format!("== {}: attempt {attempt} started", stage_name(t, *stage))
        }
        Event::Log { stage, text, .. } => format!("[{}] {text}", stage_name(t, *stage)),
        Event::StageFinished {
            stage,
            outcome,
            exit_code,
            duration_ms,
            detail,
            ..
        } => {
            let code = exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            };
            format!(
                "== {}: {outcome} after {}{code}{detail}",
                stage_name(t, *stage),
                fmt_ms(*duration_ms)
            )
        }
        Event::Part {
            stage,
            name,
            outcome,
            detail,
            ..
        } => format!("== {} / {name}: {outcome} {detail}", stage_name(t, *stage)),
        Event::RunFinished { outcome } => format!("== run finished: {outcome}"),
        Event::Held { outcome, .. } => format!("== stages done ({outcome}): holding the machine"),
        Event::Order { what, refused } => match refused {
            Some(why) => format!("== order {what}: refused: {why}"),
            None => format!("== order {what}: done"),
        },
        _ => return None,
    })
}

/// Follow a run live until it ends.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "watch")]
pub struct RunWatchCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
}
