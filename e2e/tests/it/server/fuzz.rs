//! Random requests against a live server: raw garbage, odd paths and methods, random
//! bodies on every route. None may crash it, get a 5xx, or write outside the state folder.
use super::*;
use crate::common::Coordinator;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        (0..self.next() % max).map(|_| self.next() as u8).collect()
    }
}

/// Sends raw bytes, returns the status code (0 when the server closed without one).
fn raw(addr: &str, req: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let _ = s.write_all(req);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn random_requests_never_crash_or_5xx() {
    let (dir, state) = keyed_state();
    let run = issue(&state);
    let mut server = Coordinator::start(&state);
    let addr = server.url.trim_start_matches("http://").to_string();
    let run_s = run.to_string();
    let sha = "0".repeat(64);
    let paths = [
        "/",
        "/runs/",
        "/v1/runs",
        "/boot.ipxe",
        "/ipxe/52-54-00-12-34-56",
        "/ipxe/..%2f..%2fetc",
        "/cas/../../etc/passwd",
        "/v1/hosts/zz/ticket",
        "//v1//runs",
        "/%00",
        "/v1/runs/../../key/coordinator.key",
    ];
    let mut rng = Rng(0xc0ffee);
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..400 {
        let path = match i % 4 {
            0 => rng.pick(&paths).to_string(),
            1 => format!(
                "/v1/runs/{run_s}/{}",
                rng.pick(&["events", "ticket", "secrets", "artifacts/x", ""])
            ),
            2 => format!("/v1/runs/{run_s}/artifacts/{sha}"),
            _ => format!("/cas/{}", rng.pick(&[&sha, "zz", "", "%2e%2e"])),
        };
        let method = rng.pick(&["GET", "POST", "PUT", "DELETE", "HEAD", "BREW"]);
        let body = rng.bytes(2048);
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nRange: bytes={}-{}\r\n\r\n",
            body.len(),
            rng.next() % 100,
            rng.next() % 100
        )
        .into_bytes();
        req.extend(&body);
        let code = raw(&addr, &req);
        assert!(code < 500, "{method} {path} got {code}");
        *seen.entry(code).or_insert(0) += 1;
        // Sometimes plain garbage instead of HTTP.
        if i % 10 == 0 {
            let code = raw(&addr, &rng.bytes(512));
            assert!(code < 500, "garbage got {code}");
        }
    }
    // The requests were answered (not just dropped): refusals and successes both.
    assert!(seen.keys().any(|c| (400..500).contains(c)), "{seen:?}");
    assert!(seen.contains_key(&200), "{seen:?}");
    assert!(seen.get(&0).copied().unwrap_or(0) < 40, "{seen:?}");
    // Still serving, and nothing was written beside the state folder.
    assert_eq!(raw(&addr, b"GET /v1/runs HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "server exited"
    );
    server.kill();
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside, ["state"], "files written beside the state folder");
}
