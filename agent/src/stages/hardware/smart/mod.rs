//! The `smart` stage: `smartctl -j -a` per disk (ATA, NVMe, SCSI): health, sectors,
//! media errors, temperature and power-on hours as measurements, judged against the
//! plan's thresholds; an optional short self-test, polled to its end; smartctl's
//! exit-status bits decoded per disk. One part per disk; the stage folds them.
pub mod smartparse;

use kiln_protocol::{Outcome, SmartSpec};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::stages::ctx::{StageCtx, StageResult};
use crate::stages::hardware::collect::{self, Roots};
use crate::stages::hardware::tools::{Captured, Tool, ToolError, find};
use smartparse::{SelfTest, SmartReport};

/// How often a running self-test is polled.
const POLL: Duration = Duration::from_secs(5);
/// Longest wait for a short self-test when the drive does not say.
const SELF_TEST_MAX: Duration = Duration::from_secs(10 * 60);
/// Limit of one smartctl call.
const SMARTCTL_S: u64 = 120;

fn base(dev: &str) -> String {
    dev.rsplit('/').next().unwrap_or(dev).to_string()
}

/// Runs smartctl (`prog`) with `args` on `dev`.
async fn smartctl(
    ctx: &StageCtx,
    prog: &str,
    args: &[&str],
    dev: &str,
) -> Result<Captured, ToolError> {
    let mut argv = vec![prog, "-j"];
    argv.extend_from_slice(args);
    argv.push(dev);
    Tool::new(argv, SMARTCTL_S).run(ctx).await
}

/// Starts short self-tests on every device and polls them to their end; returns each
/// device's final state.
async fn self_tests(
    ctx: &StageCtx,
    prog: &str,
    devices: &[String],
) -> Result<BTreeMap<String, SelfTest>, ToolError> {
    let mut state = BTreeMap::new();
    for dev in devices {
        let c = smartctl(ctx, prog, &["-t", "short"], dev).await?;
        ctx.note(&format!(
            "{dev}: short self-test requested (smartctl {})",
            c.status()
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
            let text = smartctl(ctx, prog, &["-c", "-l", "selftest"], dev)
                .await?
                .text();
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
            let _ = smartctl(ctx, prog, &["-X"], dev).await;
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
    prog: &str,
    spec: &SmartSpec,
    dev: &str,
    test: Option<&SelfTest>,
) -> Result<Outcome, ToolError> {
    let c = smartctl(ctx, prog, &["-a"], dev).await?;
    if let Some(sig) = c.signal() {
        // A crash says nothing about the disk: no exit bits to decode, output cut short.
        let detail = format!("smartctl killed by signal {sig}");
        ctx.note(&format!("{dev}: {detail}"));
        ctx.part(dev, Outcome::Error, &detail, vec![]);
        return Ok(Outcome::Error);
    }
    let (code, text) = (c.code().unwrap_or(-1), c.text());
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
    run_with(ctx, spec, "smartctl").await
}

/// Runs the stage with `prog` as smartctl (tests pass a fake's path).
pub(crate) async fn run_with(ctx: &StageCtx, spec: &SmartSpec, prog: &str) -> StageResult {
    if find(prog).is_none() {
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
        match self_tests(ctx, prog, &devices).await {
            Ok(t) => t,
            Err(e) => return e.result(ctx),
        }
    } else {
        BTreeMap::new()
    };
    let mut worst = Outcome::Passed;
    let mut bad = Vec::new();
    for dev in &devices {
        match check(ctx, prog, spec, dev, tests.get(dev)).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::hardware::testutil::{ctx_for, fake_tool, parts};
    use kiln_protocol::StageKind;

    /// A FAKE smartctl that prints a healthy report, then dies of SIGFPE: exit status
    /// 136 would decode as bits 3 and 7 (DISK FAILING, self-test log errors).
    #[test]
    fn a_crashed_smartctl_is_an_error_not_a_failing_disk() {
        let d = tempfile::tempdir().unwrap();
        let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hardware/smartctl/qemu-ata-a.json");
        let fake = fake_tool(
            d.path(),
            "smartctl",
            &format!("cat '{}'\nkill -FPE $$", report.display()),
        );
        let s = SmartSpec {
            devices: vec!["/dev/sdz".into()],
            ..Default::default()
        };
        let (c, sink, _w) = ctx_for(StageKind::Smart(s.clone()));
        let r = smol::block_on(run_with(&c, &s, &fake));
        assert_eq!(r.outcome, Outcome::Error, "{r:?}");
        let p = parts(&sink);
        assert_eq!(p[0].1, Outcome::Error, "{p:?}");
        assert_eq!(
            p[0].2,
            format!("smartctl killed by signal {}", libc::SIGFPE)
        );
        assert!(!p[0].2.contains("FAILING"), "{p:?}");
    }
}
