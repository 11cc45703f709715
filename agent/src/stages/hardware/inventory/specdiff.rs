//! Diffing an inventory against the host's expected spec: each difference with a
//! severity. Missing or too little hardware is critical, a different model a warning,
//! harmless extras and in-tolerance deviations informational.
use kiln_protocol::{DiskSpec, HostSpec, Outcome};
use serde::Serialize;

use crate::stages::hardware::model::{Disk, Inventory};

/// How much a difference matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; passes.
    Info,
    /// Look at it; the stage ends `warning`.
    Warning,
    /// Wrong hardware; the stage fails.
    Critical,
}

impl Severity {
    /// The outcome of a part with this severity.
    pub fn outcome(self) -> Outcome {
        match self {
            Severity::Info => Outcome::Passed,
            Severity::Warning => Outcome::Warning,
            Severity::Critical => Outcome::Failed,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One difference between expected and found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// How much it matters.
    pub severity: Severity,
    /// What it is about (`memory`, `disk NVME-SER-1`, `nic 52:54:00:12:34:56`).
    pub item: String,
    /// One line for people.
    pub detail: String,
}

fn diff(out: &mut Vec<Difference>, severity: Severity, item: &str, detail: String) {
    out.push(Difference {
        severity,
        item: item.to_string(),
        detail,
    });
}

/// Whether `found` is within `pct` percent of `want`.
fn within(found: u64, want: u64, pct: u32) -> bool {
    let slack = want as u128 * pct as u128 / 100;
    (found as u128).abs_diff(want as u128) <= slack
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(&needle.to_lowercase())
}

/// A readable byte count (`480.1 GB`, decimal as disks are sold).
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// Name of an expected disk in reports: its serial, else path, else model.
pub fn disk_label(want: &DiskSpec, i: usize) -> String {
    want.serial
        .clone()
        .or_else(|| want.path.clone())
        .or_else(|| want.model.clone())
        .map(|s| format!("disk {s}"))
        .unwrap_or_else(|| format!("disk #{i}"))
}

/// Finds the found disk for an expected one: by serial, else path, else the first
/// unclaimed disk matching model and size.
fn match_disk(want: &DiskSpec, found: &[Disk], taken: &[bool]) -> Option<usize> {
    let free = |i: &usize| !taken[*i];
    if let Some(s) = &want.serial {
        return (0..found.len())
            .filter(free)
            .find(|&i| found[i].serial == *s);
    }
    if let Some(p) = &want.path {
        return (0..found.len()).filter(free).find(|&i| found[i].path == *p);
    }
    (0..found.len()).filter(free).find(|&i| {
        want.model
            .as_ref()
            .is_none_or(|m| contains_ci(&found[i].model, m))
            && want
                .size_bytes
                .is_none_or(|s| within(found[i].size_bytes, s, want.size_tolerance_pct))
    })
}

/// Every difference between `spec` and `inv`, most severe first (stable otherwise).
pub fn diff_spec(spec: &HostSpec, inv: &Inventory) -> Vec<Difference> {
    let mut out = Vec::new();
    if let Some(m) = &spec.cpu_model
        && !contains_ci(&inv.cpu.model, m)
    {
        let d = format!("cpu model {:?}, expected {m:?}", inv.cpu.model);
        diff(&mut out, Severity::Warning, "cpu model", d);
    }
    if let Some(n) = spec.cpus
        && inv.cpu.logical != n
    {
        let sev = if inv.cpu.logical < n {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let d = format!("{} logical cpus, expected {n}", inv.cpu.logical);
        diff(&mut out, sev, "cpus", d);
    }
    if let Some(want) = spec.memory_mib {
        let got = inv.memory.total_mib;
        let tol = spec.memory_tolerance_pct;
        if got != want {
            let sev = if within(got, want, tol) {
                Severity::Info
            } else {
                Severity::Critical
            };
            let d = format!(
                "memory {got} MiB ({}), expected {want} MiB ±{tol}%",
                inv.memory.source
            );
            diff(&mut out, sev, "memory", d);
        }
    }
    disks(spec, inv, &mut out);
    for want in &spec.nics {
        let Some(mac) = want.mac else { continue };
        let item = format!("nic {mac}");
        match inv.nics.iter().find(|n| n.mac == mac.to_string()) {
            None => diff(
                &mut out,
                Severity::Critical,
                &item,
                format!("nic {mac} is missing"),
            ),
            Some(n) => match (want.speed_mbps, n.speed_mbps) {
                (Some(w), Some(s)) if s < w => {
                    let d = format!("{} link at {s} Mbit/s, expected {w}", n.name);
                    diff(&mut out, Severity::Warning, &item, d);
                }
                (Some(w), None) => {
                    let d = format!("{} link speed unknown (down?), expected {w} Mbit/s", n.name);
                    diff(&mut out, Severity::Warning, &item, d);
                }
                _ => {}
            },
        }
    }
    if !spec.gpus.is_empty() {
        if inv.gpus.len() < spec.gpus.len() {
            let d = format!("{} gpus, expected {}", inv.gpus.len(), spec.gpus.len());
            diff(&mut out, Severity::Critical, "gpus", d);
        }
        let mut taken = vec![false; inv.gpus.len()];
        for want in &spec.gpus {
            match (0..inv.gpus.len()).find(|&i| !taken[i] && contains_ci(&inv.gpus[i].name, want)) {
                Some(i) => taken[i] = true,
                None if inv.gpus.len() >= spec.gpus.len() => {
                    let d = format!("no gpu matching {want:?}");
                    diff(&mut out, Severity::Warning, "gpu model", d);
                }
                None => {}
            }
        }
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.severity));
    out
}

fn disks(spec: &HostSpec, inv: &Inventory, out: &mut Vec<Difference>) {
    let mut taken = vec![false; inv.disks.len()];
    for (i, want) in spec.disks.iter().enumerate() {
        let item = disk_label(want, i);
        let Some(j) = match_disk(want, &inv.disks, &taken) else {
            let mut what = Vec::new();
            if let Some(m) = &want.model {
                what.push(format!("model {m:?}"));
            }
            if let Some(s) = want.size_bytes {
                what.push(human_bytes(s));
            }
            let d = format!("{item} is missing ({})", what.join(", "));
            diff(out, Severity::Critical, &item, d.replace(" ()", ""));
            continue;
        };
        taken[j] = true;
        let got = &inv.disks[j];
        if let Some(m) = &want.model
            && !contains_ci(&got.model, m)
        {
            let d = format!("{} model {:?}, expected {m:?}", got.path, got.model);
            diff(out, Severity::Warning, &item, d);
        }
        if let Some(s) = want.size_bytes {
            let tol = want.size_tolerance_pct;
            if got.size_bytes != s {
                let sev = if within(got.size_bytes, s, tol) {
                    Severity::Info
                } else {
                    Severity::Critical
                };
                let d = format!(
                    "{} size {} ({} bytes), expected {} ±{tol}%",
                    got.path,
                    human_bytes(got.size_bytes),
                    got.size_bytes,
                    human_bytes(s)
                );
                diff(out, sev, &item, d);
            }
        }
        if let (Some(p), Some(_)) = (&want.path, &want.serial)
            && *p != got.path
        {
            let d = format!("found at {}, expected at {p}", got.path);
            diff(out, Severity::Info, &item, d);
        }
    }
    if !spec.disks.is_empty() {
        for (d, _) in inv.disks.iter().zip(&taken).filter(|(_, t)| !**t) {
            let text = format!(
                "unexpected disk {} ({:?}, {}, serial {:?})",
                d.path,
                d.model,
                human_bytes(d.size_bytes),
                d.serial
            );
            diff(out, Severity::Info, &format!("disk {}", d.path), text);
        }
    }
}
