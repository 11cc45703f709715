//! The `gpu` stage: query every NVIDIA GPU with nvidia-smi (name, memory, temperature,
//! power, uncorrected ECC errors, SM clock); optionally load them with `gpu_burn`
//! while sampling. No driver or no GPU: `skipped` with the reason.
//!
//! gpu_burn numbers GPUs in CUDA's order; the stage runs it with
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID` and without `CUDA_VISIBLE_DEVICES`, so its GPU N is
//! nvidia-smi's index N and every GPU nvidia-smi sees is loaded. Each GPU's verdict
//! (FAULTY, a worker that died, no verdict at all) fails that GPU's part, named by its
//! PCI address, the slot a technician pulls.
//!
//! Beside the reading, two health queries ([`self::nvhealth`]): each GPU's PCIe link
//! and active clock-cut reasons (at the start and with every sample under load), and
//! memory row remapping (at the end). Under load a link below the width GPU and slot
//! allow fails the GPU, a lower generation warns; a clock cut by the hardware (power
//! brake, thermal, slowdown) fails it, the driver's thermal cap warns; a failed row
//! remap fails it, a pending one warns. Idle links are not judged: they train down to
//! save power.
pub mod gpuburn;
mod health;
mod load;
pub mod nvhealth;
pub mod nvsmi;
mod read;

#[cfg(test)]
mod tests;

pub(crate) use read::Programs;

use kiln_protocol::{GpuSpec, Outcome};
use std::collections::BTreeMap;
use std::time::Duration;

use health::{Health, health_query, judge_remap, links, or_note};
use load::load;
use read::{problems, query, report, show};

use crate::stages::ctx::{StageCtx, StageResult};

/// How often GPUs are sampled during the load test.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &GpuSpec) -> StageResult {
    let progs = Programs {
        nvidia_smi: "nvidia-smi",
        gpu_burn: "gpu_burn",
        sample_every: SAMPLE_EVERY,
    };
    run_with(ctx, spec, &progs).await
}

/// Runs the stage with `progs`.
pub(crate) async fn run_with(ctx: &StageCtx, spec: &GpuSpec, progs: &Programs<'_>) -> StageResult {
    let (gpus, raw) = match query(ctx, progs.nvidia_smi).await {
        Ok(r) => r,
        Err(r) => {
            ctx.note(&r.detail);
            return r;
        }
    };
    let path = ctx.dir.join("nvidia-smi.csv");
    if std::fs::write(&path, &raw).is_ok() {
        let _ = ctx.artifact(&path, "nvidia-smi.csv").await;
    }
    let mut bad = Vec::new();
    for g in &gpus {
        ctx.note(&format!(
            "gpu{} {} {}: {} MiB, {}, {}, sm {}, ecc uncorrected {}",
            g.index,
            g.bus_id,
            g.name,
            show(g.memory_mib, ""),
            show(g.temperature_c, " °C"),
            show(g.power_w, " W"),
            show(g.clock_sm_mhz, " MHz"),
            show(g.ecc_uncorrected, "")
        ));
        report(ctx, g, "");
    }
    let mut health: Option<BTreeMap<u32, Health>> = or_note(
        ctx,
        "PCIe links and clock-cut reasons",
        links(ctx, progs.nvidia_smi).await,
    )
    .map(|l| {
        let mut h = BTreeMap::new();
        Health::merge(&mut h, l, false);
        h
    });
    let loaded = spec.duration_s > 0;
    let (peaks, findings) = if loaded {
        match load(ctx, spec, &gpus, progs, health.as_mut()).await {
            Ok(l) => {
                for g in &l.peaks {
                    report(ctx, g, "_max");
                }
                (l.peaks, l.findings)
            }
            Err(r) => return r,
        }
    } else {
        (gpus.clone(), Default::default())
    };
    // Row remapping after the load: new uncorrectable errors under load remap rows.
    let argv = nvhealth::remap_argv(progs.nvidia_smi);
    let remaps = health_query(ctx, argv, nvhealth::parse_remaps).await;
    let remaps = or_note(ctx, "memory row remapping", remaps).unwrap_or_default();
    let mut warned = Vec::new();
    for g in &peaks {
        let burn = findings.get(&g.index).map(Vec::as_slice).unwrap_or(&[]);
        let mut p = problems(spec, g, burn);
        let mut w = Vec::new();
        if let Some(h) = health.as_ref().and_then(|h| h.get(&g.index)) {
            let m = |name: &str, v: Option<u32>, unit: &str| {
                if let Some(v) = v {
                    ctx.measure(&format!("gpu{}.{name}", g.index), v as f64, unit);
                }
            };
            m("pcie_gen", h.link.generation, "gen");
            m("pcie_width", h.link.width, "lanes");
            if loaded && h.busy_samples == 0 {
                ctx.note(&format!(
                    "gpu{}: PCIe link not judged: no sample found it busy under load",
                    g.index
                ));
            }
            let (f, warn) = h.judge();
            p.extend(f);
            w.extend(warn);
        }
        if let Some(r) = remaps.iter().find(|r| r.bus_id == g.bus_id) {
            for (name, v) in [
                ("remapped_rows_correctable", r.correctable),
                ("remapped_rows_uncorrectable", r.uncorrectable),
            ] {
                if let Some(v) = v {
                    ctx.measure(&format!("gpu{}.{name}", g.index), v as f64, "rows");
                }
            }
            let (f, warn) = judge_remap(r);
            p.extend(f);
            w.extend(warn);
        }
        let name = format!("gpu{} {}", g.index, g.bus_id);
        let (outcome, found) = match (p.is_empty(), w.is_empty()) {
            (true, true) => {
                ctx.part(&name, Outcome::Passed, &g.name, vec![]);
                continue;
            }
            (false, _) => (Outcome::Failed, [p, w].concat()),
            (true, false) => (Outcome::Warning, w),
        };
        let detail = format!("{}: {}", g.name, found.join(", "));
        ctx.note(&format!("{name}: {detail}"));
        ctx.part(&name, outcome, &detail, vec![]);
        let line = format!("gpu{} {}", g.index, found.join(", "));
        match outcome {
            Outcome::Failed => bad.push(line),
            _ => warned.push(line),
        }
    }
    let n = gpus.len();
    let what = if n == 1 { "GPU" } else { "GPUs" };
    match (bad.is_empty(), warned.is_empty()) {
        (true, true) => StageResult::new(Outcome::Passed, format!("{n} {what} healthy")),
        (true, false) => StageResult::new(Outcome::Warning, warned.join("; ")),
        (false, _) => StageResult::new(Outcome::Failed, [bad, warned].concat().join("; ")),
    }
}
