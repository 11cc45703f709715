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
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
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
}
