//! What this machine is: MACs from /sys/class/net, DMI serial, hostname, boot id.
use kiln_protocol::Mac;
use std::fs;
use std::path::Path;

/// Identity facts a ticket's host binding is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The kernel's hostname.
    pub hostname: String,
    /// MACs of the non-loopback interfaces, sorted.
    pub macs: Vec<Mac>,
    /// `/sys/class/dmi/id/product_serial`, if readable and not a placeholder.
    pub serial: Option<String>,
}

impl HostInfo {
    /// Reads this machine's identity. `KILN_SYSFS` (default `/sys`) points at another
    /// sysfs root for tests.
    pub fn detect() -> HostInfo {
        #[cfg(test)]
        if let Some(root) = TEST_SYSFS.get() {
            return Self::from_sysfs(root);
        }
        let sys = std::env::var("KILN_SYSFS").unwrap_or_else(|_| "/sys".into());
        Self::from_sysfs(Path::new(&sys))
    }

    /// Reads identity from a sysfs tree rooted at `sys`.
    pub fn from_sysfs(sys: &Path) -> HostInfo {
        let mut macs = Vec::new();
        if let Ok(rd) = fs::read_dir(sys.join("class/net")) {
            for e in rd.flatten() {
                if e.file_name() == "lo" {
                    continue;
                }
                let mac = fs::read_to_string(e.path().join("address"))
                    .ok()
                    .and_then(|text| text.trim().parse::<Mac>().ok());
                if let Some(mac) = mac
                    && mac.0 != [0; 6]
                    && !macs.contains(&mac)
                {
                    macs.push(mac);
                }
            }
        }
        macs.sort();
        let serial = fs::read_to_string(sys.join("class/dmi/id/product_serial"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && !is_placeholder(s));
        let hostname = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        HostInfo {
            hostname,
            macs,
            serial,
        }
    }
}

/// In this crate's unit tests: a fake sysfs tree (made by the runner tests) that
/// [`HostInfo::detect`] reads instead of `/sys`, so tests that bind a ticket to "this
/// machine" run the same on a host without a network card.
#[cfg(test)]
pub(crate) static TEST_SYSFS: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Firmware fills unset serials with well-known filler strings.
fn is_placeholder(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    [
        "to be filled by o.e.m.",
        "default string",
        "not specified",
        "system serial number",
        "0123456789",
        "none",
    ]
    .iter()
    .any(|p| l == *p)
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`) plus our pid: one agent start.
pub fn boot_id() -> String {
    let b = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("{}/{}", b.trim(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysfs(ifaces: &[(&str, &str)], serial: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, addr) in ifaces {
            let d = dir.path().join("class/net").join(name);
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join("address"), format!("{addr}\n")).expect("write");
        }
        if let Some(s) = serial {
            let d = dir.path().join("class/dmi/id");
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join("product_serial"), format!("{s}\n")).expect("write");
        }
        dir
    }

    #[test]
    fn macs_skip_loopback_zero_and_junk() {
        let d = sysfs(
            &[
                ("lo", "00:00:00:00:00:00"),
                ("eth1", "52:54:00:00:00:02"),
                ("eth0", "52:54:00:00:00:01"),
                ("tun0", ""),
                ("dummy", "00:00:00:00:00:00"),
                ("bond0", "52:54:00:00:00:01"),
            ],
            Some("  SN-1234  "),
        );
        let h = HostInfo::from_sysfs(d.path());
        let macs: Vec<String> = h.macs.iter().map(|m| m.to_string()).collect();
        assert_eq!(macs, ["52:54:00:00:00:01", "52:54:00:00:00:02"]);
        assert_eq!(h.serial.as_deref(), Some("SN-1234"));
    }

    #[test]
    fn placeholder_serials_are_none() {
        for s in ["To Be Filled By O.E.M.", "Default string", "", "None"] {
            let d = sysfs(&[], Some(s));
            assert_eq!(HostInfo::from_sysfs(d.path()).serial, None, "{s:?}");
        }
        let d = sysfs(&[], None);
        assert_eq!(HostInfo::from_sysfs(d.path()).serial, None);
    }
}
