//! What the network can throw at the server without stopping it: running it out of
//! file descriptors, huge request lines and headers, more connections than its cap,
//! slow bodies for runs in every state, silent connections. Each test sends raw
//! bytes over TCP (no HTTP client would send these), and the server must keep
//! answering others.
use kiln_protocol::{Event, Outcome, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::common::{Coordinator, bin, wait_until};

/// How long a test waits for an answer that a working server gives at once.
const ANSWER: Duration = Duration::from_secs(10);

fn addr(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// Sends `GET /boot.ipxe` on a fresh connection and returns the status line, or the
/// error that stopped it (no answer within [`ANSWER`]).
fn boot_ipxe(url: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr(url)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(ANSWER)).unwrap();
    write!(
        s,
        "GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("no answer: {e}"))?;
    Ok(line.trim_end().to_string())
}

/// One keep-alive request on `s`: returns the status code, having read the body.
fn keep_alive_get(s: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    write!(s.get_mut(), "GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut line = String::new();
    s.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        s.read_line(&mut h)?;
        if h.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    s.read_exact(&mut vec![0; len])?;
    Ok(status)
}

/// A value from the server's /proc/PID/status, in kB or a count.
fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// A `kiln-coordinator serve` started by `sh` after `ulimit` (e.g. `-n 64`), its
/// log kept for the test to read.
struct Limited {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Limited {
    fn start(state: &Path, ulimit: &str, extra: &[&str]) -> Limited {
        let addr_file = state.join("addr.limited");
        let _ = std::fs::remove_file(&addr_file);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{ulimit} && exec \"$@\""))
            .arg("sh")
            .arg(bin("kiln-coordinator"))
            .arg("--state")
            .arg(state)
            .args(["serve", "--listen", "127.0.0.1:0", "--addr-file"])
            .arg(&addr_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kiln-coordinator serve");
        let log = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[coordinator] {l}");
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        wait_until(Duration::from_secs(20), "the server to listen", || {
            std::fs::read_to_string(&addr_file).is_ok_and(|a| a.ends_with('\n'))
        });
        let a = std::fs::read_to_string(&addr_file).unwrap();
        Limited {
            child,
            url: format!("http://{}", a.trim()),
            log,
        }
    }

    fn logged(&self, what: &str) -> bool {
        self.log.lock().unwrap().contains(what)
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn running_out_of_file_descriptors_does_not_stop_the_listener() {
    let (_d, state) = keyed_state();
    // A cap above what 64 descriptors hold, so accept itself runs out (EMFILE).
    let c = Limited::start(&state, "ulimit -n 64", &["--max-connections", "1000"]);
    assert_eq!(boot_ipxe(&c.url).as_deref(), Ok("HTTP/1.1 200 OK"));

    let mut idle = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "the server to run out of file descriptors",
        || {
            // The kernel completes these handshakes from the backlog either way.
            if idle.len() < 200
                && let Ok(s) = TcpStream::connect(addr(&c.url))
            {
                idle.push(s);
            }
            c.logged("Too many open files")
        },
    );
    drop(idle);

    // Once the connections are gone, the same listener answers again.
    let mut last = Err(String::new());
    wait_until(ANSWER * 3, "an answer after the shortage", || {
        last = boot_ipxe(&c.url);
        last.is_ok()
    });
    assert_eq!(last.as_deref(), Ok("HTTP/1.1 200 OK"));
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_and_sizes_the_cap() {
    let (_d, state) = keyed_state();
    let c = Limited::start(&state, "ulimit -Sn 100 && ulimit -Hn 1024", &[]);
    assert_eq!(boot_ipxe(&c.url).as_deref(), Ok("HTTP/1.1 200 OK"));
    let pid = c.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["1024", "1024"], "{line}");
    assert!(
        c.logged("at most 256 connections"),
        "cap not sized to the limit"
    );
}

/// Writes `head` from another thread (the server may stop reading it) and returns
/// the status line the server answers, having read to the end of the connection.
fn answer_to(url: &str, head: Vec<u8>) -> String {
    let mut s = TcpStream::connect(addr(url)).unwrap();
    s.set_read_timeout(Some(ANSWER)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&head);
    });
    let mut got = Vec::new();
    // Ends with the server closing the connection (or a reset after the answer).
    let end = s.read_to_end(&mut got);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&got);
    let line = text.lines().next().unwrap_or("").to_string();
    if let Err(e) = end {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the server kept the connection open after {line:?}"
        );
    }
    line
}

