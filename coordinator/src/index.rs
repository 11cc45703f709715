//! The in-memory index of the state folder: hosts by MAC, pending tickets by MAC
//! and by host name in issue order, and every run's place in the listing order. It
//! makes each boot script, ticket lookup and listing page cost the same whether the
//! lab holds ten runs or a hundred thousand.
//!
//! The state folder stays the one source of truth. [`Index::build`] reads it (in
//! parallel; a finished run is one small `summary.json`, written here the first time
//! the run is seen finished and rebuilt when missing or stale); a server then keeps
//! the index current from the change journal ([`crate::journal`]): every writer,
//! in-process or a command on the same folder, appends the run it changed, and each
//! request first applies what was appended since (one `stat` when nothing was).
//! hosts.toml and images.toml are re-read when their inode, size or mtime changes.
//! Time-based states (expiry) are decided at lookup.
use anyhow::{Context, Result, bail};
use kiln_protocol::{Mac, PublicKey, RunId, SignedTicket};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use crate::fsutil::now_s;
use crate::images::{self, Images};
use crate::journal::{Follower, News};
use crate::state::{Hosts, State};
use crate::status::Summary;
use crate::store::{RunDir, files};

#[cfg(test)]
mod tests;

/// Most rows one listing page holds.
pub const MAX_PAGE: usize = 1000;

/// Largest summary.json read (they are a few hundred bytes).
const MAX_SUMMARY_BYTES: u64 = 64 << 10;

/// Where a run is, as far as the index needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No claim, no frames, no abort: served to its host until it expires.
    Pending,
    /// Claimed, aborted or expired and not finished: listed from its fold.
    Live,
    /// Finished: listed from its summary.json.
    Done,
}

/// Ticket check state of a pending run (checked once, at its first lookup).
const UNCHECKED: u8 = 0;
const GOOD: u8 = 1;
const BAD: u8 = 2;

#[derive(Debug)]
struct Row {
    issued_at: u64,
    not_after: u64,
    host: Arc<str>,
    macs: Vec<Mac>,
    phase: Phase,
    verified: AtomicU8,
    /// The plan's name (listing filters).
    plan: Arc<str>,
    /// The outcome of a finished run (listing filters).
    outcome: Option<Arc<str>>,
}

/// The one-line form of a run for the index, read from its folder, and whether its
/// summary.json was (re)written for it.
fn read_row(rd: &RunDir, key: &PublicKey, write: bool) -> Result<Option<(Row, bool)>> {
    if let Some(s) = read_summary(rd) {
        return Ok(Some((
            Row {
                issued_at: s.issued_at,
                not_after: s.expires_at,
                host: s.host.as_str().into(),
                macs: Vec::new(),
                phase: Phase::Done,
                verified: AtomicU8::new(GOOD),
                plan: s.plan.as_str().into(),
                outcome: s.outcome.as_deref().map(Into::into),
            },
            false,
        )));
    }
    let bytes = match kiln_protocol::io::read_file_capped(
        &rd.path(files::TICKET),
        kiln_protocol::MAX_TICKET_BYTES as u64,
        "a ticket",
    ) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading run {} ticket", rd.id)),
    };
    // The signature is checked when the run is first served or folded.
    let t = SignedTicket::from_file(&bytes)
        .and_then(|st| st.decode_unverified())
        .map_err(|e| anyhow::anyhow!("run {}: ticket.kiln: {e}", rd.id))?;
    if t.run != rd.id {
        bail!("run {}: ticket.kiln is for run {}", rd.id, t.run);
    }
    let has = |f: &str| rd.path(f).exists();
    let mut outcome = None;
    // A lights-out run the coordinator ended (never booted) boots nothing.
    let ended = has(files::POWER_LOG) && rd.ended_by_coordinator();
    let phase = if !(has(files::CLAIM) || has(files::EVENTS) || has(files::ABORT) || ended) {
        Phase::Pending
    } else if has(files::EVENTS)
        && let Some(s) = summarize(rd, key, write)?
    {
        outcome = s.outcome.as_deref().map(Into::into);
        Phase::Done
    } else {
        Phase::Live
    };
    Ok(Some((
        Row {
            issued_at: t.issued_at,
            not_after: t.not_after,
            host: t.host.name.as_str().into(),
            macs: t.host.macs.clone(),
            phase,
            verified: AtomicU8::new(UNCHECKED),
            plan: t.plan.name.as_str().into(),
            outcome,
        },
        phase == Phase::Done,
    )))
}

