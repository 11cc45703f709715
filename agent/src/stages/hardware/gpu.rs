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
//! Beside the reading, two health queries ([`super::nvhealth`]): each GPU's PCIe link
//! and active clock-cut reasons (at the start and with every sample under load), and
//! memory row remapping (at the end). Under load a link below the width GPU and slot
//! allow fails the GPU, a lower generation warns; a clock cut by the hardware (power
//! brake, thermal, slowdown) fails it, the driver's thermal cap warns; a failed row
//! remap fails it, a pending one warns. Idle links are not judged: they train down to
//! save power.
use kiln_protocol::{GpuSpec, Outcome};
use smol::future::FutureExt;
use std::time::Duration;

use super::gpuburn;
use super::nvhealth::{self, Link, Remap, Throttle};
use super::nvsmi::{self, GpuReading};
use super::tools::{Tool, ToolError, find};
use crate::stages::{StageCtx, StageResult};
use std::collections::{BTreeMap, BTreeSet};

/// How often GPUs are sampled during the load test.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The programs the stage runs, and its sampling period (tests pass fakes' paths).
#[derive(Debug, Clone)]
pub(crate) struct Programs<'a> {
    /// nvidia-smi.
    pub nvidia_smi: &'a str,
    /// gpu_burn.
    pub gpu_burn: &'a str,
    /// How often GPUs are sampled during the load test.
    pub sample_every: Duration,
}

/// One query: the readings, or how the stage ends.
async fn query(ctx: &StageCtx, smi: &str) -> Result<(Vec<GpuReading>, String), StageResult> {
    let mut argv = nvsmi::query_argv();
    argv[0] = smi.to_string();
    let c = match Tool::new(argv, 60).run(ctx).await {
        Ok(c) => c,
        Err(ToolError::Missing(_)) => {
            return Err(StageResult::new(
                Outcome::Skipped,
                "nvidia-smi not found: no NVIDIA driver installed",
            ));
        }
        Err(e) => return Err(e.result(ctx)),
    };
    let text = c.text();
    if let Some(sig) = c.signal() {
        return Err(StageResult::error(format!(
            "nvidia-smi killed by signal {sig}"
        )));
    }
    if let Some(code) = c.code().filter(|&c| c != 0) {
        let all = format!("{text}\n{}", c.stderr.join("\n"));
        let (outcome, detail) = nvsmi::judge_failure(code, &all);
        return Err(StageResult::new(outcome, detail));
    }
    match nvsmi::parse(&text) {
        Ok(g) if g.is_empty() => Err(StageResult::new(Outcome::Skipped, "no NVIDIA GPU found")),
        Ok(g) => Ok((g, text)),
        Err(e) => Err(StageResult::error(e)),
    }
}

fn report(ctx: &StageCtx, g: &GpuReading, suffix: &str) {
    let p = format!("gpu{}.", g.index);
    let put = |name: &str, v: Option<f64>, unit: &str| {
        if let Some(v) = v {
            ctx.measure(&format!("{p}{name}{suffix}"), v, unit);
        }
    };
    put("temperature", g.temperature_c, "C");
    put("power", g.power_w, "W");
    put("clock_sm", g.clock_sm_mhz, "MHz");
    if suffix.is_empty() {
        put("memory_total", g.memory_mib.map(|m| m as f64), "MiB");
        put(
            "ecc_uncorrected",
            g.ecc_uncorrected.map(|e| e as f64),
            "count",
        );
    }
}

fn show(v: Option<impl std::fmt::Display>, unit: &str) -> String {
    v.map(|v| format!("{v}{unit}"))
        .unwrap_or_else(|| "n/a".into())
}

/// How busy a GPU must be for a link sample to count as under load, percent.
const BUSY: u32 = 50;

/// A GPU's link and clock health over the stage: its link (the worst seen while busy
/// under the load test, once there is such a sample, else as queried idle) and every
/// clock-cut reason seen active.
#[derive(Debug, Clone, Default)]
struct Health {
    link: Link,
    busy_samples: usize,
    throttles: BTreeSet<Throttle>,
}

