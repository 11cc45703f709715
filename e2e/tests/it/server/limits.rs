//! What bounds what one client can make the server store or wait for: the upload
//! quota, closed uploads after the end, cheap refusals before a body is read.
use kiln_protocol::{Event, Outcome, Sha256};
use std::io::{Read, Write};
use std::time::Duration;

use super::*;
use crate::common::Coordinator;

fn claimed(url: &str, run: &RunId) -> Reporter {
    let mut r = Reporter::new(*run);
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    ack(url, run, &r.seal(f));
    r
}

/// Uploads `body` as an artifact of the reporter's run, signed by its claim key.
fn put(url: &str, r: &Reporter, body: &[u8]) -> Answer {
    put_with(
        url,
        &r.run,
        body,
        Some(&upload_auth(&r.key, &r.run, body, now_ms())),
    )
}

/// Uploads `body` with this `Kiln-Upload-Auth` header (or none).
fn put_with(url: &str, run: &RunId, body: &[u8], auth: Option<&str>) -> Answer {
    let sha = Sha256::of(body);
    let mut rq = ureq::put(&format!("{url}/v1/runs/{run}/artifacts/{sha}"));
    if let Some(a) = auth {
        rq = rq.set("Kiln-Upload-Auth", a);
    }
    call(rq, Some(body))
}

fn in_cas(state: &Path, body: &[u8]) -> bool {
    state
        .join("cas")
        .join(Sha256::of(body).to_string())
        .is_file()
}

/// Sends `head` (a request line and headers announcing a body) and no body, then
/// reads the status line: the server must answer without waiting for the body.
fn status_without_body(url: &str, head: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "{head}Host: {addr}\r\n\r\n").unwrap();
    let mut line = [0u8; 12];
    s.read_exact(&mut line)
        .unwrap_or_else(|e| panic!("no answer before the body ({e}): {head}"));
    String::from_utf8_lossy(&line).into_owned()
}

#[test]
fn uploads_are_capped_per_run_and_closed_once_the_run_finished() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start_with(&state, &["--upload-quota", "40"]);
    let r = claimed(&c.url, &run);
    let (a, b, z) = (&[b'a'; 16][..], &[b'b'; 16][..], &[b'z'; 16][..]);
    assert_eq!(put(&c.url, &r, a).status, 201);
    assert_eq!(put(&c.url, &r, b).status, 201);
    let over = put(&c.url, &r, z);
    assert_eq!(over.status, 413, "{}", over.text());
    assert!(over.text().contains("quota"), "{}", over.text());
    assert!(!in_cas(&state, z), "a refused upload was stored");
    assert_eq!(put(&c.url, &r, a).status, 200, "stored already: no cost");

    // A chunked upload does not say its size up front.
    let sha = Sha256::of(z);
    let chunked = status_without_body(
        &c.url,
        &format!("PUT /v1/runs/{run}/artifacts/{sha} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"),
    );
    assert_eq!(chunked, "HTTP/1.1 411");

    // A restart does not reset the quota, and sweeps temp files a killed upload left.
    let cas = state.join("cas");
    let old = cas.join(".in-0000000000000000");
    let fresh = cas.join(".in-1111111111111111");
    std::fs::write(&old, b"half an upload").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    std::fs::write(&fresh, b"someone is writing this").unwrap();
    drop(c);
    let c = Coordinator::start_with(&state, &["--upload-quota", "40"]);
    assert!(
        !old.exists(),
        "a leftover upload temp file survived a restart"
    );
    assert!(fresh.exists(), "a temp file written just now was swept");
    assert_eq!(put(&c.url, &r, z).status, 413, "quota reset by a restart");

    // Another run has its own quota; once it finished it takes no uploads.
    let other = issue(&state);
    let mut r = claimed(&c.url, &other);
    assert_eq!(put(&c.url, &r, z).status, 201);
    let f = r.frames(vec![Event::RunFinished {
        outcome: Outcome::Passed,
    }]);
    ack(&c.url, &other, &r.seal(f));
    let late = &[b'l'; 8][..];
    let a = put(&c.url, &r, late);
    assert_eq!(a.status, 409, "{}", a.text());
    assert!(a.text().contains("finished"), "{}", a.text());
    assert!(!in_cas(&state, late));
}

