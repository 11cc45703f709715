//! The server's sender thread: delivers what is due in the outbox, removes what a
//! receiver accepted, and backs off what failed (per notification, in its file, so a
//! restart keeps the schedule). One sender per state folder (an flock on
//! `notify/sender.lock`); a second server waits for it.
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::time::Duration;

use super::{Entry, deliver, outbox, receivers};
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

/// One pass over the outbox: sends every due notification once, in queue order.
/// After a receiver fails, its other notifications wait for the next pass.
pub fn deliver_due(state: &State) -> Result<Pass> {
    let rs = receivers(state)?;
    let mut pass = Pass::default();
    // Receivers that failed in this pass, and when their failed notification is due.
    let mut down: HashMap<String, u64> = HashMap::new();
    for q in outbox(state)? {
        let mut e: Entry = match q.entry {
            Ok(e) => e,
            Err(why) => {
                // Not kiln's: moved aside so it is neither retried nor lost.
                log::warn!("notify: {}: {why}; set aside", q.path.display());
                let _ = std::fs::rename(&q.path, q.path.with_extension("bad"));
                continue;
            }
        };
        let Some(r) = rs.receivers.iter().find(|r| r.name == e.receiver) else {
            log::warn!(
                "notify: receiver {} is gone; dropping its {} of run {}",
                e.receiver,
                e.notification.event.as_str(),
                e.notification.run
            );
            std::fs::remove_file(&q.path)
                .with_context(|| format!("removing {}", q.path.display()))?;
            pass.dropped += 1;
            continue;
        };
        let now = now_s();
        let wait_until = down.get(&r.name).copied().unwrap_or(0).max(e.next_at);
        if wait_until > now || down.contains_key(&r.name) {
            pass.waiting += 1;
            pass.next_at = Some(pass.next_at.map_or(wait_until, |n| n.min(wait_until)));
            continue;
        }
        match deliver::send(state, r, &e) {
            Ok(()) => {
                std::fs::remove_file(&q.path)
                    .with_context(|| format!("removing {}", q.path.display()))?;
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
                e.attempts = e.attempts.saturating_add(1);
                e.next_at = now_s() + backoff(e.attempts);
                log::warn!(
                    "notify: {} ({}) attempt {} failed: {why}; next in {}s",
                    r.name,
                    r.redacted_url(),
                    e.attempts,
                    e.next_at.saturating_sub(now_s())
                );
                e.last_error = Some(why);
                let bytes = serde_json::to_vec_pretty(&e).context("encoding a notification")?;
                // Delivered meanwhile by nobody else (one sender), so rewriting is safe.
                write_atomic(&q.path, &bytes, 0o600)?;
                down.insert(r.name.clone(), e.next_at);
                pass.failed += 1;
                pass.next_at = Some(pass.next_at.map_or(e.next_at, |n| n.min(e.next_at)));
            }
        }
    }
    Ok(pass)
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
    let mut stale_checked: Option<std::time::Instant> = None;
    loop {
        if stale_checked.is_none_or(|t| t.elapsed() >= STALE_CHECK) {
            if let Err(e) = super::stale::check(state) {
                log::warn!("notify: checking for stale runs: {e:#}");
            }
            sweep_temp(state);
            stale_checked = Some(std::time::Instant::now());
        }
        let sleep = match deliver_due(state) {
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