impl Health {
    /// Adds one link query's lines (`during_load`: taken while gpu_burn ran). Only
    /// samples that find the GPU busy judge its link: gpu_burn spends its first seconds
    /// on the CPU, and an idle link trains down to save power.
    fn merge(all: &mut BTreeMap<u32, Health>, links: Vec<Link>, during_load: bool) {
        let worst = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for l in links {
            let h = all.entry(l.index).or_default();
            h.throttles.extend(l.throttles.iter().copied());
            let busy = during_load && l.utilization.is_some_and(|u| u >= BUSY);
            h.link.generation_max = l.generation_max.or(h.link.generation_max);
            h.link.width_max = l.width_max.or(h.link.width_max);
            h.link.index = l.index;
            if busy && h.busy_samples > 0 {
                h.link.generation = worst(h.link.generation, l.generation);
                h.link.width = worst(h.link.width, l.width);
            } else if busy || h.busy_samples == 0 {
                // The first busy sample replaces the idle link; idle samples update it.
                h.link.generation = l.generation;
                h.link.width = l.width;
            }
            h.busy_samples += usize::from(busy);
        }
    }

    /// (failures, warnings) for this GPU; its link is judged only from busy samples.
    fn judge(&self) -> (Vec<String>, Vec<String>) {
        let (mut fail, mut warn) = (Vec::new(), Vec::new());
        let l = &self.link;
        if self.busy_samples > 0 {
            if let (Some(w), Some(max)) = (l.width, l.width_max)
                && w < max
            {
                fail.push(format!("PCIe link x{w} of x{max} under load"));
            }
            if let (Some(g), Some(max)) = (l.generation, l.generation_max)
                && g < max
            {
                warn.push(format!("PCIe gen {g} of {max} under load"));
            }
        }
        let (hw, sw): (Vec<Throttle>, Vec<Throttle>) =
            self.throttles.iter().partition(|t| t.is_hardware());
        let labels = |ts: &[Throttle]| ts.iter().map(|t| t.label()).collect::<Vec<_>>().join(", ");
        if !hw.is_empty() {
            fail.push(format!("clocks cut by the hardware ({})", labels(&hw)));
        }
        if !sw.is_empty() {
            warn.push(format!("clocks cut by the driver ({})", labels(&sw)));
        }
        (fail, warn)
    }
}

/// (failures, warnings) from a GPU's row remapping.
fn judge_remap(r: &Remap) -> (Vec<String>, Vec<String>) {
    let (mut fail, mut warn) = (Vec::new(), Vec::new());
    if r.failure == Some(true) {
        fail.push("memory row remapping failed (no spare rows left)".to_string());
    }
    if r.pending == Some(true) {
        warn.push("memory row remap pending (reset the GPU to apply it)".to_string());
    }
    (fail, warn)
}

