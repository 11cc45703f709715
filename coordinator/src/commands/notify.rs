//! `notify add|list|rm|status`: the notification receivers and the outbox.
use anyhow::{Result, bail};
use argh::FromArgs;

use crate::exit;
use crate::fsutil::now_s;
use crate::notify::{self, Receiver, Via};
use crate::state::State;
use crate::visible::visible;

/// The kinds a receiver gets when `--on` is not given: everything that wants a
/// person's attention.
pub const DEFAULT_ON: &str = "failed,held,never_booted,stale,contested";

/// `notify add`: checks and stores a receiver.
pub fn cmd_add(state: &State, c: &NotifyAddCmd) -> Result<i32> {
    let (via, url) = match (&c.webhook, &c.ntfy, &c.smtp) {
        (Some(u), None, None) => (Via::Webhook, u),
        (None, Some(u), None) => (Via::Ntfy, u),
        (None, None, Some(u)) => (Via::Smtp, u),
        _ => bail!("give exactly one of --webhook URL, --ntfy URL, --smtp smtp://HOST:PORT"),
    };
    let r = Receiver {
        name: c.name.clone(),
        via,
        url: url.clone(),
        secret: c.secret.clone(),
        from: c.from.clone(),
        to: c.to.clone(),
        on: notify::parse_on(c.on.as_deref().unwrap_or(DEFAULT_ON))?,
        ca: match &c.ca {
            None => None,
            Some(path) => {
                if !url.starts_with("https://") {
                    bail!("--ca is for an https:// receiver");
                }
                let pem = kiln_protocol::io::read_text_capped(
                    path,
                    crate::power::tls::MAX_CA_BYTES,
                    "a certificate file",
                )
                .map_err(|e| anyhow::anyhow!("--ca {}: {e}", path.display()))?;
                crate::power::tls::parse_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("--ca {}: {e:#}", path.display()))?;
                Some(pem)
            }
        },
    };
    r.check()?;
    if let Some(s) = &r.secret
        && !state.secret_path(s)?.is_file()
    {
        log::warn!("secret {s} is not set yet (kiln-coordinator secret set {s} --file F)");
    }
    let mut all = notify::receivers(state)?;
    if all.receivers.iter().any(|x| x.name == r.name) {
        bail!(
            "receiver {} exists (kiln-coordinator notify rm {} first)",
            r.name,
            r.name
        );
    }
    all.receivers.push(r.clone());
    notify::save_receivers(state, &all)?;
    println!(
        "added {} receiver {} ({}) for {}",
        via.as_str(),
        r.name,
        r.redacted_url(),
        on_text(&r)
    );
    Ok(exit::OK)
}

