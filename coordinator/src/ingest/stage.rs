//! An import staged beside the state and committed with renames, or rolled back.
//!
//! While a bundle is read, everything it adds is written where nobody looks, in the
//! staging folder `runs/.import-<run>-<nonce>/`: blobs to `.in-*` temp files, the
//! run's new files (`events.log` holding only the new frames, `claim.pub`,
//! `ticket.kiln`). Only when the whole bundle checked out is it committed: blobs linked into the CAS, then the new
//! frames appended to events.log (or the file renamed into place), then claim and
//! ticket renamed in. Any error on the way (ENOSPC included) undoes what the commit
//! did — objects it created removed, events.log cut back to its old length, files it
//! renamed in removed — so a failed import leaves the state folder as it was.
//!
//! A run with no folder yet is committed by renaming the staging folder itself into
//! `runs/<run>`, in one step. The staging folder holds a `lock` its importer flocks,
//! so a later import can tell a folder left by a killed importer (unlocked) from a
//! live one, and removes it, staged blobs and all: a killed import leaves nothing
//! that the next one does not clear.
//!
//! Test hook (for tests only, not an interface): with `KILN_TEST_PAUSE_IMPORT=<path>`
//! in its environment, an import that reaches its first batch after staging a blob
//! creates `<path>.paused` and waits until `<path>` exists, so a test can SIGKILL it
//! between blobs and frames.
use anyhow::{Context, Result, bail};
use kiln_protocol::{Batch, Event, PublicKey, RunId, Sha256};
use std::collections::BTreeSet;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::check::{Verdict, validate};
use super::resend;
use super::{Cached, MAX_EVENTS_LOG_BYTES, Mode, Refusal};
use crate::cas::{Cas, Published, Staged};
use crate::claims::{self, Kind, Source};
use crate::fsutil::{now_s, sync_dir, write_atomic};
use crate::store::{RunDir, files};

/// Prefix of staging folders under `runs/`.
const STAGING_PREFIX: &str = ".import-";

/// What a bundle adds to a run, staged and checked, not yet visible.
#[derive(Debug)]
pub(crate) struct Import {
    run: RunId,
    /// The run as it will be once the staged batches are stored.
    sim: Cached,
    /// The run as stored (the commit's starting point).
    start: Cached,
    cas: Cas,
    staging: PathBuf,
    /// The run's events.log (holding `start`'s frames), for comparing resends.
    log: PathBuf,
    _lock: nix::fcntl::Flock<fs::File>,
    /// The staged new frames (taken when committing).
    events: Option<BufWriter<fs::File>>,
    events_len: u64,
    /// The claim key the staged batches bind, when the run has none yet.
    bind: Option<PublicKey>,
    /// Whether `ticket.kiln` is staged (the run has none yet).
    new_ticket: bool,
    /// Whether the run has no folder yet (the staging folder becomes it).
    new_dir: bool,
    blobs: Vec<Staged>,
    /// Objects the bundle carries: staged, or already in the CAS.
    held: BTreeSet<Sha256>,
    /// Objects the staged batches' Artifact frames name.
    named: BTreeSet<Sha256>,
    blob_bytes: u64,
    frames: u64,
    batches: usize,
}

