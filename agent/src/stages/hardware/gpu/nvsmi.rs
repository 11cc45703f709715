//! Parsing `nvidia-smi --query-gpu=… --format=csv,noheader,nounits` and judging its
//! failures (no driver or no GPU is a skip; a GPU fallen off the bus is a failure).
use kiln_protocol::Outcome;

use crate::stages::hardware::model::Gpu;

/// The fields the `gpu` stage asks for, in order.
pub const QUERY: &str = "index,pci.bus_id,name,memory.total,temperature.gpu,power.draw,\
ecc.errors.uncorrected.volatile.total,clocks.sm";

/// One GPU's reading; `None` where nvidia-smi said `[N/A]` or `[Not Supported]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    /// nvidia-smi's index.
    pub index: u32,
    /// PCI address, normalized to `0000:17:00.0`.
    pub bus_id: String,
    /// Model name.
    pub name: String,
    /// Memory, MiB.
    pub memory_mib: Option<u64>,
    /// Core temperature, °C.
    pub temperature_c: Option<f64>,
    /// Power draw, W.
    pub power_w: Option<f64>,
    /// Uncorrected ECC errors since the driver loaded.
    pub ecc_uncorrected: Option<u64>,
    /// SM clock, MHz.
    pub clock_sm_mhz: Option<f64>,
    /// Fields nvidia-smi answered with an error such as `[GPU is lost]` or `[Unknown
    /// Error]` (`field: value`): the GPU is in trouble, not merely without a sensor.
    pub faults: Vec<String>,
}

/// The names of the [`QUERY`] fields, in order.
const FIELDS: [&str; 8] = [
    "index",
    "pci.bus_id",
    "name",
    "memory.total",
    "temperature.gpu",
    "power.draw",
    "ecc.errors.uncorrected.volatile.total",
    "clocks.sm",
];

/// Whether a field is nvidia-smi reporting a fault (`[GPU is lost]`, `[Unknown
/// Error]`, `[GPU requires reset]`) rather than a missing sensor (`[N/A]`).
fn is_fault(s: &str) -> bool {
    let s = s.trim().to_ascii_lowercase();
    s.starts_with('[')
        && ["lost", "error", "reset", "fallen"]
            .iter()
            .any(|w| s.contains(w))
}

/// nvidia-smi's 8-digit-domain bus id (`00000000:17:00.0`) as sysfs writes it.
pub fn normalize_bus_id(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    match s.split_once(':') {
        Some((dom, rest)) if dom.len() > 4 => format!("{}:{rest}", &dom[dom.len() - 4..]),
        _ => s,
    }
}

/// A field's value, `None` for `[N/A]`, `[Not Supported]`, `N/A` and empty.
pub(crate) fn value(s: &str) -> Option<&str> {
    let s = s.trim();
    let na = s.is_empty()
        || s.starts_with('[')
        || s.eq_ignore_ascii_case("n/a")
        || s.eq_ignore_ascii_case("not supported");
    (!na).then_some(s)
}

/// A field's value as a number, `None` as [`value`] or when it does not parse.
pub(crate) fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    value(s)?.parse().ok()
}

/// Parses the CSV lines of a [`QUERY`] run. A line with too few fields is an error
/// naming the line.
pub fn parse(text: &str) -> Result<Vec<GpuReading>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 8 {
            return Err(format!("unexpected nvidia-smi line: {line:?}"));
        }
        // A comma inside the name shifts the tail: take the tail from the end.
        let n = f.len();
        let faults = f
            .iter()
            .enumerate()
            .filter(|(_, v)| is_fault(v))
            .map(|(i, v)| {
                // The tail counts from the end: the name may hold commas.
                let k = match i {
                    0 | 1 => i,
                    _ if i < n - 5 => 2,
                    _ => FIELDS.len() - (n - i),
                };
                format!("{}: {}", FIELDS[k], v.trim())
            })
            .collect();
        out.push(GpuReading {
            index: num(f[0]).ok_or_else(|| format!("bad gpu index in {line:?}"))?,
            bus_id: normalize_bus_id(f[1]),
            name: f[2..n - 5].join(",").trim().to_string(),
            memory_mib: num(f[n - 5]),
            temperature_c: num(f[n - 4]),
            power_w: num(f[n - 3]),
            ecc_uncorrected: num(f[n - 2]),
            clock_sm_mhz: num(f[n - 1]),
            faults,
        });
    }
    Ok(out)
}

/// How a failed nvidia-smi run ends the stage, from its exit code (nvidia-smi(1)
/// RETURN VALUE) and output.
pub fn judge_failure(code: i32, output: &str) -> (Outcome, String) {
    let first = output
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string();
    let lower = output.to_ascii_lowercase();
    if lower.contains("no devices were found") {
        return (Outcome::Skipped, "no NVIDIA GPU found".into());
    }
    match code {
        9 | 12 => (Outcome::Skipped, format!("no NVIDIA driver: {first}")),
        _ if lower.contains("couldn't communicate with the nvidia driver") => {
            (Outcome::Skipped, format!("no NVIDIA driver: {first}"))
        }
        8 => (
            Outcome::Failed,
            format!("external power cables not attached: {first}"),
        ),
        10 => (
            Outcome::Failed,
            format!("kernel reported an interrupt issue with a GPU: {first}"),
        ),
        14 => (
            Outcome::Failed,
            format!("GPU infoROM is corrupted: {first}"),
        ),
        15 => (
            Outcome::Failed,
            format!("a GPU has fallen off the bus: {first}"),
        ),
        _ => (Outcome::Error, format!("nvidia-smi exited {code}: {first}")),
    }
}

/// argv of the [`QUERY`] run.
pub fn query_argv() -> Vec<String> {
    vec![
        "nvidia-smi".into(),
        format!("--query-gpu={QUERY}"),
        "--format=csv,noheader,nounits".into(),
    ]
}