/// summary.json: the row and the sizes of the files it was derived from.
#[derive(Debug, Serialize, Deserialize)]
struct SummaryFile {
    events_len: u64,
    claims_len: u64,
    summary: Summary,
}

fn len_of(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// The run's kept summary, when it exists and events.log and claims are the sizes it
/// was derived from (both are append-only).
fn read_summary(rd: &RunDir) -> Option<Summary> {
    let bytes = kiln_protocol::io::read_file_capped(
        &rd.path(files::SUMMARY),
        MAX_SUMMARY_BYTES,
        "a summary",
    )
    .ok()?;
    let f: SummaryFile = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("run {}: summary.json: {e}; rebuilding it", rd.id);
            return None;
        }
    };
    let fresh = f.events_len == len_of(&rd.path(files::EVENTS))
        && f.claims_len == len_of(&rd.path(files::CLAIMS))
        && f.summary.run == rd.id.to_string();
    fresh.then_some(f.summary)
}

/// Folds the run; when it has finished (and its log is whole), writes summary.json
/// (with `write`) and returns its summary. The fold is dropped from the per-process
/// cache afterwards.
fn summarize(rd: &RunDir, key: &PublicKey, write: bool) -> Result<Option<Summary>> {
    let (events_len, claims_len) = (
        len_of(&rd.path(files::EVENTS)),
        len_of(&rd.path(files::CLAIMS)),
    );
    let s = crate::status::current(rd, key)?;
    if s.finished_at_ms.is_none() || s.corrupt.is_some() {
        return Ok(None);
    }
    crate::status::forget(rd);
    let summary = Summary::from(&s);
    if !write {
        return Ok(Some(summary));
    }
    let file = SummaryFile {
        events_len,
        claims_len,
        summary,
    };
    let body = serde_json::to_vec(&file).context("encoding summary.json")?;
    // Derived, so not fsynced (a torn one after a crash fails to parse and is
    // rebuilt); written whole under a temporary name and renamed. One that cannot be
    // written (a full disk) is rebuilt next time.
    let tmp = rd.path(&format!(".{}.{}", files::SUMMARY, std::process::id()));
    let written =
        std::fs::write(&tmp, &body).and_then(|()| std::fs::rename(&tmp, rd.path(files::SUMMARY)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        log::warn!("run {}: writing summary.json: {e}", rd.id);
    }
    Ok(Some(file.summary))
}

/// A file's identity for "has it changed": inode, size, mtime.
type Stamp = (u64, u64, i64, i64);

fn stamp(p: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// A parsed file kept until its stamp changes.
#[derive(Debug)]
struct Kept<T> {
    stamp: Option<Stamp>,
    value: Arc<T>,
}

/// hosts.toml with a MAC → host lookup.
#[derive(Debug, Default)]
pub struct HostTable {
    /// The hosts, as in hosts.toml.
    pub hosts: Hosts,
    by_mac: HashMap<Mac, usize>,
}

impl HostTable {
    fn new(hosts: Hosts) -> Self {
        let mut by_mac = HashMap::new();
        for (i, h) in hosts.hosts.iter().enumerate() {
            for m in h.macs.iter().filter_map(|m| m.parse::<Mac>().ok()) {
                // The first host naming a MAC wins, as `Hosts::by_mac` decides.
                by_mac.entry(m).or_insert(i);
            }
        }
        HostTable { hosts, by_mac }
    }

    /// The host with `mac`.
    pub fn by_mac(&self, mac: &Mac) -> Option<&crate::state::Host> {
        self.by_mac.get(mac).map(|&i| &self.hosts.hosts[i])
    }
}

#[derive(Debug, Default)]
struct Runs {
    rows: HashMap<RunId, Row>,
    /// Every run by (issue time, id): the listing order.
    order: BTreeSet<(u64, RunId)>,
    pending_by_mac: HashMap<Mac, BTreeSet<(u64, RunId)>>,
    pending_by_host: HashMap<Arc<str>, BTreeSet<(u64, RunId)>>,
    /// Every run of a host by (issue time, id).
    by_host: HashMap<Arc<str>, BTreeSet<(u64, RunId)>>,
}

impl Runs {
    fn insert(&mut self, id: RunId, row: Row) {
        self.remove(&id);
        let k = (row.issued_at, id);
        self.order.insert(k);
        self.by_host.entry(row.host.clone()).or_default().insert(k);
        if row.phase == Phase::Pending {
            for m in &row.macs {
                self.pending_by_mac.entry(*m).or_default().insert(k);
            }
            self.pending_by_host
                .entry(row.host.clone())
                .or_default()
                .insert(k);
        }
        self.rows.insert(id, row);
    }

    fn remove(&mut self, id: &RunId) {
        let Some(row) = self.rows.remove(id) else {
            return;
        };
        let k = (row.issued_at, *id);
        self.order.remove(&k);
        if let Some(set) = self.by_host.get_mut(&row.host) {
            set.remove(&k);
            if set.is_empty() {
                self.by_host.remove(&row.host);
            }
        }
        if row.phase == Phase::Pending {
            self.unpend(&k, &row.macs, &row.host);
        }
    }

    fn unpend(&mut self, k: &(u64, RunId), macs: &[Mac], host: &Arc<str>) {
        for m in macs {
            if let Some(set) = self.pending_by_mac.get_mut(m) {
                set.remove(k);
                if set.is_empty() {
                    self.pending_by_mac.remove(m);
                }
            }
        }
        if let Some(set) = self.pending_by_host.get_mut(host) {
            set.remove(k);
            if set.is_empty() {
                self.pending_by_host.remove(host);
            }
        }
    }

    /// Stops offering a run (expired, or its ticket does not verify).
    fn retire(&mut self, id: &RunId) {
        let Some(row) = self.rows.get_mut(id) else {
            return;
        };
        if row.phase != Phase::Pending {
            return;
        }
        row.phase = Phase::Live;
        let k = (row.issued_at, *id);
        let (macs, host) = (std::mem::take(&mut row.macs), row.host.clone());
        self.unpend(&k, &macs, &host);
    }
}

/// Which runs a listing shows (`GET /?host=&plan=&outcome=&since=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this host's runs.
    pub host: Option<String>,
    /// Only runs of this plan.
    pub plan: Option<String>,
    /// Only finished runs with this outcome (`passed`, `failed`, …).
    pub outcome: Option<String>,
    /// Only runs issued at or after this time, unix seconds.
    pub since: Option<u64>,
}

impl Filter {
    fn admits(&self, r: &Row) -> bool {
        self.plan.as_deref().is_none_or(|p| &*r.plan == p)
            && self
                .outcome
                .as_deref()
                .is_none_or(|o| r.outcome.as_deref() == Some(o))
            && self.since.is_none_or(|t| r.issued_at >= t)
    }
}

/// One page of a listing, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    /// The runs, newest first (by issue time, then id).
    pub rows: Vec<Summary>,
    /// The id to pass as `before` for the next (older) page, when there is one.
    pub next: Option<RunId>,
    /// Runs in the whole listing.
    pub total: usize,
}

