//! Lights-out power control: one small trait ([`Bmc`]) with three drivers — IPMI over
//! LAN through `ipmitool` (`power/ipmi.rs`), Redfish over HTTPS (`power/redfish.rs`)
//! and Wake-on-LAN (`power/wol.rs`) — plus a host's power settings (`[host.power]` in
//! hosts.toml) and the last reading of each host's power state (`power/<host>.json` in
//! the state folder, for `host list`).
//!
//! A BMC password is a coordinator secret (`secret set NAME`): it is handed to the
//! driver in memory and never written to a command line, log, event, page or report.
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, Instant};

use crate::fsutil::{now_ms, write_atomic};
pub use crate::state::{DEFAULT_BOOT_TIMEOUT_S, DEFAULT_LOST_AFTER_S, PowerToml};
use crate::state::{Host, State};

pub mod ipmi;
pub mod redfish;
pub mod tls;
pub mod wol;

/// What a power command asks of a host's BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read the power state.
    Status,
    /// Power on.
    On,
    /// Power off (hard).
    Off,
    /// Power cycle (or reset); a host that is off is powered on.
    Cycle,
    /// Boot from the network next time, once.
    Pxe,
}

impl Action {
    /// The word used on the command line and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Status => "status",
            Action::On => "on",
            Action::Off => "off",
            Action::Cycle => "cycle",
            Action::Pxe => "pxe",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "status" => Action::Status,
            "on" => Action::On,
            "off" => Action::Off,
            "cycle" => Action::Cycle,
            "pxe" => Action::Pxe,
            _ => {
                return Err(format!(
                    "unknown power action {s:?} (status|on|off|cycle|pxe)"
                ));
            }
        })
    }
}

/// A host's power state as its BMC reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    /// Powered on.
    On,
    /// Powered off.
    Off,
    /// The driver cannot tell (Wake-on-LAN has no way to ask).
    Unknown,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
        })
    }
}

/// The BMC's answer to one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The power state, when the action read it (status) or implies it.
    pub state: Option<PowerState>,
    /// The BMC's own words, one line, made safe for a terminal and capped.
    pub text: String,
}

/// A power action that failed: the BMC (never its password) and why, on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerError {
    /// The BMC as configured, without any password (`ipmi://admin@10.0.0.5:623`).
    pub bmc: String,
    /// Why, one line.
    pub reason: String,
    /// The action is not something this driver can do (Wake-on-LAN cannot power off):
    /// a caller may treat it as "nothing to do" rather than a failure.
    pub unsupported: bool,
}

impl fmt::Display for PowerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.bmc, self.reason)
    }
}

impl std::error::Error for PowerError {}

/// One way of switching a machine: a BMC (IPMI, Redfish) or a magic packet (WoL).
pub trait Bmc: Send + Sync {
    /// The BMC as configured, without the password, for messages and records.
    fn describe(&self) -> String;
    /// Performs one action; blocks at most about [`ACTION_TIMEOUT`].
    fn act(&self, action: Action) -> Result<Answer, PowerError>;
    /// Starts reading the host's serial console (IPMI serial-over-LAN), each chunk
    /// of bytes handed to `sink` on a thread of its own; `None` when the driver has
    /// no console.
    fn console(&self, sink: ConsoleSink) -> Result<Option<Box<dyn Console>>, PowerError> {
        let _ = sink;
        Ok(None)
    }
}

/// Where console bytes go.
pub type ConsoleSink = Box<dyn FnMut(&[u8]) + Send>;

/// A console being read.
pub trait Console: Send {
    /// Whether it is still reading (the session may end: the BMC dropped it, the
    /// host was power cycled).
    fn alive(&mut self) -> bool;
    /// Stops reading and closes the session on the BMC.
    fn stop(self: Box<Self>);
}