/// Puts nvidia-smi's names and memory sizes on the GPUs found on PCI.
pub fn merge_names(gpus: &mut [Gpu], text: &str) {
    let Ok(readings) = parse(text) else { return };
    for r in readings {
        if let Some(g) = gpus.iter_mut().find(|g| g.slot == r.bus_id) {
            g.name = r.name;
            g.memory_mib = r.memory_mib;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hardware/nvidia-smi")
    }

    /// Every `*.csv` capture parses to at least one GPU with a name, an index and a
    /// PCI address (drop real captures into the folder to extend this).
    #[test]
    fn every_capture_parses() {
        let mut n = 0;
        for e in std::fs::read_dir(fixtures()).expect("fixtures folder") {
            let p = e.expect("entry").path();
            if p.extension().is_none_or(|x| x != "csv") {
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("read fixture");
            let gpus = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(!gpus.is_empty(), "{}: no gpus", p.display());
            for (i, g) in gpus.iter().enumerate() {
                assert_eq!(g.index as usize, i, "{}", p.display());
                assert!(
                    !g.name.is_empty() && !g.name.contains('['),
                    "{}: {g:?}",
                    p.display()
                );
                assert!(
                    g.bus_id.len() == 12 && g.bus_id.starts_with("0000:"),
                    "{g:?}"
                );
            }
            n += 1;
        }
        assert!(n >= 3, "expected the bundled captures, found {n}");
    }

    #[test]
    fn h100_values() {
        let text = std::fs::read_to_string(fixtures().join("h100x2.csv")).unwrap();
        let g = parse(&text).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g[0].bus_id, "0000:18:00.0");
        assert_eq!(g[0].memory_mib, Some(81559));
        assert_eq!(g[0].temperature_c, Some(31.0));
        assert_eq!(g[0].power_w, Some(71.42));
        assert_eq!(g[0].ecc_uncorrected, Some(0));
        assert_eq!(g[1].ecc_uncorrected, Some(2));
        assert_eq!(g[1].clock_sm_mhz, Some(1980.0));
    }

    /// A real capture: kiln's query on an H100 (driver 580.159.04), fixtures' README.
    #[test]
    fn a_real_h100_capture() {
        let text = std::fs::read_to_string(fixtures().join("h100-real.csv")).unwrap();
        let g = parse(&text).unwrap();
        assert_eq!(g.len(), 1);
        let want = GpuReading {
            index: 0,
            bus_id: "0000:00:06.0".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_mib: Some(81559),
            temperature_c: Some(36.0),
            power_w: Some(85.55),
            ecc_uncorrected: Some(0),
            clock_sm_mhz: Some(345.0),
            faults: vec![],
        };
        assert_eq!(g[0], want);
    }

    #[test]
    fn not_supported_fields_are_none() {
        let text = std::fs::read_to_string(fixtures().join("geforce-rtx3060.csv")).unwrap();
        let g = parse(&text).unwrap();
        assert_eq!(g[0].ecc_uncorrected, None);
        assert_eq!(g[0].power_w, Some(17.53));
        let text = std::fs::read_to_string(fixtures().join("t4-na-power.csv")).unwrap();
        let g = parse(&text).unwrap();
        assert_eq!(g[0].power_w, None);
        assert_eq!(g[0].name, "Tesla T4");
    }

    #[test]
    fn failures() {
        let t = std::fs::read_to_string(fixtures().join("no-driver.txt")).unwrap();
        assert_eq!(judge_failure(9, &t).0, Outcome::Skipped);
        let t = std::fs::read_to_string(fixtures().join("no-devices.txt")).unwrap();
        assert_eq!(
            judge_failure(6, &t),
            (Outcome::Skipped, "no NVIDIA GPU found".into())
        );
        let t = std::fs::read_to_string(fixtures().join("fallen-off-bus.txt")).unwrap();
        assert_eq!(judge_failure(15, &t).0, Outcome::Failed);
        assert_eq!(judge_failure(255, "weird").0, Outcome::Error);
    }

    /// Hand-written: gpu1 answers every field with `[GPU is lost]`, gpu0 is fine.
    #[test]
    fn lost_fields_are_faults_not_na() {
        let text = std::fs::read_to_string(fixtures().join("gpu-lost-fields.txt")).unwrap();
        let g = parse(&text).unwrap();
        assert!(g[0].faults.is_empty(), "{:?}", g[0]);
        assert_eq!(g[1].faults.len(), 6, "{:?}", g[1]);
        assert_eq!(g[1].faults[0], "name: [GPU is lost]");
        assert_eq!(g[1].faults[5], "clocks.sm: [GPU is lost]");
        let t4 = std::fs::read_to_string(fixtures().join("t4-na-power.csv")).unwrap();
        assert!(parse(&t4).unwrap().iter().all(|g| g.faults.is_empty()));
        let e = parse("0, 0000:01:00.0, X, 1, [Unknown Error], 2, 0, 3").unwrap();
        assert_eq!(e[0].faults, ["temperature.gpu: [Unknown Error]"]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse("a,b\n").is_err());
        assert!(parse("x, 0000:01:00.0, n, 1, 2, 3, 4, 5").is_err());
        assert_eq!(parse("\n\n").unwrap(), vec![]);
    }

    #[test]
    fn names_merge_by_bus_id() {
        let mut gpus = vec![Gpu {
            slot: "0000:18:00.0".into(),
            name: "10de:2330".into(),
            ..Default::default()
        }];
        merge_names(
            &mut gpus,
            &std::fs::read_to_string(fixtures().join("h100x2.csv")).unwrap(),
        );
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpus[0].memory_mib, Some(81559));
    }
}
