use std::io::Read;
use std::io::Result as IoResult;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How much of a request body was left unread on the socket when the handler let go
/// of it: `0` (all read), a byte count, or [`UNREAD_UNKNOWN`].
///
/// The connection's own thread looks at it before reading the next request and
/// discards a small rest or closes the connection; dropping a body reader never
/// blocks the thread that drops it (upstream drained the rest in `Drop`, reading up
/// to the client's `Content-Length` into one buffer of that size).
/// Readers only raise the value (`fetch_max`); the connection's thread resets it.
pub type Unread = Arc<AtomicU64>;

/// An unknown amount is left (an unfinished chunked body, or a read failed).
pub const UNREAD_UNKNOWN: u64 = u64::MAX;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached when it is
/// dropped, the number of bytes left is stored in `unread`.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    failed: bool,
    unread: Unread,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(reader: R, size: usize, unread: Unread) -> EqualReader<R> {
        EqualReader {
            reader,
            size,
            failed: false,
            unread,
        }
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            Err(e) => {
                // A timed-out or failed read may have consumed part of the stream.
                self.failed = true;
                Err(e)
            }
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        let left = if self.failed && self.size > 0 {
            UNREAD_UNKNOWN
        } else {
            self.size as u64
        };
        self.unread.fetch_max(left, Ordering::AcqRel);
    }
}

/// Wraps a body reader of unknown length (chunked): unless it reached its end, an
/// unknown amount is left unread.
pub struct UntilEof<R: Read> {
    reader: R,
    eof: bool,
    unread: Unread,
}

impl<R: Read> UntilEof<R> {
    pub fn new(reader: R, unread: Unread) -> UntilEof<R> {
        UntilEof {
            reader,
            eof: false,
            unread,
        }
    }
}

impl<R: Read> Read for UntilEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let n = self.reader.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

impl<R: Read> Drop for UntilEof<R> {
    fn drop(&mut self) {
        let left = if self.eof { 0 } else { UNREAD_UNKNOWN };
        self.unread.fetch_max(left, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let unread = super::Unread::default();
            let mut equal_reader = EqualReader::new(org_reader.by_ref(), 5, unread.clone());

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
            drop(equal_reader);
            assert_eq!(unread.load(std::sync::atomic::Ordering::Acquire), 0);
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());
        let unread = super::Unread::default();

        {
            let mut equal_reader = EqualReader::new(org_reader.by_ref(), 5, unread.clone());

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        // Dropping does not read the rest: it reports how much is left.
        assert_eq!(unread.load(std::sync::atomic::Ordering::Acquire), 4);
        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, "ello world");
    }

    #[test]
    fn unfinished_chunked_bodies_leave_an_unknown_rest() {
        use super::{UntilEof, UNREAD_UNKNOWN};
        use std::io::Cursor;
        use std::sync::atomic::Ordering;

        let unread = super::Unread::default();
        let mut r = UntilEof::new(Cursor::new(b"abc".to_vec()), unread.clone());
        r.read_exact(&mut [0; 2]).unwrap();
        drop(r);
        assert_eq!(unread.swap(0, Ordering::AcqRel), UNREAD_UNKNOWN);

        let mut r = UntilEof::new(Cursor::new(b"abc".to_vec()), unread.clone());
        r.read_to_end(&mut Vec::new()).unwrap();
        drop(r);
        assert_eq!(unread.load(Ordering::Acquire), 0);
    }
}