impl Import {
    /// Starts staging an import into run `run` (stored state `c`) in a fresh staging
    /// folder under `runs/`; `ticket_file` is staged when the run has no ticket yet.
    pub(super) fn begin(
        rd: &RunDir,
        c: Cached,
        cas: Cas,
        ticket_file: Option<&[u8]>,
    ) -> Result<Import> {
        let runs = rd.dir.parent().context("a run folder has a parent")?;
        fs::create_dir_all(runs).with_context(|| format!("creating {}", runs.display()))?;
        sweep_abandoned(runs);
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).context("reading random bytes")?;
        let staging = runs.join(format!(
            "{STAGING_PREFIX}{}-{}",
            rd.id,
            kiln_protocol::hex(&nonce)
        ));
        fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        let staged = (|| -> Result<_> {
            let lock = fs::File::create(staging.join(files::LOCK))?;
            let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", staging.display()))?;
            if let Some(t) = ticket_file {
                write_atomic(&staging.join(files::TICKET), t, 0o644)?;
            }
            // Readable too: a later batch's resend is compared with what is staged.
            let events = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(staging.join(files::EVENTS))?;
            Ok((lock, events))
        })();
        let (lock, events) = match staged {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e.context(format!("staging in {}", staging.display())));
            }
        };
        Ok(Import {
            run: rd.id,
            sim: c.clone(),
            start: c,
            cas,
            staging,
            log: rd.path(files::EVENTS),
            _lock: lock,
            events: Some(BufWriter::with_capacity(256 * 1024, events)),
            events_len: 0,
            bind: None,
            new_ticket: ticket_file.is_some(),
            new_dir: !rd.dir.exists(),
            blobs: Vec::new(),
            held: BTreeSet::new(),
            named: BTreeSet::new(),
            blob_bytes: 0,
            frames: 0,
            batches: 0,
        })
    }

    /// Streams one blob of at most `cap` bytes into a temp file in the staging
    /// folder (not `cas/`: a killed import's blobs go with its folder).
    pub(crate) fn stage_blob(&self, reader: &mut dyn std::io::Read, cap: u64) -> Result<Staged> {
        self.cas.stage_in(&self.staging, reader, cap, "blob")
    }

    /// Bytes of distinct blobs the bundle carried so far.
    pub(crate) fn blob_bytes(&self) -> u64 {
        self.blob_bytes
    }

    /// Frames in the bundle (its highest seq) and artifacts it carries.
    pub(crate) fn counts(&self) -> (u64, usize) {
        (self.frames, self.held.len())
    }

    /// Checks one sealed batch against the run as stored plus the batches before
    /// it (the same check as online ingest) and stages its new frames.
    pub(crate) fn batch(&mut self, sealed: &[u8]) -> Result<(), Refusal> {
        self.batches += 1;
        let n = self.batches;
        let v = validate(
            &self.run,
            sealed,
            &self.sim,
            Mode::Import,
            now_s(),
            MAX_EVENTS_LOG_BYTES,
        )
        .map_err(|r| Refusal {
            reason: format!("batch {n}: {}", r.reason),
            ..r
        })?;
        self.check_resend(&v).map_err(|r| Refusal {
            reason: format!("batch {n}: {}", r.reason),
            ..r
        })?;
        // validate opened it, so this cannot fail.
        let (batch, _) = Batch::open_unverified(sealed)
            .map_err(|e| Refusal::new(400, format!("batch {n}: {e}")))?;
        for f in &batch.frames {
            self.frames = self.frames.max(f.seq);
            if let Event::Artifact { sha256, .. } = &f.event {
                self.named.insert(*sha256);
            }
        }
        if v.bind {
            self.bind = Some(v.key);
        }
        self.events
            .as_mut()
            .expect("staging until commit")
            .write_all(&v.records)
            .map_err(|e| io_refusal(e.into(), "staging events"))?;
        self.events_len += v.records.len() as u64;
        self.sim.advance(&v);
        Ok(())
    }

    /// Refuses resent frames that differ from the stored run (events.log, seqs up to
    /// `start.upto`) or from what earlier batches staged (the seqs after it).
    fn check_resend(&mut self, v: &Verdict) -> Result<(), Refusal> {
        if v.resent.is_empty() {
            return Ok(());
        }
        let stored_upto = self.start.upto;
        let (old, staged) = resend::split_at_seq(&v.resent, v.resent_from, stored_upto + 1);
        let failed = |e: anyhow::Error| io_refusal(e, "comparing a resend");
        if !old.is_empty() {
            let f = fs::File::open(&self.log)
                .with_context(|| format!("opening {}", self.log.display()))
                .map_err(failed)?;
            let diff =
                resend::first_difference(&f, self.start.len, 0, stored_upto, v.resent_from, old)
                    .map_err(failed)?;
            if let Some(seq) = diff {
                return Err(resend::conflict(seq));
            }
        }
        if !staged.is_empty() {
            let events = self.events.as_mut().expect("staging until commit");
            events
                .flush()
                .map_err(|e| io_refusal(e.into(), "staging events"))?;
            let first = v.resent_from.max(stored_upto + 1);
            let diff = resend::first_difference(
                events.get_ref(),
                self.events_len,
                stored_upto,
                self.sim.upto,
                first,
                staged,
            )
            .map_err(failed)?;
            if let Some(seq) = diff {
                return Err(resend::conflict(seq));
            }
        }
        Ok(())
    }

    /// Keeps a staged blob (a copy of one already held or stored is dropped).
    pub(crate) fn blob(&mut self, b: Staged) {
        if self.held.insert(b.sha) {
            self.blob_bytes += b.size;
            if !self.cas.has(&b.sha) {
                self.blobs.push(b);
            }
        }
    }

    /// Checks what only a whole bundle can show: every artifact an Artifact frame
    /// names is carried (or already stored), and nothing else is.
    pub(crate) fn check_blobs(&self) -> Result<(), Refusal> {
        if let Some(missing) = self.named.difference(&self.held).next() {
            return Err(Refusal::new(
                400,
                format!("artifact {missing} is named by a frame but missing from the bundle"),
            ));
        }
        if let Some(extra) = self.held.difference(&self.named).next() {
            return Err(Refusal::new(
                400,
                format!("blob {extra} is not named by any Artifact frame"),
            ));
        }
        Ok(())
    }

    /// Makes the staged import visible, all of it or (on any error) none of it.
    /// `rd` must be locked by the caller when it exists. Returns the stored state.
    pub(super) fn commit(mut self, rd: &RunDir) -> Result<Cached> {
        let events = self.events.take().expect("committed once");
        events
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .context("staging events")?;
        if let Some(key) = self.bind {
            let line = key.to_line(&format!("claim of run {}", self.run));
            write_atomic(
                &self.staging.join(files::CLAIM),
                format!("{line}\n").as_bytes(),
                0o644,
            )
            .context("staging claim.pub")?;
        }
        let mut done = Done::default();
        match self.apply(rd, &mut done) {
            Ok(()) => Ok(self.sim.clone()),
            Err(e) => {
                self.undo(rd, &done);
                Err(e)
            }
        }
    }

    fn apply(&mut self, rd: &RunDir, done: &mut Done) -> Result<()> {
        for b in std::mem::take(&mut self.blobs) {
            if let Some(p) = self.cas.publish(b)? {
                done.blobs.push(p);
            }
        }
        if !done.blobs.is_empty() {
            self.cas.sync()?;
        }
        if self.new_dir {
            // A new run: its whole folder goes in with one rename (the lock, still
            // held, becomes the run's writer lock).
            if self.events_len == 0 {
                fs::remove_file(self.staging.join(files::EVENTS))?;
            }
            if let Some(key) = self.bind {
                let staged = RunDir {
                    id: self.run,
                    dir: self.staging.clone(),
                };
                claims::append(&staged, Kind::Claim, Source::Import, Some(&key), "")?;
            }
            sync_dir(&self.staging)?;
            if let Err(e) = fs::rename(&self.staging, &rd.dir) {
                if rd.dir.exists() {
                    bail!(
                        "run {} was written by someone else during the import; import again",
                        rd.id
                    );
                }
                return Err(e).with_context(|| format!("renaming into {}", rd.dir.display()));
            }
            done.dir = true;
            return sync_dir(rd.dir.parent().context("a run folder has a parent")?);
        }
        if self.events_len > 0 {
            let staged = self.staging.join(files::EVENTS);
            let path = rd.path(files::EVENTS);
            let old = fs::metadata(&path).map(|m| m.len());
            match old {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::rename(&staged, &path)
                        .with_context(|| format!("renaming into {}", path.display()))?;
                    done.events = Some(None);
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
                Ok(len) => {
                    if len != self.start.len {
                        bail!("{} changed during the import", path.display());
                    }
                    done.events = Some(Some(len));
                    append(&staged, &path)
                        .with_context(|| format!("appending to {}", path.display()))?;
                }
            }
        }
        if self.staging.join(files::CLAIM).exists() {
            let path = rd.path(files::CLAIM);
            if path.exists() {
                bail!("{} appeared during the import", path.display());
            }
            fs::rename(self.staging.join(files::CLAIM), &path)
                .with_context(|| format!("renaming into {}", path.display()))?;
            done.claim = true;
        }
        if let Some(key) = self.bind {
            // The claim record (`claims`) may already hold refused or contested
            // claims of this pending run: appended to, cut back on undo.
            done.claims = Some(fs::metadata(rd.path(files::CLAIMS)).map(|m| m.len()).ok());
            claims::append(rd, Kind::Claim, Source::Import, Some(&key), "")?;
        }
        if self.new_ticket {
            let path = rd.path(files::TICKET);
            if path.exists() {
                bail!("{} appeared during the import", path.display());
            }
            fs::rename(self.staging.join(files::TICKET), &path)
                .with_context(|| format!("renaming into {}", path.display()))?;
            done.ticket = true;
        }
        sync_dir(&rd.dir)
    }

    /// Takes back what `apply` did, newest first. Removing and truncating need no
    /// free space, so this works on a full disk.
    fn undo(&self, rd: &RunDir, done: &Done) {
        if done.dir {
            let _ = fs::remove_dir_all(&rd.dir);
        }
        if done.ticket {
            let _ = fs::remove_file(rd.path(files::TICKET));
        }
        if done.claim {
            let _ = fs::remove_file(rd.path(files::CLAIM));
        }
        match done.claims {
            Some(None) => {
                let _ = fs::remove_file(rd.path(files::CLAIMS));
            }
            Some(Some(len)) => {
                if let Ok(f) = fs::OpenOptions::new()
                    .write(true)
                    .open(rd.path(files::CLAIMS))
                {
                    let _ = f.set_len(len).and_then(|_| f.sync_all());
                }
            }
            None => {}
        }
        match done.events {
            Some(None) => {
                let _ = fs::remove_file(rd.path(files::EVENTS));
            }
            Some(Some(len)) => {
                if let Ok(f) = fs::OpenOptions::new()
                    .write(true)
                    .open(rd.path(files::EVENTS))
                {
                    let _ = f.set_len(len).and_then(|_| f.sync_all());
                }
            }
            None => {}
        }
        if done.ticket || done.claim || done.claims.is_some() || done.events.is_some() {
            let _ = sync_dir(&rd.dir);
        }
        for p in done.blobs.iter().rev() {
            self.cas.unpublish(p);
        }
        if !done.blobs.is_empty() {
            let _ = self.cas.sync();
        }
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        // Staged blobs go with `self.blobs`; the folder (gone when renamed in) here.
        let _ = fs::remove_dir_all(&self.staging);
    }
}