/// The longest one power action may take before it is abandoned with an error.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest answer kept from a BMC (bytes, before making it one line).
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The parsed form of a power URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerUrl {
    /// IPMI over LAN (RMCP+).
    Ipmi {
        /// BMC user.
        user: String,
        /// BMC address (name or IP; IPv6 without brackets).
        host: String,
        /// UDP port (623).
        port: u16,
        /// Cipher suite (`?cipher=N`, default 3: supported by nearly every BMC).
        cipher: u8,
    },
    /// Redfish over HTTPS.
    Redfish {
        /// Account name.
        user: String,
        /// BMC address.
        host: String,
        /// TCP port (443).
        port: u16,
        /// The system's resource path, when given.
        system: Option<String>,
    },
    /// Wake-on-LAN to a broadcast address.
    Wol {
        /// Broadcast address (255.255.255.255).
        addr: String,
        /// UDP port (9).
        port: u16,
    },
}

fn split_host_port(s: &str, default: u16, what: &str) -> Result<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .with_context(|| format!("{what}: unclosed '[' in {s:?}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => bail!("{what}: unexpected {after:?} after the address"),
        };
        (h.to_string(), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
            _ => (s.to_string(), None),
        }
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
    if !ok {
        bail!("{what}: bad address {host:?}");
    }
    let port = match port {
        None => default,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("{what}: bad port {p:?}"))?,
    };
    Ok((host, port))
}

fn parse_user<'a>(s: &'a str, what: &str, example: &str) -> Result<(&'a str, &'a str)> {
    let Some((user, rest)) = s.rsplit_once('@') else {
        bail!("{what}: name the BMC user, e.g. {example}");
    };
    if user.contains(':') {
        bail!(
            "{what}: a password does not belong in the URL; store it with `secret set NAME` \
             and give --power-secret NAME"
        );
    }
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        bail!("{what}: bad user name {user:?}");
    }
    Ok((user, rest))
}

impl std::str::FromStr for PowerUrl {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.len() > 512 || s.chars().any(|c| c.is_control() || c == ' ') {
            bail!("power URL: one word of at most 512 bytes");
        }
        if let Some(rest) = s.strip_prefix("ipmi://") {
            let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (user, addr) = parse_user(rest, "ipmi", "ipmi://admin@10.0.0.5")?;
            let (host, port) = split_host_port(addr, 623, "ipmi")?;
            let mut cipher = 3u8;
            for kv in query.split('&').filter(|q| !q.is_empty()) {
                match kv.split_once('=') {
                    Some(("cipher", v)) => {
                        cipher = v
                            .parse()
                            .ok()
                            .filter(|c| *c <= 17)
                            .with_context(|| format!("ipmi: bad cipher suite {v:?}"))?;
                    }
                    _ => bail!("ipmi: unknown option {kv:?} (only cipher=N)"),
                }
            }
            Ok(PowerUrl::Ipmi {
                user: user.to_string(),
                host,
                port,
                cipher,
            })
        } else if let Some(rest) = s.strip_prefix("redfish://") {
            let (user, addr) = parse_user(rest, "redfish", "redfish://admin@10.0.0.5")?;
            let (addr, system) = match addr.find('/') {
                Some(i) => (&addr[..i], Some(&addr[i..])),
                None => (addr, None),
            };
            let (host, port) = split_host_port(addr, 443, "redfish")?;
            let system = system
                .map(|p| p.trim_end_matches('/'))
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let ok = p.starts_with("/redfish/v1/Systems/")
                        && p.len() > "/redfish/v1/Systems/".len()
                        && p.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_')
                        })
                        && !p.contains("..");
                    if ok {
                        Ok(p.to_string())
                    } else {
                        Err(anyhow::anyhow!(
                            "redfish: the path must be /redfish/v1/Systems/ID, not {p:?}"
                        ))
                    }
                })
                .transpose()?;
            Ok(PowerUrl::Redfish {
                user: user.to_string(),
                host,
                port,
                system,
            })
        } else if s == "wol" {
            Ok(PowerUrl::Wol {
                addr: "255.255.255.255".into(),
                port: 9,
            })
        } else if let Some(rest) = s.strip_prefix("wol://") {
            let (addr, port) = split_host_port(rest, 9, "wol")?;
            if addr.parse::<std::net::IpAddr>().is_err() {
                bail!("wol: give the broadcast address as an IP, not {addr:?}");
            }
            Ok(PowerUrl::Wol { addr, port })
        } else {
            bail!(
                "power URL {s:?}: use ipmi://USER@BMC[:PORT], \
                 redfish://USER@BMC[:PORT][/redfish/v1/Systems/ID] or wol[://BROADCAST[:PORT]]"
            )
        }
    }
}

