//! `host power HOST status|on|off|cycle|pxe`: one action on a host's BMC, one line out.
use anyhow::Result;
use argh::FromArgs;

use crate::exit;
use crate::power::{Action, act_on_host};
use crate::state::State;
use crate::visible::visible;

/// Switch a host through its BMC or Wake-on-LAN: status, on, off, cycle, or pxe
/// (boot from the network next time, once).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "power")]
pub struct HostPowerCmd {
    /// host name
    #[argh(positional)]
    pub name: String,
    /// status, on, off, cycle or pxe
    #[argh(positional)]
    pub action: Action,
}

/// `host power`: prints `HOST ACTION: ANSWER` and exits 0, or one error line naming
/// the BMC and exits 3 (the BMC refused or did not answer) or 2 (not configured).
pub fn cmd_host_power(state: &State, c: &HostPowerCmd) -> Result<i32> {
    let hosts = state.hosts()?;
    let Some(host) = hosts.get(&c.name) else {
        anyhow::bail!("no host {:?}", c.name);
    };
    if host.power.is_none() {
        anyhow::bail!(
            "host {} has no power control (host set {} --power URL --power-secret NAME)",
            host.name,
            host.name
        );
    }
    match act_on_host(state, host, c.action) {
        Ok((answer, took)) => {
            let state_word = match (c.action, answer.state) {
                (Action::Status, Some(s)) => format!("{s}: "),
                _ => String::new(),
            };
            let text = if answer.text.is_empty() {
                "done"
            } else {
                &answer.text
            };
            println!(
                "{} {}: {state_word}{} ({})",
                visible(&host.name),
                c.action.as_str(),
                visible(text),
                crate::fmt::fmt_ms(took.as_millis() as u64)
            );
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!(
                "error: host {} {}: {e}",
                visible(&host.name),
                c.action.as_str()
            );
            Ok(if e.unsupported {
                exit::REFUSED
            } else {
                exit::error()
            })
        }
    }
}
