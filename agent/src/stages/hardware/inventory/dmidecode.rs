//! Parsing `dmidecode -t 17` (memory devices) into populated DIMMs.
use crate::stages::hardware::model::Dimm;

/// A dmidecode size (`16 GB`, `16384 MB`, `512 kB`) in MiB; `None` for
/// `No Module Installed`, `Unknown` and other text.
pub fn size_mib(v: &str) -> Option<u64> {
    let mut it = v.split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let mib = match it.next()? {
        "kB" | "KB" => n / 1024,
        "MB" => n,
        "GB" => n * 1024,
        "TB" => n * 1024 * 1024,
        _ => return None,
    };
    (mib > 0).then_some(mib)
}

/// A value with dmidecode's fillers turned into empty strings.
fn clean(v: &str) -> String {
    match v {
        "Not Specified" | "Unknown" | "Not Provided" | "None" | "NO DIMM" | "[Empty]" => {
            String::new()
        }
        v => v.to_string(),
    }
}

/// The populated memory devices in dmidecode's text output.
pub fn parse_dimms(text: &str) -> Vec<Dimm> {
    let mut out = Vec::new();
    let mut cur: Option<(Option<u64>, Dimm)> = None;
    let mut flush = |cur: &mut Option<(Option<u64>, Dimm)>| {
        if let Some((Some(size), mut d)) = cur.take() {
            d.size_mib = size;
            out.push(d);
        }
    };
    for line in text.lines() {
        if line.starts_with("Handle ") {
            flush(&mut cur);
            continue;
        }
        if line.trim() == "Memory Device" {
            cur = Some((None, Dimm::default()));
            continue;
        }
        let Some((size, d)) = cur.as_mut() else {
            continue;
        };
        // Only one-tab lines are fields; deeper ones are lists under a field.
        let Some(field) = line.strip_prefix('\t').filter(|l| !l.starts_with('\t')) else {
            continue;
        };
        let Some((k, v)) = field.split_once(": ") else {
            continue;
        };
        let v = v.trim();
        match k {
            "Size" => *size = size_mib(v),
            "Locator" => d.locator = clean(v),
            "Type" => d.kind = clean(v),
            "Speed" => d.speed = clean(v),
            "Manufacturer" => d.manufacturer = clean(v),
            "Part Number" => d.part = clean(v),
            "Serial Number" => d.serial = clean(v),
            _ => {}
        }
    }
    flush(&mut cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_fixture_has_one_1g_dimm() {
        let text = include_str!("../../../../tests/fixtures/hardware/dmidecode/qemu.txt");
        let d = parse_dimms(text);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].size_mib, 1024);
        assert_eq!(d[0].locator, "DIMM 0");
        assert_eq!(d[0].manufacturer, "QEMU");
        assert_eq!(d[0].serial, "");
    }

    #[test]
    fn server_fixture_skips_empty_slots() {
        let text = include_str!("../../../../tests/fixtures/hardware/dmidecode/server-4x32g.txt");
        let d = parse_dimms(text);
        assert_eq!(d.len(), 4, "{d:?}");
        assert!(d.iter().all(|d| d.size_mib == 32768 && d.kind == "DDR4"));
        assert_eq!(d[0].locator, "P1-DIMMA1");
        assert_eq!(d[0].part, "M393A4K40DB3-CWE");
    }

    #[test]
    fn sizes() {
        assert_eq!(size_mib("16 GB"), Some(16384));
        assert_eq!(size_mib("16384 MB"), Some(16384));
        assert_eq!(size_mib("1 TB"), Some(1 << 20));
        assert_eq!(size_mib("No Module Installed"), None);
        assert_eq!(size_mib("Unknown"), None);
        assert_eq!(size_mib(""), None);
    }
}