fn on_text(r: &Receiver) -> String {
    r.on.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `notify list`: one line per receiver.
pub fn cmd_list(state: &State) -> Result<i32> {
    let all = notify::receivers(state)?;
    if all.receivers.is_empty() {
        println!("no receivers (kiln-coordinator notify add)");
    }
    for r in &all.receivers {
        let mut line = format!(
            "{}  {}  {}  on {}",
            r.name,
            r.via.as_str(),
            r.redacted_url(),
            on_text(r)
        );
        if let Some(s) = &r.secret {
            line.push_str(&format!("  secret {s}"));
        }
        if let Some(f) = &r.from {
            line.push_str(&format!("  from {f} to {}", r.to.join(",")));
        }
        println!("{}", visible(&line));
    }
    Ok(exit::OK)
}

/// `notify rm`: removes a receiver and drops what is queued for it.
pub fn cmd_rm(state: &State, c: &NotifyRmCmd) -> Result<i32> {
    let mut all = notify::receivers(state)?;
    let before = all.receivers.len();
    all.receivers.retain(|r| r.name != c.name);
    if all.receivers.len() == before {
        bail!("no receiver {}", visible(&c.name));
    }
    notify::save_receivers(state, &all)?;
    let dropped = notify::drop_for(state, &c.name)?;
    println!("removed receiver {} ({dropped} queued dropped)", c.name);
    Ok(exit::OK)
}

/// `notify status`: what waits in the outbox, failing deliveries with their error.
pub fn cmd_status(state: &State, c: &NotifyStatusCmd) -> Result<i32> {
    let q = notify::outbox(state)?;
    let now = now_s();
    let (mut pending, mut failing, mut bad) = (0, 0, 0);
    let mut rows = Vec::new();
    for item in &q {
        match &item.entry {
            Ok(e) => {
                if e.attempts > 0 {
                    failing += 1;
                } else {
                    pending += 1;
                }
                let n = &e.notification;
                rows.push(serde_json::json!({
                    "key": n.key,
                    "receiver": e.receiver,
                    "event": n.event.as_str(),
                    "run": n.run,
                    "host": n.host,
                    "queued_at": n.time,
                    "attempts": e.attempts,
                    "next_at": e.next_at,
                    "last_error": e.last_error,
                }));
            }
            Err(why) => {
                bad += 1;
                rows.push(serde_json::json!({
                    "file": item.path.display().to_string(),
                    "unreadable": why,
                }));
            }
        }
    }
    if c.json {
        let out = serde_json::json!({
            "pending": pending, "failing": failing, "unreadable": bad, "queued": rows,
        });
        println!("{out}");
        return Ok(exit::OK);
    }
    println!("{pending} pending, {failing} failing, {bad} unreadable");
    for item in &q {
        match &item.entry {
            Ok(e) => {
                let n = &e.notification;
                let mut line = format!(
                    "{}  {}  {}  run {}  {}",
                    n.key,
                    e.receiver,
                    n.event.as_str(),
                    n.run,
                    if e.attempts == 0 {
                        "pending".to_string()
                    } else {
                        format!(
                            "failed {} time(s), next in {}s",
                            e.attempts,
                            e.next_at.saturating_sub(now)
                        )
                    }
                );
                if let Some(err) = &e.last_error {
                    line.push_str(&format!(": {err}"));
                }
                println!("{}", visible(&line));
            }
            Err(why) => println!("{}", visible(&format!("{}: {why}", item.path.display()))),
        }
    }
    Ok(exit::OK)
}

/// Add a notification receiver.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct NotifyAddCmd {
    /// receiver name
    #[argh(positional)]
    pub name: String,
    /// a webhook URL (http:// or https://): JSON POST, signed with --secret (header
    /// Kiln-Signature: sha256=HEX, the HMAC-SHA256 of the body)
    #[argh(option)]
    pub webhook: Option<String>,
    /// an ntfy topic URL (http(s)://…/topic); --secret names an access token
    #[argh(option)]
    pub ntfy: Option<String>,
    /// an SMTP relay, smtp://HOST:PORT (with --from and --to)
    #[argh(option)]
    pub smtp: Option<String>,
    /// name of a secret (secret set): the webhook's HMAC key or ntfy's token
    #[argh(option)]
    pub secret: Option<String>,
    /// for an https:// receiver: a PEM file of certificates to trust instead of the
    /// public roots (the receiver's own certificate or its CA)
    #[argh(option)]
    pub ca: Option<std::path::PathBuf>,
    /// mail sender address (smtp)
    #[argh(option)]
    pub from: Option<String>,
    /// mail recipient address (smtp; repeat for more)
    #[argh(option)]
    pub to: Vec<String>,
    /// events, comma-separated: failed, passed, held, never_booted, stale,
    /// contested, any (default failed,held,never_booted,stale,contested)
    #[argh(option)]
    pub on: Option<String>,
}

/// List the notification receivers.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct NotifyListCmd {}

/// Remove a notification receiver (and drop what is queued for it).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "rm")]
pub struct NotifyRmCmd {
    /// receiver name
    #[argh(positional)]
    pub name: String,
}

/// Show pending and failing deliveries in the outbox.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub struct NotifyStatusCmd {
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}