/// The index (module docs). Cheap to share: every method takes `&self`.
#[derive(Debug)]
pub struct Index {
    state: State,
    key: PublicKey,
    runs: RwLock<Runs>,
    follower: Option<Follower>,
    /// Held while journal news is applied.
    applying: Mutex<()>,
    hosts: RwLock<Kept<HostTable>>,
    images: RwLock<Kept<Images>>,
}

/// What building took, for the start-up line and the benchmark.
#[derive(Debug, Clone, Copy)]
pub struct Built {
    /// Runs indexed.
    pub runs: usize,
    /// Of which pending.
    pub pending: usize,
    /// summary.json files (re)written.
    pub summarized: usize,
    /// Milliseconds.
    pub ms: u128,
}

impl Index {
    /// Reads the state folder. With `follow`, the index then follows the change
    /// journal and writes the summary.json files it finds missing (a server);
    /// without, it is a snapshot that writes nothing (a command).
    pub fn build(state: &State, follow: bool) -> Result<(Index, Built)> {
        let key = state.public_key()?;
        // The journal's end is taken before the folder is read: a change made while
        // reading is applied again from the journal, never missed.
        let follower = if follow {
            Some(Follower::at_end(state)?)
        } else {
            None
        };
        let t0 = Instant::now();
        let (runs, summarized) = scan(state, &key, follow)?;
        let built = Built {
            runs: runs.rows.len(),
            pending: runs
                .rows
                .values()
                .filter(|r| r.phase == Phase::Pending)
                .count(),
            summarized,
            ms: t0.elapsed().as_millis(),
        };
        let hosts = Kept {
            stamp: stamp(&state.hosts_path()),
            value: Arc::new(HostTable::new(state.hosts()?)),
        };
        let images = Kept {
            stamp: stamp(&images::path(state)),
            value: Arc::new(images::load(state)?),
        };
        Ok((
            Index {
                state: state.clone(),
                key,
                runs: RwLock::new(runs),
                follower,
                applying: Mutex::new(()),
                hosts: RwLock::new(hosts),
                images: RwLock::new(images),
            },
            built,
        ))
    }

