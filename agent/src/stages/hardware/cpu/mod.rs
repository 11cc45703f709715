//! The `cpu_stress` stage: stress-ng on every CPU for the plan's duration, with
//! `--verify`; bogo ops/s from its YAML metrics and temperatures sampled from hwmon
//! and thermal zones meanwhile; optional minimum ops/s and maximum temperature.
pub mod thermal;

use kiln_protocol::{CpuStressSpec, Outcome};
use smol::future::FutureExt;
use std::time::Duration;

use crate::stages::ctx::{StageCtx, StageResult};
use crate::stages::hardware::collect::Roots;
use crate::stages::hardware::tools::Tool;
use thermal::Peaks;

/// How often temperatures are sampled during the run.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One stressor's line of stress-ng's YAML `metrics:` list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metric {
    /// Stressor name (`cpu`).
    pub stressor: String,
    /// Bogo operations done.
    pub bogo_ops: f64,
    /// Bogo ops per second of wall time.
    pub per_s_real: f64,
    /// Bogo ops per second of CPU (usr+sys) time.
    pub per_s_cpu: f64,
}

/// Reads the `metrics:` list of stress-ng's `--yaml` file (a line format small enough
/// to read without a YAML library).
pub fn parse_yaml(text: &str) -> Vec<Metric> {
    let mut out: Vec<Metric> = Vec::new();
    let mut in_metrics = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('-') {
            in_metrics = line.trim_end() == "metrics:";
            continue;
        }
        if !in_metrics {
            continue;
        }
        let t = line.trim_start();
        let (t, new) = match t.strip_prefix("- ") {
            Some(rest) => (rest, true),
            None => (t, false),
        };
        let Some((k, v)) = t.split_once(':') else {
            continue;
        };
        if new {
            out.push(Metric::default());
        }
        let Some(m) = out.last_mut() else { continue };
        let v = v.trim();
        let f = v.parse::<f64>().unwrap_or(0.0);
        match k.trim() {
            "stressor" => m.stressor = v.to_string(),
            "bogo-ops" => m.bogo_ops = f,
            "bogo-ops-per-second-real-time" => m.per_s_real = f,
            "bogo-ops-per-second-usr-sys-time" => m.per_s_cpu = f,
            _ => {}
        }
    }
    out
}

