//! A lights-out run's own record: `power.log` in the run folder, written by the
//! coordinator (never by the agent, never into events.log). One JSON object a line,
//! appended and fsynced: the boot request with its settings, the steps
//! (`powering`, `booting`), every power action with the BMC's answer, warnings, the
//! infrastructure error that ended the run (`never booted`, `agent lost`), late agents
//! refused, and what happened to the power after the run. Capped at
//! [`MAX_POWER_LOG_BYTES`]; past the cap only the records that change the run's
//! course are kept.
//!
//! [`view`] reads it back for `run show`, the page and the JSON; the serve loop
//! (`powerq.rs`) writes it.
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;

use crate::fsutil::now_ms;
use crate::power::Action;
use crate::state::State;
use crate::store::RunDir;

/// The file in the run folder.
pub const POWER_LOG: &str = crate::store::files::POWER_LOG;

/// Largest power.log written (and read: a larger one is read up to this).
pub const MAX_POWER_LOG_BYTES: u64 = 256 << 10;

/// The host's serial console as the coordinator read it (IPMI serial-over-LAN), from
/// power-on until the agent's claim: text lines, control characters made visible.
pub const CONSOLE_LOG: &str = "console.log";

/// Largest console.log written; what comes after is dropped (one line says so).
pub const MAX_CONSOLE_BYTES: u64 = 1 << 20;

/// Console lines a view shows (the last ones).
pub const VIEW_CONSOLE_LINES: usize = 20;

/// Records a view shows (the last ones).
pub const VIEW_RECORDS: usize = 100;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// `ticket issue --boot`: the run waits in the power queue.
    Requested,
    /// Taken from the queue: the boot override and power-on are being sent.
    Powering,
    /// One power action and the BMC's answer.
    Action,
    /// Something went wrong that does not stop the boot (a refused boot override).
    Warning,
    /// The host was powered on; the boot watchdog runs from here.
    Booting,
    /// The run ended for a reason outside the test: never booted, agent lost,
    /// power-on failed.
    Ended,
    /// An agent reported for a run that had already ended this way; refused.
    LateAgent,
    /// After the run: the host was powered off, found off, or kept on.
    Released,
}

/// The settings a lights-out run was issued with (host defaults, then the plan's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Power-on to claim before the watchdog acts, seconds.
    pub boot_timeout_s: u64,
    /// Silence of a claimed run's agent before it is lost, seconds.
    pub lost_after_s: u64,
    /// Power the host off after the run.
    pub power_off: bool,
}

/// One line of power.log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Coordinator clock, unix ms.
    pub at_ms: u64,
    /// What happened.
    pub event: Event,
    /// The power action, for [`Event::Action`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Whether the BMC accepted it, for [`Event::Action`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// How long the BMC took, for [`Event::Action`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
    /// The BMC's answer or the reason, one line (no password ever).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The settings, on [`Event::Requested`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Settings>,
}

impl Record {
    /// A record of `event` now with `detail`.
    pub fn new(event: Event, detail: impl Into<String>) -> Self {
        Record {
            at_ms: now_ms(),
            event,
            action: None,
            ok: None,
            took_ms: None,
            detail: crate::power::one_line_max(&detail.into(), 2000),
            settings: None,
        }
    }

    /// The record of one power action.
    pub fn action(action: Action, ok: bool, took_ms: u64, detail: impl Into<String>) -> Self {
        Record {
            action: Some(action),
            ok: Some(ok),
            took_ms: Some(took_ms),
            ..Record::new(Event::Action, detail)
        }
    }

    /// The line `run show` prints for it.
    pub fn describe(&self) -> String {
        let what = match (self.event, self.action, self.ok) {
            (Event::Action, Some(a), Some(true)) => format!("power {}: ok", a.as_str()),
            (Event::Action, Some(a), _) => format!("power {}: FAILED", a.as_str()),
            (e, _, _) => serde_json::to_value(e)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        };
        let took = self
            .took_ms
            .map(|t| format!(" ({})", crate::fmt::fmt_ms(t)))
            .unwrap_or_default();
        if self.detail.is_empty() {
            format!("{what}{took}")
        } else {
            format!("{what}{took}: {}", self.detail)
        }
    }
}

/// Appends one record (fsynced). Past the cap, only `Ended` and `Released` records
/// are written (they are few and decide the run's course).
pub fn append(rd: &RunDir, rec: &Record) -> Result<()> {
    let path = rd.path(POWER_LOG);
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let essential = matches!(
        rec.event,
        Event::Ended | Event::Released | Event::Requested | Event::Powering | Event::Booting
    );
    if size >= MAX_POWER_LOG_BYTES && !essential {
        return Ok(());
    }
    let mut line = serde_json::to_vec(rec).context("encoding a power record")?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(&line)
        .and_then(|_| f.sync_data())
        .with_context(|| format!("appending to {}", path.display()))?;
    // The coordinator ending a run changes what the index serves (and lists), and
    // someone wants to hear of it.
    if rec.event == Event::Ended
        && let Some(state) = rd.state()
    {
        crate::journal::note_run(&state, &rd.id);
        let kind = if rec.detail.starts_with("never booted") {
            crate::notify::Kind::NeverBooted
        } else {
            crate::notify::Kind::Failed
        };
        if let Err(e) = crate::notify::emit(&state, &rd.id, kind, &rec.detail) {
            log::error!("run {}: queueing its notification: {e:#}", rd.id);
        }
    }
    Ok(())
}

