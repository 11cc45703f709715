//! Reading untrusted files and streams with bounded memory: whole files only up to
//! their format's cap, and record streams one record at a time, decoded as they are
//! read, so a record of any length can be passed on without being held.
use std::io::{self, BufRead, Read};
use std::path::Path;

/// Reads everything `r` gives, refusing (`InvalidData`) once it passes `cap` bytes:
/// at most `cap + 1` bytes are ever read or held. `what` names the input in the error.
pub fn read_capped(r: impl Read, cap: u64, what: &str) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(cap.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(too_big(what, cap));
    }
    Ok(out)
}

/// Reads the file at `path` whole, refusing one larger than `cap` bytes (checked
/// while reading, so `/dev/zero` or a growing file fails fast). The error names the
/// file, `what` it is and the cap.
pub fn read_file_capped(path: &Path, cap: u64, what: &str) -> io::Result<Vec<u8>> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let f = std::fs::File::open(path).map_err(named)?;
    read_capped(f, cap, what).map_err(named)
}

/// [`read_file_capped`] for text: the bytes must be UTF-8.
pub fn read_text_capped(path: &Path, cap: u64, what: &str) -> io::Result<String> {
    let bytes = read_file_capped(path, cap, what)?;
    String::from_utf8(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what} is not UTF-8 text", path.display()),
        )
    })
}

fn too_big(what: &str, cap: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} is larger than its {cap}-byte cap"),
    )
}

/// Where the decoder stands inside the current record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Between records: the next byte starts one (or the stream ends).
    Between,
    /// Inside a COBS block: `left` data bytes to go; `zero` when a 0 follows the block
    /// unless the record ends there.
    Block { left: u8, zero: bool },
    /// The current record's terminator has been read.
    End,
}

/// Reads a stream of COBS records (see [`crate::RecordReader`]) one record at a time,
/// decoding while reading: [`RecordStream::next_record`] starts a record, then the
/// stream itself is a [`Read`] of that record's payload, which ends (reads 0) at its
/// terminator. Memory stays at one buffer whatever the record sizes.
///
/// A stream that ends inside a record is a torn tail: reading fails with
/// `UnexpectedEof`. A `0x00` where a COBS block still has data bytes, or an empty
/// record, is a corrupt record (`InvalidData`).
#[derive(Debug)]
pub struct RecordStream<R> {
    inner: R,
    at: At,
    index: usize,
    consumed: u64,
}

impl<R: BufRead> RecordStream<R> {
    /// A stream over `inner`.
    pub fn new(inner: R) -> Self {
        RecordStream {
            inner,
            at: At::Between,
            index: 0,
            consumed: 0,
        }
    }

    /// The underlying reader (for bytes before the first record).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Index of the current record (0 for the first).
    pub fn index(&self) -> usize {
        self.index.saturating_sub(1)
    }

    /// Encoded bytes read so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Starts the next record, skipping what is left of the current one. `Ok(false)`
    /// at a clean end of the stream (right after a terminator).
    pub fn next_record(&mut self) -> io::Result<bool> {
        if self.at != At::Between && self.at != At::End {
            io::copy(self, &mut io::sink())?;
        }
        self.at = At::Between;
        if self.inner.fill_buf()?.is_empty() {
            return Ok(false);
        }
        self.index += 1;
        let code = self.byte()?;
        if code == 0 {
            return Err(self.corrupt());
        }
        self.at = At::Block {
            left: code - 1,
            zero: code != 0xff,
        };
        Ok(true)
    }

    /// Reads the rest of the current record, refusing one of more than `cap` bytes.
    pub fn read_rest(&mut self, cap: u64, what: &str) -> io::Result<Vec<u8>> {
        read_capped(self, cap, what)
    }

    /// Ends the current record: any payload left is an error (`InvalidData`, naming
    /// `what`).
    pub fn expect_end(&mut self, what: &str) -> io::Result<()> {
        let mut b = [0u8; 1];
        if self.read(&mut b)? != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record #{}: trailing bytes after the {what}", self.index()),
            ));
        }
        Ok(())
    }

    fn byte(&mut self) -> io::Result<u8> {
        let buf = self.inner.fill_buf()?;
        let Some(&b) = buf.first() else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the stream ends inside record #{} (a torn tail)",
                    self.index()
                ),
            ));
        };
        self.inner.consume(1);
        self.consumed += 1;
        Ok(b)
    }

    fn corrupt(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt record #{}", self.index()),
        )
    }
}

