//! Who claimed a run and from where, and who else tried: `runs/<run>/claims`.
//!
//! One line per event, appended under the run's writer lock:
//! `<event> <coordinator unix ms> <source> <key fingerprint|-> [detail]`, where event
//! is `claim` (the claim that bound the run), `contested` (a claim by another key for
//! a claimed run: refused, 409), `refused` (a claim refused for another reason: the
//! neighbour check, an enrolled key, an expired ticket) or `resolved` (an operator ran
//! `run ack-contest`). Source is `ip:port` for HTTP and `import` for bundles.
//!
//! A run is *contested* while a `contested` line follows the last `resolved` one. The
//! file is capped: past [`MAX_CLAIMS_BYTES`] `refused` lines are dropped and a
//! `contested` line is written only when the run is not contested already, so the
//! flag is never lost and the file stays small.
use anyhow::{Context, Result, bail};
use kiln_protocol::PublicKey;
use serde::Serialize;
use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;

use crate::fsutil::now_ms;
use crate::store::{RunDir, files};

/// Size past which only flag-changing lines are appended.
pub const MAX_CLAIMS_BYTES: u64 = 64 << 10;
/// Most bytes of the file read (lines an operator's `resolved` added past the cap).
const MAX_READ_BYTES: u64 = 1 << 20;
/// Longest detail kept on a line.
const MAX_DETAIL: usize = 200;

/// Where a claim came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An HTTP request from this address.
    Net(SocketAddr),
    /// An offline bundle (`import`).
    Import,
    /// An operator command.
    Operator,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Net(a) => write!(f, "{a}"),
            Source::Import => f.write_str("import"),
            Source::Operator => f.write_str("operator"),
        }
    }
}

/// The kinds of claim events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The claim that bound the run.
    Claim,
    /// Another key's claim for a claimed run (refused).
    Contested,
    /// A claim refused for another reason.
    Refused,
    /// An operator acknowledged the contested claims.
    Resolved,
}

impl Kind {
    /// The word on the line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Claim => "claim",
            Kind::Contested => "contested",
            Kind::Refused => "refused",
            Kind::Resolved => "resolved",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "claim" => Kind::Claim,
            "contested" => Kind::Contested,
            "refused" => Kind::Refused,
            "resolved" => Kind::Resolved,
            _ => return None,
        })
    }
}

/// One recorded claim event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimEvent {
    /// What happened.
    pub event: Kind,
    /// Coordinator clock, unix ms.
    pub at_ms: u64,
    /// `ip:port`, `import`, `operator` (or `unknown` for a claim bound before claims
    /// were recorded).
    pub source: String,
    /// The claimant's key fingerprint (`SHA256:…`), if any.
    pub fingerprint: Option<String>,
    /// Why a claim was refused; empty otherwise.
    pub detail: String,
}

/// A run's claim record, as read from its folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimLog {
    /// Every readable event, in order.
    pub events: Vec<ClaimEvent>,
}

impl ClaimLog {
    /// The claim that bound the run.
    pub fn claim(&self) -> Option<&ClaimEvent> {
        self.events.iter().find(|e| e.event == Kind::Claim)
    }

    /// The contested claims since the operator last acknowledged them.
    pub fn unresolved(&self) -> Vec<&ClaimEvent> {
        let from = self
            .events
            .iter()
            .rposition(|e| e.event == Kind::Resolved)
            .map_or(0, |i| i + 1);
        self.events[from..]
            .iter()
            .filter(|e| e.event == Kind::Contested)
            .collect()
    }

    /// Whether a contested claim waits for an operator.
    pub fn contested(&self) -> bool {
        !self.unresolved().is_empty()
    }
}

