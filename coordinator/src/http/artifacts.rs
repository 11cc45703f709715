//! `PUT /v1/runs/{run}/artifacts/{sha}`: agent uploads into the CAS, per run capped,
//! resumable after a broken connection.
//!
//! The agent uploads a file *before* it reports the `Artifact` frame naming it, so an
//! upload cannot be matched to a stored frame. What bounds an upload instead: the run
//! must be claimed and not finished, the request must say its length and be signed by
//! the run's claim key (`Kiln-Upload-Auth`, within 5 minutes of our clock), one upload
//! is at most the artifact cap, and all uploads of one run together at most the run
//! quota (counted in `runs/<run>/uploads`, plus the uploads open here). All of it is
//! checked before a body byte is read or any quota is reserved.
//!
//! Resuming: the body is written to a part file `cas/.up-<run>-<sha>` that a broken
//! connection leaves in place. `HEAD` on the upload URL answers how many bytes the part
//! holds (`Kiln-Upload-Offset`); a `PUT` with `Content-Range: bytes N-(T-1)/T` carries
//! the rest from byte `N`. Only a part that holds all `T` bytes and hashes to `sha`
//! enters the CAS. An open upload (a part, or a body in flight) counts against its
//! run's quota once, at its whole length `T`. Parts go when the upload ends in the CAS
//! or is refused, when the run has finished, when nobody wrote them for
//! [`STALE_PART`], and at server start.
use kiln_protocol::{
    RunId, Sha256, UPLOAD_AUTH_HEADER, UPLOAD_LENGTH_HEADER as LENGTH_HEADER,
    UPLOAD_OFFSET_HEADER as OFFSET_HEADER, UploadAuth,
};
use sha2::Digest;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tiny_http::Request;

use super::{Ctx, Reply, hdr, text};
use crate::ingest::Refusal;
use crate::store::{RunDir, files};

/// Default cap on all uploads of one run (`KILN_RUN_ARTIFACT_QUOTA` overrides).
pub const DEFAULT_RUN_QUOTA: u64 = 4 << 30;
/// A part nobody wrote for this long is removed (its upload is given up).
pub const STALE_PART: Duration = Duration::from_secs(6 * 3600);
/// How often a request looks for parts to remove (finished runs, stale parts).
const SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);

/// An upload open here: a part file on disk, and whether a request writes it now.
#[derive(Debug, Clone, Copy)]
struct Open {
    /// The whole object's length (what the quota counts).
    total: u64,
    busy: bool,
}

/// The uploads open on this server, each counted once against its run's quota.
#[derive(Debug, Default)]
pub struct InFlight {
    open: Mutex<HashMap<(RunId, Sha256), Open>>,
    last_sweep: Mutex<Option<Instant>>,
}

/// The part file of an upload.
fn part_path(cas: &Path, run: &RunId, sha: &Sha256) -> PathBuf {
    cas.join(format!(".up-{run}-{sha}"))
}

/// The run and digest a part file's name holds.
fn parse_part(name: &str) -> Option<(RunId, Sha256)> {
    let rest = name.strip_prefix(".up-")?;
    let (run, sha) = rest.split_once('-')?;
    Some((run.parse().ok()?, sha.parse().ok()?))
}

