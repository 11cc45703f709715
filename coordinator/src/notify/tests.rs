use super::deliver::{self, signature};
use super::sender::{backoff, deliver_due};
use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

fn state() -> (tempfile::TempDir, State) {
    let d = tempfile::tempdir().expect("tempdir");
    let (s, _) = State::init(&d.path().join("state")).expect("init");
    (d, s)
}

fn receiver(name: &str, via: Via, url: &str, on: &[Kind]) -> Receiver {
    Receiver {
        name: name.into(),
        via,
        url: url.into(),
        secret: None,
        from: None,
        to: Vec::new(),
        on: on.to_vec(),
        ca: None,
    }
}

fn run() -> RunId {
    RunId([7; 16])
}

#[test]
fn the_key_is_per_run_event_and_receiver() {
    let k = key(&run(), Kind::Failed, "ops");
    assert_eq!(k.len(), 32);
    assert_eq!(k, key(&run(), Kind::Failed, "ops"));
    assert_ne!(k, key(&run(), Kind::Passed, "ops"));
    assert_ne!(k, key(&run(), Kind::Failed, "ops2"));
    assert_ne!(k, key(&RunId([8; 16]), Kind::Failed, "ops"));
}

#[test]
fn hmac_matches_rfc_4231() {
    // RFC 4231, test case 2.
    assert_eq!(
        signature(b"Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn on_lists_parse() {
    assert_eq!(
        parse_on("failed, contested").unwrap(),
        [Kind::Failed, Kind::Contested]
    );
    assert_eq!(parse_on("any").unwrap(), Kind::ALL);
    assert!(parse_on("failed,bogus").is_err());
    assert!(parse_on(",").is_err());
}

#[test]
fn urls_and_addresses_are_checked() {
    assert_eq!(
        deliver::http_target("http://127.0.0.1:9/hook").unwrap(),
        "127.0.0.1:9"
    );
    assert_eq!(
        deliver::http_target("http://ntfy.lab/alerts").unwrap(),
        "ntfy.lab:80"
    );
    assert_eq!(
        deliver::http_target("https://ntfy.sh/x").unwrap(),
        "ntfy.sh:443"
    );
    assert!(deliver::http_target("http://").is_err());
    assert!(deliver::http_target("http://a b/").is_err());
    assert!(deliver::http_target("http://u:p@host/").is_err());
    assert_eq!(
        deliver::smtp_target("smtp://mail.lab").unwrap(),
        "mail.lab:25"
    );
    assert_eq!(
        deliver::smtp_target("smtp://127.0.0.1:2525").unwrap(),
        "127.0.0.1:2525"
    );
    assert!(deliver::smtp_target("smtp://h:25/x").is_err());
    assert!(deliver::smtp_target("smtp://h:notaport").is_err());
    assert!(deliver::check_address("ops@lab.example").is_ok());
    for bad in [
        "ops",
        "@lab",
        "a@",
        "a b@c",
        "a@b\r\nRCPT TO:<x@y>",
        "<a@b>",
    ] {
        assert!(deliver::check_address(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        redact("http://hooks.lab:8080/T0KEN/secret?x=1"),
        "http://hooks.lab:8080/…"
    );
    assert_eq!(redact("smtp://mail:25"), "smtp://mail:25");
}

#[test]
fn emit_queues_once_per_wanting_receiver_and_keeps_a_queued_one() {
    let (_d, s) = state();
    assert_eq!(
        emit(&s, &run(), Kind::Failed, "x").unwrap(),
        0,
        "no receivers"
    );
    let rs = Receivers {
        receivers: vec![
            receiver("a", Via::Webhook, "http://127.0.0.1:9/", &[Kind::Failed]),
            receiver("b", Via::Ntfy, "http://127.0.0.1:9/t", &[Kind::Passed]),
            receiver("c", Via::Webhook, "http://127.0.0.1:9/", &Kind::ALL),
        ],
    };
    save_receivers(&s, &rs).unwrap();
    assert_eq!(receivers(&s).unwrap().receivers, rs.receivers);
    assert_eq!(
        emit(&s, &run(), Kind::Failed, "finished failed\nline").unwrap(),
        2
    );
    assert_eq!(emit(&s, &run(), Kind::Failed, "again").unwrap(), 0);
    let q = outbox(&s).unwrap();
    assert_eq!(q.len(), 2);
    let mut names: Vec<_> = q
        .iter()
        .map(|q| {
            let e = q.entry.as_ref().unwrap();
            assert_eq!(e.notification.detail, "finished failed line");
            assert_eq!(
                e.notification.key,
                key(&run(), Kind::Failed, &e.receiver),
                "{e:?}"
            );
            e.receiver.clone()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(drop_for(&s, "a").unwrap(), 1);
    assert_eq!(outbox(&s).unwrap().len(), 1);
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let waits: Vec<u64> = (1..=9).map(backoff).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(backoff(u32::MAX), 60);
}

#[test]
fn a_mail_is_dot_stuffed_with_crlf_lines() {
    let n = Notification {
        key: "k".repeat(32),
        event: Kind::Failed,
        run: run().to_string(),
        host: "node1".into(),
        plan: "night\rly\n.\r\nDATA".into(),
        detail: ".hidden".into(),
        time: 0,
    };
    let m = deliver::message("kiln@lab", &["ops@lab".into()], &n);
    assert!(m.contains("\r\n..hidden\r\n"), "{m}");
    assert!(m.contains(&format!("Message-ID: <{}@kiln>\r\n", n.key)));
    assert!(m.ends_with("\r\n."));
    assert!(
        !m.replace("\r\n", "").contains(['\n', '\r']),
        "bare CR or LF in {m:?}"
    );
    assert!(!m.contains("\r\n.\r\n"), "an early end of DATA in {m:?}");
}

/// An HTTP receiver on loopback answering `status` to each request; hands back the
/// requests (header lines, body).
/// Header lines and body of one request.
type Request = (Vec<String>, Vec<u8>);

fn receiver_once(status: u16) -> (String, std::thread::JoinHandle<Request>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook/T0KEN", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            headers.push(line.trim().to_string());
        }
        let len: usize = headers
            .iter()
            .find_map(|h| {
                h.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let mut s = s;
        write!(
            s,
            "HTTP/1.1 {status} X\r\nContent-Length: 5\r\nConnection: close\r\n\r\nnope\n"
        )
        .unwrap();
        (headers, body)
    });
    (url, h)
}

fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| {
        let (n, v) = h.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

#[test]
fn a_webhook_is_signed_and_removed_once_delivered() {
    let (_d, s) = state();
    s.set_secret("hook", b"s3cret").unwrap();
    let (url, h) = receiver_once(200);
    let mut r = receiver("ops", Via::Webhook, &url, &[Kind::Failed]);
    r.secret = Some("hook".into());
    save_receivers(&s, &Receivers { receivers: vec![r] }).unwrap();
    emit(&s, &run(), Kind::Failed, "finished failed").unwrap();
    let p = deliver_due(&s).unwrap();
    assert_eq!((p.sent, p.failed), (1, 0));
    let (headers, body) = h.join().unwrap();
    assert_eq!(
        header(&headers, "Kiln-Signature"),
        Some(signature(b"s3cret", &body).as_str())
    );
    let n: Notification = serde_json::from_slice(&body).unwrap();
    assert_eq!(header(&headers, "Kiln-Delivery"), Some(n.key.as_str()));
    assert_eq!(header(&headers, "Kiln-Event"), Some("failed"));
    assert_eq!((n.event, n.run), (Kind::Failed, run().to_string()));
    assert!(outbox(&s).unwrap().is_empty());
}

#[test]
fn a_refused_delivery_stays_queued_with_its_error_and_backoff() {
    let (_d, s) = state();
    let (url, h) = receiver_once(503);
    save_receivers(
        &s,
        &Receivers {
            receivers: vec![receiver("ops", Via::Ntfy, &url, &[Kind::Contested])],
        },
    )
    .unwrap();
    emit(&s, &run(), Kind::Contested, "second claimant").unwrap();
    let p = deliver_due(&s).unwrap();
    assert_eq!((p.sent, p.failed), (0, 1));
    let (headers, body) = h.join().unwrap();
    assert_eq!(header(&headers, "Tags"), Some("warning"));
    assert!(
        header(&headers, "Title")
            .unwrap()
            .starts_with("kiln: contested")
    );
    assert!(String::from_utf8(body).unwrap().contains("second claimant"));
    let q = outbox(&s).unwrap();
    let e = q[0].entry.as_ref().unwrap();
    assert_eq!(e.attempts, 1);
    assert!(e.next_at > 0);
    let err = e.last_error.as_deref().unwrap();
    assert!(err.starts_with("HTTP 503"), "{err}");
    assert!(
        !err.contains("T0KEN"),
        "the URL's path is not in the error: {err}"
    );
    // Not due again before its backoff.
    assert_eq!(deliver_due(&s).unwrap().waiting, 1);
}

#[test]
fn a_hostile_smtp_server_gets_a_bounded_read() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // A greeting line that never ends.
        let junk = vec![b'2'; 1 << 20];
        let _ = s.write_all(&junk);
    });
    let mut r = receiver(
        "mail",
        Via::Smtp,
        &format!("smtp://{addr}"),
        &[Kind::Failed],
    );
    r.from = Some("kiln@lab".into());
    r.to = vec!["ops@lab".into()];
    let (_d, s) = state();
    emit_and_send_err(&s, r, "reply line too long");
    t.join().unwrap();
}

fn emit_and_send_err(s: &State, r: Receiver, want: &str) {
    save_receivers(s, &Receivers { receivers: vec![r] }).unwrap();
    emit(s, &run(), Kind::Failed, "x").unwrap();
    assert_eq!(deliver_due(s).unwrap().failed, 1);
    let q = outbox(s).unwrap();
    let err = q[0].entry.as_ref().unwrap().last_error.clone().unwrap();
    assert!(err.contains(want), "{err}");
}

#[test]
fn an_unreadable_outbox_file_is_set_aside() {
    let (_d, s) = state();
    save_receivers(
        &s,
        &Receivers {
            receivers: vec![receiver(
                "a",
                Via::Webhook,
                "http://127.0.0.1:9/",
                &[Kind::Failed],
            )],
        },
    )
    .unwrap();
    std::fs::create_dir_all(outbox_dir(&s)).unwrap();
    std::fs::write(outbox_dir(&s).join("x.json"), vec![b'{'; 100 << 10]).unwrap();
    deliver_due(&s).unwrap();
    assert!(outbox_dir(&s).join("x.bad").exists());
    assert!(outbox(&s).unwrap().is_empty());
}

#[test]
fn a_receiver_that_is_down_costs_one_attempt_per_backoff() {
    let (_d, s) = state();
    // Nothing listens on a port just let go.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    save_receivers(
        &s,
        &Receivers {
            receivers: vec![receiver("down", Via::Webhook, &url, &Kind::ALL)],
        },
    )
    .unwrap();
    for kind in [Kind::Failed, Kind::Passed, Kind::Stale] {
        emit(&s, &run(), kind, "x").unwrap();
    }
    let mut sender = super::sender::Sender::default();
    let p = sender.pass(&s).unwrap();
    assert_eq!((p.sent, p.failed, p.waiting), (0, 1, 2));
    // At once again: the receiver is backing off, nothing is tried.
    let p = sender.pass(&s).unwrap();
    assert_eq!((p.sent, p.failed, p.waiting), (0, 0, 3));
    // The two never tried are still pending, one is failing.
    let attempts: Vec<u32> = outbox(&s)
        .unwrap()
        .iter()
        .map(|q| q.entry.as_ref().unwrap().attempts)
        .collect();
    assert_eq!(attempts.iter().sum::<u32>(), 1, "{attempts:?}");
}
