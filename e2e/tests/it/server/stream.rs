//! `GET /v1/runs/{run}/stream`: server-sent events, one per frame as it is ingested,
//! resumable with `Last-Event-ID`, ending with the run.
use kiln_protocol::{Event, Outcome};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::*;
use crate::common::Coordinator;

/// Opens the stream; returns the reader past the headers.
fn open(url: &str, run: &RunId, last: Option<u64>) -> BufReader<TcpStream> {
    let addr = url.trim_start_matches("http://");
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s);
    let last = last
        .map(|l| format!("Last-Event-ID: {l}\r\n"))
        .unwrap_or_default();
    write!(
        r.get_mut(),
        "GET /v1/runs/{run}/stream HTTP/1.1\r\nHost: {addr}\r\n{last}\r\n"
    )
    .unwrap();
    let mut head = String::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        if l == "\r\n" {
            break;
        }
        head.push_str(&l);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    r
}

/// Reads (chunked) lines until an event with `data` holding `want`; returns its id.
/// The read timeout bounds a wait for an event that never comes.
fn until(r: &mut BufReader<TcpStream>, want: &str) -> u64 {
    let mut id = 0;
    loop {
        let mut l = String::new();
        let n = r
            .read_line(&mut l)
            .expect("an event before the read timeout");
        assert!(n > 0, "the stream ended before {want:?}");
        if let Some(v) = l.strip_prefix("id: ") {
            id = v.trim().parse().unwrap();
        }
        if l.starts_with("data: ") && l.contains(want) {
            return id;
        }
    }
}

#[test]
fn frames_stream_as_they_are_ingested_and_resume_after_the_last_id() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![
        claim,
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    ]);
    ack(&c.url, &run, &r.seal(f));
    let mut s = open(&c.url, &run, None);
    assert_eq!(until(&mut s, "\"Claim\""), 1);
    assert_eq!(until(&mut s, "StageStarted"), 2);
    // A line ingested while the stream is open arrives on it.
    let f = r.frames(vec![log(0, "line three")]);
    ack(&c.url, &run, &r.seal(f));
    assert_eq!(until(&mut s, "line three"), 3);
    drop(s);
    // Resumed after seq 2: the next event is seq 3, nothing earlier.
    let mut s = open(&c.url, &run, Some(2));
    let mut first = String::new();
    while !first.starts_with("id: ") {
        first.clear();
        s.read_line(&mut first).unwrap();
    }
    assert_eq!(first.trim(), "id: 3");
    // The run's end ends the stream.
    let mut end = full_run(Outcome::Passed);
    end.drain(..1);
    let f = r.frames(end);
    ack(&c.url, &run, &r.seal(f));
    until(&mut s, "RunFinished");
    let mut rest = String::new();
    loop {
        let mut l = String::new();
        if s.read_line(&mut l).unwrap() == 0 || l == "0\r\n" {
            break;
        }
        rest.push_str(&l);
    }
    assert!(!rest.contains("data:"), "{rest}");
    // Bad resume points are refused.
    let addr = c.url.trim_start_matches("http://");
    let mut t = TcpStream::connect(addr).unwrap();
    write!(
        t,
        "GET /v1/runs/{run}/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: x\r\n\r\n"
    )
    .unwrap();
    let mut l = String::new();
    BufReader::new(t).read_line(&mut l).unwrap();
    assert!(l.starts_with("HTTP/1.1 400"), "{l}");
}

#[test]
fn open_streams_are_capped_and_the_rest_of_the_server_answers() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    ack(&c.url, &run, &r.seal(f));
    // 256 live streams (the cap), each holding a worker thread.
    let held: Vec<BufReader<TcpStream>> = (0..256).map(|_| open(&c.url, &run, None)).collect();
    let addr = c.url.trim_start_matches("http://");
    let mut t = TcpStream::connect(addr).unwrap();
    write!(t, "GET /v1/runs/{run}/stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut l = String::new();
    BufReader::new(t).read_line(&mut l).unwrap();
    assert!(l.starts_with("HTTP/1.1 503"), "{l}");
    // The agent's routes still answer.
    let f = r.frames(vec![log(0, "still served")]);
    assert_eq!(ack(&c.url, &run, &r.seal(f)).upto, 2);
    drop(held);
}
