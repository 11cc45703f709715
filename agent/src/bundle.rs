//! Offline result bundles: `KILNRES\x03` ([`kiln_protocol::BUNDLE_MAGIC`]), then COBS records — the signed ticket, then
//! per batch the blobs its `Artifact` frames name, then the sealed batch.
use kiln_protocol::{
    BUNDLE_MAGIC, Batch, Event, Frame, ResultRecord, RunId, SecretKey, Sha256, SignedTicket,
};
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::transfer::blob_path;

/// Writes the bundle to `out` atomically (temp file, fsync, rename). `batch(from)`
/// gives the next batch of frames from seq `from` on (empty at the end), so the run
/// is streamed, never held whole; artifact bytes come from the work folder's blobs.
pub fn write_bundle(
    out: &Path,
    ticket: &SignedTicket,
    run: RunId,
    key: &SecretKey,
    work: &Path,
    mut batch: impl FnMut(u64) -> io::Result<Vec<Frame>>,
) -> io::Result<()> {
    let name = out
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{}: not a file name", out.display())))?;
    let tmp = out.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let file = fs::File::create(&tmp)?;
    let mut w = BufWriter::new(file);
    w.write_all(BUNDLE_MAGIC)?;
    w.write_all(&ResultRecord::Ticket(ticket.clone()).encode())?;
    let mut written: BTreeSet<Sha256> = BTreeSet::new();
    let mut from = 1;
    loop {
        let frames = batch(from)?;
        if frames.is_empty() {
            break;
        }
        // Frames must go on from `from`, one seq at a time: anything else (two
        // writers in one spool) would repeat or skip frames, or never end.
        if let Some((i, f)) = frames
            .iter()
            .enumerate()
            .find(|(i, f)| f.seq != from + *i as u64)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "spool frame {} where seq {} belongs",
                    f.seq,
                    from + i as u64
                ),
            ));
        }
        from += frames.len() as u64;
        for f in &frames {
            if let Event::Artifact { sha256, .. } = &f.event
                && written.insert(*sha256)
            {
                let bytes = fs::read(blob_path(work, sha256))
                    .map_err(|e| io::Error::new(e.kind(), format!("artifact {sha256}: {e}")))?;
                w.write_all(&ResultRecord::Blob(bytes).encode())?;
            }
        }
        let sealed = Batch { run, frames }.seal(key);
        w.write_all(&ResultRecord::Batch(sealed).encode())?;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, out)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::RecordReader;

    #[test]
    fn bundle_has_ticket_then_blob_before_its_batch() {
        let d = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([3; 32]);
        let f = d.path().join("a");
        fs::write(&f, b"bytes").unwrap();
        let (sha, size) =
            crate::transfer::keep_blob(d.path(), std::fs::File::open(&f).unwrap()).unwrap();
        let ticket = SignedTicket {
            key_id: key.public().key_id(),
            body: vec![1, 2, 3],
            sig: kiln_protocol::Sig([0; 64]),
        };
        let frames = vec![Frame {
            seq: 1,
            at_ms: 0,
            event: Event::Artifact {
                stage: 0,
                name: "a".into(),
                sha256: sha,
                size,
            },
        }];
        let out = d.path().join("r.kiln");
        write_bundle(&out, &ticket, RunId([1; 16]), &key, d.path(), |from| {
            Ok(if from == 1 { frames.clone() } else { vec![] })
        })
        .unwrap();
        let bytes = fs::read(&out).unwrap();
        assert_eq!(&bytes[..8], BUNDLE_MAGIC);
        let recs: Vec<ResultRecord> = RecordReader::new(&bytes[8..])
            .map(|r| ResultRecord::decode(&r.unwrap()).unwrap())
            .collect();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0], ResultRecord::Ticket(ticket));
        assert_eq!(recs[1], ResultRecord::Blob(b"bytes".to_vec()));
        let ResultRecord::Batch(sealed) = &recs[2] else {
            panic!("third record is not a batch")
        };
        assert_eq!(Batch::open(sealed, &key.public()).unwrap().frames, frames);
    }

    #[test]
    fn frames_out_of_order_are_refused_never_looped() {
        let d = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([3; 32]);
        let ticket = SignedTicket {
            key_id: key.public().key_id(),
            body: vec![],
            sig: kiln_protocol::Sig([0; 64]),
        };
        let frame = |seq| Frame {
            seq,
            at_ms: 0,
            event: Event::RunFinished {
                outcome: kiln_protocol::Outcome::Passed,
            },
        };
        let out = d.path().join("r.kiln");
        // A spool that keeps answering with the same frame whatever is asked.
        let mut calls = 0;
        let e = write_bundle(&out, &ticket, RunId([1; 16]), &key, d.path(), |_| {
            calls += 1;
            assert!(calls < 10, "write_bundle loops");
            Ok(vec![frame(1)])
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // A gap inside a batch.
        let e = write_bundle(&out, &ticket, RunId([1; 16]), &key, d.path(), |_| {
            Ok(vec![frame(1), frame(3)])
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(!out.exists());
    }
}
