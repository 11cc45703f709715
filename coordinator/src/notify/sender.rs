//! The server's sender thread: delivers what is due in the outbox, removes what a
//! receiver accepted, and backs off what failed (per notification, in its file, so a
//! restart keeps the schedule). One sender per state folder (an flock on
//! `notify/sender.lock`); a second server waits for it.
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Entry, deliver, outbox, outbox_paths, read_entry, receivers};
use crate::fsutil::{now_s, write_atomic};
use crate::state::State;

/// The first retry waits this long; each failure doubles it up to [`MAX_BACKOFF_S`].
pub const FIRST_BACKOFF_S: u64 = 1;

/// The longest wait between two attempts of one notification.
pub const MAX_BACKOFF_S: u64 = 60;

/// How often the sender looks for runs gone stale ([`super::stale::check`]).
const STALE_CHECK: Duration = Duration::from_secs(15);

/// How long the sender sleeps when nothing is due and nothing is queued.
const IDLE: Duration = Duration::from_secs(5);

/// The wait after `attempts` failed attempts.
pub fn backoff(attempts: u32) -> u64 {
    let shift = attempts.saturating_sub(1).min(16);
    (FIRST_BACKOFF_S << shift).min(MAX_BACKOFF_S)
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Delivered and removed.
    pub sent: usize,
    /// Tried and failed (kept, with a later `next_at`).
    pub failed: usize,
    /// Left for later (not due, or their receiver failed in this pass).
    pub waiting: usize,
    /// Dropped: their receiver was removed.
    pub dropped: usize,
    /// The earliest `next_at` of what is left (unix s), if anything is.
    pub next_at: Option<u64>,
}

/// The sender's memory across passes: the outbox entries it has read (it is their
/// only writer once queued, so only new files are read again), and each receiver's
/// run of failures.
#[derive(Debug, Default)]
pub struct Sender {
    cache: HashMap<PathBuf, Entry>,
    /// Receiver name → (failures in a row, not before this time). While a receiver
    /// is backing off none of its notifications is tried: a receiver that is down
    /// costs one attempt per backoff, however much waits for it.
    receivers: HashMap<String, (u32, u64)>,
}

