use std::io::Read;
use std::io::Result as IoResult;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How much of a request's body is still unread on the socket: `0` (all read), a
/// byte count, or [`UNREAD_UNKNOWN`]. Its body reader keeps it up to date; the
/// connection's thread keeps a handle on the latest request's.
///
/// A response written while more than [`MAX_DISCARD`] is unread says
/// `Connection: close`. The connection's own thread looks at it before reading the
/// next request and discards a small rest, or closes the connection; dropping a body
/// reader never blocks the thread that drops it (upstream drained the rest in `Drop`,
/// reading up to the client's `Content-Length` into one buffer of that size).
pub type Unread = Arc<AtomicU64>;

/// An unknown amount is left (an unfinished chunked body, or a read failed).
pub const UNREAD_UNKNOWN: u64 = u64::MAX;

/// At most this much of a body a handler left unread is read and thrown away to keep
/// the connection; beyond it the connection is closed.
pub const MAX_DISCARD: u64 = 64 * 1024;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. The number of bytes left is kept in
/// `unread`.
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
        unread.store(size as u64, Ordering::Release);
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
                if !self.failed {
                    self.unread.store(self.size as u64, Ordering::Release);
                }
                Ok(len)
            }
            Err(e) => {
                // A timed-out or failed read may have consumed part of the stream.
                self.failed = true;
                self.unread.store(UNREAD_UNKNOWN, Ordering::Release);
                Err(e)
            }
        }
    }
}

/// Wraps a body reader of unknown length (chunked): unless it reached its end, an
/// unknown amount is left unread.
pub struct UntilEof<R: Read> {
    reader: R,
    unread: Unread,
}

impl<R: Read> UntilEof<R> {
    pub fn new(reader: R, unread: Unread) -> UntilEof<R> {
        unread.store(UNREAD_UNKNOWN, Ordering::Release);
        UntilEof { reader, unread }
    }
}

impl<R: Read> Read for UntilEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let n = self.reader.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.unread.store(0, Ordering::Release);
        }
        Ok(n)
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
        assert_eq!(unread.load(Ordering::Acquire), UNREAD_UNKNOWN);

        let mut r = UntilEof::new(Cursor::new(b"abc".to_vec()), unread.clone());
        r.read_to_end(&mut Vec::new()).unwrap();
        drop(r);
        assert_eq!(unread.load(Ordering::Acquire), 0);
    }
}
