//! The `inventory` stage: CPU, memory, DMI, disks, NICs, PCI and GPUs from sysfs and
//! procfs (enriched by dmidecode, lspci and lshw when installed), uploaded as
//! `inventory.json`, reported as measurements, and diffed against the host's spec.
pub mod dmidecode;
pub mod specdiff;

#[cfg(test)]
mod tests;

use kiln_protocol::{HostSpec, Outcome};
use serde::Serialize;

use crate::stages::ctx::{StageCtx, StageResult};
use crate::stages::hardware::collect::{self, Roots};
use crate::stages::hardware::model::{Gpu, Inventory, Memory};
use crate::stages::hardware::tools::{Tool, ToolError};
use specdiff::{Difference, Severity, human_bytes};

/// What `inventory.json` holds.
#[derive(Serialize)]
struct Report<'a> {
    host: &'a str,
    inventory: &'a Inventory,
    expected: &'a HostSpec,
    differences: &'a [Difference],
}

/// Reads everything sysfs and procfs offer (no tools).
pub fn collect_base(roots: &Roots) -> Inventory {
    let cpuinfo = std::fs::read_to_string(roots.proc.join("cpuinfo")).unwrap_or_default();
    let meminfo = std::fs::read_to_string(roots.proc.join("meminfo")).unwrap_or_default();
    let usable = collect::parse_meminfo_mib(&meminfo);
    let sysfs = collect::sysfs_memory_mib(&roots.sys);
    let (total_mib, source) = if sysfs > 0 {
        (sysfs, "sysfs")
    } else {
        (usable, "meminfo")
    };
    Inventory {
        cpu: collect::parse_cpuinfo(&cpuinfo),
        memory: Memory {
            total_mib,
            source: source.into(),
            usable_mib: usable,
            dimms: vec![],
        },
        dmi: collect::dmi(&roots.sys),
        disks: collect::disks(&roots.sys),
        nics: collect::nics(&roots.sys),
        pci: collect::pci(&roots.sys),
        gpus: vec![],
        lshw: None,
    }
}

/// GPUs among the PCI devices: 3D controllers, and display controllers from NVIDIA
/// and AMD (a BMC's or an emulator's VGA is not a GPU).
pub fn gpus_from_pci(inv: &Inventory) -> Vec<Gpu> {
    inv.pci
        .iter()
        .filter(|d| {
            let class = d.class >> 8;
            class == 0x0302 || (class == 0x0300 && matches!(d.vendor_id, 0x10de | 0x1002))
        })
        .map(|d| Gpu {
            slot: d.slot.clone(),
            name: if d.device.is_empty() {
                format!("{:04x}:{:04x}", d.vendor_id, d.device_id)
            } else {
                d.device.clone()
            },
            vendor: d.vendor.clone(),
            memory_mib: None,
        })
        .collect()
}

/// Runs an optional enrichment tool: its stdout on success, `None` (with a note)
/// when it is missing or fails; `Err` only when the stage was stopped.
async fn optional(ctx: &StageCtx, tool: Tool, why: &str) -> Result<Option<String>, StageResult> {
    match tool.run(ctx).await {
        Ok(c) if c.success() => Ok(Some(c.text())),
        Ok(c) => {
            let how = match c.code() {
                Some(code) => format!("exited {code}"),
                None => c.status(),
            };
            ctx.note(&format!("{} {how}: {why}", tool.name()));
            Ok(None)
        }
        Err(e @ ToolError::Stopped(_)) => Err(e.result(ctx)),
        Err(e) => {
            ctx.note(&format!("{e}: {why}"));
            Ok(None)
        }
    }
}

/// Collects the full inventory: sysfs, then dmidecode, lspci, nvidia-smi and lshw.
pub async fn collect_all(ctx: &StageCtx, roots: &Roots) -> Result<Inventory, StageResult> {
    let mut inv = collect_base(roots);
    let dmi = Tool::new(["dmidecode", "-t", "17"], 60);
    if let Some(text) = optional(ctx, dmi, "memory size from sysfs").await? {
        inv.memory.dimms = dmidecode::parse_dimms(&text);
        let sum: u64 = inv.memory.dimms.iter().map(|d| d.size_mib).sum();
        if sum > 0 {
            inv.memory.total_mib = sum;
            inv.memory.source = "dmi".into();
        }
    }
    let lspci = Tool::new(["lspci", "-mm", "-nn"], 60);
    if let Some(text) = optional(ctx, lspci, "PCI devices without names").await? {
        collect::merge_lspci(&mut inv.pci, &text);
    }
    inv.gpus = gpus_from_pci(&inv);
    if !inv.gpus.is_empty() && crate::stages::hardware::tools::find("nvidia-smi").is_some() {
        let q = Tool::new(crate::stages::hardware::gpu::nvsmi::query_argv(), 60);
        if let Some(text) = optional(ctx, q, "GPU names from lspci").await? {
            crate::stages::hardware::gpu::nvsmi::merge_names(&mut inv.gpus, &text);
        }
    }
    let lshw = Tool::new(["lshw", "-json", "-quiet"], 300);
    if let Some(text) = optional(ctx, lshw, "no lshw tree in the inventory").await? {
        match serde_json::from_str(&text) {
            Ok(v) => inv.lshw = Some(v),
            Err(e) => ctx.note(&format!("lshw printed invalid JSON ({e}): left out")),
        }
    }
    Ok(inv)
}

