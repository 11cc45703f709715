//! The change journal (`state/journal`): one line per change to a run folder,
//! appended by whoever made the change (the server's ingest, or a command-line
//! `ticket issue`, `run abort`, `import`, `run ack-contest` on the same folder).
//! A running server follows it to keep its in-memory index current without
//! rescanning the folder per request (index.rs).
//!
//! A line is `run <32 hex digits>\n`, written with one `write` on an `O_APPEND`
//! descriptor under an exclusive `flock`, after the change itself is on disk. The
//! journal is a hint, never the truth: a reader that finds it shorter than it last
//! read, or replaced, rebuilds from the run folders; a lost line costs freshness
//! until the next rebuild, never data. Only the server truncates it (under the same
//! lock, having applied every line).
use anyhow::{Context, Result};
use kiln_protocol::RunId;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::state::State;

/// The journal's file name in the state folder.
pub const FILE: &str = "journal";

/// A journal the follower truncates once it has applied this many bytes.
pub const COMPACT_AT: u64 = 1 << 20;

/// Longest line a follower accepts; longer ones (not written by kiln) are skipped.
const MAX_LINE: usize = 128;

/// Path of the journal.
pub fn path(state: &State) -> PathBuf {
    state.root.join(FILE)
}

fn open(p: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(p)
}

/// Records that run `id`'s folder changed. Called after the change is durable; an
/// error here is logged, not returned: the change itself stands, and a server that
/// missed it sees it at its next rebuild.
pub fn note_run(state: &State, id: &RunId) {
    if let Err(e) = append(&path(state), &format!("run {id}\n")) {
        log::warn!("journal: recording run {id}: {e:#}");
    }
}

fn append(p: &Path, line: &str) -> Result<()> {
    let f = open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", p.display()))?;
    f.write_all(line.as_bytes())
        .with_context(|| format!("appending to {}", p.display()))
}

/// What the journal holds since a follower last read it.
#[derive(Debug, PartialEq, Eq)]
pub enum News {
    /// Nothing new.
    None,
    /// These runs changed (in journal order, repeats kept).
    Runs(Vec<RunId>),
    /// The journal shrank or was replaced: rebuild from the folder.
    Rebuild,
}

/// A reader of the journal from a position: the server holds one, shared by its
/// workers (checking for news takes no lock; reading it takes one).
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    /// Bytes applied so far.
    offset: AtomicU64,
    /// The journal's inode when the offset was taken.
    ino: AtomicU64,
    /// What [`Follower::changed`] compares with: `offset` and `ino` as of the last
    /// [`Follower::applied`] (so a change read but not yet applied still counts as
    /// news to every other request).
    shown: (AtomicU64, AtomicU64),
    /// One reader at a time.
    reading: Mutex<()>,
}

impl Follower {
    /// A follower from the journal's current end (what is already there is assumed
    /// applied: take it *before* reading the run folders).
    pub fn at_end(state: &State) -> Result<Follower> {
        let path = path(state);
        let f = open(&path).with_context(|| format!("opening {}", path.display()))?;
        let m = f.metadata()?;
        Ok(Follower {
            path,
            offset: AtomicU64::new(m.len()),
            ino: AtomicU64::new(m.ino()),
            shown: (AtomicU64::new(m.len()), AtomicU64::new(m.ino())),
            reading: Mutex::new(()),
        })
    }

