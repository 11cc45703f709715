//! Folded runs kept per process, keyed by run folder and events.log (length, mtime):
//! a listing folds only the frames appended since it last looked, and never holds a
//! whole events.log in memory.
use anyhow::{Context, Result};
use kiln_protocol::{Frame, PublicKey, RecordReader, Ticket};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::SystemTime;

use super::Folder;
use crate::store::{RunDir, files};

/// Bytes read from events.log at a time.
const CHUNK: usize = 1 << 20;

/// (length, mtime) of a file; (0, None) when it is absent.
type FileKey = (u64, Option<SystemTime>);

#[derive(Debug)]
struct Entry {
    ticket_key: FileKey,
    ticket: Ticket,
    log_key: FileKey,
    /// Bytes of events.log folded (whole records only).
    offset: u64,
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
            offset: 0,
        });
    }
    let e = slot.as_mut().expect("set above");
    let path = rd.path(files::EVENTS);
    let log_key = file_key(&path)?;
    if e.log_key != log_key {
        // Append-only: a log that shrank below what was folded, or changed without
        // growing, is folded again from the start.
        if log_key.0 < e.offset || log_key.0 == e.log_key.0 {
            e.folder = Folder::new(&e.ticket);
            e.offset = 0;
        }
        if let Err(err) = fold_from(rd, &path, e) {
            *slot = None;
            return Err(err);
        }
        e.log_key = log_key;
    }
    Ok(f(&e.ticket, &e.folder))
}

/// Folds the whole records of events.log past `e.offset`, a chunk at a time; a torn
/// tail is left for the next look.
fn fold_from(rd: &RunDir, path: &std::path::Path, e: &mut Entry) -> Result<()> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("reading run {} events", rd.id)),
    };
    file.seek(SeekFrom::Start(e.offset))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut reader = RecordReader::new(&buf);
        for rec in reader.by_ref() {
            let rec = rec.map_err(|err| anyhow::anyhow!("run {}: events.log: {err}", rd.id))?;
            let (frame, rest) = postcard::take_from_bytes::<Frame>(&rec)
                .map_err(|err| anyhow::anyhow!("run {}: events.log: {err}", rd.id))?;
            if !rest.is_empty() {
                anyhow::bail!("run {}: events.log: trailing bytes in a frame", rd.id);
            }
            e.folder.push(&frame);
        }
        let used = reader.consumed();
        e.offset += used as u64;
        buf.drain(..used);
    }
}
