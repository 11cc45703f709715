//! The load test: `gpu_burn` for the spec's duration while every GPU is sampled.
use kiln_protocol::{GpuSpec, Outcome};
use smol::future::FutureExt;
use std::collections::BTreeMap;

use super::gpuburn;
use super::health::{Health, links};
use super::nvsmi::GpuReading;
use super::read::{Programs, query};
use crate::stages::ctx::{StageCtx, StageResult};
use crate::stages::hardware::tools::{Tool, find};

/// What the load test found: the hottest reading per GPU, and gpu_burn's findings per
/// GPU index.
pub(super) struct Loaded {
    pub(super) peaks: Vec<GpuReading>,
    pub(super) findings: BTreeMap<u32, Vec<String>>,
}

/// Runs `gpu_burn` for the spec's duration, sampling every GPU meanwhile.
pub(super) async fn load(
    ctx: &StageCtx,
    spec: &GpuSpec,
    first: &[GpuReading],
    progs: &Programs<'_>,
    mut health: Option<&mut BTreeMap<u32, Health>>,
) -> Result<Loaded, StageResult> {
    let Some(burn) = find(progs.gpu_burn) else {
        return Err(StageResult::error(
            "gpu_burn not found on PATH (needed for the load test)",
        ));
    };
    ctx.note(&format!("load: gpu_burn for {}s", spec.duration_s));
    let mut peak: Vec<GpuReading> = first.to_vec();
    let mut tool = Tool::new(
        [
            burn.to_string_lossy().into_owned(),
            spec.duration_s.to_string(),
        ],
        spec.duration_s + 120,
    )
    .streamed();
    // gpu_burn reads compare.ptx from its working folder: run it where it lives.
    tool.cwd = burn
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()));
    // Its GPU N is nvidia-smi's index N, and it loads every GPU (module docs).
    tool.env = vec![
        ("CUDA_DEVICE_ORDER".into(), Some("PCI_BUS_ID".into())),
        ("CUDA_VISIBLE_DEVICES".into(), None),
    ];
    // The first failure nvidia-smi reports while loaded (a GPU off the bus, no GPUs
    // left); a query that merely could not run is noted and sampling goes on.
    let mut lost: Option<String> = None;
    let sampler = async {
        loop {
            smol::Timer::after(progs.sample_every).await;
            match query(ctx, progs.nvidia_smi).await {
                Ok((now, _)) => {
                    for r in now {
                        if let Some(p) = peak.iter_mut().find(|p| p.index == r.index) {
                            p.temperature_c = max(p.temperature_c, r.temperature_c);
                            p.power_w = max(p.power_w, r.power_w);
                            p.clock_sm_mhz = max(p.clock_sm_mhz, r.clock_sm_mhz);
                            p.ecc_uncorrected = r.ecc_uncorrected.or(p.ecc_uncorrected);
                            for f in r.faults {
                                if !p.faults.contains(&f) {
                                    p.faults.push(f);
                                }
                            }
                        }
                    }
                }
                Err(r) if matches!(r.outcome, Outcome::Failed | Outcome::Skipped) => {
                    if lost.is_none() {
                        ctx.note(&format!("load: nvidia-smi: {}", r.detail));
                        lost = Some(r.detail);
                    }
                }
                Err(r) => ctx.note(&format!("load: sample failed: {}", r.detail)),
            }
            // Links and clock cuts under load; quietly, as the first query was noted.
            if let Some(h) = health.as_deref_mut()
                && let Ok(l) = links(ctx, progs.nvidia_smi).await
            {
                Health::merge(h, l, true);
            }
        }
    };
    let out = async { tool.run(ctx).await }.or(async {
        sampler.await;
        unreachable!("the sampler loops forever")
    });
    let c = out.await.map_err(|e| e.result(ctx))?;
    if let Some(why) = lost {
        return Err(StageResult::new(
            Outcome::Failed,
            format!("load test: nvidia-smi during load: {why}"),
        ));
    }
    let report = gpuburn::parse(&c.text());
    if !c.success() {
        // gpu_burn gave up (no GPU could be initialised, every worker died): its
        // last stderr line says why.
        let why = c.stderr.iter().rev().find(|l| !l.trim().is_empty());
        return Err(StageResult::new(
            Outcome::Failed,
            format!(
                "load test: gpu_burn failed ({}){}",
                c.status(),
                why.map(|w| format!(": {}", w.trim())).unwrap_or_default()
            ),
        ));
    }
    let mut findings: BTreeMap<u32, Vec<String>> = Default::default();
    let (tested, listed) = (report.faulty.len(), peak.len());
    if tested > 0 && tested != listed {
        // CUDA saw another set of GPUs than nvidia-smi (one in MIG mode, say): gpu_burn's
        // numbers name no slot, so no GPU is vetted and none is blamed by number.
        let faulty: Vec<String> = report
            .faulty
            .iter()
            .filter(|(_, bad)| **bad)
            .map(|(i, _)| format!("its GPU {i} FAULTY"))
            .collect();
        let why = format!(
            "gpu_burn tested {tested} GPUs, nvidia-smi lists {listed}: its verdicts \
             cannot be matched to slots{}",
            match faulty.is_empty() {
                true => String::new(),
                false => format!(" ({})", faulty.join(", ")),
            }
        );
        for g in &peak {
            findings.insert(g.index, vec![why.clone()]);
        }
        return Ok(Loaded {
            peaks: peak,
            findings,
        });
    }
    for g in &peak {
        let mut f = Vec::new();
        match report.faulty.get(&g.index) {
            Some(true) => f.push("gpu_burn: FAULTY (wrong results under load)".to_string()),
            Some(false) => {}
            None => f.push("gpu_burn gave no verdict for it (not tested)".to_string()),
        }
        if report.died.contains(&g.index) {
            f.push("gpu_burn: its worker died under load".to_string());
        }
        if let Some(v) = report.gflops.get(&g.index) {
            ctx.measure(&format!("gpu{}.gflops", g.index), *v, "Gflop/s");
        }
        if !f.is_empty() {
            findings.insert(g.index, f);
        }
    }
    Ok(Loaded {
        peaks: peak,
        findings,
    })
}

pub(super) fn max(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}
