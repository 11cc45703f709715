//! Tickets, artifacts, the CAS, secrets and the HTML pages over HTTP.
use kiln_protocol::{Event, Outcome, SecretsRequest, Sha256};
use std::io::{Read, Write};

use super::*;
use crate::common::Coordinator;

fn claimed(url: &str, run: &RunId) -> Reporter {
    let mut r = Reporter::new(*run);
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    ack(url, run, &r.seal(f));
    r
}

#[test]
fn tickets_written_while_serving_are_served() {
    let (_d, state) = keyed_state();
    let c = Coordinator::start(&state);
    assert_eq!(get(&c.url, &format!("/v1/hosts/{MAC}/ticket")).status, 404);
    // Issued after the server started: served without a restart.
    let older = new_run_id();
    let st_old = write_ticket(
        &state,
        &ticket(older, "p", vec![stage("a", &[])], now_s() - 10),
    );
    let newer = new_run_id();
    write_ticket(&state, &ticket(newer, "p", vec![stage("a", &[])], now_s()));
    let a = get(&c.url, &format!("/v1/runs/{older}/ticket"));
    assert_eq!(a.status, 200);
    assert_eq!(a.body, st_old.to_file());
    // The host's oldest pending ticket, then the next once that one is claimed.
    let a = get(&c.url, &format!("/v1/hosts/{MAC}/ticket"));
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("Kiln-Run"), Some(older.to_string().as_str()));
    assert_eq!(a.body, st_old.to_file());
    claimed(&c.url, &older);
    let a = get(&c.url, "/v1/hosts/52-54-00-12-34-56/ticket");
    assert_eq!(a.header("Kiln-Run"), Some(newer.to_string().as_str()));
    assert_eq!(
        get(&c.url, "/v1/hosts/52:54:00:00:00:01/ticket").status,
        404
    );
    assert_eq!(get(&c.url, "/v1/hosts/not-a-mac/ticket").status, 400);
    assert_eq!(
        get(&c.url, &format!("/v1/runs/{}/ticket", new_run_id())).status,
        404
    );
    assert_eq!(get(&c.url, "/v1/runs/abc/ticket").status, 400);
}

#[test]
fn artifacts_are_hash_checked_and_served_with_ranges() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let c = Coordinator::start(&state);
    let data = b"0123456789abcdef".to_vec();
    let sha = Sha256::of(&data);
    let mut r = Reporter::new(run);
    let key = r.key.clone();
    let put = |sha: &Sha256, body: &[u8]| {
        let auth = kiln_protocol::UploadAuth {
            run,
            sha256: *sha,
            len: body.len() as u64,
            at_ms: now_ms(),
        }
        .header(&key);
        call(
            ureq::put(&format!("{}/v1/runs/{run}/artifacts/{sha}", c.url))
                .set("Kiln-Upload-Auth", &auth),
            Some(body),
        )
    };
    assert_eq!(
        put(&sha, &data).status,
        409,
        "unclaimed runs take no uploads"
    );
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    ack(&c.url, &run, &r.seal(f));
    let a = put(&sha, b"other bytes");
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(a.text().contains("hashes to"), "{}", a.text());
    let cas = state.join("cas");
    let stored = |p: &std::path::Path| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    assert_eq!(stored(&cas), 0, "nothing stored on a hash mismatch");
    assert_eq!(put(&sha, &data).status, 201);
    assert_eq!(put(&sha, &data).status, 200, "a second upload is a no-op");
    assert_eq!(
        call(
            ureq::put(&format!("{}/v1/runs/{run}/artifacts/not-hex", c.url)),
            Some(&data)
        )
        .status,
        400
    );

    // Over the cap by Content-Length: refused before any byte is read.
    let addr = c.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let big = Sha256::of(b"big");
    write!(
        s,
        "PUT /v1/runs/{run}/artifacts/{big} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 4294967296\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    drop(s);

    let a = get(&c.url, &format!("/cas/{sha}"));
    assert_eq!((a.status, a.body.clone()), (200, data.clone()));
    let etag = a.header("ETag").unwrap().to_string();
    assert_eq!(etag, format!("\"{sha}\""));
    let ranged = |r: &str| {
        call(
            ureq::get(&format!("{}/cas/{sha}", c.url)).set("Range", r),
            None,
        )
    };
    let a = ranged("bytes=2-5");
    assert_eq!((a.status, a.body.as_slice()), (206, &b"2345"[..]));
    assert_eq!(a.header("Content-Range"), Some("bytes 2-5/16"));
    assert_eq!(ranged("bytes=12-").body, b"cdef");
    assert_eq!(ranged("bytes=-3").body, b"def");
    let a = ranged("bytes=16-");
    assert_eq!(a.status, 416);
    assert_eq!(a.header("Content-Range"), Some("bytes */16"));
    let a = call(
        ureq::get(&format!("{}/cas/{sha}", c.url)).set("If-None-Match", &etag),
        None,
    );
    assert_eq!(a.status, 304);
    assert_eq!(
        get(&c.url, &format!("/cas/{}", Sha256::of(b"nope"))).status,
        404
    );
    assert_eq!(
        get(&c.url, "/cas/..%2f..%2fkey%2fcoordinator.key").status,
        400
    );
}

