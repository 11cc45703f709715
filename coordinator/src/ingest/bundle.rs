//! `import BUNDLE`: read an offline result bundle record by record and feed it through
//! ingest, all or nothing.
//!
//! The bundle is streamed, never held: each record is decoded as it is read, a batch
//! (at most [`MAX_BATCH_BYTES`]) is checked by the same check as online ingest and its
//! new frames staged, a blob goes straight from the file into a CAS temp file while it
//! is hashed. Memory stays flat whatever the bundle's size. Nothing is visible until
//! every record checked out; then the staged import is committed, or rolled back on
//! any error (see `stage`), so a tampered, truncated or misordered bundle, or a disk
//! that fills up, leaves the state folder as it was. Importing twice changes nothing.
use anyhow::{Context, Result, bail};
use kiln_protocol::io::{RecordStream, read_file_capped};
use kiln_protocol::{
    BUNDLE_MAGIC, MAX_BATCH_BYTES, MAX_TICKET_BYTES, PublicKey, ResultRecord, SignedTicket, Ticket,
};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};

use super::stage::Import;
use super::{Ingester, MAX_EVENTS_LOG_BYTES, Refusal};
use crate::cli::ImportCmd;
use crate::http::Limits;
use crate::state::State;
use crate::store::{RunDir, files};

/// The largest bundle `import` reads: the run's artifact quota (plus COBS overhead),
/// twice the events.log cap for its batches, and the ticket.
pub fn bundle_cap(limits: &Limits) -> u64 {
    limits
        .run_quota
        .saturating_add(limits.run_quota / 128)
        .saturating_add(2 * MAX_EVENTS_LOG_BYTES)
        .saturating_add(2 * MAX_TICKET_BYTES as u64)
}

/// What one import stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The run.
    pub run: kiln_protocol::RunId,
    /// Its plan's name.
    pub plan: String,
    /// Frames in the bundle.
    pub frames: u64,
    /// The run's last stored seq after the import.
    pub upto: u64,
    /// Artifacts (blobs) in the bundle.
    pub artifacts: u64,
}

/// `import BUNDLE`.
pub fn cmd_import(state: &State, c: &ImportCmd) -> Result<i32> {
    let limits = Limits::from_env()?;
    let file =
        fs::File::open(&c.bundle).with_context(|| format!("reading {}", c.bundle.display()))?;
    let i = import_bundle(state, file, &limits)?;
    println!(
        "imported run {} ({}): {} frames in the bundle, {} stored, {} artifacts",
        i.run,
        crate::visible::visible(&i.plan),
        i.frames,
        i.upto,
        i.artifacts
    );
    Ok(0)
}