    /// The state folder.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Applies what the journal holds since the last call (a `stat` when nothing).
    pub fn sync(&self) -> Result<()> {
        let Some(f) = &self.follower else {
            return Ok(());
        };
        if !f.changed() {
            return Ok(());
        }
        // The reader's lock is held while the news is applied, so a request that
        // waited for it sees the index current.
        let _one = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        match f.read()? {
            News::None => {}
            News::Runs(mut ids) => {
                ids.sort();
                ids.dedup();
                for id in ids {
                    // One unreadable run folder must not hold back the others.
                    if let Err(e) = self.refresh(&id) {
                        log::warn!("{e:#}; its index row is as before");
                    }
                }
            }
            News::Rebuild => {
                log::info!("journal replaced: rebuilding the index from the state folder");
                let (runs, _) = scan(&self.state, &self.key, true)?;
                *self.runs.write().unwrap_or_else(PoisonError::into_inner) = runs;
            }
        }
        f.applied();
        Ok(())
    }

    /// Re-reads one run's folder into the index.
    pub fn refresh(&self, id: &RunId) -> Result<()> {
        let rd = RunDir::new(&self.state, *id);
        let row = read_row(&rd, &self.key, self.follower.is_some())?;
        let mut runs = self.runs.write().unwrap_or_else(PoisonError::into_inner);
        match row {
            Some((r, _)) => runs.insert(*id, r),
            None => runs.remove(id),
        }
        Ok(())
    }

    /// hosts.toml, re-read when it changed.
    pub fn hosts(&self) -> Result<Arc<HostTable>> {
        let now = stamp(&self.state.hosts_path());
        {
            let k = self.hosts.read().unwrap_or_else(PoisonError::into_inner);
            if k.stamp == now {
                return Ok(k.value.clone());
            }
        }
        let table = Arc::new(HostTable::new(self.state.hosts()?));
        *self.hosts.write().unwrap_or_else(PoisonError::into_inner) = Kept {
            stamp: now,
            value: table.clone(),
        };
        Ok(table)
    }

