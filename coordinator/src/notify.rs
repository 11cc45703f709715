//! Notifications: the receivers (`notify/receivers.toml`), the durable outbox
//! (`notify/outbox/`), and [`emit`], the one call that queues an event of a run for
//! every receiver that wants it.
//!
//! A notification is written to the outbox (one file per notification and receiver,
//! fsynced, then renamed into place) before anything is sent; the server's sender
//! thread ([`sender`]) delivers it ([`deliver`]) and removes the file only once the
//! receiver accepted it, retrying with backoff until then, across restarts. Each
//! carries a key that is the same for the same run, event and receiver
//! ([`key`]): delivery is at-least-once, and a receiver deduplicates by the key.
use anyhow::{Context, Result, bail};
use kiln_protocol::{Outcome, RunId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, PoisonError};

use crate::fsutil::{now_s, write_atomic};
use crate::state::{MAX_TOML_BYTES, State, check_name, one_line};
use crate::store::RunDir;

pub mod deliver;
pub mod sender;
pub mod stale;
#[cfg(test)]
mod tests;

/// The folder of notifications in the state folder.
pub const DIR: &str = "notify";

/// Largest outbox file read back; kiln writes well under 4 KiB.
pub const MAX_ENTRY_BYTES: u64 = 64 << 10;

/// Longest detail a notification carries; longer ones are cut.
pub const MAX_DETAIL: usize = 1000;

/// What happened to a run (or its host), as receivers filter on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The run finished failed, timed out or in error.
    Failed,
    /// The run finished passed (a warning or skip included).
    Passed,
    /// The run or its host is held (a safety gate, or kept for a person).
    Held,
    /// The host never booted into its run.
    NeverBooted,
    /// The run stopped reporting.
    Stale,
    /// A second claimant tried to take the run.
    Contested,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Failed,
        Kind::Passed,
        Kind::Held,
        Kind::NeverBooted,
        Kind::Stale,
        Kind::Contested,
    ];

    /// The word in `--on` and in the notification.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::Passed => "passed",
            Kind::Held => "held",
            Kind::NeverBooted => "never_booted",
            Kind::Stale => "stale",
            Kind::Contested => "contested",
        }
    }

    /// Parses [`Kind::as_str`]'s words.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The notification a finished run's outcome gives: none for `aborted` (a
    /// person asked for it).
    pub fn for_outcome(o: Outcome) -> Option<Kind> {
        match o {
            Outcome::Passed | Outcome::Warning | Outcome::Skipped => Some(Kind::Passed),
            Outcome::Failed | Outcome::TimedOut | Outcome::Error => Some(Kind::Failed),
            Outcome::Held => Some(Kind::Held),
            Outcome::Aborted => None,
        }
    }
}

/// How a receiver is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A JSON POST, signed with HMAC-SHA256 when the receiver names a secret.
    Webhook,
    /// A POST to an ntfy topic URL (`Title`, `Tags` headers, text body).
    Ntfy,
    /// A mail through an SMTP relay.
    Smtp,
}

impl Via {
    /// The word in `notify list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Webhook => "webhook",
            Via::Ntfy => "ntfy",
            Via::Smtp => "smtp",
        }
    }
}

/// `notify/receivers.toml`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receivers {
    /// The receivers.
    #[serde(default, rename = "receiver")]
    pub receivers: Vec<Receiver>,
}

/// One receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// Unique name (a file-name-safe word).
    pub name: String,
    /// How it is reached.
    pub via: Via,
    /// `http://…` for a webhook or ntfy topic, `smtp://host[:port]` for mail.
    pub url: String,
    /// Name of a secret (`secret set`): the webhook's HMAC key, or ntfy's access
    /// token (sent as `Authorization: Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Mail sender (smtp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Mail recipients (smtp).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// The kinds it wants.
    pub on: Vec<Kind>,
    /// For an `https://` receiver: PEM certificates to trust instead of the public
    /// roots (its own certificate or its CA; `notify add --ca FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

impl Receiver {
    /// Whether it wants `kind`.
    pub fn wants(&self, kind: Kind) -> bool {
        self.on.contains(&kind)
    }

