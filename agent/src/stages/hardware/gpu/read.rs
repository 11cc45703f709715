//! One reading of every GPU (nvidia-smi's query), how it is reported, and how it is
//! judged against the plan's spec; the programs the stage runs.
use kiln_protocol::{GpuSpec, Outcome};
use std::time::Duration;

use super::nvsmi::{self, GpuReading};
use crate::stages::ctx::{StageCtx, StageResult};
use crate::stages::hardware::tools::{Tool, ToolError};

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
pub(super) async fn query(
    ctx: &StageCtx,
    smi: &str,
) -> Result<(Vec<GpuReading>, String), StageResult> {
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

pub(super) fn report(ctx: &StageCtx, g: &GpuReading, suffix: &str) {
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

pub(super) fn show(v: Option<impl std::fmt::Display>, unit: &str) -> String {
    v.map(|v| format!("{v}{unit}"))
        .unwrap_or_else(|| "n/a".into())
}

/// Problems in one reading against the spec, plus what the load test found
/// (`burn`).
pub(super) fn problems(spec: &GpuSpec, g: &GpuReading, burn: &[String]) -> Vec<String> {
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