    /// images.toml, re-read when it changed.
    pub fn images(&self) -> Result<Arc<Images>> {
        let now = stamp(&images::path(&self.state));
        {
            let k = self.images.read().unwrap_or_else(PoisonError::into_inner);
            if k.stamp == now {
                return Ok(k.value.clone());
            }
        }
        let value = Arc::new(images::load(&self.state)?);
        *self.images.write().unwrap_or_else(PoisonError::into_inner) = Kept {
            stamp: now,
            value: value.clone(),
        };
        Ok(value)
    }

    /// The oldest pending run (unclaimed, unexpired, not aborted, its ticket
    /// verified) for the machine with `mac`: its ticket's binding names the MAC, or
    /// hosts.toml maps the MAC to the ticket's host name. Ties in issue time go to
    /// the lower run id.
    pub fn next_pending(&self, mac: &Mac) -> Result<Option<RunId>> {
        self.sync()?;
        let hosts = self.hosts()?;
        let name: Option<Arc<str>> = hosts.by_mac(mac).map(|h| h.name.as_str().into());
        let now = now_s();
        loop {
            let mut retire = Vec::new();
            let mut found = None;
            {
                let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
                let empty = BTreeSet::new();
                let a = runs.pending_by_mac.get(mac).unwrap_or(&empty);
                let b = name
                    .as_ref()
                    .and_then(|n| runs.pending_by_host.get(n))
                    .unwrap_or(&empty);
                let mut last: Option<&(u64, RunId)> = None;
                let (mut ia, mut ib) = (a.iter().peekable(), b.iter().peekable());
                // The two sets merged in order, stopping at the first good one.
                while let Some(k) = match (ia.peek(), ib.peek()) {
                    (Some(x), Some(y)) if x <= y => ia.next(),
                    (Some(_), Some(_)) => ib.next(),
                    (Some(_), None) => ia.next(),
                    (None, _) => ib.next(),
                } {
                    if last == Some(k) {
                        continue;
                    }
                    last = Some(k);
                    let row = &runs.rows[&k.1];
                    if now > row.not_after {
                        retire.push(k.1);
                        continue;
                    }
                    if self.checked(&k.1, row) {
                        found = Some(k.1);
                        break;
                    }
                    retire.push(k.1);
                }
            }
            if retire.is_empty() {
                return Ok(found);
            }
            let mut runs = self.runs.write().unwrap_or_else(PoisonError::into_inner);
            for id in &retire {
                runs.retire(id);
            }
            if found.is_some() {
                return Ok(found);
            }
        }
    }

    /// Whether a pending run's stored ticket verifies (checked once).
    fn checked(&self, id: &RunId, row: &Row) -> bool {
        match row.verified.load(Ordering::Acquire) {
            GOOD => true,
            BAD => false,
            _ => {
                let ok = match RunDir::new(&self.state, *id).ticket(&self.key) {
                    Ok(_) => true,
                    Err(e) => {
                        log::warn!("{e:#}; not serving it");
                        false
                    }
                };
                row.verified
                    .store(if ok { GOOD } else { BAD }, Ordering::Release);
                ok
            }
        }
    }

    /// Runs issued for host `name` (its row count on the index page).
    pub fn runs_of(&self, name: &str) -> usize {
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        runs.by_host.get(name).map_or(0, BTreeSet::len)
    }

    /// Whether run `id` is indexed.
    pub fn has(&self, id: &RunId) -> bool {
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        runs.rows.contains_key(id)
    }

    /// Up to `limit` runs, newest first, older than `before` (a run id from the last
    /// page) when given. Each row is read from its summary.json (finished runs) or
    /// its fold (the rest): the work is that of the page, not of the lab.
    pub fn page(&self, limit: usize, before: Option<&RunId>) -> Result<Page> {
        self.page_where(limit, before, &Filter::default())
    }