/// What the commit has done so far, to undo.
#[derive(Debug, Default)]
struct Done {
    blobs: Vec<Published>,
    /// events.log: `Some(None)` created, `Some(Some(len))` appended to from `len`.
    events: Option<Option<u64>>,
    claim: bool,
    /// The claim record: `Some(None)` created, `Some(Some(len))` appended to from `len`.
    claims: Option<Option<u64>>,
    ticket: bool,
    /// The staging folder became the run folder.
    dir: bool,
}

/// Appends the file `from` to `to` and fsyncs it; on any error cuts `to` back to
/// its old length, so it never keeps part of the batch.
fn append(from: &Path, to: &Path) -> Result<()> {
    let mut src = fs::File::open(from)?;
    let mut dst = fs::OpenOptions::new().append(true).open(to)?;
    let old = dst.metadata()?.len();
    if let Err(e) = std::io::copy(&mut src, &mut dst).and_then(|_| dst.sync_data()) {
        let _ = dst.set_len(old).and_then(|_| dst.sync_all());
        return Err(e.into());
    }
    Ok(())
}

/// An I/O error while staging: the import failed, not the bundle.
fn io_refusal(e: anyhow::Error, what: &str) -> Refusal {
    Refusal::new(500, format!("{what}: {e:#}"))
}

/// Removes staging folders under `runs` whose importer is gone (their `lock` is
/// not held): what a killed import left behind.
fn sweep_abandoned(runs: &Path) {
    let Ok(dir) = fs::read_dir(runs) else {
        return;
    };
    for e in dir.flatten() {
        if !e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            continue;
        }
        let path = e.path();
        let free = match fs::File::open(path.join(files::LOCK)) {
            Ok(f) => {
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
            }
            // No lock file yet: an importer just starting (or killed right then).
            Err(_) => false,
        };
        if free {
            log::info!(
                "removing {}, left by an import that did not finish",
                path.display()
            );
            let _ = fs::remove_dir_all(&path);
        }
    }
}