impl PowerUrl {
    /// Whether the driver needs a password secret.
    pub fn needs_secret(&self) -> bool {
        !matches!(self, PowerUrl::Wol { .. })
    }
}

/// The driver for a host's `[host.power]`, its password read from the state's secret.
pub fn driver(state: &State, host: &Host) -> Result<Box<dyn Bmc>> {
    let Some(p) = &host.power else {
        bail!(
            "host {} has no power control (host set {} --power URL --power-secret NAME)",
            host.name,
            host.name
        );
    };
    let url: PowerUrl = p
        .url
        .parse()
        .with_context(|| format!("host {}", host.name))?;
    let password = match (&p.secret, url.needs_secret()) {
        (Some(name), true) => {
            let mut v = state.secret(name)?;
            while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                v.pop();
            }
            String::from_utf8(v).map_err(|_| {
                anyhow::anyhow!("secret {name:?} is not UTF-8 text (a BMC password)")
            })?
        }
        (None, true) => bail!(
            "host {}: {} needs a password secret (--power-secret NAME)",
            host.name,
            p.url
        ),
        (_, false) => String::new(),
    };
    Ok(match url {
        PowerUrl::Ipmi {
            user,
            host: bmc,
            port,
            cipher,
        } => Box::new(ipmi::Ipmi::new(user, bmc, port, cipher, password)),
        PowerUrl::Redfish {
            user,
            host: bmc,
            port,
            system,
        } => {
            let trust = match (&p.ca_pem, p.insecure) {
                (_, true) => tls::Trust::Insecure,
                (Some(pem), false) => tls::Trust::Pinned(pem.clone()),
                (None, false) => bail!(
                    "host {}: redfish needs the BMC's certificate (--power-ca FILE) \
                     or an explicit --power-insecure",
                    host.name
                ),
            };
            Box::new(redfish::Redfish::new(
                user, bmc, port, system, password, &trust,
            )?)
        }
        PowerUrl::Wol { addr, port } => {
            let mac =
                host.mac_list()?.into_iter().next().with_context(|| {
                    format!("host {}: Wake-on-LAN needs the host's MAC", host.name)
                })?;
            Box::new(wol::Wol::new(addr, port, mac))
        }
    })
}

/// Makes a BMC's words one safe line of at most 300 characters.
pub fn one_line(s: &str) -> String {
    one_line_max(s, 300)
}

/// Makes text one safe line of at most `max` characters (lines joined by "; ").
pub fn one_line_max(s: &str, max: usize) -> String {
    let joined = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let mut out: String = kiln_cmdline::visible::visible(&joined)
        .chars()
        .take(max)
        .collect();
    if joined.chars().count() > max {
        out.push('…');
    }
    out
}

/// The last power reading of a host (`power/<host>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reading {
    /// The state read.
    pub state: PowerState,
    /// When, Unix milliseconds.
    pub at_ms: u64,
}

fn reading_path(state: &State, host: &str) -> Result<std::path::PathBuf> {
    crate::state::check_name(host, "host")?;
    Ok(state.root.join("power").join(format!("{host}.json")))
}

/// Records a host's power state as just read (or implied by an action).
pub fn save_reading(state: &State, host: &str, ps: PowerState) -> Result<()> {
    let path = reading_path(state, host)?;
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let r = Reading {
        state: ps,
        at_ms: now_ms(),
    };
    write_atomic(&path, &serde_json::to_vec(&r)?, 0o644)
}

