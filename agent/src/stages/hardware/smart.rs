//! The `smart` stage: `smartctl -j -a` per disk (ATA, NVMe, SCSI): health, sectors,
//! media errors, temperature and power-on hours as measurements, judged against the
//! plan's thresholds; an optional short self-test, polled to its end; smartctl's
//! exit-status bits decoded per disk. One part per disk; the stage folds them.
use kiln_protocol::{Outcome, SmartSpec};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::collect::{self, Roots};
use super::smartparse::{self, SelfTest, SmartReport};
use super::tools::{Tool, ToolError, find};
use crate::stages::{StageCtx, StageResult};

/// How often a running self-test is polled.
const POLL: Duration = Duration::from_secs(5);
/// Longest wait for a short self-test when the drive does not say.
const SELF_TEST_MAX: Duration = Duration::from_secs(10 * 60);
/// Limit of one smartctl call.
const SMARTCTL_S: u64 = 120;

fn base(dev: &str) -> String {
    dev.rsplit('/').next().unwrap_or(dev).to_string()
}

/// Runs smartctl with `args` on `dev`: (exit code, stdout).
async fn smartctl(ctx: &StageCtx, args: &[&str], dev: &str) -> Result<(i32, String), ToolError> {
    let mut argv = vec!["smartctl", "-j"];
    argv.extend_from_slice(args);
    argv.push(dev);
    let c = Tool::new(argv, SMARTCTL_S).run(ctx).await?;
    Ok((c.code, c.text()))
}

/// Starts short self-tests on every device and polls them to their end; returns each
/// device's final state.
async fn self_tests(
    ctx: &StageCtx,
    devices: &[String],
) -> Result<BTreeMap<String, SelfTest>, ToolError> {
    let mut state = BTreeMap::new();
    for dev in devices {
        let (code, _) = smartctl(ctx, &["-t", "short"], dev).await?;
        ctx.note(&format!(
            "{dev}: short self-test requested (smartctl exit {code})"
        ));
        state.insert(dev.clone(), SelfTest::Running(None));
    }
    let start = Instant::now();
    let mut limit = SELF_TEST_MAX;
    loop {
        for dev in devices {
            if !matches!(state[dev], SelfTest::Running(_)) {
                continue;
            }
            let (_, text) = smartctl(ctx, &["-c", "-l", "selftest"], dev).await?;
            if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(m) =
                    doc["ata_smart_data"]["self_test"]["polling_minutes"]["short"].as_u64()
            {
                limit = limit.max(Duration::from_secs(m * 2 * 60 + 60));
            }
            let now = smartparse::self_test(&text).unwrap_or(SelfTest::Unsupported);
            if let SelfTest::Running(left) = &now {
                let left = left.map(|l| format!("{l}% left")).unwrap_or_default();
                ctx.note(&format!("{dev}: self-test running {left}"));
            }
            state.insert(dev.clone(), now);
        }
        if !state.values().any(|s| matches!(s, SelfTest::Running(_))) || start.elapsed() > limit {
            break;
        }
        smol::Timer::after(POLL).await;
    }
    for (dev, s) in &state {
        if matches!(s, SelfTest::Running(_)) {
            let _ = smartctl(ctx, &["-X"], dev).await;
        }
    }
    Ok(state)
}

fn measures(ctx: &StageCtx, dev: &str, r: &SmartReport) {
    let p = format!("smart.{}.", base(dev));
    let put = |name: &str, v: Option<u64>, unit: &str| {
        if let Some(v) = v {
            ctx.measure(&format!("{p}{name}"), v as f64, unit);
        }
    };
    put("health", r.passed.map(u64::from), "ok");
    put("temperature", r.temperature_c, "C");
    put("power_on_hours", r.power_on_hours, "h");
    put("reallocated", r.reallocated, "count");
    put("pending", r.pending, "count");
    put("uncorrectable", r.uncorrectable, "count");
    put("media_errors", r.media_errors, "count");
    put("percentage_used", r.percentage_used, "%");
}