    /// Checks the fields for its `via`: names, URL shape, addresses.
    pub fn check(&self) -> Result<()> {
        check_name(&self.name, "receiver")?;
        if let Some(s) = &self.secret {
            check_name(s, "secret")?;
        }
        match self.via {
            Via::Webhook | Via::Ntfy => {
                deliver::http_target(&self.url)?;
                if self.from.is_some() || !self.to.is_empty() {
                    bail!("receiver {}: --from and --to are for --smtp", self.name);
                }
            }
            Via::Smtp => {
                deliver::smtp_target(&self.url)?;
                if self.secret.is_some() {
                    bail!(
                        "receiver {}: --secret is for --webhook and --ntfy",
                        self.name
                    );
                }
                let from = self.from.as_deref().context("--smtp needs --from")?;
                deliver::check_address(from)?;
                if self.to.is_empty() {
                    bail!("--smtp needs --to");
                }
                for a in &self.to {
                    deliver::check_address(a)?;
                }
            }
        }
        if self.on.is_empty() {
            bail!("receiver {}: --on names no event", self.name);
        }
        Ok(())
    }

    /// The URL for logs and listings: scheme, host and port only (a webhook's path
    /// often holds a token).
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// `scheme://host:port/…`: the part of a URL that holds no token.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let auth = rest.split(['/', '?', '#']).next().unwrap_or("");
    let auth = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let more = rest.len() > auth.len();
    format!("{scheme}://{auth}{}", if more { "/…" } else { "" })
}

/// Parses an `--on` list: kind words and `any`, comma-separated.
pub fn parse_on(list: &str) -> Result<Vec<Kind>> {
    let mut out = Vec::new();
    for w in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if w == "any" {
            return Ok(Kind::ALL.to_vec());
        }
        let k = Kind::parse(w).with_context(|| {
            let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown event {w:?} (one of {}, any)", all.join(", "))
        })?;
        if !out.contains(&k) {
            out.push(k);
        }
    }
    if out.is_empty() {
        bail!("--on names no event");
    }
    Ok(out)
}

/// Path of `receivers.toml`.
pub fn receivers_path(state: &State) -> PathBuf {
    state.root.join(DIR).join("receivers.toml")
}

/// The outbox folder.
pub fn outbox_dir(state: &State) -> PathBuf {
    state.root.join(DIR).join("outbox")
}

/// Reads the receivers (none when the file is missing).
pub fn receivers(state: &State) -> Result<Receivers> {
    let path = receivers_path(state);
    let text = match kiln_protocol::io::read_text_capped(&path, MAX_TOML_BYTES, "receivers.toml") {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Receivers::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e)))
}

/// Whether any receiver is configured (a cheap check before costly work; an
/// unreadable file counts as yes, so the error surfaces in [`emit`]).
pub fn has_receivers(state: &State) -> bool {
    receivers(state).map_or(true, |r| !r.receivers.is_empty())
}

/// Writes the receivers atomically (0600: it may name secrets, and URLs with tokens).
pub fn save_receivers(state: &State, r: &Receivers) -> Result<()> {
    let body = toml::to_string_pretty(r).context("encoding receivers.toml")?;
    write_atomic(
        &receivers_path(state),
        format!("# kiln notification receivers (kiln-coordinator notify add)\n{body}").as_bytes(),
        0o600,
    )
}

/// What a receiver is told: the webhook's JSON body, and the fields of the ntfy
/// message and the mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The idempotency key: the same for the same run, event and receiver.
    pub key: String,
    /// The event ([`Kind::as_str`]).
    pub event: Kind,
    /// The run id.
    pub run: String,
    /// The host the run's ticket names ("" when unreadable).
    pub host: String,
    /// The plan's name ("" when unreadable).
    pub plan: String,
    /// One line about it (the outcome, the refusal, …).
    pub detail: String,
    /// When it was queued, unix seconds.
    pub time: u64,
}

/// One outbox file: a notification for one receiver and its delivery attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The receiver's name.
    pub receiver: String,
    /// What is sent.
    pub notification: Notification,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not before this time (unix s).
    #[serde(default)]
    pub next_at: u64,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The idempotency key of `kind` for `run` and `receiver`: 32 hex digits of
