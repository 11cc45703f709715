//! `GET /cas/{sha256}`: serves stored objects (artifact bytes) from the CAS
//! ([`crate::cas`]) with ETag and single byte ranges.
use kiln_protocol::Sha256;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use tiny_http::{Request, Response, StatusCode};

use super::{Ctx, Reply, hdr, header};
use crate::ingest::Refusal;

/// A `Range` header resolved against a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// No usable range: send everything (absent, malformed or multi-range).
    Full,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// A well-formed range that misses the object: 416.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n` for an object of `len` bytes.
pub fn parse_range(h: Option<&str>, len: u64) -> Range {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Full;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => Range::Full,
        (true, false) => match num(b) {
            None => Range::Full,
            Some(0) => Range::Unsatisfiable,
            Some(_) if len == 0 => Range::Unsatisfiable,
            Some(n) => Range::Part(len.saturating_sub(n), len - 1),
        },
        (false, open) => {
            let Some(start) = num(a) else {
                return Range::Full;
            };
            let end = if open {
                u64::MAX
            } else {
                match num(b) {
                    Some(e) if e >= start => e,
                    _ => return Range::Full,
                }
            };
            if start >= len {
                Range::Unsatisfiable
            } else {
                Range::Part(start, end.min(len - 1))
            }
        }
    }
}

/// Serves one CAS object.
pub fn get(ctx: &Ctx, rq: &Request, sha: &Sha256) -> Reply {
    let path = ctx.state.cas().path(sha);
    let mut file =
        File::open(&path).map_err(|_| Refusal::new(404, format!("no artifact {sha}")))?;
    let len = file
        .metadata()
        .map_err(|e| Refusal::new(500, format!("reading artifact {sha}: {e}")))?
        .len();
    let etag = format!("\"{sha}\"");
    let matches = header(rq, "If-None-Match").is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*")
    });
    // A Content-Length, never chunked: iPXE grows its buffer chunk by chunk on a
    // chunked body, which made a 27 MiB initrd take ~45 s to load under TCG.
    let common = |r: Response<Box<dyn Read + Send>>| {
        r.with_chunked_threshold(usize::MAX)
            .with_header(hdr("ETag", &etag))
            .with_header(hdr("Accept-Ranges", "bytes"))
            .with_header(hdr("Cache-Control", "public, max-age=31536000, immutable"))
    };
    if matches {
        return Ok(common(Response::new(
            StatusCode(304),
            vec![],
            Box::new(std::io::empty()),
            Some(0),
            None,
        )));
    }
    let octets = hdr("Content-Type", "application/octet-stream");
    match parse_range(header(rq, "Range").as_deref(), len) {
        Range::Full => Ok(common(Response::new(
            StatusCode(200),
            vec![octets],
            Box::new(file),
            Some(len as usize),
            None,
        ))),
        Range::Part(start, end) => {
            file.seek(SeekFrom::Start(start))
                .map_err(|e| Refusal::new(500, format!("reading artifact {sha}: {e}")))?;
            let n = end - start + 1;
            Ok(common(Response::new(
                StatusCode(206),
                vec![
                    octets,
                    hdr("Content-Range", &format!("bytes {start}-{end}/{len}")),
                ],
                Box::new(file.take(n)),
                Some(n as usize),
                None,
            )))
        }
        Range::Unsatisfiable => Ok(common(Response::new(
            StatusCode(416),
            vec![
                hdr("Content-Type", "text/plain; charset=utf-8"),
                hdr("Content-Range", &format!("bytes */{len}")),
            ],
            Box::new(std::io::Cursor::new(
                format!("range not satisfiable: the artifact has {len} bytes\n").into_bytes(),
            )),
            None,
            None,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Range::Part(0, 3));
        assert_eq!(parse_range(Some("bytes=4-"), 10), Range::Part(4, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Range::Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Range::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Range::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=3-1"), 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Range::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=-"), 10), Range::Full);
    }
}