/// Checks one disk and reports its part; returns its outcome.
async fn check(
    ctx: &StageCtx,
    spec: &SmartSpec,
    dev: &str,
    test: Option<&SelfTest>,
) -> Result<Outcome, ToolError> {
    let (code, text) = smartctl(ctx, &["-a"], dev).await?;
    let mut problems: Vec<(Outcome, String)> = smartparse::decode_exit(code)
        .into_iter()
        .map(|(bit, what, o)| (o, format!("smartctl exit bit {bit}: {what}")))
        .collect();
    for (_, what, _) in smartparse::decode_exit(code) {
        ctx.note(&format!("{dev}: smartctl: {what}"));
    }
    match smartparse::parse(&text) {
        Ok(r) => {
            for m in &r.messages {
                ctx.note(&format!("{dev}: {m}"));
            }
            ctx.note(&format!(
                "{dev}: {} {:?} serial {:?}: health {}, {} °C, {} h, reallocated {}, pending {}, media errors {}",
                r.protocol,
                r.model,
                r.serial,
                match r.passed {
                    Some(true) => "PASSED",
                    Some(false) => "FAILED",
                    None => "unknown",
                },
                opt(r.temperature_c),
                opt(r.power_on_hours),
                opt(r.reallocated),
                opt(r.pending),
                opt(r.media_errors)
            ));
            measures(ctx, dev, &r);
            problems.extend(smartparse::judge(spec, &r));
        }
        Err(e) if problems.is_empty() => problems.push((Outcome::Error, e)),
        Err(_) => {}
    }
    match test {
        Some(SelfTest::Done(true, w)) => ctx.note(&format!("{dev}: self-test: {w}")),
        Some(SelfTest::Done(false, w)) => {
            problems.push((Outcome::Failed, format!("self-test: {w}")))
        }
        Some(SelfTest::Running(_)) => problems.push((
            Outcome::Warning,
            "self-test did not finish in time (aborted)".into(),
        )),
        Some(SelfTest::Unsupported) => ctx.note(&format!(
            "{dev}: no self-test support reported: self-test skipped"
        )),
        None => {}
    }
    let outcome = problems
        .iter()
        .fold(Outcome::Passed, |a, (o, _)| a.worst(*o));
    let detail = if problems.is_empty() {
        "healthy".to_string()
    } else {
        problems
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    ctx.part(dev, outcome, &detail, vec![]);
    Ok(outcome)
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into())
}

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &SmartSpec) -> StageResult {
    if find("smartctl").is_none() {
        return StageResult::error("smartctl not found on PATH (install smartmontools)");
    }
    let devices: Vec<String> = if spec.devices.is_empty() {
        collect::disks(&Roots::detect().sys)
            .into_iter()
            .map(|d| d.path)
            .collect()
    } else {
        spec.devices.clone()
    };
    if devices.is_empty() {
        return StageResult::new(Outcome::Skipped, "no disks found");
    }
    let tests = if spec.self_test {
        match self_tests(ctx, &devices).await {
            Ok(t) => t,
            Err(e) => return e.result(ctx),
        }
    } else {
        BTreeMap::new()
    };
    let mut worst = Outcome::Passed;
    let mut bad = Vec::new();
    for dev in &devices {
        match check(ctx, spec, dev, tests.get(dev)).await {
            Ok(o) => {
                if o != Outcome::Passed {
                    bad.push(format!("{dev} {o}"));
                }
                worst = worst.worst(o);
            }
            Err(e @ ToolError::Stopped(_)) => return e.result(ctx),
            Err(e) => {
                ctx.part(dev, Outcome::Error, &e.to_string(), vec![]);
                bad.push(format!("{dev}: {e}"));
                worst = worst.worst(Outcome::Error);
            }
        }
    }
    let detail = if bad.is_empty() {
        format!("{} disks healthy", devices.len())
    } else {
        bad.join(", ")
    };
    StageResult::new(worst, detail)
}