/// Imports the bundle read from `input` (at most [`bundle_cap`] bytes of it) into
/// `state`: all of it, or on any refusal or error none of it.
pub fn import_bundle(state: &State, input: impl Read, limits: &Limits) -> Result<Imported> {
    let cap = bundle_cap(limits);
    let mut input = BufReader::with_capacity(
        1 << 20,
        Capped {
            inner: input,
            left: cap,
            cap,
        },
    );
    let ingester = Ingester::new(state)?;
    let mut records = RecordStream::new(&mut input);
    let (ticket, parsed) = read_magic(&mut records)
        .and_then(|()| read_ticket(&mut records, ingester.key()))
        .map_err(|e| anyhow::anyhow!("bundle refused, nothing imported: {e:#}"))?;
    let run = parsed.run;
    let rd = RunDir::new(state, run);
    let file = ticket.to_file();
    match read_file_capped(&rd.path(files::TICKET), MAX_TICKET_BYTES as u64, "ticket") {
        Ok(stored) if stored == file => {}
        Ok(_) => bail!("bundle refused, nothing imported: run {run} holds a different ticket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("reading the stored ticket"),
    }
    let mut counts = (0, 0);
    let upto = ingester
        .import(&parsed, &file, |import| {
            feed(&mut records, import, limits)?;
            counts = import.counts();
            Ok(())
        })
        .map_err(|r| {
            if r.status >= 500 {
                anyhow::anyhow!("importing run {run} failed, nothing imported: {r}")
            } else {
                anyhow::anyhow!("bundle refused, nothing imported: run {run}: {r}")
            }
        })?;
    Ok(Imported {
        run,
        plan: parsed.plan.name.clone(),
        frames: counts.0,
        upto,
        artifacts: counts.1 as u64,
    })
}

/// Checks the magic, the bytes before the first record.
fn read_magic<R: BufRead>(records: &mut RecordStream<R>) -> Result<()> {
    let mut magic = [0u8; 8];
    let mut got = 0;
    let input = records.get_mut();
    while got < magic.len() {
        match input.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got < magic.len() || magic[..7] != BUNDLE_MAGIC[..7] {
        bail!("not a kiln result bundle (bad magic)");
    }
    if magic[7] != BUNDLE_MAGIC[7] {
        bail!("unsupported bundle format version {}", magic[7]);
    }
    Ok(())
}

/// Reads and verifies the first record, the ticket.
fn read_ticket<R: BufRead>(
    s: &mut RecordStream<R>,
    key: &PublicKey,
) -> Result<(SignedTicket, Ticket)> {
    if !s.next_record()? {
        bail!("the bundle holds no records");
    }
    if read_varint(s)? != 0 {
        bail!("the first record of a bundle must be its ticket");
    }
    let mut payload = vec![0];
    payload.extend(s.read_rest(MAX_TICKET_BYTES as u64, "the ticket record")?);
    let ResultRecord::Ticket(ticket) =
        ResultRecord::decode(&payload).map_err(|e| anyhow::anyhow!("record 0: {e}"))?
    else {
        unreachable!("tag 0 is the ticket");
    };
    let parsed = ticket
        .verify(std::slice::from_ref(key))
        .map_err(|e| anyhow::anyhow!("ticket: {e}"))?;
    Ok((ticket, parsed))
}

/// Reads every record after the ticket into `import`: batches checked and staged,
/// blobs spooled into CAS temp files.
fn feed<R: BufRead>(
    records: &mut RecordStream<R>,
    import: &mut Import,
    limits: &Limits,
) -> Result<(), Refusal> {
    // A blob was staged since the last batch (for the test hook).
    let mut blobs_seen = false;
    loop {
        if !records.next_record().map_err(refusal)? {
            return Ok(());
        }
        let i = records.index();
        let at = |e: anyhow::Error| refusal(e.context(format!("record {i}")));
        match read_varint(records).map_err(|e| at(e.into()))? {
            0 => return Err(Refusal::new(400, "a bundle holds one ticket")),
            1 => {
                let len = read_varint(records).map_err(|e| at(e.into()))?;
                if len > MAX_BATCH_BYTES as u64 {
                    return Err(Refusal::new(
                        413,
                        format!(
                            "record {i}: a batch of {len} bytes exceeds {MAX_BATCH_BYTES} bytes"
                        ),
                    ));
                }
                let mut body = Vec::with_capacity(len as usize);
                records
                    .by_ref()
                    .take(len)
                    .read_to_end(&mut body)
                    .map_err(|e| at(e.into()))?;
                if body.len() as u64 != len {
                    return Err(at(anyhow::anyhow!("the batch is cut short")));
                }
                records.expect_end("batch").map_err(|e| at(e.into()))?;
                if std::mem::take(&mut blobs_seen) {
                    test_pause();
                }
                import.batch(&body)?;
            }
            2 => {
                let len = read_varint(records).map_err(|e| at(e.into()))?;
                if len > limits.artifact_cap {
                    return Err(Refusal::new(
                        413,
                        format!(
                            "record {i}: a blob of {len} bytes exceeds the {}-byte artifact cap",
                            limits.artifact_cap
                        ),
                    ));
                }
                let blob = import
                    .stage_blob(&mut records.by_ref().take(len), len)
                    .map_err(at)?;
                blobs_seen = true;
                if blob.size != len {
                    return Err(at(anyhow::anyhow!("the blob is cut short")));
                }
                records.expect_end("blob").map_err(|e| at(e.into()))?;
                import.blob(blob);
                if import.blob_bytes() > limits.run_quota {
                    return Err(Refusal::new(
                        413,
                        format!(
                            "the bundle's blobs exceed the run's {}-byte artifact quota",
                            limits.run_quota
                        ),
                    ));
                }
            }
            tag => return Err(at(anyhow::anyhow!("unknown record kind {tag}"))),
        }
    }
}

/// The test hook `KILN_TEST_PAUSE_IMPORT=<path>` (tests only, see `stage`): says
/// `<path>.paused` and waits for `<path>`.
fn test_pause() {
    let Some(path) = std::env::var_os("KILN_TEST_PAUSE_IMPORT") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let mut paused = path.clone().into_os_string();
    paused.push(".paused");
    let _ = fs::write(&paused, b"");
    while !path.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A malformed or cut bundle is refused (400); any other error (reading the file,
/// writing the staged import) is the import failing (500).
fn refusal(e: impl Into<anyhow::Error>) -> Refusal {
    let e = e.into();
    let bad_input = e.chain().any(|c| {
        c.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            )
        })
    });
    let e = match e.chain().find_map(|c| c.downcast_ref::<io::Error>()) {
        Some(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            anyhow::anyhow!("bundle is truncated: {e:#}")
        }
        _ => e,
    };
    Refusal::new(if bad_input { 400 } else { 500 }, format!("{e:#}"))
}

/// A postcard varint (LEB128, at most 10 bytes for a u64).
fn read_varint(r: &mut impl Read) -> io::Result<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        if r.read(&mut b)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the record ends inside a length",
            ));
        }
        if i == 9 && b[0] > 1 {
            break;
        }
        v |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "a length overflows",
    ))
}

/// A reader that fails once more than `cap` bytes were asked of it: the bundle cap,
/// checked as the file is read (so `/dev/zero` or a growing file stops there).
struct Capped<R> {
    inner: R,
    left: u64,
    cap: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.left.saturating_add(1).min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the bundle is larger than its {}-byte cap", self.cap),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_read_as_postcard_writes_them() {
        for v in [0u64, 1, 127, 128, 300, 1 << 30, u64::MAX] {
            let bytes = postcard::to_allocvec(&v).unwrap();
            assert_eq!(read_varint(&mut &bytes[..]).unwrap(), v);
        }
        assert!(read_varint(&mut &[0xffu8; 11][..]).is_err());
        assert!(read_varint(&mut &[0x80u8][..]).is_err());
    }

    #[test]
    fn records_stream_as_result_records_encode() {
        let blob = ResultRecord::Blob(vec![0, 1, 2, 0, 0]).encode();
        let mut s = RecordStream::new(&blob[..]);
        assert!(s.next_record().unwrap());
        assert_eq!(read_varint(&mut s).unwrap(), 2);
        assert_eq!(read_varint(&mut s).unwrap(), 5);
        assert_eq!(s.read_rest(5, "blob").unwrap(), vec![0, 1, 2, 0, 0]);
        assert!(!s.next_record().unwrap());
    }

    #[test]
    fn the_cap_stops_reading() {
        let mut r = Capped {
            inner: io::repeat(0),
            left: 10,
            cap: 10,
        };
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("10-byte cap"), "{e}");
        assert!(out.len() <= 10);
    }
}