/// The last recorded power state of a host, if any (a damaged file reads as none).
pub fn reading(state: &State, host: &str) -> Option<Reading> {
    let path = reading_path(state, host).ok()?;
    let bytes = kiln_protocol::io::read_file_capped(&path, 4096, "a power reading").ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Starts reading a host's console, if its driver has one.
pub fn console_of_host(
    state: &State,
    host: &Host,
    sink: ConsoleSink,
) -> Result<Option<Box<dyn Console>>, PowerError> {
    let bmc = driver(state, host).map_err(|e| PowerError {
        bmc: host.name.clone(),
        reason: format!("{e:#}"),
        unsupported: false,
    })?;
    bmc.console(sink)
}

/// Runs one action on a host and records the state it read or implied; returns the
/// answer and how long the BMC took.
pub fn act_on_host(
    state: &State,
    host: &Host,
    action: Action,
) -> Result<(Answer, Duration), PowerError> {
    let bmc = driver(state, host).map_err(|e| PowerError {
        bmc: host
            .power
            .as_ref()
            .map(|p| p.url.clone())
            .unwrap_or_else(|| host.name.clone()),
        reason: format!("{e:#}"),
        unsupported: false,
    })?;
    let t = Instant::now();
    let answer = bmc.act(action)?;
    let took = t.elapsed();
    let implied = answer.state.or(match action {
        Action::On | Action::Cycle => Some(PowerState::On),
        Action::Off => Some(PowerState::Off),
        _ => None,
    });
    if let Some(ps) = implied.filter(|s| *s != PowerState::Unknown) {
        let _ = save_reading(state, &host.name, ps);
    }
    Ok((answer, took))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            "ipmi://admin@10.0.0.5".parse::<PowerUrl>().unwrap(),
            PowerUrl::Ipmi {
                user: "admin".into(),
                host: "10.0.0.5".into(),
                port: 623,
                cipher: 3
            }
        );
        assert_eq!(
            "ipmi://op@[fe80::1]:9623?cipher=17"
                .parse::<PowerUrl>()
                .unwrap(),
            PowerUrl::Ipmi {
                user: "op".into(),
                host: "fe80::1".into(),
                port: 9623,
                cipher: 17
            }
        );
        assert_eq!(
            "redfish://root@bmc1.lab:8443/redfish/v1/Systems/1"
                .parse::<PowerUrl>()
                .unwrap(),
            PowerUrl::Redfish {
                user: "root".into(),
                host: "bmc1.lab".into(),
                port: 8443,
                system: Some("/redfish/v1/Systems/1".into())
            }
        );
        assert_eq!(
            "wol".parse::<PowerUrl>().unwrap(),
            PowerUrl::Wol {
                addr: "255.255.255.255".into(),
                port: 9
            }
        );
        assert_eq!(
            "wol://10.0.0.255:7".parse::<PowerUrl>().unwrap(),
            PowerUrl::Wol {
                addr: "10.0.0.255".into(),
                port: 7
            }
        );
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for (url, want) in [
            ("ipmi://admin:pw@10.0.0.5", "does not belong in the URL"),
            ("ipmi://10.0.0.5", "name the BMC user"),
            ("ipmi://a@h:0", "bad port"),
            ("ipmi://a@h:99999", "bad port"),
            ("ipmi://a@h?cipher=99", "cipher"),
            ("ipmi://a@h;rm", "bad address"),
            ("redfish://a@h/etc/passwd", "/redfish/v1/Systems/ID"),
            (
                "redfish://a@h/redfish/v1/Systems/../x",
                "/redfish/v1/Systems/ID",
            ),
            ("wol://bcast.lan", "as an IP"),
            ("http://x", "use ipmi://"),
            ("ipmi://a@h x", "one word"),
            ("ipmi://a@h\u{7}", "one word"),
        ] {
            let e = url.parse::<PowerUrl>().unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn answers_become_one_safe_line() {
        assert_eq!(one_line("a\n\n b \x1b[31m\n"), "a; b \\x1b[31m");
        assert!(one_line(&"x".repeat(1000)).chars().count() <= 301);
    }
}
