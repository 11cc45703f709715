//! The claim check against the kernel's neighbour table: a claim whose source address
//! the table maps to a MAC that is not one of the ticket's MACs is refused.
//!
//! This raises the bar for a claim from the same network segment (the attacker must
//! also spoof a MAC); it is not authentication. Rules, in order:
//! - off (`serve --claim-check off`): every claim passes;
//! - the ticket binds no MAC (serial only): nothing to compare, the claim passes;
//! - IPv6 sources (not IPv4-mapped): not checked (`ip -6 neigh` is not read), pass;
//! - the source is not in the table (loopback, a routed network, an aged-out entry,
//!   an incomplete entry): pass;
//! - the table maps the source to one or more MACs: at least one must be a ticket MAC.
use kiln_protocol::Mac;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// The kernel's IPv4 neighbour (ARP) table.
pub const PROC_NET_ARP: &str = "/proc/net/arp";

/// Most bytes of the table read (a table this large is cut; entries past it are
/// treated as absent).
pub const MAX_TABLE_BYTES: u64 = 4 << 20;

/// Whether and where claims are checked against the neighbour table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimCheck {
    /// No check (`serve --claim-check off`).
    Off,
    /// Check IPv4 sources against this file in `/proc/net/arp` format.
    Arp(PathBuf),
}

impl Default for ClaimCheck {
    fn default() -> Self {
        ClaimCheck::Arp(PathBuf::from(PROC_NET_ARP))
    }
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The claim passes; why (for the log).
    Pass(String),
    /// The source maps to these MACs, none of them the ticket's.
    Foreign(Vec<Mac>),
}

impl ClaimCheck {
    /// Parses `--claim-check on|off` with the table path for `on`.
    pub fn from_flag(flag: &str, table: Option<PathBuf>) -> anyhow::Result<Self> {
        match flag {
            "on" => Ok(ClaimCheck::Arp(
                table.unwrap_or_else(|| PathBuf::from(PROC_NET_ARP)),
            )),
            "off" => Ok(ClaimCheck::Off),
            other => anyhow::bail!("--claim-check {other:?}: use on or off"),
        }
    }

    /// Logs once, at start, when the table cannot be read (claims then pass unchecked).
    pub fn probe(&self) {
        match self {
            ClaimCheck::Off => {
                log::info!("claim check off: claims are not checked against the neighbour table")
            }
            ClaimCheck::Arp(p) => {
                if let Err(e) = read_bounded(p) {
                    log::warn!(
                        "claim check: cannot read {} ({e}): claims pass unchecked until it can be read",
                        p.display()
                    );
                }
            }
        }
    }

    /// Checks a claim from `source` for a ticket bound to `macs`. A table that cannot
    /// be read is logged and passes (the check raises the bar; it must not stop a lab
    /// whose kernel hides the table).
    pub fn check(&self, source: IpAddr, macs: &[Mac]) -> Finding {
        let path = match self {
            ClaimCheck::Off => return Finding::Pass("claim check off".into()),
            ClaimCheck::Arp(p) => p,
        };
        if macs.is_empty() {
            return Finding::Pass("the ticket binds no MAC".into());
        }
        let v4 = match source {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => a,
                None => return Finding::Pass("IPv6 neighbours are not checked".into()),
            },
        };
        let text = match read_bounded(path) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("claim check: reading {}: {e}", path.display());
                return Finding::Pass(format!("{} unreadable", path.display()));
            }
        };
        let seen = lookup(&text, v4);
        if seen.is_empty() {
            Finding::Pass(format!("{v4} is not in the neighbour table"))
        } else if seen.iter().any(|m| macs.contains(m)) {
            Finding::Pass(format!("{v4} maps to a ticket MAC"))
        } else {
            Finding::Foreign(seen)
        }
    }
}

fn read_bounded(path: &std::path::Path) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_TABLE_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// ATF_COM: the entry is complete (it holds a MAC).
const ATF_COM: u32 = 0x2;

