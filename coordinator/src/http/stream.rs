//! `GET /v1/runs/{run}/stream`: the run's frames as server-sent events, one event
//! per stored frame (`id:` its seq, `event: frame`, `data:` the frame as JSON), from
//! the start or after `Last-Event-ID` (or `?after=SEQ`), as they are ingested. The stream ends after
//! the run's `RunFinished` (or after [`MAX_STREAM`]: the browser reconnects with
//! `Last-Event-ID`); a comment every [`KEEPALIVE`] finds a client that went away.
use kiln_protocol::{Event, RunId};
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tiny_http::{Request, Response, StatusCode};

use super::{Ctx, Reply, hdr, header};
use crate::ingest::Refusal;
use crate::store::{RunDir, Scan, files};

/// How often the log is looked at for new frames.
const POLL: Duration = Duration::from_millis(200);
/// How often a quiet stream sends a comment.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Longest one stream lasts.
pub const MAX_STREAM: Duration = Duration::from_secs(3600);
/// Most bytes of the log read per poll.
const CHUNK: usize = 1 << 20;
/// Most streams open at once (each holds a worker thread); beyond, 503.
pub const MAX_STREAMS: usize = 256;

/// Streams open now.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// One open stream's place in [`OPEN`], given back when the stream ends.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        OPEN.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_STREAMS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The body: reads events.log from where it was, turns frames into events.
struct Frames {
    _slot: Slot,
    rd: RunDir,
    scan: Scan,
    buf: Vec<u8>,
    out: Vec<u8>,
    after: u64,
    finished: bool,
    started: Instant,
    quiet_since: Instant,
}

impl Frames {
    /// Reads what was appended since the last look; queues its events.
    fn poll(&mut self) -> std::io::Result<()> {
        let mut f = match std::fs::File::open(self.rd.path(files::EVENTS)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(self.scan.offset + self.buf.len() as u64))?;
        let mut chunk = Vec::with_capacity(CHUNK);
        f.take(CHUNK as u64).read_to_end(&mut chunk)?;
        self.buf.extend_from_slice(&chunk);
        let (after, out, finished) = (self.after, &mut self.out, &mut self.finished);
        let used = self.scan.feed(&self.buf, |frame| {
            if matches!(frame.event, Event::RunFinished { .. }) {
                *finished = true;
            }
            if frame.seq <= after {
                return;
            }
            let json = serde_json::to_string(&frame).unwrap_or_else(|_| "null".into());
            // JSON has no raw newline, so one data line holds it.
            out.extend_from_slice(
                format!(
                    "id: {}\nevent: frame\ndata: {}\n\n",
                    frame.seq,
                    crate::visible::json_safe(json)
                )
                .as_bytes(),
            );
        });
        self.buf.drain(..used);
        if self.scan.corrupt.is_some() {
            // Nothing after a corrupt record is read: end the stream.
            self.finished = true;
        }
        Ok(())
    }
}

impl Read for Frames {
    fn read(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if !self.out.is_empty() {
                let n = self.out.len().min(into.len());
                into[..n].copy_from_slice(&self.out[..n]);
                self.out.drain(..n);
                self.quiet_since = Instant::now();
                return Ok(n);
            }
            if self.finished || self.started.elapsed() >= MAX_STREAM {
                return Ok(0);
            }
            self.poll()?;
            if self.out.is_empty() && !self.finished {
                if self.quiet_since.elapsed() >= KEEPALIVE {
                    self.out.extend_from_slice(b": keepalive\n\n");
                } else {
                    std::thread::sleep(POLL);
                }
            }
        }
    }
}

/// `GET /v1/runs/{run}/stream`.
pub fn stream(ctx: &Ctx, rq: &Request, run: &RunId, query: &str) -> Reply {
    let rd = RunDir::new(&ctx.state, *run);
    if !rd.exists() {
        return Err(Refusal::new(404, format!("no run {run}")));
    }
    // A reconnecting browser sends Last-Event-ID; a page that already shows the
    // frames up to N opens the stream with `?after=N`.
    let last = header(rq, "Last-Event-ID");
    let after = match last.as_deref().or(super::param(query, "after")) {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| Refusal::new(400, "Last-Event-ID (or after=) must be a frame's seq"))?,
    };
    let Some(slot) = Slot::take() else {
        return Err(Refusal::new(
            503,
            format!("{MAX_STREAMS} event streams are open: try again later"),
        ));
    };
    let now = Instant::now();
    let body = Frames {
        _slot: slot,
        rd,
        scan: Scan::default(),
        buf: Vec::new(),
        out: b"retry: 2000\n\n".to_vec(),
        after,
        finished: false,
        started: now,
        quiet_since: now,
    };
    Ok(Response::new(
        StatusCode(200),
        vec![
            hdr("Content-Type", "text/event-stream"),
            hdr("Cache-Control", "no-cache"),
        ],
        body,
        None,
        None,
    )
    .boxed())
}
