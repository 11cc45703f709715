//! `kiln-agent boot`: netboot mode ([`crate::boot`]).
use argh::FromArgs;
use std::path::PathBuf;

use crate::boot::{BootConfig, boot_main};

/// Netboot mode: read kiln.url / kiln.run from /proc/cmdline, trust
/// /etc/kiln/trusted.pub, run, report, power off.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "boot")]
pub struct BootCmd {
    /// kernel command line file (default /proc/cmdline)
    #[argh(option, default = "PathBuf::from(\"/proc/cmdline\")")]
    pub cmdline: PathBuf,
    /// trusted key file (default /etc/kiln/trusted.pub)
    #[argh(option, default = "PathBuf::from(\"/etc/kiln/trusted.pub\")")]
    pub trust: PathBuf,
    /// do not power off at the end (for debugging)
    #[argh(switch)]
    pub no_poweroff: bool,
    /// the host key from `enroll`, used as the claim key when the ticket names an
    /// enrolled key (default /var/lib/kiln/agent.key)
    #[argh(option)]
    pub agent_key: Option<PathBuf>,
}

/// `boot`: returns the exit status (when it does not power off or idle).
pub fn cmd_boot(c: &BootCmd) -> i32 {
    boot_main(&BootConfig {
        cmdline: c.cmdline.clone(),
        trust: c.trust.clone(),
        no_poweroff: c.no_poweroff,
        agent_key: c.agent_key.clone(),
    })
}
