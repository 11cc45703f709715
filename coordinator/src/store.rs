//! Per-run storage: ticket.kiln, events.log (append-only COBS frames), control files.
//!
//! `runs/<run>/` holds `ticket.kiln` (the signed ticket), `events.log` (COBS records
//! of postcard frames, fsynced before each ack), `claim.pub` (the bound agent key),
//! `seen` (coordinator clock of the last batch, unix ms), `abort` (an operator's abort
//! reason), `uploads` (the artifacts the agent uploaded, for its quota), `claims`
//! (claim events: source address and key of every claim, contested and refused ones)
//! and `lock` (flock'ed by every writer).
use anyhow::{Context, Result, bail};
use kiln_protocol::{Event, Frame, Mac, PublicKey, RecordReader, RunId, SignedTicket, Ticket};
use serde::Serialize;
use std::fs;
use std::path::PathBuf;

use crate::fsutil::{now_ms, now_s, write_atomic};
use crate::state::State;

/// File names inside a run folder.
pub mod files {
    /// The signed ticket.
    pub const TICKET: &str = "ticket.kiln";
    /// Append-only COBS records of postcard frames.
    pub const EVENTS: &str = "events.log";
    /// The bound claim key (one public key line).
    pub const CLAIM: &str = "claim.pub";
    /// Unix ms of the last batch (coordinator clock).
    pub const SEEN: &str = "seen";
    /// An operator's abort request: the reason.
    pub const ABORT: &str = "abort";
    /// Lock file every writer holds with flock.
    pub const LOCK: &str = "lock";
    /// Agent uploads stored for the run: `<sha256> <bytes>` lines (the quota ledger).
    pub const UPLOADS: &str = "uploads";
    /// Claim events: who claimed the run from where, contested and refused claims
    /// (written and read by `claims.rs`).
    pub const CLAIMS: &str = "claims";
    /// A finished run's listing row (the server's index, index.rs), derived, rebuilt
    /// if missing.
    pub const SUMMARY: &str = "summary.json";
    /// A lights-out run's power record: steps, power actions, the coordinator's end
    /// of the run (written and read by `lights.rs`).
    pub const POWER_LOG: &str = "power.log";
}

/// An operator's abort request of a run (`runs/<run>/abort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortRequest {
    /// The reason the operator gave.
    pub reason: String,
    /// When it was requested (the file's mtime), unix ms.
    pub at_ms: u64,
}

/// A run folder in a state folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The run.
    pub id: RunId,
    /// `runs/<run>/`.
    pub dir: PathBuf,
}

impl RunDir {
    /// The folder of `id` (it may not exist).
    pub fn new(state: &State, id: RunId) -> Self {
        RunDir {
            id,
            dir: state.run_dir(&id),
        }
    }

    /// The state folder holding this run folder (`<state>/runs/<id>`); `None` for a
    /// folder elsewhere (tests).
    pub fn state(&self) -> Option<State> {
        let runs = self.dir.parent()?;
        (runs.file_name()? == "runs").then(|| State {
            root: runs.parent().unwrap_or(runs).to_path_buf(),
        })
    }

    /// Path of one of the [`files`].
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether the coordinator ended this lights-out run (an `ended` record in its
    /// power.log, written by `lights.rs`).
    pub fn ended_by_coordinator(&self) -> bool {
        let Ok(bytes) =
            kiln_protocol::io::read_file_capped(&self.path(files::POWER_LOG), 1 << 20, "power.log")
        else {
            return false;
        };
        bytes.split(|b| *b == b'\n').any(|l| {
            serde_json::from_slice::<serde_json::Value>(l)
                .is_ok_and(|v| v.get("event").and_then(|e| e.as_str()) == Some("ended"))
        })
    }

    /// Whether the run has a ticket.
    pub fn exists(&self) -> bool {
        self.path(files::TICKET).is_file()
    }

    /// Reads the ticket and checks it against the coordinator's key and the run id.
    pub fn ticket(&self, key: &PublicKey) -> Result<(SignedTicket, Ticket)> {
        let bytes = fs::read(self.path(files::TICKET))
            .with_context(|| format!("no ticket for run {}", self.id))?;
        let st = SignedTicket::from_file(&bytes)
            .map_err(|e| anyhow::anyhow!("run {}: ticket.kiln: {e}", self.id))?;
        let t = st
            .verify(std::slice::from_ref(key))
            .map_err(|e| anyhow::anyhow!("run {}: stored ticket does not verify: {e}", self.id))?;
        if t.run != self.id {
            bail!("run {}: ticket.kiln is for run {}", self.id, t.run);
        }
        Ok((st, t))
    }

    /// The readable frames of events.log, in order: those before a corrupt record, if
    /// any (a torn tail is ignored). [`RunDir::events`] also says where it broke.
    pub fn frames(&self) -> Result<Vec<Frame>> {
        Ok(self.events()?.frames)
    }

    /// events.log decoded: its readable frames and the first corrupt record, if any.
    pub fn events(&self) -> Result<Events> {
        let bytes = match fs::read(self.path(files::EVENTS)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Events::default()),
            Err(e) => return Err(e).with_context(|| format!("reading run {} events", self.id)),
        };
        Ok(decode_frames(&bytes))
    }