/// A health query's lines, or why it gave none.
async fn health_query<T>(
    ctx: &StageCtx,
    argv: Vec<String>,
    parse: fn(&str) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, String> {
    match Tool::new(argv, 60).run(ctx).await {
        Ok(c) if c.success() => parse(&c.text()),
        Ok(c) => {
            let text = format!("{}\n{}", c.text(), c.stderr.join("\n"));
            let first = text.lines().map(str::trim).find(|l| !l.is_empty());
            Err(format!(
                "nvidia-smi {}: {}",
                c.status(),
                first.unwrap_or("")
            ))
        }
        Err(e) => Err(e.result(ctx).detail),
    }
}

/// The health checks are extras, never the stage's end: a query that gives nothing
/// is noted once, as `what … not checked`.
fn or_note<T>(ctx: &StageCtx, what: &str, r: Result<Vec<T>, String>) -> Option<Vec<T>> {
    r.map_err(|why| ctx.note(&format!("{what} not checked: {why}")))
        .ok()
}

async fn links(ctx: &StageCtx, smi: &str) -> Result<Vec<Link>, String> {
    let argv = nvhealth::gpu_argv(smi, nvhealth::LINK_QUERY);
    health_query(ctx, argv, nvhealth::parse_links).await
}

/// Problems in one reading against the spec, plus what the load test found
/// (`burn`).
fn problems(spec: &GpuSpec, g: &GpuReading, burn: &[String]) -> Vec<String> {
    let mut out: Vec<String> = g
        .faults
        .iter()
        .map(|f| format!("nvidia-smi reports {f}"))
        .collect();
    out.extend(burn.iter().cloned());
    if let Some(e) = g.ecc_uncorrected.filter(|e| *e > 0) {
        out.push(format!("{e} uncorrected ECC errors"));
    }
    if let (Some(max), Some(t)) = (spec.max_temperature_c, g.temperature_c)
        && t > max as f64
    {
        out.push(format!("temperature {t} °C above {max} °C"));
    }
    out
}

/// What the load test found: the hottest reading per GPU, and gpu_burn's findings per
/// GPU index.
struct Loaded {
    peaks: Vec<GpuReading>,
    findings: BTreeMap<u32, Vec<String>>,
}

/// Runs `gpu_burn` for the spec's duration, sampling every GPU meanwhile.
async fn load(
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

fn max(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::hardware::testutil::{ctx_for, fake_tool, measures, parts};
    use kiln_protocol::StageKind;

    /// Runs a 60 s load test with a FAKE nvidia-smi (no GPU here) that answers the
    /// first query with two healthy H100s and every later one with `then`, and a FAKE
    /// gpu_burn that ends, healthy, once the sampler has queried three times (so the
    /// second query's answer has been judged).
    fn load_with_later_query(then: &str) -> StageResult {
        load_test(then, "echo 'GPU 0: OK'; echo 'GPU 1: OK'").0
    }

    /// [`load_with_later_query`] with the fake gpu_burn ending with `burn_end` (sh);
    /// returns the result, the parts (name, outcome, detail), the measurements and
    /// what the fake saw of its environment.
    #[allow(clippy::type_complexity)]
    fn load_test(
        then: &str,
        burn_end: &str,
    ) -> (
        StageResult,
        Vec<(String, Outcome, String)>,
        Vec<(String, f64)>,
        String,
    ) {
        load_test_with(&Fakes {
            then,
            burn_end,
            ..Fakes::default()
        })
    }

    /// What the FAKE nvidia-smi and gpu_burn answer (sh snippets; no GPU here).
    struct Fakes<'a> {
        /// Load test length; 0: query only.
        duration_s: u64,
        /// Every main query after the first (which is h100x2.csv: two H100s).
        then: &'a str,
        /// gpu_burn's end, once the sampler has made two main queries.
        burn_end: &'a str,
        /// The link query at the start (idle).
        link_idle: &'a str,
        /// Every link query under load.
        link_loaded: &'a str,
        /// The row-remapping query.
        remap: &'a str,
    }

    /// Both GPUs' links at gen 5 x16, no clock cuts, idle.
    const LINKS_IDLE: &str = "\
        echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 0'\n\
        echo '1, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 0'";

    /// [`LINKS_IDLE`], busy.
    const LINKS_BUSY: &str = "\
        echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'\n\
        echo '1, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'";

    impl Default for Fakes<'_> {
        fn default() -> Self {
            Fakes {
                duration_s: 60,
                then: TWO_HEALTHY,
                burn_end: "echo 'GPU 0: OK'; echo 'GPU 1: OK'",
                link_idle: LINKS_IDLE,
                link_loaded: LINKS_BUSY,
                remap: "echo '00000000:18:00.0, 0, 0, No, No'\n\
                        echo '00000000:2A:00.0, 0, 0, No, No'",
            }
        }
    }

    /// Runs the stage against `f`; returns as [`load_test`].
    #[allow(clippy::type_complexity)]
    fn load_test_with(
        f: &Fakes,
    ) -> (
        StageResult,
        Vec<(String, Outcome, String)>,
        Vec<(String, f64)>,
        String,
    ) {
        let d = tempfile::tempdir().unwrap();
        let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hardware/nvidia-smi");
        let n = d.path().join("n");
        let idle = d.path().join("idle-link-done");
        let smi = fake_tool(
            d.path(),
            "nvidia-smi",
            &format!(
                "case \"$*\" in\n\
                 *pcie.link*) if [ -e '{idle}' ]; then\n{loaded}\nelse touch '{idle}'\n{link_idle}\nfi\nexit ;;\n\
                 *remapped*) {remap}\nexit ;;\n\
                 esac\n\
                 n=$(($(cat '{n}' 2>/dev/null || echo 0) + 1)); echo $n > '{n}'\n\
                 if [ $n -eq 1 ]; then cat '{h100}'; exit 0; fi\n{then}",
                idle = idle.display(),
                loaded = f.link_loaded,
                link_idle = f.link_idle,
                remap = f.remap,
                n = n.display(),
                h100 = fx.join("h100x2.csv").display(),
                then = f.then,
            ),
        );
        let env = d.path().join("env");
        let burn = fake_tool(
            d.path(),
            "gpu_burn",
            &format!(
                "echo \"$CUDA_DEVICE_ORDER ${{CUDA_VISIBLE_DEVICES-unset}}\" > '{}'\n\
                 while [ \"$(cat '{}' 2>/dev/null || echo 0)\" -lt 3 ]; do sleep 0.05; done\n\
                 {}",
                env.display(),
                n.display(),
                f.burn_end,
            ),
        );
        let spec = GpuSpec {
            duration_s: f.duration_s,
            max_temperature_c: None,
        };
        let (c, sink, _w) = ctx_for(StageKind::Gpu(spec.clone()));
        let progs = Programs {
            nvidia_smi: &smi,
            gpu_burn: &burn,
            sample_every: Duration::from_millis(50),
        };
        let r = smol::block_on(run_with(&c, &spec, &progs));
        let m = measures(&sink)
            .into_iter()
            .map(|(n, v, _)| (n, v))
            .collect();
        let env = std::fs::read_to_string(&env).unwrap_or_default();
        (r, parts(&sink), m, env.trim().to_string())
    }

    /// A FAKE nvidia-smi's answer (sh): two healthy H100s. (The h100x2 capture has 2
    /// ECC errors on gpu1, which would fail it whatever gpu_burn says.)
    const TWO_HEALTHY: &str = "\
        echo '0, 00000000:18:00.0, NVIDIA H100 80GB HBM3, 81559, 40, 300, 0, 1980'\n\
        echo '1, 00000000:2A:00.0, NVIDIA H100 80GB HBM3, 81559, 41, 310, 0, 1980'";

    #[test]
    fn gpu_burn_verdicts_fail_the_gpus_they_name() {
        // Both GPUs are healthy to nvidia-smi; gpu_burn finds GPU 1 FAULTY.
        let h = TWO_HEALTHY;
        let (r, parts, m, env) = load_test(
            h,
            "printf '\\r100.0%%  proc'\\''d: 9 (50000 Gflop/s) - 9 (49000 Gflop/s)   errors: 0 - 7  (WARNING!)   temps: 60 C - 61 C \\n'\n\
             printf 'Tested 2 GPUs:\\n\\tGPU 0: OK\\n\\tGPU 1: FAULTY\\n'",
        );
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert!(
            r.detail.starts_with("gpu1 gpu_burn: FAULTY"),
            "{}",
            r.detail
        );
        let gpu1 = parts
            .iter()
            .find(|p| p.0 == "gpu1 0000:2a:00.0")
            .expect("gpu1 part");
        assert_eq!(gpu1.1, Outcome::Failed);
        assert!(gpu1.2.contains("FAULTY"), "{}", gpu1.2);
        let gpu0 = parts
            .iter()
            .find(|p| p.0 == "gpu0 0000:18:00.0")
            .expect("gpu0 part");
        assert_eq!(gpu0.1, Outcome::Passed, "{gpu0:?}");
        assert!(m.contains(&("gpu0.gflops".into(), 50000.0)), "{m:?}");
        assert!(m.contains(&("gpu1.gflops".into(), 49000.0)), "{m:?}");
        // gpu_burn ran with nvidia-smi's numbering and every GPU visible.
        assert_eq!(env, "PCI_BUS_ID unset");
    }

    /// The part of `gpu` (0 or 1) in `parts`.
    fn part_of(parts: &[(String, Outcome, String)], gpu: u32) -> &(String, Outcome, String) {
        parts
            .iter()
            .find(|p| p.0.starts_with(&format!("gpu{gpu} ")))
            .unwrap_or_else(|| panic!("no gpu{gpu} part in {parts:?}"))
    }

    #[test]
    fn a_link_below_its_width_under_load_fails_and_a_lower_gen_warns() {
        // Idle, gpu1's link looks fine; under load it trains to gen 4 x8 of gen 5 x16.
        let (r, parts, m, _) = load_test_with(&Fakes {
            link_loaded: "echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'\n\
                          echo '1, 4, 5, 8, 16, Not Active, Not Active, Not Active, Not Active, 100'",
            ..Fakes::default()
        });
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert_eq!(
            r.detail,
            "gpu1 PCIe link x8 of x16 under load, PCIe gen 4 of 5 under load"
        );
        assert_eq!(part_of(&parts, 0).1, Outcome::Passed);
        assert_eq!(part_of(&parts, 1).1, Outcome::Failed);
        assert!(m.contains(&("gpu1.pcie_width".into(), 8.0)), "{m:?}");
        assert!(m.contains(&("gpu1.pcie_gen".into(), 4.0)), "{m:?}");
        assert!(m.contains(&("gpu0.pcie_width".into(), 16.0)), "{m:?}");

        // A lower generation alone warns: the stage is a warning, not a failure.
        let (r, parts, _, _) = load_test_with(&Fakes {
            link_loaded: "echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'\n\
                          echo '1, 3, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'",
            ..Fakes::default()
        });
        assert_eq!(r.outcome, Outcome::Warning, "{r:?}");
        assert_eq!(r.detail, "gpu1 PCIe gen 3 of 5 under load");
        assert_eq!(part_of(&parts, 1).1, Outcome::Warning);

        // Without a load test an idle link (trained down to save power) is not judged.
        let (r, _, m, _) = load_test_with(&Fakes {
            duration_s: 0,
            then: TWO_HEALTHY,
            link_idle: "echo '0, 1, 5, 2, 16, Not Active, Not Active, Not Active, Not Active, 0'\n\
                        echo '1, 1, 5, 2, 16, Not Active, Not Active, Not Active, Not Active, 0'",
            ..Fakes::default()
        });
        // (The query-only stage judges h100x2's own readings: gpu1's 2 ECC errors.)
        assert_eq!(r.detail, "gpu1 2 uncorrected ECC errors", "{r:?}");
        assert!(m.contains(&("gpu0.pcie_width".into(), 2.0)), "{m:?}");
    }

    /// A FAKE link query under load (sh) answering `first` the first time, `later`
    /// after; and a gpu_burn end that waits until `samples` of them have been answered.
    fn link_sequence(
        k: &std::path::Path,
        first: &str,
        later: &str,
        samples: u32,
    ) -> (String, String) {
        let k = k.display();
        (
            format!(
                "k=$(($(cat '{k}' 2>/dev/null || echo 0) + 1)); echo $k > '{k}'\n\
                 if [ $k -eq 1 ]; then\n{first}\nelse\n{later}\nfi"
            ),
            // The sampler is sequential: the next query starting means this one ended.
            format!(
                "while [ \"$(cat '{k}' 2>/dev/null || echo 0)\" -le {samples} ]; do sleep 0.05; done\n\
                 echo 'GPU 0: OK'; echo 'GPU 1: OK'"
            ),
        )
    }

    #[test]
    fn a_link_that_narrows_during_the_burn_fails() {
        let t = tempfile::tempdir().unwrap();
        let narrowed = "echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'\n\
                        echo '1, 5, 5, 8, 16, Not Active, Not Active, Not Active, Not Active, 100'";
        let (link_loaded, burn_end) = link_sequence(&t.path().join("k"), LINKS_BUSY, narrowed, 2);
        let (r, _, m, _) = load_test_with(&Fakes {
            link_loaded: &link_loaded,
            burn_end: &burn_end,
            ..Fakes::default()
        });
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert_eq!(r.detail, "gpu1 PCIe link x8 of x16 under load");
        assert!(m.contains(&("gpu1.pcie_width".into(), 8.0)), "{m:?}");
    }

    #[test]
    fn link_samples_that_find_the_gpu_idle_do_not_judge_it() {
        // gpu_burn's first seconds are on the CPU: the GPU idles, its link trained down.
        let warmup = "echo '0, 1, 5, 2, 16, Not Active, Not Active, Not Active, Not Active, 0'\n\
                      echo '1, 1, 5, 2, 16, Not Active, Not Active, Not Active, Not Active, 3'";
        let t = tempfile::tempdir().unwrap();
        let (link_loaded, burn_end) = link_sequence(&t.path().join("k"), warmup, warmup, 1);
        let (r, parts, _, _) = load_test_with(&Fakes {
            link_loaded: &link_loaded,
            burn_end: &burn_end,
            ..Fakes::default()
        });
        assert_eq!(r.outcome, Outcome::Passed, "{r:?} {parts:?}");
        // Then a busy sample comes: it alone is judged.
        let t = tempfile::tempdir().unwrap();
        let busy_narrow = "echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'\n\
                           echo '1, 5, 5, 8, 16, Not Active, Not Active, Not Active, Not Active, 99'";
        let (link_loaded, burn_end) = link_sequence(&t.path().join("k"), warmup, busy_narrow, 2);
        let (r, _, _, _) = load_test_with(&Fakes {
            link_loaded: &link_loaded,
            burn_end: &burn_end,
            ..Fakes::default()
        });
        assert_eq!(r.detail, "gpu1 PCIe link x8 of x16 under load", "{r:?}");
    }

    #[test]
    fn clock_cuts_by_the_hardware_fail_and_by_the_driver_warn() {
        let (r, parts, _, _) = load_test_with(&Fakes {
            link_loaded: "echo '0, 5, 5, 16, 16, Active, Not Active, Active, Not Active, 100'\n\
                          echo '1, 5, 5, 16, 16, Not Active, Not Active, Not Active, Active, 100'",
            ..Fakes::default()
        });
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert_eq!(
            r.detail,
            "gpu0 clocks cut by the hardware (HW slowdown, HW power brake slowdown); \
             gpu1 clocks cut by the driver (SW thermal slowdown)"
        );
        assert_eq!(part_of(&parts, 0).1, Outcome::Failed);
        assert_eq!(part_of(&parts, 1).1, Outcome::Warning);
    }

    #[test]
    fn row_remapping_failed_fails_pending_warns_and_counts_are_measured() {
        let (r, parts, m, _) = load_test_with(&Fakes {
            remap: "echo '00000000:18:00.0, 0, 0, No, Yes'\n\
                    echo '00000000:2A:00.0, 5, 1, Yes, No'",
            ..Fakes::default()
        });
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert!(
            part_of(&parts, 0).2.contains("memory row remapping failed"),
            "{parts:?}"
        );
        let gpu1 = part_of(&parts, 1);
        assert_eq!(gpu1.1, Outcome::Warning, "{gpu1:?}");
        assert!(gpu1.2.contains("remap pending"), "{gpu1:?}");
        assert!(
            m.contains(&("gpu1.remapped_rows_correctable".into(), 5.0)),
            "{m:?}"
        );
        assert!(
            m.contains(&("gpu1.remapped_rows_uncorrectable".into(), 1.0)),
            "{m:?}"
        );
    }

    #[test]
    fn health_queries_a_driver_cannot_answer_are_noted_not_fatal() {
        let (c, sink, _w) = ctx_for(StageKind::Gpu(GpuSpec {
            duration_s: 0,
            max_temperature_c: None,
        }));
        let d = tempfile::tempdir().unwrap();
        let smi = fake_tool(
            d.path(),
            "nvidia-smi",
            "case \"$*\" in\n\
             *pcie.link*) echo 'Field \"pcie.link.gen.max\" is not a valid field to query.'; exit 2 ;;\n\
             *remapped*) echo 'Unknown option --query-remapped-rows' >&2; exit 2 ;;\n\
             esac\n\
             echo '0, 00000000:18:00.0, Tesla T4, 15360, 40, 30, 0, 1590'",
        );
        let progs = Programs {
            nvidia_smi: &smi,
            gpu_burn: "gpu_burn",
            sample_every: Duration::from_millis(50),
        };
        let spec = GpuSpec {
            duration_s: 0,
            max_temperature_c: None,
        };
        let r = smol::block_on(run_with(&c, &spec, &progs));
        assert_eq!(
            (r.outcome, r.detail.as_str()),
            (Outcome::Passed, "1 GPU healthy")
        );
        let lines = sink.lines();
        assert!(
            lines.iter().any(|l| l.starts_with(
                "PCIe links and clock-cut reasons not checked: nvidia-smi exit 2: Field"
            )),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l == "memory row remapping not checked: nvidia-smi exit 2: Unknown option --query-remapped-rows"),
            "{lines:?}"
        );
    }

    #[test]
    fn verdicts_for_another_set_of_gpus_are_not_matched_to_slots() {
        // nvidia-smi lists two GPUs, CUDA (so gpu_burn) saw one: its "GPU 0" may be
        // either slot, so neither passes, and its FAULTY is reported by its number.
        let (r, parts, _, _) =
            load_test(TWO_HEALTHY, "printf 'Tested 1 GPUs:\\n\\tGPU 0: FAULTY\\n'");
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert_eq!(parts.iter().filter(|p| p.1 == Outcome::Failed).count(), 2);
        assert!(
            part_of(&parts, 0).2.contains(
                "gpu_burn tested 1 GPUs, nvidia-smi lists 2: its verdicts cannot be \
                 matched to slots (its GPU 0 FAULTY)"
            ),
            "{parts:?}"
        );
    }

    #[test]
    fn a_gpu_without_a_verdict_or_whose_worker_died_fails() {
        let h = TWO_HEALTHY;
        // gpu_burn's verdicts skip a GPU nvidia-smi lists: that one is not vetted.
        let (r, parts, _, _) = load_test(
            h,
            "printf 'Tested 2 GPUs:\\n\\tGPU 0: OK\\n\\tGPU 2: OK\\n'",
        );
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert!(
            r.detail.contains("gpu1 gpu_burn gave no verdict"),
            "{}",
            r.detail
        );
        assert_eq!(parts.iter().filter(|p| p.1 == Outcome::Passed).count(), 1);
        // One verdict for two GPUs: nothing is vetted (its numbers name no slot).
        let (r, parts, _, _) = load_test(h, "printf 'Tested 1 GPUs:\\n\\tGPU 0: OK\\n'");
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert!(
            r.detail.contains("cannot be matched to slots"),
            "{}",
            r.detail
        );
        assert!(parts.iter().all(|p| p.1 == Outcome::Failed), "{parts:?}");
        // A worker that died yet was called OK (gpu_burn does that).
        let (r, _, _, _) = load_test(
            h,
            "printf '\\r50.0%%  proc'\\''d: 9 (50000 Gflop/s) - -1 (0 Gflop/s)   errors: 0 - -1  (DIED!)   temps: 60 C - -- \\n'\n\
             printf 'Tested 2 GPUs:\\n\\tGPU 0: OK\\n\\tGPU 1: OK\\n'",
        );
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert!(
            r.detail.contains("gpu1 gpu_burn: its worker died"),
            "{}",
            r.detail
        );
        // gpu_burn giving up is the stage's failure, with its last stderr line.
        let (r, _, _, _) = load_test(h, "echo 'No clients are alive!  Aborting' >&2; exit 123");
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert_eq!(
            r.detail,
            "load test: gpu_burn failed (exit 123): No clients are alive!  Aborting"
        );
    }

    #[test]
    fn a_gpu_off_the_bus_during_load_fails() {
        let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hardware/nvidia-smi/fallen-off-bus.txt");
        let r = load_with_later_query(&format!("cat '{}'\nexit 15", fx.display()));
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert!(r.detail.contains("during load"), "{}", r.detail);
        assert!(r.detail.contains("fallen off the bus"), "{}", r.detail);
    }

    #[test]
    fn a_lost_gpu_field_during_load_fails() {
        let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hardware/nvidia-smi/gpu-lost-fields.txt");
        let r = load_with_later_query(&format!("cat '{}'", fx.display()));
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert!(r.detail.contains("gpu1"), "{}", r.detail);
        assert!(r.detail.contains("[GPU is lost]"), "{}", r.detail);
        assert!(!r.detail.contains("gpu0"), "{}", r.detail);
    }

    /// The same samples throughout: the load test passes, and only the capture's own
    /// ECC errors on gpu1 are judged.
    #[test]
    fn a_steady_load_is_judged_on_its_readings_only() {
        let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hardware/nvidia-smi/h100x2.csv");
        let r = load_with_later_query(&format!("cat '{}'", fx.display()));
        assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
        assert_eq!(r.detail, "gpu1 2 uncorrected ECC errors");
    }

    #[test]
    fn ecc_and_heat_are_problems() {
        let spec = GpuSpec {
            duration_s: 0,
            max_temperature_c: Some(80),
        };
        let mut g = GpuReading {
            temperature_c: Some(85.0),
            ecc_uncorrected: Some(2),
            ..Default::default()
        };
        assert_eq!(problems(&spec, &g, &[]).len(), 2);
        g.temperature_c = Some(40.0);
        g.ecc_uncorrected = Some(0);
        assert!(problems(&spec, &g, &[]).is_empty());
        assert_eq!(problems(&spec, &g, &["burnt".into()]), ["burnt"]);
    }
}