#[test]
fn refusals_that_need_no_body_come_before_reading_it() {
    let (_d, state) = keyed_state();
    let unclaimed = issue(&state);
    let done = issue(&state);
    let c = Coordinator::start(&state);
    let mut r = claimed(&c.url, &done);
    let f = r.frames(vec![Event::RunFinished {
        outcome: Outcome::Passed,
    }]);
    ack(&c.url, &done, &r.seal(f));
    let claimed_run = issue(&state);
    claimed(&c.url, &claimed_run);
    let nobody = new_run_id();
    let sha = Sha256::of(b"x");
    // Signed by a key that is not the run's claim key.
    let forged = kiln_protocol::UploadAuth {
        run: claimed_run,
        sha256: sha,
        len: 100_000,
        at_ms: now_ms(),
    }
    .header(&SecretKey::from_seed(seed()));
    // Over 1 KiB: tiny_http reads smaller bodies itself before the handler runs.
    let len = "Content-Length: 100000\r\n";
    let cases = [
        (
            format!("POST /v1/runs/{nobody}/events HTTP/1.1\r\n{len}"),
            "404",
        ),
        (
            format!("POST /v1/runs/{nobody}/secrets HTTP/1.1\r\n{len}"),
            "404",
        ),
        (
            format!("POST /v1/runs/{unclaimed}/secrets HTTP/1.1\r\n{len}"),
            "409",
        ),
        (
            format!("POST /v1/runs/{done}/secrets HTTP/1.1\r\n{len}"),
            "409",
        ),
        (
            format!("PUT /v1/runs/{nobody}/artifacts/{sha} HTTP/1.1\r\n{len}"),
            "404",
        ),
        (
            format!("PUT /v1/runs/{unclaimed}/artifacts/{sha} HTTP/1.1\r\n{len}"),
            "409",
        ),
        (
            format!("PUT /v1/runs/{done}/artifacts/{sha} HTTP/1.1\r\n{len}"),
            "409",
        ),
        (
            format!("PUT /v1/runs/{claimed_run}/artifacts/{sha} HTTP/1.1\r\n{len}"),
            "403",
        ),
        (
            format!(
                "PUT /v1/runs/{claimed_run}/artifacts/{sha} HTTP/1.1\r\n{len}Kiln-Upload-Auth: {forged}\r\n"
            ),
            "403",
        ),
    ];
    for (head, want) in &cases {
        let got = status_without_body(&c.url, head);
        assert_eq!(got, format!("HTTP/1.1 {want}"), "{head}");
    }
    // Still serving.
    assert_eq!(get(&c.url, "/v1/runs").status, 200);
}

/// The server's peak resident memory, KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn listings_fold_a_big_events_log_once_and_in_pieces() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    // 32 MiB of log frames, written straight into the run folder.
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let line = "x".repeat(1024);
    let mut events = vec![claim];
    events.extend((0..32 * 1024).map(|_| log(0, &line)));
    let mut bytes = Vec::new();
    for f in r.frames(events) {
        bytes.extend(kiln_protocol::encode_record(
            &postcard::to_allocvec(&f).unwrap(),
        ));
    }
    let log_len = bytes.len() as u64;
    std::fs::write(
        state.join("runs").join(run.to_string()).join("events.log"),
        &bytes,
    )
    .unwrap();
    drop(bytes);
    let c = Coordinator::start(&state);
    let before = peak_rss_kib(c.child.id());
    let url = c.url.clone();
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let path = [
                    "/",
                    "/v1/runs",
                    &format!("/v1/runs/{run}"),
                    &format!("/runs/{run}"),
                ][i % 4]
                    .to_string();
                get(&url, &path)
            })
        })
        .collect();
    for w in workers {
        let a = w.join().unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let show: serde_json::Value =
        serde_json::from_slice(&get(&c.url, &format!("/v1/runs/{run}")).body).unwrap();
    assert_eq!(show["frames"], 32 * 1024 + 1);
    assert_eq!(show["stages"][0]["log_lines"], 32 * 1024);
    let page = get(&c.url, &format!("/runs/{run}")).text();
    assert!(
        page.contains("last 50 of 32768 lines"),
        "the page shows a tail"
    );
    let grown = peak_rss_kib(c.child.id()).saturating_sub(before);
    eprintln!(
        "events.log {log_len} bytes; server peak RSS grew by {grown} KiB over 8 parallel reads"
    );
    // Decoding the whole log per request would take several times its size; the
    // fold cache reads it once, a MiB at a time.
    assert!(
        grown * 1024 < log_len / 2,
        "peak RSS grew by {grown} KiB for a {log_len}-byte events.log"
    );
}

#[test]
fn uploads_not_signed_by_the_claim_key_are_refused_and_cost_no_quota() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start_with(&state, &["--upload-quota", "32"]);
    let r = claimed(&c.url, &run);
    let (a, b) = (&[b'a'; 16][..], &[b'b'; 16][..]);
    let now = now_ms();
    let stranger = SecretKey::from_seed(seed());
    let minutes = |m: u64| m * 60 * 1000;
    let refused = [
        ("unsigned", None),
        ("another key", Some(upload_auth(&stranger, &run, a, now))),
        (
            "stale",
            Some(upload_auth(&r.key, &run, a, now - minutes(6))),
        ),
        (
            "from the future",
            Some(upload_auth(&r.key, &run, a, now + minutes(6))),
        ),
        ("for other bytes", Some(upload_auth(&r.key, &run, b, now))),
        ("garbage", Some("12.not-base64!".to_string())),
        ("no signature", Some(format!("{now}."))),
    ];
    for (what, auth) in &refused {
        // Each tried twice: a refusal that reserved quota would fill the 32 bytes.
        for _ in 0..2 {
            let got = put_with(&c.url, &run, a, auth.as_deref());
            assert_eq!(got.status, 403, "{what}: {}", got.text());
            assert_eq!(got.text().lines().count(), 1, "{what}: {}", got.text());
        }
        assert!(!in_cas(&state, a), "{what}: a refused upload was stored");
    }
    let ledger = state.join("runs").join(run.to_string()).join("uploads");
    assert!(!ledger.exists(), "refused uploads were counted");
    // The whole quota is still there for the claimant.
    assert_eq!(put(&c.url, &r, a).status, 201);
    assert_eq!(put(&c.url, &r, b).status, 201);
    assert_eq!(put(&c.url, &r, b"c").status, 413, "the quota is 32 bytes");
}
