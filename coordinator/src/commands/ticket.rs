//! `ticket issue` and `ticket show`.
use anyhow::Result;
use argh::FromArgs;
use std::path::PathBuf;

use crate::exit;
use crate::state::State;
use crate::ticket::{issue, show, write_out};
use crate::units::parse_duration;

/// `ticket issue`: prints only the run id on stdout.
pub fn cmd_issue(state: &State, c: &TicketIssueCmd) -> Result<i32> {
    let ttl_s = parse_duration(&c.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    if c.boot && c.no_boot {
        anyhow::bail!("--boot and --no-boot contradict each other");
    }
    let host = state.hosts()?.get(&c.host).cloned();
    let boot = match &host {
        Some(h) => c.boot || (!c.no_boot && h.power.as_ref().is_some_and(|p| p.boot)),
        None => false,
    };
    if boot {
        let h = host.as_ref().expect("checked");
        if h.power.is_none() {
            anyhow::bail!(
                "--boot: host {} has no power control (host set {} --power URL --power-secret NAME)",
                h.name,
                h.name
            );
        }
        // Check the driver can be built (secret present, URL valid) before issuing.
        crate::power::driver(state, h)?;
    }
    let issued = issue(state, &c.plan, &c.host, ttl_s, c.url.as_deref())?;
    if let Some(out) = &c.out {
        write_out(state, &issued, out)?;
    }
    if boot {
        let h = host.as_ref().expect("checked");
        let settings = crate::powerq::settings(h, &issued.lights);
        crate::powerq::request_boot(state, &issued.run, settings)?;
    }
    println!("{}", issued.run);
    Ok(exit::OK)
}

/// `ticket show`: decode, verify against this coordinator's key, print.
pub fn cmd_show(state: &State, c: &TicketShowCmd) -> Result<i32> {
    show::show(state, &c.file, c.json)
}

/// Sign a ticket for a host; prints the run id.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "issue")]
pub struct TicketIssueCmd {
    /// plan file (TOML)
    #[argh(option)]
    pub plan: PathBuf,
    /// host name (hosts.toml)
    #[argh(option)]
    pub host: String,
    /// validity, e.g. 24h (default 24h)
    #[argh(option, default = "String::from(\"24h\")")]
    pub ttl: String,
    /// coordinator URL the agent reports to (default: none, offline)
    #[argh(option)]
    pub url: Option<String>,
    /// also write the ticket file here
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// lights-out: `serve` sets the host's next boot to the network and powers it on
    /// (or cycles it), watches the boot and powers it off after the run
    #[argh(switch)]
    pub boot: bool,
    /// do not boot the host even though its settings say --auto-boot yes
    #[argh(switch)]
    pub no_boot: bool,
}

/// Decode, verify and pretty-print a ticket file.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "show")]
pub struct TicketShowCmd {
    /// ticket file
    #[argh(positional)]
    pub file: PathBuf,
    /// JSON output
    #[argh(switch)]
    pub json: bool,
}