    /// Whether anything was appended since the last [`Follower::applied`] (one
    /// `stat`; no lock).
    pub fn changed(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(m) => {
                m.len() != self.shown.0.load(Ordering::Acquire)
                    || m.ino() != self.shown.1.load(Ordering::Acquire)
            }
            Err(_) => true,
        }
    }

    /// Marks what [`Follower::read`] returned as applied.
    pub fn applied(&self) {
        self.shown
            .1
            .store(self.ino.load(Ordering::Acquire), Ordering::Release);
        self.shown
            .0
            .store(self.offset.load(Ordering::Acquire), Ordering::Release);
    }

    /// Reads the complete lines appended since the last call. At or past
    /// [`COMPACT_AT`] applied bytes the journal is truncated under its lock, every
    /// line having been returned first.
    pub fn read(&self) -> Result<News> {
        let _one = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        let f = open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let mut f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", self.path.display()))?;
        let m = f.metadata()?;
        let offset = self.offset.load(Ordering::Acquire);
        if m.ino() != self.ino.load(Ordering::Acquire) || m.len() < offset {
            self.ino.store(m.ino(), Ordering::Release);
            self.offset.store(m.len(), Ordering::Release);
            return Ok(News::Rebuild);
        }
        if m.len() == offset {
            return Ok(News::None);
        }
        f.seek(SeekFrom::Start(offset))?;
        // Bounded: at most what was appended since, and the journal is compacted.
        let mut buf = Vec::new();
        (&mut *f).take(m.len() - offset).read_to_end(&mut buf)?;
        // Under the lock every append is whole; a torn tail (a writer killed mid-line
        // cannot happen with one write, but a hand edit can) is left for next time.
        let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut runs = Vec::new();
        for line in buf[..whole].split(|&b| b == b'\n') {
            if line.is_empty() || line.len() > MAX_LINE {
                continue;
            }
            match std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.strip_prefix("run "))
                .and_then(|id| id.trim().parse::<RunId>().ok())
            {
                Some(id) => runs.push(id),
                None => log::warn!("journal: skipping a line that is not `run <id>`"),
            }
        }
        let mut applied = offset + whole as u64;
        if applied >= COMPACT_AT && applied == m.len() {
            f.set_len(0)
                .with_context(|| format!("truncating {}", self.path.display()))?;
            applied = 0;
        }
        self.offset.store(applied, Ordering::Release);
        Ok(if runs.is_empty() {
            News::None
        } else {
            News::Runs(runs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, State) {
        let d = tempfile::tempdir().unwrap();
        let s = State {
            root: d.path().to_path_buf(),
        };
        (d, s)
    }

    #[test]
    fn a_follower_sees_lines_appended_after_it_started_only() {
        let (_d, s) = state();
        let (a, b) = (RunId([1; 16]), RunId([2; 16]));
        note_run(&s, &a);
        let f = Follower::at_end(&s).unwrap();
        assert!(!f.changed());
        assert_eq!(f.read().unwrap(), News::None);
        note_run(&s, &b);
        note_run(&s, &a);
        assert!(f.changed());
        assert_eq!(f.read().unwrap(), News::Runs(vec![b, a]));
        assert!(f.changed(), "read but not applied yet");
        f.applied();
        assert!(!f.changed());
    }

    #[test]
    fn a_torn_line_waits_and_junk_is_skipped() {
        let (_d, s) = state();
        let f = Follower::at_end(&s).unwrap();
        let id = RunId([7; 16]);
        let mut j = open(&path(&s)).unwrap();
        j.write_all(b"hello\nrun ").unwrap();
        assert_eq!(f.read().unwrap(), News::None);
        j.write_all(format!("{id}\n").as_bytes()).unwrap();
        assert_eq!(f.read().unwrap(), News::Runs(vec![id]));
    }

    #[test]
    fn a_shrunk_or_replaced_journal_asks_for_a_rebuild() {
        let (_d, s) = state();
        note_run(&s, &RunId([1; 16]));
        let f = Follower::at_end(&s).unwrap();
        std::fs::write(path(&s), b"").unwrap();
        assert_eq!(f.read().unwrap(), News::Rebuild);
        note_run(&s, &RunId([2; 16]));
        let _ = f.read().unwrap();
        f.applied();
        std::fs::remove_file(path(&s)).unwrap();
        assert!(f.changed());
        assert_eq!(f.read().unwrap(), News::Rebuild);
    }

    #[test]
    fn a_long_journal_is_truncated_once_applied() {
        let (_d, s) = state();
        let f = Follower::at_end(&s).unwrap();
        let line = format!("run {}\n", RunId([3; 16]));
        let n = (COMPACT_AT as usize).div_ceil(line.len());
        std::fs::write(path(&s), line.repeat(n)).unwrap();
        match f.read().unwrap() {
            News::Runs(r) => assert_eq!(r.len(), n),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::metadata(path(&s)).unwrap().len(), 0);
        note_run(&s, &RunId([4; 16]));
        assert_eq!(f.read().unwrap(), News::Runs(vec![RunId([4; 16])]));
    }
}