fn summarize(ctx: &StageCtx, inv: &Inventory) {
    let c = &inv.cpu;
    ctx.note(&format!(
        "cpu: {} ({} logical, {} cores, {} sockets)",
        c.model, c.logical, c.cores, c.sockets
    ));
    ctx.measure("cpu.logical", c.logical as f64, "count");
    ctx.measure("cpu.cores", c.cores as f64, "count");
    let m = &inv.memory;
    ctx.note(&format!(
        "memory: {} MiB ({}), {} MiB usable, {} dimms",
        m.total_mib,
        m.source,
        m.usable_mib,
        m.dimms.len()
    ));
    ctx.measure("memory.total", m.total_mib as f64, "MiB");
    ctx.measure("memory.usable", m.usable_mib as f64, "MiB");
    let d = &inv.dmi;
    ctx.note(&format!(
        "dmi: {} {} serial {:?}, board {} {}, bios {} {} {}",
        d.vendor,
        d.product,
        d.serial,
        d.board_vendor,
        d.board,
        d.bios_vendor,
        d.bios_version,
        d.bios_date
    ));
    ctx.measure("disks", inv.disks.len() as f64, "count");
    for k in &inv.disks {
        ctx.note(&format!(
            "disk {}: {:?} serial {:?}, {}, {}{}",
            k.path,
            k.model,
            k.serial,
            human_bytes(k.size_bytes),
            k.transport,
            if k.rotational { ", rotational" } else { "" }
        ));
        ctx.measure(
            &format!("disk.{}.size", k.name),
            k.size_bytes as f64,
            "bytes",
        );
    }
    for n in &inv.nics {
        let speed = n
            .speed_mbps
            .map(|s| format!("{s} Mbit/s"))
            .unwrap_or("no link speed".into());
        ctx.note(&format!(
            "nic {}: {} {} {} ({})",
            n.name, n.mac, n.driver, speed, n.state
        ));
        if let Some(s) = n.speed_mbps {
            ctx.measure(&format!("nic.{}.speed", n.name), s as f64, "Mbit/s");
        }
    }
    ctx.measure("pci.devices", inv.pci.len() as f64, "count");
    for g in &inv.gpus {
        ctx.note(&format!("gpu {}: {} {}", g.slot, g.vendor, g.name));
    }
    ctx.measure("gpus", inv.gpus.len() as f64, "count");
}

/// Reports the differences as parts and log lines; returns the stage result.
pub fn judge(ctx: &StageCtx, diffs: &[Difference]) -> StageResult {
    let spec = &ctx.host.spec;
    if *spec == HostSpec::default() {
        ctx.note("no expected spec for this host: nothing to diff");
        return StageResult::new(Outcome::Passed, "inventory taken; no expected spec");
    }
    for d in diffs {
        let line = format!("{}: {}", d.severity.as_str(), d.detail);
        ctx.note(&format!("spec {line}"));
        ctx.part(&d.item, d.severity.outcome(), &line, vec![]);
    }
    let count = |s: Severity| diffs.iter().filter(|d| d.severity == s).count();
    let (crit, warn) = (count(Severity::Critical), count(Severity::Warning));
    let items = |s: Severity| {
        diffs
            .iter()
            .filter(|d| d.severity == s)
            .map(|d| d.item.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if crit > 0 {
        let detail = format!(
            "{crit} critical spec differences: {}",
            items(Severity::Critical)
        );
        StageResult::new(Outcome::Failed, detail)
    } else if warn > 0 {
        StageResult::new(
            Outcome::Warning,
            format!("{warn} spec warnings: {}", items(Severity::Warning)),
        )
    } else {
        ctx.part("spec", Outcome::Passed, "matches the expected spec", vec![]);
        StageResult::new(Outcome::Passed, "matches the expected spec")
    }
}

/// Runs the stage.
pub async fn run(ctx: &StageCtx) -> StageResult {
    let roots = Roots::detect();
    let inv = match collect_all(ctx, &roots).await {
        Ok(inv) => inv,
        Err(stopped) => return stopped,
    };
    summarize(ctx, &inv);
    let diffs = specdiff::diff_spec(&ctx.host.spec, &inv);
    let report = Report {
        host: &ctx.host.name,
        inventory: &inv,
        expected: &ctx.host.spec,
        differences: &diffs,
    };
    let path = ctx.dir.join("inventory.json");
    let stored = serde_json::to_vec_pretty(&report)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&path, bytes));
    if let Err(e) = stored {
        return StageResult::error(format!("writing inventory.json: {e}"));
    }
    if let Err(e) = ctx.artifact(&path, "inventory.json").await {
        return StageResult::error(format!("storing inventory.json: {e}"));
    }
    judge(ctx, &diffs)
}