/// Every readable record of a run (none when it was not issued with `--boot`).
/// Lines that do not parse are skipped; at most [`MAX_POWER_LOG_BYTES`] are read.
pub fn records(rd: &RunDir) -> Vec<Record> {
    let path = rd.path(POWER_LOG);
    let Ok(bytes) =
        kiln_protocol::io::read_file_capped(&path, MAX_POWER_LOG_BYTES + (64 << 10), "power.log")
    else {
        return Vec::new();
    };
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// Turns console bytes into lines appended to a run's console.log: partial lines
/// wait for their end, carriage returns and ANSI escapes are dropped, other control
/// characters made visible, ipmitool's own banner left out; capped at
/// [`MAX_CONSOLE_BYTES`].
pub struct ConsoleWriter {
    path: std::path::PathBuf,
    partial: Vec<u8>,
    full: bool,
}

impl ConsoleWriter {
    /// A writer appending to the run's console.log.
    pub fn new(rd: &RunDir) -> Self {
        ConsoleWriter {
            path: rd.path(CONSOLE_LOG),
            partial: Vec::new(),
            full: false,
        }
    }

    /// Takes one chunk of console bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.full {
            return;
        }
        self.partial.extend_from_slice(bytes);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            if self.partial.len() > 4096 {
                // A line that never ends: write what there is.
                let chunk = std::mem::take(&mut self.partial);
                self.write_lines(&chunk);
            }
            return;
        };
        let rest = self.partial.split_off(end + 1);
        let chunk = std::mem::replace(&mut self.partial, rest);
        self.write_lines(&chunk);
    }

    fn write_lines(&mut self, chunk: &[u8]) {
        let text = String::from_utf8_lossy(chunk);
        let mut out = String::new();
        for line in text.split('\n') {
            let line = strip_escapes(line);
            let line = line.trim_end();
            if line.is_empty()
                || line.contains("SOL Session operational")
                || line.contains("HPM.x Capabilities")
            {
                continue;
            }
            out.push_str(&kiln_cmdline::visible::visible(line));
            out.push('\n');
        }
        if out.is_empty() {
            return;
        }
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size + out.len() as u64 > MAX_CONSOLE_BYTES {
            self.full = true;
            out = format!("[console capped at {MAX_CONSOLE_BYTES} bytes]\n");
        }
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(out.as_bytes()));
        if let Err(e) = res {
            log::warn!("{}: {e}", self.path.display());
            self.full = true;
        }
    }
}

/// Drops ANSI escape sequences (`ESC [ … letter`) and carriage returns.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The last `n` lines of a run's console.log (at most its last 64 KiB are read).
pub fn console_tail(rd: &RunDir, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(rd.path(CONSOLE_LOG)) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(64 << 10);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(64 << 10).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // cut mid-line
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// Where a lights-out run is, from its records alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The request's settings (None: not a lights-out run).
    pub settings: Option<Settings>,
    /// Taken from the queue.
    pub powering: bool,
    /// Powered on at (the latest `booting` record).
    pub booting_since_ms: Option<u64>,
    /// Power cycles the watchdog made.
    pub watchdog_cycles: u32,
    /// The infrastructure error that ended the run.
    pub ended: Option<String>,
    /// After-run power handling done.
    pub released: bool,
}

/// Folds records into [`Progress`].
pub fn progress(recs: &[Record]) -> Progress {
    let mut p = Progress::default();
    for r in recs {
        match r.event {
            Event::Requested => p.settings = r.settings.or(p.settings),
            Event::Powering => p.powering = true,
            Event::Booting => {
                if p.booting_since_ms.is_some() {
                    p.watchdog_cycles += 1;
                }
                p.booting_since_ms = Some(r.at_ms);
            }
            Event::Ended => {
                if p.ended.is_none() {
                    p.ended = Some(r.detail.clone());
                }
            }
            Event::Released => p.released = true,
            Event::Action | Event::Warning | Event::LateAgent => {}
        }
    }
    p
}

/// The infrastructure error that ended a run, if one did (read for every online
/// batch: a late agent is refused).
pub fn ended(rd: &RunDir) -> Option<String> {
    if !rd.path(POWER_LOG).exists() {
        return None;
    }
    progress(&records(rd)).ended
}

