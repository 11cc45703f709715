//! Folded runs kept per process, keyed by run folder and events.log (length, mtime):
//! a listing folds only the frames appended since it last looked, and never holds a
//! whole events.log in memory.
use anyhow::{Context, Result};
use kiln_protocol::{PublicKey, Ticket};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::SystemTime;

use super::Folder;
use crate::store::{RunDir, Scan, files};

/// Bytes read from events.log at a time.
const CHUNK: usize = 1 << 20;

/// (length, mtime) of a file; (0, None) when it is absent.
type FileKey = (u64, Option<SystemTime>);

#[derive(Debug)]
struct Entry {
    ticket_key: FileKey,
    ticket: Ticket,
    log_key: FileKey,
    /// Bytes and records of events.log folded (whole records only), and the corrupt
    /// record met, if any.
    scan: Scan,
    folder: Folder,
}

type Slot = Arc<Mutex<Option<Entry>>>;

static CACHE: LazyLock<Mutex<HashMap<PathBuf, Slot>>> = LazyLock::new(Default::default);

fn file_key(p: &std::path::Path) -> Result<FileKey> {
    match fs::metadata(p) {
        Ok(m) => Ok((m.len(), m.modified().ok())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, None)),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Calls `f` with the run's verified ticket and its frames folded up to now.
pub fn with_folded<R>(
    rd: &RunDir,
    key: &PublicKey,
    f: impl FnOnce(&Ticket, &Folder) -> R,
) -> Result<R> {
    let slot = {
        let mut m = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry(rd.dir.clone()).or_default().clone()
    };
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    let ticket_key = file_key(&rd.path(files::TICKET))?;
    if slot.as_ref().is_none_or(|e| e.ticket_key != ticket_key) {
        let (_, ticket) = rd.ticket(key)?;
        *slot = Some(Entry {
            ticket_key,
            folder: Folder::new(&ticket),
            ticket,
            log_key: (0, None),
            scan: Scan::default(),
        });
    }
    let e = slot.as_mut().expect("set above");
    let path = rd.path(files::EVENTS);
    let log_key = file_key(&path)?;
    if e.log_key != log_key {
        // Append-only: a log that shrank below what was folded, changed without
        // growing, or held a corrupt record (perhaps repaired since) is folded again
        // from the start.
        if log_key.0 < e.scan.offset || log_key.0 == e.log_key.0 || e.scan.corrupt.is_some() {
            e.folder = Folder::new(&e.ticket);
            e.scan = Scan::default();
        }
        if let Err(err) = fold_from(rd, &path, e) {
            *slot = None;
            return Err(err);
        }
        e.log_key = log_key;
    }
    Ok(f(&e.ticket, &e.folder))
}

/// Folds the whole records of events.log past `e.scan.offset`, a chunk at a time; a
/// torn tail is left for the next look, a corrupt record stops the fold (the run is
/// then `corrupt`, its readable part folded).
fn fold_from(rd: &RunDir, path: &std::path::Path, e: &mut Entry) -> Result<()> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("reading run {} events", rd.id)),
    };
    file.seek(SeekFrom::Start(e.scan.offset))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    while e.scan.corrupt.is_none() {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let folder = &mut e.folder;
        let used = e.scan.feed(&buf, |frame| folder.push(&frame));
        buf.drain(..used);
    }
    if let Some(c) = &e.scan.corrupt {
        log::warn!("run {}: {c}; showing the records before it", rd.id);
    }
    e.folder.set_corrupt(e.scan.corrupt.clone());
    Ok(())
}

/// Drops the run's entry (a finished run whose summary is kept on disk needs no
/// fold in memory).
pub fn forget(rd: &RunDir) {
    CACHE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&rd.dir);
}
