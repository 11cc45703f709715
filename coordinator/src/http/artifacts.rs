//! `PUT /v1/runs/{run}/artifacts/{sha}`: agent uploads into the CAS, per run capped.
//!
//! The agent uploads a file *before* it reports the `Artifact` frame naming it, so an
//! upload cannot be matched to a stored frame. What bounds an upload instead: the run
//! must be claimed and not finished, the request must say its length and be signed by
//! the run's claim key (`Kiln-Upload-Auth`, within 5 minutes of our clock), one upload
//! is at most the artifact cap, and all uploads of one run together at most the run
//! quota (counted in `runs/<run>/uploads`, plus uploads in flight). All of it is
//! checked before a body byte is read or any quota is reserved.
use kiln_protocol::{RunId, Sha256, UPLOAD_AUTH_HEADER, UploadAuth};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Mutex, PoisonError};
use tiny_http::Request;

use super::{Ctx, Reply, text};
use crate::ingest::Refusal;
use crate::store::{RunDir, files};

/// Default cap on all uploads of one run (`KILN_RUN_ARTIFACT_QUOTA` overrides).
pub const DEFAULT_RUN_QUOTA: u64 = 4 << 30;

/// Bytes of uploads in flight, per run.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<RunId, u64>>);

/// A reservation of quota for one upload; given back when dropped.
struct Reserved<'a> {
    flight: &'a InFlight,
    run: RunId,
    bytes: u64,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut m = self.flight.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.run) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                m.remove(&self.run);
            }
        }
    }
}

/// Bytes a run's stored uploads take (the sizes in `runs/<run>/uploads`).
fn stored_bytes(rd: &RunDir) -> u64 {
    std::fs::read_to_string(rd.path(files::UPLOADS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .fold(0, u64::saturating_add)
}

/// Counts bytes through and stops past the cap, remembering why a read failed.
struct Capped<'a> {
    inner: &'a mut dyn Read,
    left: u64,
    over: bool,
    failed: bool,
}

impl Read for Capped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| self.failed = true)?;
        if n as u64 > self.left {
            self.over = true;
            return Err(io::Error::other("upload exceeds the cap"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The upload's `Kiln-Upload-Auth` header: signed by the run's claim key over this
/// run, digest and length, at most 5 minutes off our clock; 403 otherwise.
fn check_auth(
    rq: &Request,
    run: &RunId,
    sha: &Sha256,
    len: u64,
    claim: &kiln_protocol::PublicKey,
) -> Result<(), Refusal> {
    let Some(value) = super::header(rq, UPLOAD_AUTH_HEADER) else {
        return Err(Refusal::new(
            403,
            format!("an upload needs a {UPLOAD_AUTH_HEADER} header signed by the run's claim key"),
        ));
    };
    let auth = UploadAuth::verify(&value, *run, *sha, len, claim).map_err(|e| match e {
        kiln_protocol::Error::BadSignature => Refusal::new(
            403,
            "upload signature does not verify against the run's claim key",
        ),
        e => Refusal::new(403, format!("{UPLOAD_AUTH_HEADER}: {e}")),
    })?;
    if !auth.fresh(crate::fsutil::now_ms()) {
        return Err(Refusal::new(
            403,
            "upload signed more than 5 minutes off the coordinator's clock",
        ));
    }
    Ok(())
}

/// `PUT /v1/runs/{run}/artifacts/{sha}`: stores the body in the CAS if it hashes to
/// `sha`. Every check that needs no body comes before the body is read.
pub fn put(ctx: &Ctx, rq: &mut Request, run: &RunId, sha: &Sha256) -> Reply {
    let view = ctx.ingest.view(run)?;
    let Some(claim) = view.claim else {
        return Err(Refusal::new(409, format!("run {run} is not claimed")));
    };
    if view.finished {
        return Err(Refusal::new(
            409,
            format!("run {run} has finished: it takes no more uploads"),
        ));
    }
    let Some(len) = rq.body_length().map(|n| n as u64) else {
        return Err(Refusal::new(411, "an upload needs a Content-Length"));
    };
    let cap = ctx.artifact_cap;
    if len > cap {
        return Err(Refusal::new(
            413,
            format!("artifact exceeds the {cap}-byte cap"),
        ));
    }
    check_auth(rq, run, sha, len, &claim)?;
    let cas = ctx.state.cas();
    if cas.has(sha) {
        return Ok(text(200, format!("{sha} already stored\n"), "text/plain"));
    }
    let rd = RunDir::new(&ctx.state, *run);
    let _reserved = {
        let mut m = ctx.uploads.0.lock().unwrap_or_else(PoisonError::into_inner);
        let flying = m.get(run).copied().unwrap_or(0);
        let used = stored_bytes(&rd).saturating_add(flying);
        let quota = ctx.run_quota;
        if used.saturating_add(len) > quota {
            return Err(Refusal::new(
                413,
                format!(
                    "run {run} has used {used} of its {quota}-byte upload quota; {len} more do not fit"
                ),
            ));
        }
        *m.entry(*run).or_default() += len;
        Reserved {
            flight: &ctx.uploads,
            run: *run,
            bytes: len,
        }
    };
    let mut body = super::timed(rq.as_reader(), len);
    let mut capped = Capped {
        inner: &mut body,
        left: len,
        over: false,
        failed: false,
    };
    let stored = match cas.put_stream(&mut capped, len, Some(sha)) {
        Ok((_, size)) => size,
        Err(_) if capped.over => {
            return Err(Refusal::new(
                413,
                "upload is longer than its Content-Length",
            ));
        }
        Err(e) if capped.failed => {
            return Err(Refusal::new(400, format!("reading the upload: {e}")));
        }
        Err(e) if e.chain().any(|c| c.downcast_ref::<io::Error>().is_some()) => {
            // A full disk (507) or a broken state folder (500): the agent retries.
            return Err(Refusal::new(
                crate::ingest::storage_status(&e),
                format!("storing the upload: {e:#}"),
            ));
        }
        Err(e) => return Err(Refusal::new(422, format!("{e}"))),
    };
    let ledger = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(rd.path(files::UPLOADS))
        .and_then(|mut f| writeln!(f, "{sha} {stored}"));
    if let Err(e) = ledger {
        log::error!("run {run}: recording upload {sha}: {e}");
    }
    Ok(text(
        201,
        format!("stored {sha} ({stored} bytes)\n"),
        "text/plain",
    ))
}