/// A request writing an open upload; the upload is free again when dropped.
struct Busy<'a> {
    flight: &'a InFlight,
    key: (RunId, Sha256),
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.flight.lock().get_mut(&self.key) {
            o.busy = false;
        }
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(RunId, Sha256), Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes the run's open uploads count, leaving out `except`.
    fn open_bytes(m: &HashMap<(RunId, Sha256), Open>, run: &RunId, except: Option<&Sha256>) -> u64 {
        m.iter()
            .filter(|((r, s), _)| r == run && Some(s) != except)
            .map(|(_, o)| o.total)
            .fold(0, u64::saturating_add)
    }

    /// Refuses an upload of `total` bytes that the run's quota cannot take (413),
    /// counting `stored` bytes already in the CAS and every open upload once; and one
    /// that another request writes now (503). With `reserve`, the upload is opened
    /// (counted) and marked busy.
    fn admit(
        &self,
        key: (RunId, Sha256),
        total: u64,
        stored: u64,
        quota: u64,
        reserve: bool,
    ) -> Result<Option<Busy<'_>>, Refusal> {
        let mut m = self.lock();
        let (run, sha) = key;
        if m.get(&key).is_some_and(|o| o.busy) {
            return Err(Refusal::new(
                503,
                format!("an upload of {sha} to run {run} is in progress; try again"),
            ));
        }
        let used = stored.saturating_add(Self::open_bytes(&m, &run, Some(&sha)));
        if used.saturating_add(total) > quota {
            return Err(Refusal::new(
                413,
                format!(
                    "run {run} has used {used} of its {quota}-byte upload quota; {total} more do not fit"
                ),
            ));
        }
        if !reserve {
            return Ok(None);
        }
        m.insert(key, Open { total, busy: true });
        Ok(Some(Busy { flight: self, key }))
    }

    /// Ends an open upload: forgets it and removes its part file.
    fn close(&self, cas: &Path, run: &RunId, sha: &Sha256) {
        let mut m = self.lock();
        m.remove(&(*run, *sha));
        let _ = fs::remove_file(part_path(cas, run, sha));
    }

    /// Removes the parts of finished runs, of runs that are gone, and those nobody
    /// wrote for [`STALE_PART`]; at most every [`SWEEP_EVERY`].
    fn sweep(&self, ctx: &Ctx) {
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let cas = ctx.state.cas();
        let Ok(dir) = fs::read_dir(cas.dir()) else {
            return;
        };
        let stale = SystemTime::now() - STALE_PART;
        for e in dir.flatten() {
            let name = e.file_name();
            let Some((run, sha)) = parse_part(&name.to_string_lossy()) else {
                continue;
            };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < stale);
            let ended = match ctx.ingest.view(&run) {
                Ok(v) => v.finished,
                Err(r) => r.status == 404,
            };
            if !(old || ended) {
                continue;
            }
            let mut m = self.lock();
            if m.get(&(run, sha)).is_some_and(|o| o.busy) {
                continue;
            }
            m.remove(&(run, sha));
            match fs::remove_file(e.path()) {
                Ok(()) => log::info!("removed the upload part {}", e.path().display()),
                Err(err) => log::warn!("removing {}: {err}", e.path().display()),
            }
        }
    }
}

