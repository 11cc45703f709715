//! Artifact uploads that resume: a connection cut part-way leaves the coordinator a
//! staged part; the agent asks how much it holds and sends only the rest; the part
//! counts against the run's quota once and goes when the run finishes or at a restart.
use kiln_agent::client::Client;
use kiln_protocol::{Event, Outcome, Sha256};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::common::{Coordinator, wait_until};

fn claimed(url: &str, run: &RunId) -> Reporter {
    let mut r = Reporter::new(*run);
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    ack(url, run, &r.seal(f));
    r
}

/// A TCP proxy on loopback to `to` that counts the bytes clients send through it and
/// cuts the connection (both ways) once, when `cut_at` bytes have gone up in all.
struct Proxy {
    url: String,
    up: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
}

fn proxy(to: &str, cut_at: u64) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let to = to.trim_start_matches("http://").to_string();
    let up = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let (u, c) = (up.clone(), cut.clone());
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(&to).unwrap();
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_in, mut c_out) = (server, client);
            let (u, cut) = (u.clone(), c.clone());
            // Client to server, counted; the cut happens here.
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match c_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let before = u.load(Ordering::SeqCst);
                    let mut take = n as u64;
                    let cutting = !cut.load(Ordering::SeqCst) && before + take >= cut_at;
                    if cutting {
                        take = cut_at - before;
                    }
                    if s_out.write_all(&buf[..take as usize]).is_err() {
                        break;
                    }
                    u.fetch_add(take, Ordering::SeqCst);
                    if cutting {
                        cut.store(true, Ordering::SeqCst);
                        break;
                    }
                }
                let _ = s_out.shutdown(Shutdown::Both);
                let _ = c_in.shutdown(Shutdown::Both);
            });
            // Server to client.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(Shutdown::Both);
            });
        }
    });
    Proxy { url, up, cut }
}

fn parts(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("cas"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".up-"))
        .collect()
}

fn ledger(state: &Path, run: &RunId) -> String {
    std::fs::read_to_string(state.join("runs").join(run.to_string()).join("uploads"))
        .unwrap_or_default()
}

#[test]
fn an_upload_cut_part_way_resumes_and_sends_no_byte_twice() {
    let (d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let r = claimed(&c.url, &run);
    // 4 MiB that hash to something: a cut after 1 MiB.
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let len = data.len() as u64;
    let sha = Sha256::of(&data);
    let file = d.path().join("big.bin");
    std::fs::write(&file, &data).unwrap();
    let p = proxy(&c.url, 1 << 20);

    let client = Client::new(&p.url);
    let got = kiln_agent::transfer::upload_artifact(
        &client,
        &run,
        &r.key,
        std::fs::File::open(&file).unwrap(),
    )
    .unwrap();
    assert_eq!(got, (sha, len));
    assert!(
        p.cut.load(Ordering::SeqCst),
        "the proxy never cut the upload"
    );
    let stored = std::fs::read(state.join("cas").join(sha.to_string())).unwrap();
    assert!(stored == data, "the stored object differs from the file");
    assert_eq!(
        parts(&state),
        Vec::<String>::new(),
        "a part outlived its upload"
    );
    assert_eq!(
        ledger(&state, &run),
        format!("{sha} {len}\n"),
        "counted once"
    );
    // The body once, plus the heads of a few requests: nothing before the cut again.
    let up = p.up.load(Ordering::SeqCst);
    assert!(up >= len, "{up} bytes went up for a {len}-byte file");
    assert!(
        up < len + 16 * 1024,
        "{up} bytes went up for a {len}-byte file: bytes before the cut were sent again"
    );
}

/// Sends a PUT of `body` (all of it, or from `from` with a Content-Range) whose
/// connection drops after `send` body bytes.
fn cut_put(url: &str, r: &Reporter, body: &[u8], from: usize, send: usize) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let sha = Sha256::of(body);
    let total = body.len();
    let range = if from > 0 {
        format!("Content-Range: bytes {from}-{}/{total}\r\n", total - 1)
    } else {
        String::new()
    };
    write!(
        s,
        "PUT /v1/runs/{}/artifacts/{sha} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{range}Kiln-Upload-Auth: {}\r\n\r\n",
        r.run,
        total - from,
        upload_auth(&r.key, &r.run, body, now_ms())
    )
    .unwrap();
    s.write_all(&body[from..from + send]).unwrap();
    s.shutdown(Shutdown::Both).unwrap();
}

/// HEAD on the upload URL: the status and `Kiln-Upload-Offset`.
fn offset(url: &str, r: &Reporter, body: &[u8]) -> (u16, Option<String>) {
    let sha = Sha256::of(body);
    let a = call(
        ureq::head(&format!("{url}/v1/runs/{}/artifacts/{sha}", r.run))
            .set("Kiln-Upload-Length", &body.len().to_string())
            .set(
                "Kiln-Upload-Auth",
                &upload_auth(&r.key, &r.run, body, now_ms()),
            ),
        None,
    );
    (a.status, a.header("Kiln-Upload-Offset").map(str::to_string))
}

