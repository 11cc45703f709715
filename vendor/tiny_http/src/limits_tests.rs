//! Tests of kiln's patches (KILN-PATCHES.md): caps, timeouts, the connection cap,
//! unread bodies, the accept back-off. Real sockets on loopback.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::{ConnectionLimits, Response, Server};

const ANSWER: Duration = Duration::from_secs(10);

/// A server answering every request `200 <path>` without reading its body.
fn serve(limits: ConnectionLimits) -> (Arc<Server>, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = Arc::new(Server::from_listener_with_limits(l, None, limits).unwrap());
    let s = server.clone();
    std::thread::spawn(move || {
        while let Ok(rq) = s.recv() {
            let path = rq.url().to_string();
            let _ = rq.respond(Response::from_string(path));
        }
    });
    (server, addr)
}

fn connect(addr: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(ANSWER)).unwrap();
    BufReader::new(s)
}

/// Reads one response: (status line, body).
fn response(s: &mut BufReader<TcpStream>) -> (String, String) {
    let mut status = String::new();
    s.read_line(&mut status).unwrap();
    let mut len = 0;
    loop {
        let mut h = String::new();
        s.read_line(&mut h).unwrap();
        if h.trim_end().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (
        status.trim_end().to_string(),
        String::from_utf8(body).unwrap(),
    )
}

/// Reads until the server closes the connection (a timeout fails the test).
fn closed(s: &mut BufReader<TcpStream>) {
    let mut rest = Vec::new();
    if let Err(e) = s.read_to_end(&mut rest) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{}", e);
    }
}

#[test]
fn a_long_request_line_is_414_and_closes() {
    let (_srv, addr) = serve(ConnectionLimits::default());
    let mut s = connect(&addr);
    let path = "a".repeat(9 * 1024);
    write!(s.get_mut(), "GET /{} HTTP/1.1\r\n\r\n", path).unwrap();
    assert_eq!(response(&mut s).0, "HTTP/1.1 414 URI Too Long");
    closed(&mut s);
}

