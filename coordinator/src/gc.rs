//! Retention: removes finished runs older than a policy's ages and the CAS objects
//! nothing left refers to. Safe while a server serves and ingests the same folder:
//! only ended runs are candidates, each is re-checked under its run lock and leaves
//! by one rename (readers see it whole or not at all), and a CAS object younger than
//! [`Policy::cas_min_age_s`] is never removed (an upload lands in the CAS before the
//! frame that names it).
use anyhow::{Context, Result};
use kiln_protocol::{Event, ImageRef, Plan, RunId, Sha256, SignedTicket, StageKind};
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use crate::fsutil::now_ms;
use crate::state::State;
use crate::status::{RunState, Summary};
use crate::store::{RunDir, Scan, files};

/// What to keep.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Runs that passed are kept this long after they ended, seconds.
    pub keep_s: u64,
    /// Runs that did not pass (failed, error, aborted, expired unclaimed), seconds.
    pub keep_failed_s: u64,
    /// CAS objects younger than this are kept whatever refers to them, seconds.
    pub cas_min_age_s: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            keep_s: 30 * 86400,
            keep_failed_s: 90 * 86400,
            cas_min_age_s: 3600,
        }
    }
}

/// What a collection removed (or, dry, would remove).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Runs removed.
    pub runs: Vec<RunId>,
    /// Bytes their folders held.
    pub run_bytes: u64,
    /// CAS objects removed.
    pub objects: usize,
    /// Bytes they held.
    pub object_bytes: u64,
    /// Runs kept because they have not ended (pending, claimed, running, stale…).
    pub live: usize,
}

/// Whether a listed run has ended, and when (unix ms), by the coordinator's records.
fn ended(s: &Summary) -> Option<u64> {
    match s.state {
        RunState::Finished | RunState::Aborted => {
            Some(s.last_seen_ms.unwrap_or(s.issued_at.saturating_mul(1000)))
        }
        RunState::Expired => Some(s.expires_at.saturating_mul(1000)),
        _ => None,
    }
}

fn passed(s: &Summary) -> bool {
    matches!(s.outcome.as_deref(), Some("passed" | "warning"))
}

/// Bytes under `dir` (files only; links not followed).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Removes what `policy` lets go; with `dry`, only reports it.
pub fn collect(state: &State, policy: &Policy, dry: bool) -> Result<Report> {
    let key = state.public_key()?;
    let (index, _) = crate::index::Index::build(state, false)?;
    let now = now_ms();
    let mut report = Report::default();
    let mut kept: Vec<RunId> = Vec::new();
    for s in index.all()? {
        let id: RunId = s.run.parse().context("a listed run id")?;
        let keep_ms = 1000
            * if passed(&s) {
                policy.keep_s
            } else {
                policy.keep_failed_s
            };
        let old = ended(&s).is_some_and(|at| now.saturating_sub(at) >= keep_ms);
        if ended(&s).is_none() {
            report.live += 1;
        }
        if !old || s.contested {
            kept.push(id);
            continue;
        }
        let rd = RunDir::new(state, id);
        if dry {
            report.run_bytes += tree_bytes(&rd.dir);
            report.runs.push(id);
            continue;
        }
        match remove_run(state, &rd, &key)? {
            Some(bytes) => {
                report.run_bytes += bytes;
                report.runs.push(id);
            }
            None => kept.push(id),
        }
    }
    // What the remaining runs and the images refer to.
    let mut refs: HashSet<Sha256> = HashSet::new();
    for id in &kept {
        if let Err(e) = run_refs(&RunDir::new(state, *id), &mut refs) {
            // A run whose references cannot be read keeps the whole CAS.
            log::warn!("{e:#}; keeping every CAS object");
            return Ok(report);
        }
    }
    for image in &crate::images::load(state)?.images {
        refs.insert(image.kernel_sha()?);
        refs.insert(image.initrd_sha()?);
    }
    // (A dry run left its candidates out of `kept`: their objects count as gone.)
    let cas = state.cas();
    let Ok(dir) = std::fs::read_dir(cas.dir()) else {
        return Ok(report);
    };
    let young = std::time::SystemTime::now() - std::time::Duration::from_secs(policy.cas_min_age_s);
    for e in dir.flatten() {
        let Some(sha) = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Sha256>().ok())
        else {
            continue;
        };
        let Ok(m) = e.metadata() else { continue };
        if refs.contains(&sha) || !m.is_file() || m.modified().is_ok_and(|t| t > young) {
            continue;
        }
        if !dry && let Err(err) = std::fs::remove_file(e.path()) {
            log::warn!("removing {}: {err}", e.path().display());
            continue;
        }
        report.objects += 1;
        report.object_bytes += m.len();
    }
    Ok(report)
}

/// Removes one ended run: under its lock the status is read again (a run that
/// came back to life is kept), the folder is renamed away in one step, the
/// change journal told, and the renamed folder deleted. Returns the bytes freed, or
/// `None` when the run was kept.
fn remove_run(state: &State, rd: &RunDir, key: &kiln_protocol::PublicKey) -> Result<Option<u64>> {
    let lock = rd.lock()?;
    let s = crate::status::current(rd, key)?;
    if ended(&Summary::from(&s)).is_none() {
        return Ok(None);
    }
    let bytes = tree_bytes(&rd.dir);
    let gone = rd
        .dir
        .with_file_name(format!(".gc-{}-{}", rd.id, std::process::id()));
    std::fs::rename(&rd.dir, &gone).with_context(|| format!("moving {} away", rd.dir.display()))?;
    crate::journal::note_run(state, &rd.id);
    drop(lock);
    crate::status::forget(rd);
    std::fs::remove_dir_all(&gone).with_context(|| format!("removing {}", gone.display()))?;
    Ok(Some(bytes))
}

/// The CAS objects one plan refers to: test bundles and image archives.
pub fn plan_refs(plan: &Plan, out: &mut HashSet<Sha256>) {
    for st in &plan.stages {
        if let Some(t) = &st.tests {
            out.insert(t.sha256);
        }
        if let StageKind::Container(c) = &st.kind {
            for i in &c.images {
                if let ImageRef::Archive { sha256, .. } = i {
                    out.insert(*sha256);
                }
            }
        }
    }
}

/// Adds what run `rd` refers to: its plan's objects and its artifacts.
fn run_refs(rd: &RunDir, out: &mut HashSet<Sha256>) -> Result<()> {
    let bytes = kiln_protocol::io::read_file_capped(
        &rd.path(files::TICKET),
        kiln_protocol::MAX_TICKET_BYTES as u64,
        "a ticket",
    )
    .with_context(|| format!("reading run {} ticket", rd.id))?;
    let t = SignedTicket::from_file(&bytes)
        .and_then(|st| st.decode_unverified())
        .map_err(|e| anyhow::anyhow!("run {}: ticket.kiln: {e}", rd.id))?;
    plan_refs(&t.plan, out);
    let mut file = match std::fs::File::open(rd.path(files::EVENTS)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading run {} events", rd.id)),
    };
    let mut scan = Scan::default();
    let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 1 << 20]);
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let used = scan.feed(&buf, |f| {
            if let Event::Artifact { sha256, .. } = f.event {
                out.insert(sha256);
            }
        });
        buf.drain(..used);
        if scan.corrupt.is_some() {
            return Ok(());
        }
    }
}
