//! Secrets a plan names: offline from `--secret NAME=FILE`, online from the
//! coordinator by a request signed with the claim key (after the claim is acked).
use kiln_protocol::{Plan, RunId, SecretKey, SecretsRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::client::{Backoff, Client, Fail};

/// Every secret name the plan's stages ask for, sorted, once each.
pub fn named(plan: &Plan) -> Vec<String> {
    let set: BTreeSet<&String> = plan.stages.iter().flat_map(|s| &s.secrets).collect();
    set.into_iter().cloned().collect()
}

/// Parses `--secret NAME=FILE` flags and reads the files.
pub fn from_flags(flags: &[String]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    for f in flags {
        let (name, path) = f
            .split_once('=')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            .ok_or_else(|| format!("--secret {f:?}: expected NAME=FILE"))?;
        let value = kiln_protocol::io::read_file_capped(
            std::path::Path::new(path),
            kiln_protocol::MAX_SECRET_BYTES as u64,
            "a secret",
        )
        .map_err(|e| format!("--secret {name}: {e}"))?;
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

/// Asks the coordinator for `names`; retries transient failures for up to `limit`.
/// A refusal is an error with the coordinator's reason.
pub fn fetch(
    client: &Client,
    run: RunId,
    key: &SecretKey,
    names: Vec<String>,
    limit: Duration,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let deadline = Instant::now() + limit;
    let mut backoff = Backoff::default();
    loop {
        // The coordinator's clock as its Date headers showed it: a skewed host is
        // not refused for being outside the 5-minute window.
        let at_ms = client.now_ms();
        let sealed = SecretsRequest {
            run,
            names: names.clone(),
            at_ms,
        }
        .seal(key);
        match client.post_secrets(&run, &sealed) {
            Ok(pairs) => return Ok(pairs.into_iter().collect()),
            Err(Fail::Refused(refused)) => return Err(format!("secrets refused: {refused}")),
            Err(Fail::Transient(why)) if Instant::now() < deadline => {
                log::warn!("fetching secrets: {why} (retrying)");
                std::thread::sleep(backoff.next_delay());
            }
            Err(Fail::Transient(why)) => return Err(format!("fetching secrets: {why}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_need_name_and_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tok");
        std::fs::write(&p, b"s3cret").unwrap();
        let ok = from_flags(&[format!("token={}", p.display())]).unwrap();
        assert_eq!(ok["token"], b"s3cret");
        assert!(from_flags(&["token".into()]).is_err());
        assert!(from_flags(&["=x".into()]).is_err());
        assert!(from_flags(&["t=/nonexistent/file".into()]).is_err());
    }

    /// A host whose clock is an hour behind: once a reply's `Date` showed it, the
    /// secrets request is stamped with the coordinator's time, not the local one (the
    /// coordinator refuses requests more than 5 minutes off its clock).
    #[test]
    fn the_secrets_request_is_stamped_by_the_coordinators_date() {
        use std::io::{Read, Write};
        let key = SecretKey::from_seed([9; 32]);
        let run = RunId([5; 16]);
        let hour_ahead = std::time::SystemTime::now() + Duration::from_secs(3600);
        let date = httpdate::fmt_http_date(hour_ahead);
        let busy = format!(
            "HTTP/1.1 503 Busy\r\nDate: {date}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let public = key.public();
        let secrets = move |head: &str, s: &mut std::net::TcpStream| {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap();
            let mut body = vec![0; len];
            s.read_exact(&mut body).unwrap();
            let req = SecretsRequest::open(&body, &public).unwrap();
            tx.send(req.at_ms).unwrap();
            let reply = postcard::to_allocvec(&vec![("tok".to_string(), b"v".to_vec())]).unwrap();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                reply.len()
            );
            let _ = s.write_all(&reply);
        };
        let (url, _) = crate::test_http::serve(vec![
            Box::new(move |_: &str, s: &mut std::net::TcpStream| {
                let _ = s.write_all(busy.as_bytes());
            }),
            Box::new(secrets),
        ]);
        let client = Client::new(&url);
        let check = crate::client::AckCheck {
            run,
            coordinator: key.public(),
            claim: key.public(),
            sent: 1,
        };
        let posted = client.post_batch(b"batch", &check);
        assert!(
            matches!(posted, crate::client::Posted::Retry(_)),
            "{posted:?}"
        );
        let got = fetch(&client, run, &key, vec!["tok".into()], Duration::ZERO).unwrap();
        assert_eq!(got["tok"], b"v");
        let at_ms = rx.recv().unwrap();
        let want = hour_ahead
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            at_ms.abs_diff(want) < 60_000,
            "stamped {at_ms}, the coordinator's clock is {want}"
        );
    }
}