/// SHA-256 over them.
pub fn key(run: &RunId, kind: Kind, receiver: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"kiln-notify\0");
    h.update(run.to_string().as_bytes());
    h.update(b"\0");
    h.update(kind.as_str().as_bytes());
    h.update(b"\0");
    h.update(receiver.as_bytes());
    hex(&h.finalize()[..16])
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Queues `kind` for `run` with `detail` for every receiver that wants it: one
/// outbox file each, durable when this returns. One already queued (not yet
/// delivered) is left as it is. Returns how many were queued. Other parts call this
/// when they see an event (a held host, a host that never booted); the ingest calls
/// it for a finished run and a contested claim.
pub fn emit(state: &State, run: &RunId, kind: Kind, detail: &str) -> Result<usize> {
    let all = receivers(state)?;
    let wanting: Vec<&Receiver> = all.receivers.iter().filter(|r| r.wants(kind)).collect();
    if wanting.is_empty() {
        return Ok(0);
    }
    let (host, plan) = state
        .public_key()
        .and_then(|k| RunDir::new(state, *run).ticket(&k))
        .map(|(_, t)| (t.host.name, t.plan.name))
        .unwrap_or_default();
    let dir = outbox_dir(state);
    let mut queued = 0;
    for r in wanting {
        let key = key(run, kind, &r.name);
        let path = dir.join(format!("{key}.json"));
        if path.exists() {
            continue;
        }
        let entry = Entry {
            receiver: r.name.clone(),
            notification: Notification {
                key,
                event: kind,
                run: run.to_string(),
                host: host.clone(),
                plan: plan.clone(),
                detail: cut(detail, MAX_DETAIL),
                time: now_s(),
            },
            attempts: 0,
            next_at: 0,
            last_error: None,
        };
        let bytes = serde_json::to_vec_pretty(&entry).context("encoding a notification")?;
        write_atomic(&path, &bytes, 0o600)
            .with_context(|| format!("queueing a notification for {}", r.name))?;
        queued += 1;
    }
    if queued > 0 {
        log::info!(
            "run {run}: {} queued for {queued} receiver(s)",
            kind.as_str()
        );
        wake();
    }
    Ok(queued)
}

/// Queues the notification of a run that finished with `outcome` (none for
/// `aborted`).
pub fn emit_finished(state: &State, run: &RunId, outcome: Outcome) -> Result<usize> {
    match Kind::for_outcome(outcome) {
        Some(kind) => emit(state, run, kind, &format!("finished {outcome}")),
        None => Ok(0),
    }
}

/// At most `max` bytes of `s` on one line (cut at a character boundary).
pub fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].replace(['\r', '\n'], " ")
}

/// An outbox file as read back.
#[derive(Debug)]
pub struct Queued {
    /// Its path.
    pub path: PathBuf,
    /// Its content, or why it cannot be read.
    pub entry: Result<Entry, String>,
}

/// Most outbox files one listing reads (the rest wait for the next pass).
pub const MAX_LISTED: usize = 100_000;

/// The outbox's files (at most [`MAX_LISTED`]), unordered: `<key>.json`, not temp files.
pub fn outbox_paths(state: &State) -> Result<Vec<PathBuf>> {
    let dir = outbox_dir(state);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        out.push(e.path());
        if out.len() >= MAX_LISTED {
            break;
        }
    }
    Ok(out)
}

/// Reads one outbox file (size-bounded), or says why it cannot be read.
pub fn read_entry(path: &std::path::Path) -> Result<Entry, String> {
    kiln_protocol::io::read_file_capped(path, MAX_ENTRY_BYTES, "an outbox file")
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
}

/// The outbox, oldest first (by queue time); unreadable files are listed with the
/// reason.
pub fn outbox(state: &State) -> Result<Vec<Queued>> {
    let mut out: Vec<Queued> = outbox_paths(state)?
        .into_iter()
        .map(|path| Queued {
            entry: read_entry(&path),
            path,
        })
        .collect();
    out.sort_by_key(|q| q.entry.as_ref().map_or(0, |e| e.notification.time));
    Ok(out)
}

/// Drops every queued notification for `receiver` (after `notify rm`); returns how
/// many.
pub fn drop_for(state: &State, receiver: &str) -> Result<usize> {
    let mut n = 0;
    for q in outbox(state)? {
        if q.entry.as_ref().is_ok_and(|e| e.receiver == receiver) {
            std::fs::remove_file(&q.path)
                .with_context(|| format!("removing {}", q.path.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

static WAKE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Tells this process's sender that something was queued.
pub fn wake() {
    let (m, cv) = &WAKE;
    *m.lock().unwrap_or_else(PoisonError::into_inner) = true;
    cv.notify_all();
}

/// Waits for [`wake`] or `timeout`, whichever comes first.
pub(crate) fn wait(timeout: std::time::Duration) {
    let (m, cv) = &WAKE;
    let g = m.lock().unwrap_or_else(PoisonError::into_inner);
    let (mut g, _) = cv
        .wait_timeout_while(g, timeout, |woken| !*woken)
        .unwrap_or_else(PoisonError::into_inner);
    *g = false;
}
