use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Method};
use crate::util::RefinedTcpStream;
use crate::util::{
    SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder, Unread, MAX_DISCARD,
};
use crate::{ConnectionLimits, Request};

/// After a response that leaves input unread, the connection's sending side is
/// closed and input is read and thrown away until the client closes too, a read
/// waits [`LINGER_IDLE`], or [`LINGER_TOTAL`] passed, before the socket is closed:
/// a client that writes its whole body before it reads sees the response rather than
/// a reset. Only the connection's own thread waits.
const LINGER_IDLE: Duration = Duration::from_secs(2);
const LINGER_TOTAL: Duration = Duration::from_secs(30);

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // caps and timeouts
    limits: ConnectionLimits,

    // how much of the previous request's body is unread (each request has its own)
    unread: Option<Unread>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// the request line is longer than `ConnectionLimits::max_request_line` (414)
    RequestLineTooLong,
    /// the header lines are longer than `ConnectionLimits::max_header_bytes` (431)
    HeadersTooLarge(HTTPVersion),
    /// the header did not arrive within `ConnectionLimits::header_timeout` (408)
    HeaderTimeout,
    /// no new request within `ConnectionLimits::idle_timeout`, or the client closed:
    /// close without an answer
    Idle,
    /// the previous request left a body unread that cannot be skipped: close
    /// (its response has been sent)
    BodyLeftUnread,
}

/// Why a line could not be read.
enum LineError {
    TooLong,
    TimedOut,
    Io(IoError),
}