fn part_len(state: &Path, r: &Reporter, body: &[u8]) -> u64 {
    let p = state
        .join("cas")
        .join(format!(".up-{}-{}", r.run, Sha256::of(body)));
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn put_range(url: &str, r: &Reporter, body: &[u8], from: usize) -> Answer {
    let sha = Sha256::of(body);
    let mut rq = ureq::put(&format!("{url}/v1/runs/{}/artifacts/{sha}", r.run)).set(
        "Kiln-Upload-Auth",
        &upload_auth(&r.key, &r.run, body, now_ms()),
    );
    if from > 0 {
        rq = rq.set(
            "Content-Range",
            &format!("bytes {from}-{}/{}", body.len() - 1, body.len()),
        );
    }
    call(rq, Some(&body[from..]))
}

#[test]
fn a_staged_part_counts_once_against_the_quota_and_goes_with_its_run() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start_with(&state, &["--upload-quota", "40000"]);
    let r = claimed(&c.url, &run);
    // Bodies over 1 KiB: tiny_http reads smaller ones whole before a handler sees them.
    let x = &[b'x'; 30_000][..];
    let wait_part = |n: u64| {
        wait_until(
            Duration::from_secs(20),
            "the part to hold its bytes",
            || part_len(&state, &r, x) == n && offset(&c.url, &r, x).0 == 204,
        )
    };
    // Cut twice: the part keeps what arrived, and says so.
    cut_put(&c.url, &r, x, 0, 10_000);
    wait_part(10_000);
    assert_eq!(offset(&c.url, &r, x), (204, Some("10000".into())));
    cut_put(&c.url, &r, x, 10_000, 5_000);
    wait_part(15_000);
    assert_eq!(offset(&c.url, &r, x), (204, Some("15000".into())));
    // Resuming past what it holds is refused with the offset to go on from.
    let a = put_range(&c.url, &r, x, 20_000);
    assert_eq!(
        (a.status, a.header("Kiln-Upload-Offset")),
        (416, Some("15000")),
        "{}",
        a.text()
    );
    // The staged part counts its 30 000 bytes once, however often it was resumed.
    let y = &[b'y'; 10_000][..];
    let a = put_range(&c.url, &r, y, 0);
    assert_eq!(a.status, 201, "{}", a.text());
    let z = &[b'z'; 2_000][..];
    let a = put_range(&c.url, &r, z, 0);
    assert_eq!(
        a.status,
        413,
        "the staged part was not counted: {}",
        a.text()
    );
    assert_eq!(offset(&c.url, &r, z).0, 413);
    // The rest completes it, checked whole.
    let a = put_range(&c.url, &r, x, 15_000);
    assert_eq!(a.status, 201, "{}", a.text());
    assert!(state.join("cas").join(Sha256::of(x).to_string()).is_file());
    assert_eq!(parts(&state), Vec::<String>::new());
    assert_eq!(offset(&c.url, &r, x).0, 200, "stored");
    assert_eq!(ledger(&state, &run).lines().count(), 2);

    // A part whose bytes do not hash to its name is dropped, not stored.
    let other = issue(&state);
    let mut r2 = claimed(&c.url, &other);
    let v = &[b'v'; 20_000][..];
    cut_put(&c.url, &r2, v, 0, 8_000);
    wait_until(Duration::from_secs(20), "a part", || {
        part_len(&state, &r2, v) == 8_000
    });
    let mut bad = v.to_vec();
    bad[12_000] = b'!';
    let sha = Sha256::of(v);
    let a = call(
        ureq::put(&format!("{}/v1/runs/{other}/artifacts/{sha}", c.url))
            .set(
                "Kiln-Upload-Auth",
                &upload_auth(&r2.key, &other, v, now_ms()),
            )
            .set("Content-Range", "bytes 8000-19999/20000"),
        Some(&bad[8_000..]),
    );
    assert_eq!(a.status, 422, "{}", a.text());
    assert_eq!(parts(&state), Vec::<String>::new());
    assert!(!state.join("cas").join(sha.to_string()).exists());

    // A finished run's part goes.
    cut_put(&c.url, &r2, v, 0, 8_000);
    wait_until(Duration::from_secs(20), "a part", || {
        part_len(&state, &r2, v) == 8_000
    });
    let f = r2.frames(vec![Event::RunFinished {
        outcome: Outcome::Passed,
    }]);
    ack(&c.url, &other, &r2.seal(f));
    assert_eq!(put_range(&c.url, &r2, v, 8_000).status, 409);
    assert_eq!(
        parts(&state),
        Vec::<String>::new(),
        "a finished run's part stayed"
    );

    // A part nobody wrote for a minute goes at a restart.
    let third = issue(&state);
    let r3 = claimed(&c.url, &third);
    cut_put(&c.url, &r3, v, 0, 8_000);
    wait_until(Duration::from_secs(20), "a part", || {
        part_len(&state, &r3, v) == 8_000
    });
    let part = state.join("cas").join(format!(".up-{third}-{sha}"));
    std::fs::File::options()
        .write(true)
        .open(&part)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(c);
    let _c = Coordinator::start_with(&state, &["--upload-quota", "40000"]);
    assert!(!part.exists(), "a stale part survived a restart");
}
