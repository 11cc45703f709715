//! A resend must repeat what is stored: the resent frames' records are compared with
//! the stored records of the same seqs, byte for byte.
//!
//! A log holds one COBS record (0-terminated, no 0 inside) per seq, in order, so the
//! records of seqs `first..` start just after the `(upto - first + 2)`-th 0 from the
//! end of a log ending at `upto`. That is found by reading backwards from the end in
//! small pieces, so a resend of the last batch (the usual case: a lost ack) reads
//! about that batch and no more; only a resend of old seqs reads further back.
//! Memory stays at one piece plus the resent records, whatever the log's size.
use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::check::Verdict;
use super::{Cached, Refusal};
use crate::store::{RunDir, files};

/// Bytes read per step when looking for record boundaries from the end.
const PIECE: usize = 64 << 10;

/// The 409 for resent frames that differ from the stored ones.
pub(super) fn conflict(seq: u64) -> Refusal {
    Refusal::new(
        409,
        format!("conflicting resend: seq {seq} differs from the stored frame"),
    )
}

/// Refuses (409) a verdict whose resent frames differ from those stored in `rd`'s
/// events.log (`c`: the run as stored). Reads the log only when frames are resent.
pub(super) fn check_stored(rd: &RunDir, c: &Cached, v: &Verdict) -> Result<(), Refusal> {
    if v.resent.is_empty() {
        return Ok(());
    }
    let path = rd.path(files::EVENTS);
    let diff = File::open(&path)
        .with_context(|| format!("opening {}", path.display()))
        .and_then(|f| first_difference(&f, c.len, 0, c.upto, v.resent_from, &v.resent))
        .map_err(Refusal::internal)?;
    match diff {
        Some(seq) => {
            log::warn!(
                "run {}: refused a resend whose seq {seq} differs from the stored frame",
                rd.id
            );
            Err(conflict(seq))
        }
        None => Ok(()),
    }
}

/// Splits `records` (of seqs `first..`) before the record of seq `at`.
pub(super) fn split_at_seq(records: &[u8], first: u64, at: u64) -> (&[u8], &[u8]) {
    let off = (first..)
        .zip(records.split_inclusive(|b| *b == 0))
        .take_while(|(seq, _)| *seq < at)
        .map(|(_, rec)| rec.len())
        .sum();
    records.split_at(off)
}

/// Compares `records` (the encoded records of seqs `first..`, all stored) with the
/// log `file` of `len` bytes holding seqs `base + 1..=upto`. Returns the first seq
/// whose stored record differs, or `None` when every one is the same.
pub(super) fn first_difference(
    file: &File,
    len: u64,
    base: u64,
    upto: u64,
    first: u64,
    records: &[u8],
) -> Result<Option<u64>> {
    anyhow::ensure!(
        base < first && first <= upto,
        "seq {first} is not among the stored seqs {}..={upto}",
        base + 1
    );
    let start = record_start(file, len, upto - first + 1, first == base + 1)?;
    let want = records.len().min((len - start) as usize);
    let mut stored = vec![0u8; want];
    file.read_exact_at(&mut stored, start)
        .context("reading stored frames")?;
    let mut at = 0;
    for (seq, rec) in (first..).zip(records.split_inclusive(|b| *b == 0)) {
        if stored.get(at..at + rec.len()) != Some(rec) {
            return Ok(Some(seq));
        }
        at += rec.len();
    }
    Ok(None)
}

/// Offset where the `back`-th record from the end of the log starts (`back` ≥ 1):
/// just after the `(back + 1)`-th 0 from the end, or the start of the file when
/// `at_start` says that record is the log's first.
fn record_start(file: &File, len: u64, back: u64, at_start: bool) -> Result<u64> {
    if at_start {
        return Ok(0);
    }
    // The log ends with the terminator of its last record: that is zero number 1.
    let mut zeros = 0u64;
    let mut end = len;
    let mut buf = vec![0u8; PIECE];
    while end > 0 {
        let n = PIECE.min(end as usize);
        let from = end - n as u64;
        file.read_exact_at(&mut buf[..n], from)
            .context("reading stored frames")?;
        for (i, b) in buf[..n].iter().enumerate().rev() {
            if *b == 0 {
                zeros += 1;
                if zeros == back + 1 {
                    return Ok(from + i as u64 + 1);
                }
            }
        }
        end = from;
    }
    anyhow::bail!("events.log holds fewer records than its last seq says")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::encode_record;
    use std::io::Write;

    fn log_of(recs: &[&[u8]]) -> (tempfile::NamedTempFile, Vec<Vec<u8>>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let enc: Vec<Vec<u8>> = recs.iter().map(|r| encode_record(r)).collect();
        for e in &enc {
            f.write_all(e).unwrap();
        }
        (f, enc)
    }

    #[test]
    fn finds_the_first_differing_seq_anywhere_in_a_log_of_many_pieces() {
        // Records of every size around the piece size, so boundaries fall anywhere.
        let payloads: Vec<Vec<u8>> = (1..=40u8)
            .map(|i| vec![i; (i as usize * 7919) % (PIECE + 100) + 1])
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let (f, enc) = log_of(&refs);
        let len = f.as_file().metadata().unwrap().len();
        let file = f.as_file();
        for first in [1u64, 2, 17, 39, 40] {
            for last in first..=40 {
                let same: Vec<u8> = enc[first as usize - 1..last as usize].concat();
                assert_eq!(
                    first_difference(file, len, 0, 40, first, &same).unwrap(),
                    None,
                    "{first}..={last}"
                );
                let mut changed = enc[first as usize - 1..last as usize].to_vec();
                changed.last_mut().unwrap()[0] ^= 0x80;
                assert_eq!(
                    first_difference(file, len, 0, 40, first, &changed.concat()).unwrap(),
                    Some(last),
                    "{first}..={last}"
                );
            }
        }
        // A shorter or longer record at the same seq differs too.
        let short = encode_record(&payloads[4][1..]);
        assert_eq!(
            first_difference(file, len, 0, 40, 5, &short).unwrap(),
            Some(5)
        );
        let long = encode_record(&[payloads[4].as_slice(), b"x"].concat());
        assert_eq!(
            first_difference(file, len, 0, 40, 5, &long).unwrap(),
            Some(5)
        );
        // A log of seqs 11..=50 (a staged import's part) is counted from its base.
        assert_eq!(
            first_difference(file, len, 10, 50, 11, &enc[0]).unwrap(),
            None
        );
        assert_eq!(
            first_difference(file, len, 10, 50, 50, &enc[39]).unwrap(),
            None
        );
    }
}