#[test]
fn secrets_reach_the_claimed_agent_only() {
    let (_d, state) = keyed_state();
    let run = new_run_id();
    let t = ticket(
        run,
        "p",
        vec![stage("a", &["token"]), stage("b", &[])],
        now_s(),
    );
    write_ticket(&state, &t);
    std::fs::create_dir_all(state.join("secrets")).unwrap();
    std::fs::write(state.join("secrets/token"), b"s3cret").unwrap();
    std::fs::write(state.join("secrets/other"), b"not yours").unwrap();
    let c = Coordinator::start(&state);
    let ask = |key: &kiln_protocol::SecretKey, names: &[&str], at_ms: u64| {
        let req = SecretsRequest {
            run,
            names: names.iter().map(|s| s.to_string()).collect(),
            at_ms,
        };
        call(
            ureq::post(&format!("{}/v1/runs/{run}/secrets", c.url)),
            Some(&req.seal(key)),
        )
    };
    let r = Reporter::new(run);
    assert_eq!(ask(&r.key, &["token"], now_ms()).status, 409, "unclaimed");
    let r = claimed(&c.url, &run);
    let a = ask(&r.key, &["token"], now_ms());
    assert_eq!(a.status, 200, "{}", a.text());
    let got: Vec<(String, Vec<u8>)> = postcard::from_bytes(&a.body).unwrap();
    assert_eq!(got, vec![("token".to_string(), b"s3cret".to_vec())]);
    let a = ask(&r.key, &["other"], now_ms());
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.text().contains("not named"));
    // More than 5 minutes off the coordinator's clock, either way: refused.
    let a = ask(&r.key, &["token"], now_ms() - 6 * 60_000);
    assert_eq!(a.status, 403, "{}", a.text());
    let a = ask(&r.key, &["token"], now_ms() + 6 * 60_000);
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(ask(&r.key, &["token"], now_ms() + 60_000).status, 200);
    let stranger = Reporter::new(run);
    assert_eq!(ask(&stranger.key, &["token"], now_ms()).status, 403);
    let mut r = r;
    let f = r.frames(vec![Event::RunFinished {
        outcome: Outcome::Passed,
    }]);
    ack(&c.url, &run, &r.seal(f));
    assert_eq!(ask(&r.key, &["token"], now_ms()).status, 409, "finished");
}

#[test]
fn html_pages_render_live_and_escape_text() {
    let (_d, state) = keyed_state();
    let run = new_run_id();
    let t = ticket(
        run,
        "<b>plan</b>",
        vec![stage("<script>x</script>", &[])],
        now_s(),
    );
    write_ticket(&state, &t);
    let c = Coordinator::start(&state);
    let mut r = claimed(&c.url, &run);
    let art = b"artifact bytes";
    let f = r.frames(vec![
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        log(0, "<img src=x onerror=alert(1)> & more"),
        Event::Artifact {
            stage: 0,
            name: "out\".txt".into(),
            sha256: Sha256::of(art),
            size: art.len() as u64,
        },
    ]);
    ack(&c.url, &run, &r.seal(f));
    let page = get(&c.url, &format!("/runs/{run}"));
    assert_eq!(page.status, 200);
    assert!(
        page.header("Content-Type")
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text();
    assert!(
        html.contains("http-equiv=\"refresh\""),
        "live pages refresh"
    );
    assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; more"));
    assert!(html.contains("&lt;b&gt;plan&lt;/b&gt;"));
    assert!(!html.contains("<script>") && !html.contains("<img") && !html.contains("<b>"));
    assert!(html.contains("not uploaded"));

    let f = r.frames(vec![
        super::finished(0, Outcome::Failed, "exit 1 <boom>"),
        Event::RunFinished {
            outcome: Outcome::Failed,
        },
    ]);
    ack(&c.url, &run, &r.seal(f));
    let html = get(&c.url, &format!("/runs/{run}")).text();
    assert!(
        !html.contains("http-equiv=\"refresh\""),
        "finished pages stay put"
    );
    assert!(html.contains("exit 1 &lt;boom&gt;"));
    let index = get(&c.url, "/");
    assert_eq!(index.status, 200);
    assert!(index.text().contains(&format!("/runs/{run}")));
    assert!(index.text().contains("failed"));
    assert_eq!(get(&c.url, "/runs/zzzz").status, 400);
    assert_eq!(get(&c.url, &format!("/runs/{}", new_run_id())).status, 404);
    let list: serde_json::Value = serde_json::from_slice(&get(&c.url, "/v1/runs").body).unwrap();
    assert_eq!(list[0]["run"], run.to_string());
    assert_eq!(list[0]["outcome"], "failed");
}