/// One pass with a fresh [`Sender`] (reads every outbox file).
pub fn deliver_due(state: &State) -> Result<Pass> {
    Sender::default().pass(state)
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

impl Sender {
    /// One pass over the outbox: sends every due notification once, the earliest
    /// due first (the fresh before the retried, so one notification a receiver
    /// refuses does not hold back the others). After a receiver fails, its
    /// notifications wait for its backoff.
    pub fn pass(&mut self, state: &State) -> Result<Pass> {
        let rs = receivers(state)?;
        let mut pass = Pass::default();
        let paths = outbox_paths(state)?;
        let listed: HashSet<&PathBuf> = paths.iter().collect();
        self.cache.retain(|p, _| listed.contains(p));
        let mut due = Vec::new();
        for path in &paths {
            if !self.cache.contains_key(path) {
                match read_entry(path) {
                    Ok(e) => {
                        self.cache.insert(path.clone(), e);
                    }
                    Err(why) => {
                        // Not kiln's: moved aside so it is neither retried nor lost.
                        log::warn!("notify: {}: {why}; set aside", path.display());
                        let _ = std::fs::rename(path, path.with_extension("bad"));
                        continue;
                    }
                }
            }
            let e = &self.cache[path];
            due.push((e.next_at, e.notification.time, path.clone()));
        }
        due.sort();
        self.receivers
            .retain(|name, _| rs.receivers.iter().any(|r| &r.name == name));
        for (_, _, path) in due {
            let Some(mut e) = self.cache.get(&path).cloned() else {
                continue;
            };
            let Some(r) = rs.receivers.iter().find(|r| r.name == e.receiver) else {
                log::warn!(
                    "notify: receiver {} is gone; dropping its {} of run {}",
                    e.receiver,
                    e.notification.event.as_str(),
                    e.notification.run
                );
                remove(&path)?;
                self.cache.remove(&path);
                pass.dropped += 1;
                continue;
            };
            let now = now_s();
            let (_, receiver_until) = self.receivers.get(&r.name).copied().unwrap_or((0, 0));
            let wait_until = receiver_until.max(e.next_at);
            if wait_until > now {
                pass.waiting += 1;
                pass.next_at = Some(pass.next_at.map_or(wait_until, |n| n.min(wait_until)));
                continue;
            }
            match deliver::send(state, r, &e) {
                Ok(()) => {
                    remove(&path)?;
                    self.cache.remove(&path);
                    self.receivers.remove(&r.name);
                    log::info!(
                        "notify: {} of run {} delivered to {} ({})",
                        e.notification.event.as_str(),
                        e.notification.run,
                        r.name,
                        e.notification.key
                    );
                    pass.sent += 1;
                }
                Err(why) => {
                    let now = now_s();
                    e.attempts = e.attempts.saturating_add(1);
                    e.next_at = now + backoff(e.attempts);
                    let fails = self.receivers.get(&r.name).map_or(0, |f| f.0) + 1;
                    let until = now + backoff(fails);
                    self.receivers.insert(r.name.clone(), (fails, until));
                    log::warn!(
                        "notify: {} ({}) attempt {} failed: {why}; next in {}s",
                        r.name,
                        r.redacted_url(),
                        e.attempts,
                        e.next_at.max(until).saturating_sub(now)
                    );
                    e.last_error = Some(why);
                    let bytes = serde_json::to_vec_pretty(&e).context("encoding a notification")?;
                    // One sender per state folder: nobody else rewrites a queued file
                    // (one dropped meanwhile by `notify rm` comes back, and is dropped
                    // at the next pass: its receiver is gone).
                    write_atomic(&path, &bytes, 0o600)?;
                    self.cache.insert(path.clone(), e);
                    pass.failed += 1;
                    pass.next_at = Some(pass.next_at.map_or(until, |n| n.min(until)));
                }
            }
        }
        Ok(pass)
    }
}

/// Starts the sender thread for `state`.
pub fn spawn(state: &State) -> Result<()> {
    let state = state.clone();
    std::thread::Builder::new()
        .name("notify".into())
        .spawn(move || run(&state))
        .context("starting the notification sender")?;
    Ok(())
}

fn run(state: &State) {
    let dir = state.root.join(super::DIR);
    let lock = std::fs::create_dir_all(&dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("sender.lock"))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|f| {
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow::anyhow!("{e}"))
        });
    let _lock = match lock {
        Ok(l) => l,
        Err(e) => {
            log::error!(
                "notify: locking {}/sender.lock: {e}; not sending",
                dir.display()
            );
            return;
        }
    };
    match (receivers(state), outbox(state)) {
        (Ok(r), Ok(q)) if !r.receivers.is_empty() || !q.is_empty() => log::info!(
            "notify: {} receiver(s), {} notification(s) queued",
            r.receivers.len(),
            q.len()
        ),
        (Err(e), _) | (_, Err(e)) => log::warn!("notify: {e:#}"),
        _ => {}
    }
    let mut sender = Sender::default();
    let mut stale_checked: Option<std::time::Instant> = None;
    loop {
        if stale_checked.is_none_or(|t| t.elapsed() >= STALE_CHECK) {
            if let Err(e) = super::stale::check(state) {
                log::warn!("notify: checking for stale runs: {e:#}");
            }
            sweep_temp(state);
            stale_checked = Some(std::time::Instant::now());
        }
        let sleep = match sender.pass(state) {
            Ok(p) => {
                if p.sent + p.failed + p.dropped > 0 {
                    log::debug!("notify: {p:?}");
                }
                p.next_at.map_or(IDLE, |at| {
                    Duration::from_secs(at.saturating_sub(now_s())).min(IDLE)
                })
            }
            Err(e) => {
                log::warn!("notify: {e:#}");
                IDLE
            }
        };
        super::wait(sleep.max(Duration::from_millis(200)));
    }
}

/// Removes temp files a crash left in the outbox in the middle of a write (an hour
/// old: no write takes that long).
fn sweep_temp(state: &State) {
    let Ok(rd) = std::fs::read_dir(super::outbox_dir(state)) else {
        return;
    };
    for e in rd.map_while(Result::ok).take(super::MAX_LISTED) {
        let name = e.file_name();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if name
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.contains(".tmp"))
            && old
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