/// Bytes a run's stored uploads take (the sizes in `runs/<run>/uploads`).
fn stored_bytes(rd: &RunDir) -> u64 {
    fs::read_to_string(rd.path(files::UPLOADS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .fold(0, u64::saturating_add)
}

/// The upload's `Kiln-Upload-Auth` header: signed by the run's claim key over this
/// run, digest and whole length, at most 5 minutes off our clock; 403 otherwise.
fn check_auth(
    rq: &Request,
    run: &RunId,
    sha: &Sha256,
    total: u64,
    claim: &kiln_protocol::PublicKey,
) -> Result<(), Refusal> {
    let Some(value) = super::header(rq, UPLOAD_AUTH_HEADER) else {
        return Err(Refusal::new(
            403,
            format!("an upload needs a {UPLOAD_AUTH_HEADER} header signed by the run's claim key"),
        ));
    };
    let auth = UploadAuth::verify(&value, *run, *sha, total, claim).map_err(|e| match e {
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

/// `Content-Range: bytes N-M/T` of a PUT whose body is `len` bytes: `(N, T)`, where
/// the range must run to the object's end (`M = T - 1`) and match the body's length.
/// `None` without the header (a whole upload from byte 0).
fn content_range(rq: &Request, len: u64) -> Result<Option<(u64, u64)>, Refusal> {
    let Some(v) = super::header(rq, "Content-Range") else {
        return Ok(None);
    };
    let bad = || {
        Refusal::new(
            400,
            "Content-Range must be bytes N-M/T, M = T-1, its length the Content-Length",
        )
    };
    let num = |s: &str| -> Result<u64, Refusal> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let spec = v.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = spec.split_once('/').ok_or_else(bad)?;
    let (first, last) = range.split_once('-').ok_or_else(bad)?;
    let (first, last, total) = (num(first)?, num(last)?, num(total)?);
    if first > last || last.checked_add(1) != Some(total) || total - first != len {
        return Err(bad());
    }
    Ok(Some((first, total)))
}

/// The run takes uploads: claimed (409) and not finished (409; its parts go).
/// Returns its claim key.
fn run_open(ctx: &Ctx, run: &RunId, sha: &Sha256) -> Result<kiln_protocol::PublicKey, Refusal> {
    let view = ctx.ingest.view(run)?;
    let Some(claim) = view.claim else {
        return Err(Refusal::new(409, format!("run {run} is not claimed")));
    };
    if view.finished {
        ctx.uploads.close(ctx.state.cas().dir(), run, sha);
        return Err(Refusal::new(
            409,
            format!("run {run} has finished: it takes no more uploads"),
        ));
    }
    Ok(claim)
}

/// The checks every upload request makes once it knows the object's length: at most
/// the cap (413), signed over that length (403). Returns whether the object is
/// stored already.
fn precheck(
    ctx: &Ctx,
    rq: &Request,
    run: &RunId,
    claim: &kiln_protocol::PublicKey,
    sha: &Sha256,
    total: u64,
) -> Result<bool, Refusal> {
    let cap = ctx.artifact_cap;
    if total > cap {
        return Err(Refusal::new(
            413,
            format!("artifact exceeds the {cap}-byte cap"),
        ));
    }
    check_auth(rq, run, sha, total, claim)?;
    ctx.uploads.sweep(ctx);
    Ok(ctx.state.cas().has(sha))
}

/// `HEAD /v1/runs/{run}/artifacts/{sha}` with `Kiln-Upload-Length: T` and a
/// `Kiln-Upload-Auth` over `T`: 200 when the object is stored already; else 204 with
/// `Kiln-Upload-Offset: N`, the bytes of it the coordinator holds (0 when none), after
/// the same checks as a PUT (409, 413 for the cap or the quota, 403, 503 while
/// another request writes this upload). Reserves nothing.
pub fn offset(ctx: &Ctx, rq: &Request, run: &RunId, sha: &Sha256) -> Reply {
    let claim = run_open(ctx, run, sha)?;
    let total = super::header(rq, LENGTH_HEADER)
        .and_then(|v| {
            let v = v.trim();
            (!v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<u64>().ok())
                .flatten()
        })
        .ok_or_else(|| {
            Refusal::new(
                400,
                format!("asking for an offset needs {LENGTH_HEADER}: <bytes>"),
            )
        })?;
    if precheck(ctx, rq, run, &claim, sha, total)? {
        return Ok(text(200, format!("{sha} already stored\n"), "text/plain"));
    }
    let stored = stored_bytes(&RunDir::new(&ctx.state, *run));
    ctx.uploads
        .admit((*run, *sha), total, stored, ctx.run_quota, false)?;
    let part = part_path(ctx.state.cas().dir(), run, sha);
    let have = fs::metadata(&part).map_or(0, |m| m.len()).min(total);
    let mut resp = text(204, Vec::new(), "text/plain");
    resp.add_header(hdr(OFFSET_HEADER, &have.to_string()));
    Ok(resp)
}

/// 507 for a full disk (the agent retries later), else 500.
fn disk_status(e: &io::Error) -> u16 {
    match e.raw_os_error() {
        Some(n) if n == libc::ENOSPC || n == libc::EDQUOT => 507,
        _ => 500,
    }
}

/// Why copying a body into a part stopped.
enum Copied {
    /// All `len` bytes arrived.
    Done,
    /// The body ended early or failed to read (a broken connection): keep the part.
    Broken(String),
    /// Writing the part failed.
    Disk(io::Error),
}

/// Copies exactly `len` body bytes into `part` at its current position.
fn copy_body(body: &mut dyn Read, part: &mut fs::File, len: u64) -> Copied {
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match body.read(&mut buf[..want]) {
            Ok(0) => {
                return Copied::Broken(format!(
                    "the upload ended after {} of {len} bytes",
                    len - left
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Copied::Broken(format!("reading the upload: {e}")),
        };
        if let Err(e) = part.write_all(&buf[..n]) {
            return Copied::Disk(e);
        }
        left -= n as u64;
    }
    Copied::Done
}

/// The digest of a whole file, streamed.
fn sha_of(f: &mut fs::File) -> io::Result<Sha256> {
    f.seek(SeekFrom::Start(0))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(Sha256(h.finalize().into()));
        }
        h.update(&buf[..n]);
    }
}

/// `PUT /v1/runs/{run}/artifacts/{sha}`: writes the body into the upload's part
/// (from byte 0, or from `N` with `Content-Range: bytes N-(T-1)/T`) and stores the
/// whole in the CAS once it holds `T` bytes that hash to `sha`. Every check that
/// needs no body comes before the body is read.
pub fn put(ctx: &Ctx, rq: &mut Request, run: &RunId, sha: &Sha256) -> Reply {
    let claim = run_open(ctx, run, sha)?;
    let Some(len) = rq.body_length().map(|n| n as u64) else {
        return Err(Refusal::new(411, "an upload needs a Content-Length"));
    };
    let range = content_range(rq, len)?;
    let (start, total) = range.unwrap_or((0, len));
    if precheck(ctx, rq, run, &claim, sha, total)? {
        return Ok(text(200, format!("{sha} already stored\n"), "text/plain"));
    }
    let rd = RunDir::new(&ctx.state, *run);
    let busy = ctx
        .uploads
        .admit((*run, *sha), total, stored_bytes(&rd), ctx.run_quota, true)?
        .expect("a reserving admit gives a guard");
    let cas = ctx.state.cas();
    let fail = |status: u16, why: String| {
        ctx.uploads.close(cas.dir(), run, sha);
        Err(Refusal::new(status, why))
    };
    if let Err(e) = fs::create_dir_all(cas.dir()) {
        return fail(500, format!("creating {}: {e}", cas.dir().display()));
    }
    let path = part_path(cas.dir(), run, sha);
    let mut part = match fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => return fail(500, format!("opening {}: {e}", path.display())),
    };
    let have = part.metadata().map_or(0, |m| m.len());
    if start > have {
        drop(busy);
        let mut resp = text(
            416,
            format!("this upload holds {have} bytes; resume from there\n"),
            "text/plain",
        );
        resp.add_header(hdr(OFFSET_HEADER, &have.to_string()));
        return Ok(resp);
    }
    if let Err(e) = part
        .set_len(start)
        .and_then(|_| part.seek(SeekFrom::Start(start)).map(|_| ()))
    {
        return fail(500, format!("writing {}: {e}", path.display()));
    }
    let mut body = super::timed(rq.as_reader(), len);
    match copy_body(&mut body, &mut part, len) {
        Copied::Done => {}
        Copied::Broken(why) => {
            // Kept for a resume: what arrived is on disk (the page cache is enough;
            // a part lost in a crash is only sent again).
            return Err(Refusal::new(400, why));
        }
        Copied::Disk(e) => {
            return fail(disk_status(&e), format!("writing {}: {e}", path.display()));
        }
    }
    let got = match part.sync_all().and_then(|_| sha_of(&mut part)) {
        Ok(got) => got,
        Err(e) => return fail(disk_status(&e), format!("writing {}: {e}", path.display())),
    };
    if got != *sha {
        return fail(422, format!("content hashes to {got}, not {sha}"));
    }
    drop(part);
    if let Err(e) = fs::rename(&path, cas.path(sha))
        .map_err(anyhow::Error::from)
        .and_then(|_| cas.sync())
    {
        return fail(
            crate::ingest::storage_status(&e),
            format!("storing cas object {sha}: {e:#}"),
        );
    }
    // Counted in the ledger before it leaves the open uploads: never zero times.
    let ledger = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(rd.path(files::UPLOADS))
        .and_then(|mut f| writeln!(f, "{sha} {total}"));
    if let Err(e) = ledger {
        log::error!("run {run}: recording upload {sha}: {e}");
    }
    drop(busy);
    ctx.uploads.close(cas.dir(), run, sha);
    Ok(text(
        201,
        format!("stored {sha} ({total} bytes)\n"),
        "text/plain",
    ))
}

/// Removes the upload parts found at server start that nobody wrote for `idle`.
pub fn sweep_at_start(cas: &Path, idle: Duration) -> usize {
    let Ok(dir) = fs::read_dir(cas) else {
        return 0;
    };
    let before = SystemTime::now() - idle;
    let mut n = 0;
    for e in dir.flatten() {
        let part = parse_part(&e.file_name().to_string_lossy()).is_some();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < before);
        if part && old && fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}