#[test]
fn a_header_block_over_the_cap_is_431_and_closes() {
    let (_srv, addr) = serve(ConnectionLimits::default());
    let mut s = connect(&addr);
    let mut head = String::from("GET / HTTP/1.1\r\n");
    for i in 0..1000 {
        head.push_str(&format!("X-Header-{}: some value\r\n", i));
    }
    head.push_str("\r\n");
    s.get_mut().write_all(head.as_bytes()).unwrap();
    assert_eq!(
        response(&mut s).0,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    closed(&mut s);

    // Just under the cap is fine.
    let mut s = connect(&addr);
    let filler = "b".repeat(16 * 1024 - 2 - "X: ".len());
    write!(s.get_mut(), "GET /ok HTTP/1.1\r\nX: {}\r\n\r\n", filler).unwrap();
    assert_eq!(response(&mut s), ("HTTP/1.1 200 OK".into(), "/ok".into()));
}

#[test]
fn connections_over_the_cap_are_refused_and_the_rest_served() {
    let (srv, addr) = serve(ConnectionLimits {
        max_connections: Some(2),
        ..ConnectionLimits::default()
    });
    let mut open: Vec<_> = (0..2)
        .map(|_| {
            let mut s = connect(&addr);
            write!(s.get_mut(), "GET /a HTTP/1.1\r\n\r\n").unwrap();
            assert_eq!(response(&mut s).0, "HTTP/1.1 200 OK");
            s
        })
        .collect();
    assert_eq!(srv.num_connections(), 2);

    let mut third = connect(&addr);
    let mut got = String::new();
    // 503 and closed, or closed before the answer could be read
    let _ = third.read_to_string(&mut got);
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 503"),
        "over the cap: {}",
        got
    );

    for s in &mut open {
        write!(s.get_mut(), "GET /b HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(response(s).1, "/b");
    }
}

#[test]
fn an_idle_connection_is_closed() {
    let (_srv, addr) = serve(ConnectionLimits {
        idle_timeout: Some(Duration::from_millis(200)),
        ..ConnectionLimits::default()
    });
    let mut s = connect(&addr);
    write!(s.get_mut(), "GET /a HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(response(&mut s).1, "/a");
    closed(&mut s);
}

#[test]
fn a_header_sent_too_slowly_is_408() {
    let (_srv, addr) = serve(ConnectionLimits {
        header_timeout: Some(Duration::from_millis(300)),
        read_timeout: Some(Duration::from_millis(100)),
        ..ConnectionLimits::default()
    });
    let mut s = connect(&addr);
    // A byte every 50 ms: no single read times out, the header as a whole does.
    for b in b"GET /slow HTTP/1.1\r\nX-Slow: 0123456789" {
        if s.get_mut().write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(response(&mut s).0, "HTTP/1.1 408 Request Timeout");
}

#[test]
fn a_small_body_sent_too_slowly_is_408() {
    let (_srv, addr) = serve(ConnectionLimits {
        header_timeout: Some(Duration::from_millis(300)),
        read_timeout: Some(Duration::from_millis(100)),
        ..ConnectionLimits::default()
    });
    let mut s = connect(&addr);
    // Bodies up to 1 KiB are read before the request is handed on: under the same
    // deadline as the header.
    write!(s.get_mut(), "POST /slow HTTP/1.1\r\nContent-Length: 100\r\n\r\n").unwrap();
    for _ in 0..20 {
        if s.get_mut().write_all(b"x").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(response(&mut s).0, "HTTP/1.1 408 Request Timeout");
}

#[test]
fn an_unread_body_is_skipped_or_ends_the_connection_never_blocks_the_handler() {
    let (srv, addr) = serve(ConnectionLimits::default());
    // A small unread body is skipped: the next request on the connection is intact.
    let mut s = connect(&addr);
    write!(
        s.get_mut(),
        "POST /first HTTP/1.1\r\nContent-Length: 2000\r\n\r\n{}GET /second HTTP/1.1\r\n\r\n",
        "x".repeat(2000)
    )
    .unwrap();
    assert_eq!(response(&mut s).1, "/first");
    assert_eq!(response(&mut s).1, "/second");

    // A terabyte announced and never sent: answered at once (the handler is not held
    // draining it), with `Connection: close`, and the server serves others.
    let mut s = connect(&addr);
    write!(
        s.get_mut(),
        "POST /big HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    loop {
        let mut l = String::new();
        s.read_line(&mut l).unwrap();
        if l.trim_end().is_empty() {
            break;
        }
        head.push_str(&l);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{}", head);
    assert!(head.contains("Connection: close"), "{}", head);
    let mut other = connect(&addr);
    write!(other.get_mut(), "GET /other HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(response(&mut other).1, "/other");
    drop(srv);
}

#[test]
fn a_client_that_stops_reading_does_not_hold_the_handler() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let limits = ConnectionLimits {
        write_timeout: Some(Duration::from_millis(200)),
        ..ConnectionLimits::default()
    };
    let server = Server::from_listener_with_limits(l, None, limits).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(rq) = server.recv() {
            let r = rq.respond(Response::from_data(vec![0u8; 64 << 20]));
            done.send(r.is_err()).unwrap();
        }
    });
    let mut s = connect(&addr);
    write!(s.get_mut(), "GET /big HTTP/1.1\r\n\r\n").unwrap();
    // Never read: the response write stalls, times out, and the handler is free.
    assert_eq!(finished.recv_timeout(ANSWER), Ok(true));
}

#[test]
fn accept_back_off_doubles_from_5_ms_to_1_s() {
    let mut d = Duration::ZERO;
    let mut seen = Vec::new();
    for _ in 0..10 {
        d = crate::accept_backoff(d);
        seen.push(d.as_millis());
    }
    assert_eq!(seen, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
}

#[test]
fn an_accepted_tcp_connection_can_turn_nagle_off() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let listener = crate::connection::Listener::from(l);
    let _client = TcpStream::connect(addr).unwrap();
    let (conn, _) = listener.accept().unwrap();
    conn.set_nodelay().unwrap();
    match conn {
        crate::connection::Connection::Tcp(s) => assert!(s.nodelay().unwrap()),
        #[cfg(unix)]
        _ => panic!("a TCP listener gave another kind of connection"),
    }
}

/// A body that yields `first`, then waits for the test's go before ending.
struct Gated {
    first: Option<Vec<u8>>,
    go: std::sync::mpsc::Receiver<()>,
}

impl std::io::Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(f) = self.first.take() {
            buf[..f.len()].copy_from_slice(&f);
            return Ok(f.len());
        }
        let _ = self.go.recv_timeout(ANSWER);
        Ok(0)
    }
}

#[test]
fn a_streamed_body_goes_out_as_it_is_produced() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = Server::from_listener_with_limits(l, None, ConnectionLimits::default()).unwrap();
    let (go_tx, go) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok(rq) = server.recv() {
            let body = Gated {
                first: Some(b"event: one\n\n".to_vec()),
                go,
            };
            let _ = rq.respond(Response::new(crate::StatusCode(200), vec![], body, None, None));
        }
    });
    let mut s = connect(&addr);
    write!(s.get_mut(), "GET /stream HTTP/1.1\r\n\r\n").unwrap();
    // Headers, then the first chunk, while the body has not ended: the reader only
    // ends after this test saw its first event (a buffered chunk never arrives, and
    // the read below times out).
    let mut seen = String::new();
    while !seen.contains("event: one") {
        let mut l = String::new();
        assert!(s.read_line(&mut l).unwrap() > 0, "connection closed: {seen}");
        seen.push_str(&l);
    }
    assert!(seen.contains("Transfer-Encoding: chunked"), "{seen}");
    go_tx.send(()).unwrap();
}

#[test]
fn a_handler_answers_each_request_on_its_connections_thread() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let handler: crate::Handler = Arc::new(move |rq: crate::Request| {
        log.lock()
            .unwrap()
            .push((rq.url().to_string(), std::thread::current().id()));
        let body = rq.url().to_string();
        let _ = rq.respond(Response::from_string(body));
    });
    let server =
        Server::from_listener_with_handler(l, None, ConnectionLimits::default(), handler)
            .unwrap();
    // Two requests on one kept-alive connection, one on another: all answered, in
    // order, each connection's on one thread, the two connections on two.
    let mut a = connect(&addr);
    for p in ["/a1", "/a2"] {
        write!(a.get_mut(), "GET {p} HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(response(&mut a).1, p);
    }
    let mut b = connect(&addr);
    write!(b.get_mut(), "GET /b1 HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(response(&mut b).1, "/b1");
    let seen = seen.lock().unwrap().clone();
    let urls: Vec<&str> = seen.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(urls, ["/a1", "/a2", "/b1"]);
    assert_eq!(seen[0].1, seen[1].1);
    assert_ne!(seen[0].1, seen[2].1);
    assert_ne!(seen[0].1, std::thread::current().id());
    // Nothing is queued for recv(): it waits until unblocked.
    assert!(matches!(server.try_recv(), Ok(None)));
    server.unblock();
    assert!(server.recv().is_err());
}
