//! Ticket issuing (`ticket issue`) and inspection (`ticket show`).
//!
//! A ticket binds a plan to one host for a while, signed with the state's key. It is
//! written to `runs/<run>/ticket.kiln`, and with `--out FILE` also to `FILE` plus
//! `FILE.cas/`, a folder of every CAS object the plan references, for offline runs.
use anyhow::{Context, Result, bail};
use kiln_protocol::{HostBinding, RunId, Sha256, SignedTicket, Ticket, VERSION};
use std::fs;
use std::path::{Path, PathBuf};

use crate::fsutil::{now_s, sync_dir, write_atomic};
use crate::plan::load_plan;
use crate::state::State;

pub mod show;

/// A freshly signed ticket.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The run the ticket starts.
    pub run: RunId,
    /// The signed content.
    pub ticket: Ticket,
    /// The ticket file's bytes.
    pub file: Vec<u8>,
    /// CAS objects the plan references.
    pub cas: Vec<Sha256>,
    /// The plan's lights-out settings.
    pub lights: crate::plan::PlanLights,
}

/// Longest `--ttl`: a year. A ticket is a bearer of trust until `not_after`; one that
/// never expires cannot be taken back.
pub const MAX_TTL_S: u64 = 365 * 24 * 3600;

/// Signs a ticket for `host` running the plan at `plan` and records it under
/// `runs/<run>/ticket.kiln`.
pub fn issue(
    state: &State,
    plan: &Path,
    host: &str,
    ttl_s: u64,
    url: Option<&str>,
) -> Result<Issued> {
    if ttl_s == 0 {
        bail!("--ttl must be longer than 0s");
    }
    if ttl_s > MAX_TTL_S {
        bail!("--ttl must be at most 365 days ({MAX_TTL_S}s)");
    }
    let coordinator = url.map(check_url).transpose()?;
    let hosts = state.hosts()?;
    let h = hosts.get(host).with_context(|| {
        format!("no host named {host:?} (kiln-coordinator host add {host} --mac M)")
    })?;
    let macs = h.mac_list()?;
    if macs.is_empty() && h.serial.is_none() {
        bail!("host {host} has neither a MAC nor a serial; a ticket must bind to one");
    }
    let binding = HostBinding {
        name: h.name.clone(),
        macs,
        serial: h.serial.clone(),
        spec: h.host_spec()?,
        agent_key: h.agent_key()?,
    };
    let loaded = load_plan(plan, state, h)?;
    let key = state.signing_key()?;
    let run = loop {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).context("reading random bytes for the run id")?;
        let run = RunId(id);
        if !state.run_dir(&run).exists() {
            break run;
        }
    };
    let issued_at = now_s();
    let ticket = Ticket {
        version: VERSION,
        run,
        issued_at,
        not_after: issued_at.saturating_add(ttl_s),
        host: binding,
        coordinator,
        plan: loaded.plan,
    };
    // The agent's own rule: never sign what an agent would refuse.
    ticket
        .check_limits()
        .map_err(|e| anyhow::anyhow!("cannot issue a ticket for {}: {e}", plan.display()))?;
    let file = SignedTicket::sign(&ticket, &key).to_file();
    write_atomic(&state.run_dir(&run).join("ticket.kiln"), &file, 0o644)?;
    crate::journal::note_run(state, &run);
    Ok(Issued {
        run,
        ticket,
        file,
        cas: loaded.cas,
        lights: loaded.lights,
    })
}

/// Writes the ticket to `out` and the CAS objects it references to `out.cas/`.
pub fn write_out(state: &State, issued: &Issued, out: &Path) -> Result<()> {
    write_atomic(out, &issued.file, 0o644)?;
    let dir = cas_dir(out);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cas = state.cas();
    for sha in &issued.cas {
        let dest = dir.join(sha.to_string());
        if dest.is_file() {
            continue;
        }
        let tmp = dir.join(format!(".{sha}.tmp{}", std::process::id()));
        fs::copy(cas.path(sha), &tmp)
            .with_context(|| format!("copying cas object {sha} to {}", dir.display()))?;
        fs::rename(&tmp, &dest).with_context(|| format!("renaming into {}", dest.display()))?;
    }
    sync_dir(&dir)
}

/// `FILE.cas`, the folder beside a ticket file that holds its CAS objects.
pub fn cas_dir(ticket: &Path) -> PathBuf {
    let mut name = ticket.as_os_str().to_owned();
    name.push(".cas");
    PathBuf::from(name)
}

fn check_url(url: &str) -> Result<String> {
    let u = url.trim().trim_end_matches('/');
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !u.contains(char::is_whitespace) => Ok(u.to_string()),
        _ => bail!("--url {url:?} is not an http:// or https:// URL"),
    }
}

#[cfg(test)]
mod tests;