    /// The agent key bound by the run's first claim.
    pub fn claim_key(&self) -> Result<Option<PublicKey>> {
        match fs::read_to_string(self.path(files::CLAIM)) {
            Ok(t) => PublicKey::from_line(&t)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("run {}: claim.pub: {e}", self.id)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading run {} claim", self.id)),
        }
    }

    /// Binds the claim key (atomic write).
    pub fn bind_claim(&self, key: &PublicKey) -> Result<()> {
        let line = key.to_line(&format!("claim of run {}", self.id));
        write_atomic(
            &self.path(files::CLAIM),
            format!("{line}\n").as_bytes(),
            0o644,
        )
    }

    /// Records that a batch arrived now (no fsync: it only feeds `stale`).
    pub fn touch_seen(&self) {
        let _ = fs::write(self.path(files::SEEN), now_ms().to_string());
    }

    /// Coordinator clock of the last batch, unix ms.
    pub fn last_seen_ms(&self) -> Option<u64> {
        let p = self.path(files::SEEN);
        if let Some(ms) = fs::read_to_string(&p)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return Some(ms);
        }
        // A reader racing the writer may see an empty file: fall back to its mtime.
        let meta = fs::metadata(&p)
            .or_else(|_| fs::metadata(self.path(files::EVENTS)))
            .ok()?;
        let t = meta.modified().ok()?;
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64)
    }

    /// The operator's abort reason, if one was requested.
    pub fn abort_request(&self) -> Option<String> {
        fs::read_to_string(self.path(files::ABORT))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The operator's abort request with its time (the `abort` file's mtime), if one
    /// was made.
    pub fn abort(&self) -> Option<AbortRequest> {
        let reason = self.abort_request()?;
        let at_ms = fs::metadata(self.path(files::ABORT))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        Some(AbortRequest { reason, at_ms })
    }

    /// Takes the run's writer lock (flock on `lock`): held until the guard drops.
    pub fn lock(&self) -> Result<RunLock> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path(files::LOCK))
            .with_context(|| format!("opening run {} lock", self.id))?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking run {}: {e}", self.id))?;
        Ok(RunLock { _lock: lock })
    }
}

/// A held run writer lock.
#[derive(Debug)]
pub struct RunLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

/// A record of events.log that does not decode: where it starts and which it is.
/// Every reader (listings, `run show`, the pages, the JSON, ingest) finds it with
/// [`Scan`], so all of them name the same record by the same numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Corruption {
    /// Byte offset in events.log of the record's first byte.
    pub offset: u64,
    /// The record's index in events.log, from 0: also the number of readable records
    /// before it.
    pub record: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "events.log record {} at byte {} is corrupt ({})",
            self.record, self.offset, self.reason
        )
    }
}

/// Decodes events.log a piece at a time, counting bytes and records from the start
/// of the file; stops for good at the first record that does not decode.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Bytes of readable whole records decoded so far (where the next record starts).
    pub offset: u64,
    /// Readable records decoded so far.
    pub records: u64,
    /// The first corrupt record, once met.
    pub corrupt: Option<Corruption>,
}