#[test]
fn a_huge_header_is_refused_431_before_it_is_buffered() {
    let (_d, state) = keyed_state();
    let c = Coordinator::start(&state);
    let pid = c.child.id();
    assert_eq!(boot_ipxe(&c.url).as_deref(), Ok("HTTP/1.1 200 OK"));
    let peak = proc_status(pid, "VmHWM");

    let mut head = b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.resize(head.len() + 8 * 1024 * 1024, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    let line = answer_to(&c.url, head);
    assert_eq!(line, "HTTP/1.1 431 Request Header Fields Too Large");

    // Many small headers add up the same way.
    let mut head = b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        head.extend_from_slice(format!("X-{i}: yes\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    assert_eq!(
        answer_to(&c.url, head),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    let grown = proc_status(pid, "VmHWM").saturating_sub(peak);
    assert!(
        grown < 4 * 1024,
        "the server's peak memory grew by {grown} kB for an 8 MiB header"
    );
    assert_eq!(boot_ipxe(&c.url).as_deref(), Ok("HTTP/1.1 200 OK"));
}

#[test]
fn a_long_request_line_is_refused_414() {
    let (_d, state) = keyed_state();
    let c = Coordinator::start(&state);
    let mut head = b"GET /".to_vec();
    head.resize(head.len() + 20 * 1024, b'a');
    head.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(answer_to(&c.url, head), "HTTP/1.1 414 URI Too Long");
    assert_eq!(boot_ipxe(&c.url).as_deref(), Ok("HTTP/1.1 200 OK"));
}

#[test]
fn connections_over_the_cap_are_closed_while_the_others_are_served() {
    let (_d, state) = keyed_state();
    let c = Coordinator::start_with(&state, &["--max-connections", "4"]);
    let open: Vec<_> = (0..4)
        .map(|_| {
            let s = TcpStream::connect(addr(&c.url)).unwrap();
            s.set_read_timeout(Some(ANSWER)).unwrap();
            let mut s = BufReader::new(s);
            assert_eq!(keep_alive_get(&mut s).unwrap(), 200);
            s
        })
        .collect();

    // The fifth is answered 503 or closed at once, never served nor left hanging.
    match boot_ipxe(&c.url) {
        Ok(line) => assert!(line.starts_with("HTTP/1.1 503"), "over the cap: {line}"),
        Err(e) => assert!(!e.contains("no answer: Resource"), "over the cap: {e}"),
    }
    let mut open = open;
    for s in &mut open {
        assert_eq!(keep_alive_get(s).unwrap(), 200, "an open connection lost");
    }

    // Closing one makes room.
    drop(open.pop());
    wait_until(ANSWER, "room for a new connection", || {
        boot_ipxe(&c.url).is_ok_and(|l| l == "HTTP/1.1 200 OK")
    });
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let (_d, state) = keyed_state();
    let c = Coordinator::start_with(&state, &["--idle-timeout", "1"]);
    let mut silent = TcpStream::connect(addr(&c.url)).unwrap();
    silent.set_read_timeout(Some(ANSWER)).unwrap();
    assert_eq!(read_some(&mut silent), 0, "a silent connection got bytes");

    // A kept-alive connection that goes quiet after a request, too.
    let s = TcpStream::connect(addr(&c.url)).unwrap();
    s.set_read_timeout(Some(ANSWER)).unwrap();
    let mut s = BufReader::new(s);
    assert_eq!(keep_alive_get(&mut s).unwrap(), 200);
    assert_eq!(read_some(&mut s), 0, "an idle connection got bytes");
}

/// One read (0: the server closed the connection); a timeout fails the test.
fn read_some(s: &mut impl Read) -> usize {
    loop {
        match s.read(&mut [0; 16]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r.expect("closed, not timed out"),
        }
    }
}

/// Sends `head` announcing a body of `len` bytes, then one byte a second from
/// another thread until `stop` (a body that would take `len` seconds). With
/// `refused`, first waits for the answer that needs no body (409, before any byte).
fn trickle(url: &str, head: String, len: usize, refused: bool, stop: Arc<AtomicBool>) {
    let mut s = TcpStream::connect(addr(url)).unwrap();
    write!(s, "{head}Host: x\r\nContent-Length: {len}\r\n\r\n").unwrap();
    if refused {
        s.set_read_timeout(Some(ANSWER)).unwrap();
        let mut line = String::new();
        BufReader::new(&s)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("no answer before the body ({e}): {head}"));
        assert!(line.starts_with("HTTP/1.1 409"), "{head}: {line}");
    }
    std::thread::spawn(move || {
        for _ in 0..len {
            if stop.load(Ordering::Relaxed) || s.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

#[test]
fn slow_bodies_for_runs_in_every_state_do_not_stop_other_requests() {
    let (_d, state) = keyed_state();
    let pending = issue(&state);
    let live = issue(&state);
    let done = issue(&state);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(live);
    let f = r.frames(vec![r.claim()]);
    ack(&c.url, &live, &r.seal(f));
    let mut d = Reporter::new(done);
    let f = d.frames(vec![
        d.claim(),
        Event::RunFinished {
            outcome: Outcome::Passed,
        },
    ]);
    ack(&c.url, &done, &d.seal(f));

    let stop = Arc::new(AtomicBool::new(false));
    let sha = Sha256::of(b"x");
    let upload = |run: RunId| format!("PUT /v1/runs/{run}/artifacts/{sha} HTTP/1.1\r\n");
    let events = |run: RunId| format!("POST /v1/runs/{run}/events HTTP/1.1\r\n");
    // As many refused uploads as the server has workers (to pending and finished
    // runs; a rest over and under what the server skips), each answered before its
    // body and then trickling it anyway...
    for i in 0..16 {
        let run = if i % 2 == 0 { pending } else { done };
        let len = if i % 4 < 2 { 100_000 } else { 5_000 };
        trickle(&c.url, upload(run), len, true, stop.clone());
    }
    // ...and bodies the server does read, slowly: batches for runs in every state,
    // uploads for the live run.
    for run in [pending, live, done, pending, live, done] {
        trickle(&c.url, events(run), 2_000, false, stop.clone());
    }
    for _ in 0..6 {
        trickle(&c.url, upload(live), 100_000, false, stop.clone());
    }
    let t0 = Instant::now();
    let answer = boot_ipxe(&c.url);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        answer.as_deref(),
        Ok("HTTP/1.1 200 OK"),
        "GET /boot.ipxe behind slow bodies (after {:?})",
        t0.elapsed()
    );
}

#[test]
fn a_refused_body_of_any_announced_size_costs_nothing() {
    let (_d, state) = keyed_state();
    let pending = issue(&state);
    let c = Coordinator::start(&state);
    let sha = Sha256::of(b"x");
    for (path, run) in [
        ("artifacts", new_run_id()),
        ("artifacts", pending),
        ("secrets", pending),
    ] {
        let target = if path == "artifacts" {
            format!("PUT /v1/runs/{run}/artifacts/{sha}")
        } else {
            format!("POST /v1/runs/{run}/secrets")
        };
        let mut s = TcpStream::connect(addr(&c.url)).unwrap();
        s.set_read_timeout(Some(ANSWER)).unwrap();
        // A terabyte announced, nothing sent: refused at once, nothing waited for
        // or allocated.
        write!(
            s,
            "{target} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n"
        )
        .unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 4"), "{target}: {line}");
        assert_eq!(
            boot_ipxe(&c.url).as_deref(),
            Ok("HTTP/1.1 200 OK"),
            "after {target}"
        );
    }
}