/// What status views show of a lights-out run.
#[derive(Debug, Clone, Serialize)]
pub struct PowerView {
    /// `queued`, `powering`, `booting`, `handed_over` (the agent claimed),
    /// `ended` or `released`.
    pub phase: &'static str,
    /// Place in the power queue (1 = next), while queued.
    pub queue_position: Option<usize>,
    /// The infrastructure error that ended the run.
    pub error: Option<String>,
    /// Power-on to claim allowed, seconds.
    pub boot_timeout_s: u64,
    /// Silence allowed, seconds.
    pub lost_after_s: u64,
    /// Power the host off after the run.
    pub power_off: bool,
    /// The last [`VIEW_RECORDS`] records.
    pub records: Vec<Record>,
    /// The last [`VIEW_CONSOLE_LINES`] lines of the host's console (console.log).
    pub console_tail: Vec<String>,
}

/// The power queue's order as serve last wrote it (`power/queue.json`: run ids).
pub fn queue(state: &State) -> Vec<String> {
    kiln_protocol::io::read_file_capped(
        &state.root.join("power/queue.json"),
        1 << 20,
        "the power queue",
    )
    .ok()
    .and_then(|b| serde_json::from_slice(&b).ok())
    .unwrap_or_default()
}

/// Writes the power queue's order.
pub fn save_queue(state: &State, runs: &[String]) -> Result<()> {
    let dir = state.root.join("power");
    std::fs::create_dir_all(&dir)?;
    crate::fsutil::write_atomic(&dir.join("queue.json"), &serde_json::to_vec(runs)?, 0o644)
}

/// The view of a run's power.log; None when the run is not lights-out. `claimed`:
/// whether an agent claimed the run.
pub fn view(rd: &RunDir, run: &str, claimed: bool) -> Option<PowerView> {
    if !rd.path(POWER_LOG).exists() {
        return None;
    }
    let recs = records(rd);
    let p = progress(&recs);
    let settings = p.settings?;
    let phase = if p.released {
        "released"
    } else if p.ended.is_some() {
        "ended"
    } else if claimed {
        "handed_over"
    } else if p.booting_since_ms.is_some() {
        "booting"
    } else if p.powering {
        "powering"
    } else {
        "queued"
    };
    let queue_position = (phase == "queued")
        .then(|| {
            // runs/<run>/ → the state folder.
            let root = rd.dir.parent()?.parent()?;
            let state = State {
                root: root.to_path_buf(),
            };
            queue(&state).iter().position(|r| r == run).map(|i| i + 1)
        })
        .flatten();
    let skip = recs.len().saturating_sub(VIEW_RECORDS);
    Some(PowerView {
        phase,
        queue_position,
        error: p.ended,
        boot_timeout_s: settings.boot_timeout_s,
        lost_after_s: settings.lost_after_s,
        power_off: settings.power_off,
        records: recs.into_iter().skip(skip).collect(),
        console_tail: console_tail(rd, VIEW_CONSOLE_LINES),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(event: Event, at_ms: u64) -> Record {
        Record {
            at_ms,
            ..Record::new(event, "")
        }
    }

    #[test]
    fn progress_follows_the_records() {
        let s = Settings {
            boot_timeout_s: 5,
            lost_after_s: 7,
            power_off: true,
        };
        let mut req = rec(Event::Requested, 1);
        req.settings = Some(s);
        let mut recs = vec![req, rec(Event::Powering, 2), rec(Event::Booting, 3)];
        let p = progress(&recs);
        assert_eq!(p.settings, Some(s));
        assert_eq!(p.booting_since_ms, Some(3));
        assert_eq!(p.watchdog_cycles, 0);
        recs.push(rec(Event::Booting, 9));
        let mut end = rec(Event::Ended, 10);
        end.detail = "never booted".into();
        recs.push(end);
        let p = progress(&recs);
        assert_eq!((p.booting_since_ms, p.watchdog_cycles), (Some(9), 1));
        assert_eq!(p.ended.as_deref(), Some("never booted"));
    }

    #[test]
    fn console_bytes_become_safe_capped_lines() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir {
            id: kiln_protocol::RunId([1; 16]),
            dir: dir.path().to_path_buf(),
        };
        let mut w = ConsoleWriter::new(&rd);
        w.push(b"[SOL Session operational.  Use ~? for help]\r\nSeaBIOS \x1b[1mver");
        w.push(b"sion\x1b[0m\r\nNo bootable device.\x07\r\npart");
        assert_eq!(
            console_tail(&rd, 10),
            ["SeaBIOS version", "No bootable device.\\x07"]
        );
        let big = vec![b'x'; 1000];
        for _ in 0..1100 {
            w.push(&big);
            w.push(b"\n");
        }
        let len = std::fs::metadata(rd.path(CONSOLE_LOG)).unwrap().len();
        assert!(len <= MAX_CONSOLE_BYTES + 100, "{len}");
        assert_eq!(console_tail(&rd, 1), ["[console capped at 1048576 bytes]"]);
    }

    #[test]
    fn records_describe_themselves() {
        let r = Record::action(Action::Pxe, false, 12, "Invalid data field");
        assert_eq!(r.describe(), "power pxe: FAILED (12ms): Invalid data field");
        assert_eq!(rec(Event::Booting, 1).describe(), "booting");
    }
}