impl Scan {
    /// Decodes the whole records at the start of `buf`, which holds events.log from
    /// byte [`Scan::offset`] on, and hands each frame to `each`. Returns the bytes
    /// used: a torn tail, a corrupt record and anything after it are left.
    pub fn feed(&mut self, buf: &[u8], mut each: impl FnMut(Frame)) -> usize {
        if self.corrupt.is_some() {
            return 0;
        }
        let mut reader = RecordReader::new(buf);
        loop {
            let start = reader.consumed();
            let Some(rec) = reader.next() else {
                return start;
            };
            match rec
                .map_err(|_| "not a COBS record".to_string())
                .and_then(|payload| decode_frame(&payload))
            {
                Ok(frame) => {
                    self.offset += (reader.consumed() - start) as u64;
                    self.records += 1;
                    each(frame);
                }
                Err(reason) => {
                    self.corrupt = Some(Corruption {
                        offset: self.offset,
                        record: self.records,
                        reason,
                    });
                    return start;
                }
            }
        }
    }
}

fn decode_frame(payload: &[u8]) -> Result<Frame, String> {
    let (f, rest) =
        postcard::take_from_bytes::<Frame>(payload).map_err(|e| format!("not a frame: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the frame", rest.len()));
    }
    Ok(f)
}

/// events.log decoded.
#[derive(Debug, Clone, Default)]
pub struct Events {
    /// The readable frames: all of them, or those before the corrupt record.
    pub frames: Vec<Frame>,
    /// The first corrupt record, if any.
    pub corrupt: Option<Corruption>,
}

/// Decodes an events.log image: readable frames up to the first corrupt record (a
/// torn tail is ignored).
pub fn decode_frames(bytes: &[u8]) -> Events {
    let mut scan = Scan::default();
    let mut frames = Vec::new();
    scan.feed(bytes, |f| frames.push(f));
    Events {
        frames,
        corrupt: scan.corrupt,
    }
}

/// Whether the frames end the run.
pub fn is_finished(frames: &[Frame]) -> bool {
    frames
        .iter()
        .any(|f| matches!(f.event, Event::RunFinished { .. }))
}

/// The oldest pending run (unclaimed, unexpired, not aborted) for the machine with
/// `mac`: its ticket's binding names the MAC, or hosts.toml maps the MAC to the
/// ticket's host name. Ties in issue time go to the lower run id.
pub fn next_pending(state: &State, key: &PublicKey, mac: &Mac) -> Result<Option<RunId>> {
    let host = state
        .hosts()
        .ok()
        .and_then(|h| h.by_mac(mac).map(|h| h.name.clone()));
    let now = now_s();
    let mut best: Option<(u64, RunId)> = None;
    for id in state.run_ids()? {
        let rd = RunDir::new(state, id);
        if [files::CLAIM, files::EVENTS, files::ABORT]
            .iter()
            .any(|f| rd.path(f).exists())
        {
            continue;
        }
        // A lights-out run the coordinator ended (never booted) boots nothing.
        if rd.ended_by_coordinator() {
            continue;
        }
        let Ok((_, t)) = rd.ticket(key) else {
            continue;
        };
        let ours = t.host.macs.contains(mac) || host.as_deref() == Some(t.host.name.as_str());
        if ours && now <= t.not_after && best.is_none_or(|b| (t.issued_at, id) < b) {
            best = Some((t.issued_at, id));
        }
    }
    Ok(best.map(|(_, id)| id))
}

/// Records an abort request for the run (its ticket verified against `key`); the
/// agent gets it with its next ack. Refused once the run finished or without a
/// reason (line ends become spaces).
pub fn request_abort(run: &RunDir, key: &PublicKey, reason: &str) -> Result<()> {
    run.ticket(key)?;
    if is_finished(&run.frames()?) {
        bail!("run {} has already finished", run.id);
    }
    let reason = reason.replace(['\n', '\r'], " ");
    let reason = reason.trim();
    if reason.is_empty() {
        bail!("give a reason (--reason)");
    }
    write_atomic(
        &run.path(files::ABORT),
        format!("{reason}\n").as_bytes(),
        0o644,
    )?;
    if let Some(state) = run.state() {
        crate::journal::note_run(&state, &run.id);
    }
    Ok(())
}