/// What a stress-ng exit status means (stress-ng(1) EXIT STATUS).
pub fn judge_exit(code: i32) -> Option<(Outcome, &'static str)> {
    match code {
        0 => None,
        2 => Some((Outcome::Failed, "a stressor failed (verification error?)")),
        3 => Some((Outcome::Error, "a stressor ran out of resources")),
        4 => Some((
            Outcome::Error,
            "the stressor is not implemented on this system",
        )),
        5 => Some((Outcome::Error, "a stressor was killed by a signal")),
        1 => Some((
            Outcome::Error,
            "stress-ng reported an error (bad arguments?)",
        )),
        _ => Some((Outcome::Error, "stress-ng exited with an unexpected status")),
    }
}

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &CpuStressSpec) -> StageResult {
    // Absolute: stress-ng runs in the stage folder, which may be given relative.
    let yaml = std::path::absolute(ctx.dir.join("stress-ng.yaml")).unwrap_or_default();
    let argv = vec![
        "stress-ng".to_string(),
        "--cpu".into(),
        spec.workers.to_string(),
        "--timeout".into(),
        format!("{}s", spec.duration_s.max(1)),
        "--verify".into(),
        "--metrics-brief".into(),
        "--yaml".into(),
        yaml.to_string_lossy().into_owned(),
    ];
    let sensors = thermal::sensors(&Roots::detect().sys);
    if sensors.is_empty() {
        ctx.note("no temperature sensors (hwmon, thermal zones): temperatures not reported");
    }
    let mut peaks = Peaks::default();
    peaks.sample(&sensors);
    let tool = Tool::new(argv, spec.duration_s + 60).streamed();
    let sampler = async {
        loop {
            smol::Timer::after(SAMPLE_EVERY).await;
            peaks.sample(&sensors);
        }
    };
    let ran = async { tool.run(ctx).await }
        .or(async {
            sampler.await;
            unreachable!("the sampler loops forever")
        })
        .await;
    let c = match ran {
        Ok(c) => c,
        Err(e) => return e.result(ctx),
    };
    if yaml.exists() {
        let _ = ctx.artifact(&yaml, "stress-ng.yaml").await;
    }
    let mut problems: Vec<(Outcome, String)> = Vec::new();
    if let Some(sig) = c.signal() {
        // stress-ng itself died: its exit statuses say nothing here.
        problems.push((Outcome::Error, format!("stress-ng killed by signal {sig}")));
    } else if let Some(code) = c.code()
        && let Some((o, why)) = judge_exit(code)
    {
        problems.push((o, format!("stress-ng exit {code}: {why}")));
    }
    let metrics = parse_yaml(&std::fs::read_to_string(&yaml).unwrap_or_default());
    let ops: f64 = metrics.iter().map(|m| m.per_s_real).sum();
    match metrics.is_empty() {
        true if problems.is_empty() => {
            problems.push((Outcome::Error, "stress-ng wrote no metrics".into()))
        }
        true => {}
        false => {
            ctx.measure("cpu.bogo_ops_per_s", ops, "ops/s");
            let cpu: f64 = metrics.iter().map(|m| m.per_s_cpu).sum();
            ctx.measure("cpu.bogo_ops_per_s_cpu_time", cpu, "ops/s");
            ctx.measure(
                "cpu.bogo_ops",
                metrics.iter().map(|m| m.bogo_ops).sum(),
                "ops",
            );
            ctx.note(&format!(
                "stress-ng: {ops:.1} bogo ops/s (real time), {cpu:.1} per CPU second"
            ));
            if let Some(min) = spec.min_ops_per_s
                && ops < min
            {
                problems.push((Outcome::Failed, format!("{ops:.1} bogo ops/s below {min}")));
            }
        }
    }
    for (name, c) in &peaks.max {
        ctx.measure(&format!("temp.{name}.max"), *c, "C");
    }
    if let Some((name, hot)) = peaks.hottest() {
        ctx.measure("temp.max", hot, "C");
        ctx.note(&format!(
            "hottest sensor {name}: {hot:.1} °C over {} samples",
            peaks.samples
        ));
        if let Some(max) = spec.max_temperature_c
            && hot > max as f64
        {
            problems.push((
                Outcome::Failed,
                format!("{name} reached {hot:.1} °C, above {max} °C"),
            ));
        }
    }
    let outcome = problems
        .iter()
        .fold(Outcome::Passed, |a, (o, _)| a.worst(*o));
    let detail = if problems.is_empty() {
        format!("{ops:.1} bogo ops/s for {}s", spec.duration_s)
    } else {
        problems
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join("; ")
    };
    StageResult {
        outcome,
        exit_code: c.code(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_yaml() {
        let m = parse_yaml(include_str!(
            "../../../../tests/fixtures/hardware/stress-ng/cpu-2.yaml"
        ));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].stressor, "cpu");
        assert_eq!(m[0].bogo_ops, 1796.0);
        assert!((m[0].per_s_real - 595.798688).abs() < 1e-6);
        assert!((m[0].per_s_cpu - 1665.147698).abs() < 1e-6);
    }

    #[test]
    fn two_stressors_and_garbage() {
        let y = "---\nsystem-info:\n      cpus: 2\nmetrics:\n    - stressor: cpu\n      bogo-ops-per-second-real-time: 10.5\n    - stressor: matrix\n      bogo-ops-per-second-real-time: 2\n...\n";
        let m = parse_yaml(y);
        assert_eq!(m.iter().map(|m| m.per_s_real).sum::<f64>(), 12.5);
        assert!(parse_yaml("metrics:\n  bogo-ops: x\n\0\n").is_empty());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(judge_exit(0), None);
        assert_eq!(judge_exit(2).unwrap().0, Outcome::Failed);
        assert_eq!(judge_exit(3).unwrap().0, Outcome::Error);
    }
}
