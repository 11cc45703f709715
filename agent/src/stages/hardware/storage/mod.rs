//! The `storage` stage: fio (or badblocks) per disk, read-only by default. With
//! `destructive = true` a disk is written only when it passes every gate (`gate.rs`:
//! expected, unused, blank, wipefs clean; held open with `O_EXCL` meanwhile);
//! otherwise its part ends `held` and it is not touched. The tools get the canonical
//! device node; parts and measurements keep the path the plan gave.
pub mod fio;
pub mod gate;
pub mod wipe;

#[cfg(test)]
mod gate_tests;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod wipe_tests;

use kiln_protocol::{Outcome, StorageSpec, StorageTool};
use std::path::Path;

use crate::stages::ctx::{StageCtx, StageResult};
use crate::stages::hardware::collect::{self, Roots};
use crate::stages::hardware::tools::{Tool, ToolError, find};

/// Each of `devices` with the serial sysfs reports for it (empty when unreadable):
/// what an approval's serial is checked against.
pub fn serials(devices: &[String]) -> Vec<(String, String)> {
    let roots = Roots::detect();
    devices
        .iter()
        .map(|d| {
            let serial = crate::stages::hardware::usage::resolve(&roots.sys, d)
                .map(|bd| {
                    collect::disk(&roots.sys, &bd.name)
                        .serial
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            (d.clone(), serial)
        })
        .collect()
}

fn base(dev: &str) -> String {
    dev.rsplit('/').next().unwrap_or(dev).to_string()
}

/// Tests one disk and reports its part.
async fn disk(
    ctx: &StageCtx,
    spec: &StorageSpec,
    roots: &Roots,
    dev: &str,
    wipefs: &str,
) -> Result<Outcome, ToolError> {
    let write = ctx.stage.destructive;
    // Held for the whole write test: nothing else can mount or claim the disk meanwhile.
    let (_claim, node) = if write {
        match gate::gate(ctx, roots, dev, wipefs).await? {
            Ok(c) => {
                let node = c.node.clone();
                (Some(c), node)
            }
            Err(why) => {
                let detail = format!("not written: {}", why.join("; "));
                ctx.note(&format!("{dev}: held: {detail}"));
                ctx.part(dev, Outcome::Held, &detail, vec![]);
                return Ok(Outcome::Held);
            }
        }
    } else {
        match std::fs::canonicalize(dev) {
            Ok(node) => (None, node),
            Err(e) => {
                let detail = format!("cannot resolve {dev}: {e}");
                ctx.part(dev, Outcome::Error, &detail, vec![]);
                return Ok(Outcome::Error);
            }
        }
    };
    let mode = if write { "write+read" } else { "read-only" };
    ctx.note(&format!(
        "{dev}: {mode} test of {} with {}",
        node.display(),
        tool_name(spec.tool)
    ));
    let (outcome, detail) = match spec.tool {
        StorageTool::Fio => run_fio(ctx, spec, dev, &node, write).await?,
        StorageTool::Badblocks => run_badblocks(ctx, spec, dev, &node, write).await?,
    };
    ctx.part(dev, outcome, &detail, vec![]);
    Ok(outcome)
}

/// fio on `node`; parts and measurements are named after `dev`, the plan's path.
async fn run_fio(
    ctx: &StageCtx,
    spec: &StorageSpec,
    dev: &str,
    node: &Path,
    write: bool,
) -> Result<(Outcome, String), ToolError> {
    let argv = fio::argv(
        &node.to_string_lossy(),
        spec.duration_s,
        spec.size_bytes,
        write,
    );
    let c = Tool::new(argv, spec.duration_s * 2 + 300).run(ctx).await?;
    let run = match fio::parse(&c.text()) {
        Ok(r) => r,
        Err(e) => {
            let tail = c.stderr.last().cloned().unwrap_or_default();
            return Ok((Outcome::Error, format!("fio {}: {e} {tail}", c.status())));
        }
    };
    let p = format!("storage.{}.", base(dev));
    let mut summary = Vec::new();
    for r in &run.results {
        let k = format!("{p}{}.", r.key());
        ctx.measure(&format!("{k}bw"), r.bw_mib_s, "MiB/s");
        ctx.measure(&format!("{k}iops"), r.iops, "ops/s");
        ctx.measure(&format!("{k}lat_mean"), r.lat_mean_us, "us");
        for (q, name) in [(50.0, "lat_p50"), (99.0, "lat_p99"), (99.9, "lat_p99.9")] {
            if let Some(v) = r.percentile(q) {
                ctx.measure(&format!("{k}{name}"), v, "us");
            }
        }
        let line = format!(
            "{}: {:.1} MiB/s, {:.0} IOPS, p99 {:.0} µs",
            r.key(),
            r.bw_mib_s,
            r.iops,
            r.percentile(99.0).unwrap_or(0.0)
        );
        ctx.note(&format!("{dev}: {line}"));
        summary.push(line);
    }
    if !run.errors.is_empty() {
        // EIO, ENODATA, EILSEQ (verify mismatch): the disk's fault. Anything else: ours.
        let disk_fault = run.errors.iter().any(|(_, e)| matches!(e, 5 | 61 | 84));
        let errs: Vec<String> = run
            .errors
            .iter()
            .map(|(j, e)| format!("{j}: errno {e}"))
            .collect();
        let o = if disk_fault {
            Outcome::Failed
        } else {
            Outcome::Error
        };
        return Ok((o, format!("fio errors: {}", errs.join(", "))));
    }
    if !c.success() {
        return Ok((Outcome::Error, format!("fio {}", c.status())));
    }
    if let Some(why) = fio::unverified(&run) {
        return Ok((Outcome::Failed, why));
    }
    Ok((Outcome::Passed, summary.join("; ")))
}

/// badblocks on `node`; the measurement is named after `dev`, the plan's path.
async fn run_badblocks(
    ctx: &StageCtx,
    spec: &StorageSpec,
    dev: &str,
    node: &Path,
    write: bool,
) -> Result<(Outcome, String), ToolError> {
    let limit = if spec.duration_s > 0 {
        spec.duration_s
    } else {
        7 * 24 * 3600
    };
    let c = match Tool::new(
        fio::badblocks_argv(&node.to_string_lossy(), spec.size_bytes, write),
        limit,
    )
    .run(ctx)
    .await
    {
        Ok(c) => c,
        Err(ToolError::TimedOut(..)) => {
            return Ok((
                Outcome::Warning,
                format!("badblocks did not finish in {limit}s: partial scan"),
            ));
        }
        Err(e) => return Err(e),
    };
    let bad = fio::bad_blocks(&c.text());
    ctx.measure(
        &format!("storage.{}.bad_blocks", base(dev)),
        bad.len() as f64,
        "count",
    );
    if !bad.is_empty() {
        return Ok((
            Outcome::Failed,
            format!("{} bad blocks (first {})", bad.len(), bad[0]),
        ));
    }
    if !c.success() {
        let tail = c.stderr.last().cloned().unwrap_or_default();
        return Ok((Outcome::Error, format!("badblocks {}: {tail}", c.status())));
    }
    Ok((Outcome::Passed, "no bad blocks".into()))
}

fn tool_name(t: StorageTool) -> &'static str {
    match t {
        StorageTool::Fio => "fio",
        StorageTool::Badblocks => "badblocks",
    }
}

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &StorageSpec) -> StageResult {
    run_with(ctx, spec, "wipefs").await
}