    /// [`Index::page`] of the runs `filter` lets through. A host filter walks that
    /// host's runs only; plan, outcome and time filters are checked in memory.
    pub fn page_where(
        &self,
        limit: usize,
        before: Option<&RunId>,
        filter: &Filter,
    ) -> Result<Page> {
        self.sync()?;
        let limit = limit.clamp(1, MAX_PAGE);
        let (ids, next, total) = {
            let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
            let upper = match before {
                Some(id) => match runs.rows.get(id) {
                    Some(r) => (r.issued_at, *id),
                    None => bail!("no run {id} to list before"),
                },
                None => (u64::MAX, RunId([0xff; 16])),
            };
            let empty = BTreeSet::new();
            let set = match &filter.host {
                Some(h) => runs.by_host.get(h.as_str()).unwrap_or(&empty),
                None => &runs.order,
            };
            let mut it = set
                .range(..upper)
                .rev()
                .map(|(_, id)| (*id, &runs.rows[id]))
                .filter(|(_, r)| filter.admits(r));
            let ids: Vec<(RunId, Phase)> = it
                .by_ref()
                .take(limit)
                .map(|(id, r)| (id, r.phase))
                .collect();
            let more = it.next().is_some();
            let next = more.then(|| ids.last().map(|(id, _)| *id)).flatten();
            (ids, next, runs.rows.len())
        };
        let mut rows = Vec::with_capacity(ids.len());
        for (id, phase) in ids {
            let rd = RunDir::new(&self.state, id);
            let kept = (phase == Phase::Done).then(|| read_summary(&rd)).flatten();
            match kept {
                Some(s) => rows.push(s),
                None => match crate::status::current(&rd, &self.key) {
                    Ok(s) => rows.push(Summary::from(&s)),
                    // A run removed meanwhile, or a broken ticket: left out, logged.
                    Err(e) => log::warn!("{e:#}"),
                },
            }
        }
        Ok(Page { rows, next, total })
    }

    /// Runs claimed, aborted or expired and not finished (the lost-agent watch's).
    pub fn live(&self) -> Vec<RunId> {
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        runs.rows
            .iter()
            .filter(|(_, r)| r.phase == Phase::Live)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The newest run issued for host `name`, if any.
    pub fn latest_of(&self, name: &str) -> Option<RunId> {
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        runs.by_host.get(name)?.last().map(|(_, id)| *id)
    }

    /// How many pending (unexpired) tickets host `name` has.
    pub fn pending_of(&self, name: &str) -> usize {
        let now = now_s();
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        runs.pending_by_host.get(name).map_or(0, |set| {
            set.iter()
                .filter(|(_, id)| runs.rows[id].not_after >= now)
                .count()
        })
    }

    /// Every run, newest first (the command line's `runs` without `--limit`).
    pub fn all(&self) -> Result<Vec<Summary>> {
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let p = self.page(MAX_PAGE, before.as_ref())?;
            out.extend(p.rows);
            match p.next {
                Some(n) => before = Some(n),
                None => return Ok(out),
            }
        }
    }
}

/// Reads every run folder (on every core): the rows and how many summaries were
/// (with `write`; else would have been) written.
fn scan(state: &State, key: &PublicKey, write: bool) -> Result<(Runs, usize)> {
    let ids = state.run_ids()?;
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let chunk = ids.len().div_ceil(threads).max(1);
    let parts: Vec<Vec<(RunId, Row, bool)>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut out = Vec::with_capacity(part.len());
                    for id in part {
                        let rd = RunDir::new(state, *id);
                        match read_row(&rd, key, write) {
                            Ok(Some((r, wrote))) => out.push((*id, r, wrote)),
                            Ok(None) => {}
                            Err(e) => log::warn!("{e:#}; not indexed"),
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an index reader panicked"))
            .collect()
    });
    let mut runs = Runs::default();
    let mut summarized = 0;
    for (id, row, wrote) in parts.into_iter().flatten() {
        summarized += usize::from(wrote);
        runs.insert(id, row);
    }
    Ok((runs, summarized))
}