/// A read timed out (`SO_RCVTIMEO` shows as `WouldBlock` on Unix, `TimedOut` elsewhere).
fn is_timeout(e: &IoError) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: ConnectionLimits,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            limits,
            unread: None,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line. A line longer than `max` bytes (without
    ///  its `CRLF`) is refused as soon as that is known, before more is buffered;
    ///  `deadline` is checked between reads.
    fn read_next_line(
        &mut self,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<AsciiString, LineError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(LineError::TimedOut);
            }
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(Ok(b)) => b,
                Some(Err(e)) if is_timeout(&e) => return Err(LineError::TimedOut),
                Some(Err(e)) => return Err(LineError::Io(e)),
                None => {
                    return Err(LineError::Io(IoError::new(
                        ErrorKind::ConnectionAborted,
                        "Unexpected EOF",
                    )))
                }
            };

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return AsciiString::from_ascii(buf).map_err(|_| {
                    LineError::Io(IoError::new(ErrorKind::InvalidInput, "Header is not in ASCII"))
                });
            }

            prev_byte_was_cr = byte == b'\r';

            // one byte more than `max` may be the '\r' of the CRLF
            if buf.len() > max || (buf.len() == max && !prev_byte_was_cr) {
                return Err(LineError::TooLong);
            }
            buf.push(byte);
        }
    }

    /// Gets ready for the next request: waits until the previous request's body is
    /// done with, skips what its handler left unread (a little) or gives up on the
    /// connection (more), then waits at most the idle timeout for the first byte.
    fn prepare_next(&mut self) -> Result<(), ReadError> {
        let limits = self.limits.clone();
        let unread = self.unread.take();
        let reader = match self.next_header_source.wait_turn() {
            Some(r) => r,
            None => return Err(ReadError::Idle),
        };
        let left = unread.map_or(0, |u| u.load(Ordering::Acquire));
        if left > MAX_DISCARD {
            return Err(ReadError::BodyLeftUnread);
        }
        if left > 0 {
            let deadline = limits.header_timeout.map(|t| Instant::now() + t);
            let mut rest = left as usize;
            let mut scratch = [0u8; 4096];
            while rest > 0 {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(ReadError::BodyLeftUnread);
                }
                let want = rest.min(scratch.len());
                match reader.read(&mut scratch[..want]) {
                    Ok(0) | Err(_) => return Err(ReadError::BodyLeftUnread),
                    Ok(n) => rest -= n,
                }
            }
        }
        if let Some(idle) = limits.idle_timeout {
            if reader.buffer().is_empty() {
                reader.get_mut().set_read_timeout(Some(idle)).ok();
                let first = reader.fill_buf().map(|b| b.is_empty());
                reader.get_mut().set_read_timeout(limits.read_timeout).ok();
                match first {
                    Ok(false) => {}
                    Ok(true) => return Err(ReadError::Idle),
                    Err(e) if is_timeout(&e) => return Err(ReadError::Idle),
                    Err(e) => return Err(ReadError::ReadIoError(e)),
                }
            }
        }
        Ok(())
    }

    /// Answers `response` with `Connection: close`, then closes the connection
    /// gracefully (see [`LINGER_IDLE`]).
    fn refuse_and_close(&mut self, status: u16, version: HTTPVersion) {
        use crate::{Response, StatusCode};
        let mut writer = self.sink.next().unwrap();
        let mut response = Response::new_empty(StatusCode(status));
        response.add_connection_close();
        if response
            .raw_print(&mut writer, version, &[], false, None)
            .and_then(|_| writer.flush())
            .is_ok()
        {
            drop(writer);
            self.linger();
        }
    }

    /// Closes the sending side, then reads and throws away what the client still sends
    /// for a moment, so that closing the socket does not reset the connection before
    /// the client has read the response.
    fn linger(&mut self) {
        // wait until every response before has been written, and flush
        if let Some(mut w) = self.sink.next() {
            if w.flush().is_err() {
                return;
            }
        }
        let reader = match self.next_header_source.wait_turn() {
            Some(r) => r,
            None => return,
        };
        if reader.get_mut().shutdown_write().is_err() {
            return;
        }
        reader.get_mut().set_read_timeout(Some(LINGER_IDLE)).ok();
        let deadline = Instant::now() + LINGER_TOTAL;
        let mut scratch = [0u8; 8192];
        while Instant::now() < deadline {
            match reader.read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        self.prepare_next()?;
        let deadline = self.limits.header_timeout.map(|t| Instant::now() + t);
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self
                    .read_next_line(self.limits.max_request_line, deadline)
                    .map_err(|e| match e {
                        LineError::TooLong => ReadError::RequestLineTooLong,
                        LineError::TimedOut => ReadError::HeaderTimeout,
                        LineError::Io(e) => ReadError::ReadIoError(e),
                    })?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                // every header line counts with its CRLF
                let mut budget = self.limits.max_header_bytes;
                loop {
                    let line = self
                        .read_next_line(budget.saturating_sub(2), deadline)
                        .map_err(|e| match e {
                            LineError::TooLong => ReadError::HeadersTooLarge(version.clone()),
                            LineError::TimedOut => ReadError::HeaderTimeout,
                            LineError::Io(e) => ReadError::ReadIoError(e),
                        })?;

                    if line.is_empty() {
                        break;
                    };
                    budget = budget.saturating_sub(line.len() + 2);
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            self.remote_addr.as_ref().ok().copied().flatten(),
            data_source,
            writer,
            self.unread.insert(Unread::default()).clone(),
            deadline,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        // the client is already gone (its address cannot be read)
        if self.remote_addr.is_err() {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::HeaderTimeout) => {
                    // request timeout
                    self.refuse_and_close(408, HTTPVersion(1, 1));
                    return None; // closing the connection
                }

                Err(ReadError::ReadIoError(ref err)) if is_timeout(err) => {
                    // request timeout
                    self.refuse_and_close(408, HTTPVersion(1, 1));
                    return None; // closing the connection
                }

                Err(ReadError::RequestLineTooLong) => {
                    self.refuse_and_close(414, HTTPVersion(1, 1));
                    return None;
                }

                Err(ReadError::HeadersTooLarge(ver)) => {
                    self.refuse_and_close(431, ver);
                    return None;
                }

                Err(ReadError::BodyLeftUnread) => {
                    self.linger();
                    return None;
                }

                Err(ReadError::Idle) => return None,

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let writer = self.sink.next().unwrap();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