/// Runs the stage with `wipefs` as the wipefs program (tests pass a fake's path or a
/// missing name).
pub(crate) async fn run_with(ctx: &StageCtx, spec: &StorageSpec, wipefs: &str) -> StageResult {
    let tool = tool_name(spec.tool);
    if find(tool).is_none() {
        return StageResult::error(format!("{tool} not found on PATH"));
    }
    let roots = Roots::detect();
    let devices: Vec<String> = if spec.devices.is_empty() {
        collect::disks(&roots.sys)
            .into_iter()
            .map(|d| d.path)
            .collect()
    } else {
        spec.devices.clone()
    };
    if devices.is_empty() {
        return StageResult::new(Outcome::Skipped, "no disks found");
    }
    let mut worst = Outcome::Passed;
    let mut notes = Vec::new();
    for dev in &devices {
        let o = match disk(ctx, spec, &roots, dev, wipefs).await {
            Ok(o) => o,
            Err(e @ ToolError::Stopped(_)) => return e.result(ctx),
            Err(e) => {
                ctx.part(dev, Outcome::Error, &e.to_string(), vec![]);
                Outcome::Error
            }
        };
        if o != Outcome::Passed {
            notes.push(format!("{dev} {o}"));
        }
        worst = worst.worst(o);
    }
    let detail = if notes.is_empty() {
        format!("{} disks passed", devices.len())
    } else {
        notes.join(", ")
    };
    StageResult::new(worst, detail)
}