/// The MACs `/proc/net/arp` text maps `ip` to (complete entries only; one per
/// interface the address was seen on). Lines that do not parse are skipped.
pub fn lookup(table: &str, ip: Ipv4Addr) -> Vec<Mac> {
    let mut out = Vec::new();
    // `IP address  HW type  Flags  HW address  Mask  Device`, after a header line.
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, _hw_type, flags, mac, ..] = f.as_slice() else {
            continue;
        };
        if addr.parse::<Ipv4Addr>().ok() != Some(ip) {
            continue;
        }
        let complete = flags
            .strip_prefix("0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .is_some_and(|fl| fl & ATF_COM != 0);
        match mac.parse::<Mac>() {
            Ok(m) if complete && m.0 != [0; 6] && !out.contains(&m) => out.push(m),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "52:54:00:12:34:56";
    const B: &str = "02:00:00:00:00:0b";

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    /// A fake table in the kernel's format, written to a temp folder.
    fn fake_arp(rows: &str) -> (tempfile::TempDir, ClaimCheck) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fake-proc-net-arp");
        let text = format!(
            "IP address       HW type     Flags       HW address            Mask     Device\n{rows}"
        );
        std::fs::write(&p, text).unwrap();
        (dir, ClaimCheck::Arp(p))
    }

    #[test]
    fn a_source_mapped_to_a_foreign_mac_is_refused_and_others_pass() {
        let (_d, check) = fake_arp(&format!(
            "10.0.0.5         0x1         0x2         {B}     *        eth0\n\
             10.0.0.6         0x1         0x2         {A}     *        eth0\n\
             10.0.0.7         0x1         0x0         00:00:00:00:00:00     *        eth0\n\
             garbage line\n"
        ));
        let ours = [mac(A)];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            check.check(ip("10.0.0.5"), &ours),
            Finding::Foreign(vec![mac(B)])
        );
        // IPv4-mapped IPv6 (a dual-stack listener) is the same address.
        assert_eq!(
            check.check(ip("::ffff:10.0.0.5"), &ours),
            Finding::Foreign(vec![mac(B)])
        );
        assert!(matches!(
            check.check(ip("10.0.0.6"), &ours),
            Finding::Pass(_)
        ));
        // Incomplete entries, absent addresses, loopback, IPv6: pass.
        for a in ["10.0.0.7", "10.0.0.99", "127.0.0.1", "fe80::1"] {
            assert!(matches!(check.check(ip(a), &ours), Finding::Pass(_)), "{a}");
        }
        // A serial-only ticket has nothing to compare; off checks nothing.
        assert!(matches!(check.check(ip("10.0.0.5"), &[]), Finding::Pass(_)));
        assert!(matches!(
            ClaimCheck::Off.check(ip("10.0.0.5"), &ours),
            Finding::Pass(_)
        ));
        // A missing table passes (logged), never a panic or a refusal.
        let gone = ClaimCheck::Arp("/nonexistent/arp".into());
        assert!(matches!(
            gone.check(ip("10.0.0.5"), &ours),
            Finding::Pass(_)
        ));
    }

    #[test]
    fn the_real_proc_net_arp_parses() {
        // This machine's own table: every complete entry it lists is found by lookup.
        let Ok(text) = std::fs::read_to_string(PROC_NET_ARP) else {
            panic!("{PROC_NET_ARP} is not readable on this machine");
        };
        let header = text.lines().next().unwrap_or_default();
        assert!(header.starts_with("IP address"), "{header:?}");
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 6, "unexpected /proc/net/arp line {line:?}");
            if f[2] == "0x2" {
                let found = lookup(&text, f[0].parse().unwrap());
                assert!(found.contains(&mac(f[3])), "{line:?} not found: {found:?}");
            }
        }
    }

    #[test]
    fn flags_parse() {
        assert_eq!(ClaimCheck::from_flag("off", None).unwrap(), ClaimCheck::Off);
        assert_eq!(
            ClaimCheck::from_flag("on", None).unwrap(),
            ClaimCheck::default()
        );
        assert!(ClaimCheck::from_flag("maybe", None).is_err());
    }
}