/// Keeps a detail to one short line of printable characters.
fn clean(detail: &str) -> String {
    detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Reads the run's claim record (missing file: empty; unreadable lines skipped).
pub fn read(rd: &RunDir) -> Result<ClaimLog> {
    let mut bytes = Vec::new();
    match fs::File::open(rd.path(files::CLAIMS)) {
        Ok(f) => f
            .take(MAX_READ_BYTES)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading run {} claims", rd.id))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("reading run {} claims", rd.id)),
    };
    let text = String::from_utf8_lossy(&bytes);
    let events = text.lines().filter_map(parse_line).collect();
    Ok(ClaimLog { events })
}

/// One line back into an event; a line with control characters (a hand-edited or
/// damaged file) is skipped, so nothing read here can drive a terminal.
fn parse_line(line: &str) -> Option<ClaimEvent> {
    if line.chars().any(char::is_control) {
        return None;
    }
    let mut f = line.splitn(5, ' ');
    let event = Kind::parse(f.next()?)?;
    let at_ms = f.next()?.parse().ok()?;
    let source = f.next()?.to_string();
    let fingerprint = match f.next()? {
        "-" => None,
        fp => Some(fp.to_string()),
    };
    let detail = f.next().unwrap_or("").to_string();
    Some(ClaimEvent {
        event,
        at_ms,
        source,
        fingerprint,
        detail,
    })
}

/// Appends one event (fsynced) and returns it; the caller holds the run's writer lock.
/// Over the cap a `refused` line, or a `contested` line for a run contested already,
/// is logged only.
pub fn append(
    rd: &RunDir,
    kind: Kind,
    source: Source,
    key: Option<&PublicKey>,
    detail: &str,
) -> Result<ClaimEvent> {
    let ev = ClaimEvent {
        event: kind,
        at_ms: now_ms(),
        source: source.to_string(),
        fingerprint: key.map(PublicKey::fingerprint),
        detail: clean(detail),
    };
    let path = rd.path(files::CLAIMS);
    let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let skip = len >= MAX_CLAIMS_BYTES
        && match kind {
            Kind::Refused => true,
            Kind::Contested => read(rd)?.contested(),
            Kind::Claim | Kind::Resolved => false,
        };
    if skip {
        log::warn!(
            "run {}: claims record is full; not recording {} from {}",
            rd.id,
            kind.as_str(),
            ev.source
        );
        return Ok(ev);
    }
    let line = format!(
        "{} {} {} {} {}",
        kind.as_str(),
        ev.at_ms,
        ev.source,
        ev.fingerprint.as_deref().unwrap_or("-"),
        ev.detail
    );
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(format!("{}\n", line.trim_end()).as_bytes())
        .and_then(|()| f.sync_data())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(ev)
}

/// The operator has looked at the run's contested claims (`run ack-contest`): the
/// run stops showing `contested` (the record stays). Returns how many contested
/// claims were open; refused when none is.
pub fn acknowledge(rd: &RunDir) -> Result<usize> {
    let _lock = rd.lock()?;
    let log = read(rd)?;
    let open = log.unresolved();
    if open.is_empty() {
        bail!("run {} is not contested", rd.id);
    }
    let n = open.len();
    append(rd, Kind::Resolved, Source::Operator, None, "")?;
    if let Some(state) = rd.state() {
        crate::journal::note_run(&state, &rd.id);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_the_flag_follows_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir {
            id: kiln_protocol::RunId([1; 16]),
            dir: dir.path().to_path_buf(),
        };
        let k = kiln_protocol::SecretKey::from_seed([3; 32]).public();
        let src = Source::Net("10.0.0.5:4000".parse().unwrap());
        append(&rd, Kind::Claim, src, Some(&k), "").unwrap();
        append(&rd, Kind::Contested, src, Some(&k), "bad\x1b]0;x\x07 news").unwrap();
        let log = read(&rd).unwrap();
        assert_eq!(log.claim().unwrap().source, "10.0.0.5:4000");
        assert_eq!(log.claim().unwrap().fingerprint, Some(k.fingerprint()));
        assert!(log.contested());
        assert!(!log.events[1].detail.contains('\x1b'));
        assert_eq!(parse_line("claim 1 \x1b[2J - x"), None);
        append(&rd, Kind::Resolved, Source::Operator, None, "").unwrap();
        assert!(!read(&rd).unwrap().contested());
        // Past the cap: refusals are dropped, but a new contest still raises the flag.
        let filler = format!("{}\n", "x".repeat(100));
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(rd.path(files::CLAIMS))
            .unwrap();
        for _ in 0..(MAX_CLAIMS_BYTES / 100) {
            f.write_all(filler.as_bytes()).unwrap();
        }
        let before = fs::metadata(rd.path(files::CLAIMS)).unwrap().len();
        append(&rd, Kind::Refused, src, Some(&k), "no").unwrap();
        assert_eq!(fs::metadata(rd.path(files::CLAIMS)).unwrap().len(), before);
        append(&rd, Kind::Contested, src, Some(&k), "").unwrap();
        assert!(read(&rd).unwrap().contested());
        let after = fs::metadata(rd.path(files::CLAIMS)).unwrap().len();
        append(&rd, Kind::Contested, src, Some(&k), "").unwrap();
        assert_eq!(fs::metadata(rd.path(files::CLAIMS)).unwrap().len(), after);
    }
}
