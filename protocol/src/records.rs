//! COBS record streams: `0x00`-terminated records, so a torn tail (a crash mid-write)
//! is detected and dropped, never misread. Used by the agent's spool, the
//! coordinator's `events.log` and offline result bundles.
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::{Error, SignedTicket};

/// Encodes one record: COBS of `payload`, then the `0x00` terminator.
pub fn encode_record(payload: &[u8]) -> Vec<u8> {
    let mut out = cobs::encode_vec(payload);
    out.push(0);
    out
}

/// Reads the records of a stream held in memory.
///
/// Iterates `Ok(payload)` per complete record; a damaged complete record yields
/// `Err(CorruptRecord(index))`. Bytes after the last terminator are a torn tail:
/// not yielded, reported by [`RecordReader::torn_tail`].
#[derive(Debug)]
pub struct RecordReader<'a> {
    rest: &'a [u8],
    consumed: usize,
    index: usize,
}

impl<'a> RecordReader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        RecordReader {
            rest: bytes,
            consumed: 0,
            index: 0,
        }
    }

    /// Bytes of complete records read so far (where a torn stream should be cut).
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Length of an unterminated tail left after iteration (0 if none).
    pub fn torn_tail(&self) -> usize {
        self.rest.len()
    }
}

impl Iterator for RecordReader<'_> {
    type Item = Result<Vec<u8>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let end = self.rest.iter().position(|&b| b == 0)?;
        let raw = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        self.consumed += end + 1;
        let index = self.index;
        self.index += 1;
        if raw.is_empty() {
            return Some(Err(Error::CorruptRecord(index)));
        }
        Some(cobs::decode_vec(raw).map_err(|_| Error::CorruptRecord(index)))
    }
}

/// One record of an offline result bundle (after the `KILNRES\x03` magic, [`crate::BUNDLE_MAGIC`]).
/// The first record is the ticket; blobs precede the batches that name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResultRecord {
    /// The signed ticket the run was started from.
    Ticket(SignedTicket),
    /// A sealed batch: `postcard(Batch) ++ sig`, as POSTed online.
    Batch(Vec<u8>),
    /// Bytes of an artifact, named by the sha256 an `Artifact` frame gives.
    Blob(Vec<u8>),
}

impl ResultRecord {
    /// postcard + COBS: one record of a bundle stream.
    pub fn encode(&self) -> Vec<u8> {
        encode_record(&postcard::to_allocvec(self).expect("records always encode"))
    }

    /// Decodes a record's payload (as yielded by [`RecordReader`]).
    pub fn decode(payload: &[u8]) -> Result<Self, Error> {
        let (r, rest) = postcard::take_from_bytes(payload)?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes);
        }
        Ok(r)
    }
}