impl<R: BufRead> Read for RecordStream<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.at {
                At::Between | At::End => return Ok(0),
                At::Block { left: 0, zero } => {
                    let code = self.byte()?;
                    if code == 0 {
                        self.at = At::End;
                        return Ok(0);
                    }
                    self.at = At::Block {
                        left: code - 1,
                        zero: code != 0xff,
                    };
                    if zero {
                        out[0] = 0;
                        return Ok(1);
                    }
                }
                At::Block { left, zero } => {
                    let buf = self.inner.fill_buf()?;
                    if buf.is_empty() {
                        self.byte()?; // the torn-tail error
                        unreachable!("byte() fails on an empty buffer");
                    }
                    let n = buf.len().min(left as usize).min(out.len());
                    let data = &buf[..n];
                    if data.contains(&0) {
                        return Err(self.corrupt());
                    }
                    out[..n].copy_from_slice(data);
                    self.inner.consume(n);
                    self.consumed += n as u64;
                    self.at = At::Block {
                        left: left - n as u8,
                        zero,
                    };
                    return Ok(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RecordReader, encode_record};

    /// A small deterministic generator (xorshift), so failures replay.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn payload(rng: &mut Rng) -> Vec<u8> {
        let len = match rng.below(4) {
            0 => rng.below(4),
            1 => 250 + rng.below(10),
            2 => 505 + rng.below(10),
            _ => rng.below(3000),
        } as usize;
        let zeros = rng.below(4);
        (0..len)
            .map(|_| match zeros {
                0 => 1 + rng.below(255) as u8,
                1 => 0,
                _ if rng.below(zeros * 8) == 0 => 0,
                _ => rng.next() as u8,
            })
            .collect()
    }

    fn decode_all(bytes: &[u8], chunk: usize) -> io::Result<Vec<Vec<u8>>> {
        let r = io::BufReader::with_capacity(chunk, bytes);
        let mut s = RecordStream::new(r);
        let mut out = Vec::new();
        while s.next_record()? {
            out.push(s.read_rest(u64::MAX, "record")?);
        }
        Ok(out)
    }

    #[test]
    fn streams_decode_as_the_in_memory_reader_does() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..3000 {
            let recs: Vec<Vec<u8>> = (0..rng.below(5)).map(|_| payload(&mut rng)).collect();
            let bytes: Vec<u8> = recs.iter().flat_map(|p| encode_record(p)).collect();
            let chunk = 1 + rng.below(600) as usize;
            let got = decode_all(&bytes, chunk).unwrap();
            assert_eq!(got, recs, "case {case}");
            let want: Vec<Vec<u8>> = RecordReader::new(&bytes).map(|r| r.unwrap()).collect();
            assert_eq!(got, want, "case {case}");
            // Any cut inside the last record is a torn tail, never a shorter record.
            if let Some(last) = recs.last() {
                let start = bytes.len() - encode_record(last).len();
                let cut = start + 1 + rng.below((bytes.len() - start - 1) as u64) as usize;
                let e = decode_all(&bytes[..cut], chunk).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "case {case}: {e}");
            }
        }
    }

    #[test]
    fn garbage_never_panics_and_agrees_with_the_reader() {
        let mut rng = Rng(12345);
        for _ in 0..20000 {
            let len = rng.below(64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(3) == 0 {
                        0
                    } else {
                        rng.next() as u8
                    }
                })
                .collect();
            let got = decode_all(&bytes, 1 + rng.below(8) as usize);
            let mut reader = RecordReader::new(&bytes);
            let want: Result<Vec<Vec<u8>>, _> = reader.by_ref().collect();
            match (got, want) {
                (Ok(g), Ok(w)) => {
                    assert_eq!(g, w);
                    assert_eq!(reader.torn_tail(), 0);
                }
                (Err(e), Ok(_)) => {
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{bytes:?}");
                    assert!(reader.torn_tail() > 0, "{bytes:?}");
                }
                (Err(e), Err(_)) => assert_ne!(e.kind(), io::ErrorKind::UnexpectedEof),
                (Ok(g), Err(w)) => panic!("{bytes:?}: stream {g:?}, reader {w}"),
            }
        }
    }

    #[test]
    fn read_capped_refuses_past_the_cap_without_reading_on() {
        let e = read_capped(io::repeat(0), 1000, "ticket").unwrap_err();
        assert!(e.to_string().contains("1000-byte cap"), "{e}");
        assert_eq!(
            read_capped(&[1u8; 1000][..], 1000, "x").unwrap().len(),
            1000
        );
        let e = read_file_capped(Path::new("/dev/zero"), 1 << 20, "bundle").unwrap_err();
        assert!(e.to_string().contains("/dev/zero"), "{e}");
    }
}
