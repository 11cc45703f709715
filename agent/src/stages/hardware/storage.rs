//! The `storage` stage: fio (or badblocks) per disk, read-only by default. With
//! `destructive = true` a disk is written only when it is one of the host's expected
//! disks, the wipe probe finds no signature, and nothing uses it (held open with
//! `O_EXCL` meanwhile); otherwise its part ends `held` and it is not touched.
use kiln_protocol::{Outcome, StorageSpec, StorageTool};
use std::fs::File;

use super::collect::{self, Roots};
use super::fio;
use super::tools::{Tool, ToolError, find};
use super::usage;
use super::wipe::{self, Ends};
use crate::stages::{StageCtx, StageResult};

fn base(dev: &str) -> String {
    dev.rsplit('/').next().unwrap_or(dev).to_string()
}

/// Whether `dev` is one of the host's expected disks, by path or serial.
fn expected(ctx: &StageCtx, roots: &Roots, dev: &usage::BlockDev) -> Result<(), String> {
    let serial = collect::disk(&roots.sys, &dev.name).serial;
    let hit = ctx.host.spec.disks.iter().any(|d| {
        let by_path = d.path.as_ref().is_some_and(|p| {
            *p == dev.given || std::fs::canonicalize(p).is_ok_and(|n| n == dev.node)
        });
        let by_serial = !serial.is_empty() && d.serial.as_deref() == Some(serial.as_str());
        by_path || by_serial
    });
    if hit {
        Ok(())
    } else if ctx.host.spec.disks.is_empty() {
        Err("the host's spec lists no expected disks".into())
    } else {
        Err(format!(
            "not among the host's expected disks (path {}, serial {serial:?})",
            dev.given
        ))
    }
}

/// Every gate for writing to `dev`; the exclusive handle when all pass.
async fn gate(ctx: &StageCtx, roots: &Roots, dev: &str) -> Result<File, Vec<String>> {
    let bd =
        usage::resolve(&roots.sys, dev).map_err(|e| vec![format!("cannot resolve {dev}: {e}")])?;
    let mut why = Vec::new();
    if let Err(e) = expected(ctx, roots, &bd) {
        why.push(e);
    }
    why.extend(usage::in_use(&roots.sys, &roots.proc, &bd));
    let node = bd.node.clone();
    match smol::unblock(move || Ends::read(&node)).await {
        Ok(ends) => {
            let sigs = wipe::probe(&ends);
            if !sigs.is_empty() {
                let s: Vec<String> = sigs
                    .iter()
                    .map(|s| format!("{} at byte {}", s.kind, s.offset))
                    .collect();
                why.push(format!("wipe probe found {}", s.join(", ")));
            }
            if !ends.blank() && sigs.is_empty() {
                ctx.note(&format!(
                    "{dev}: no signature, but the first/last MiB hold data"
                ));
            }
        }
        Err(e) => why.push(format!("wipe probe could not read the device: {e}")),
    }
    if find("wipefs").is_some() {
        let node = bd.node.to_string_lossy().into_owned();
        match Tool::new(["wipefs", "--no-act", "--json", node.as_str()], 60)
            .run(ctx)
            .await
        {
            Ok(c) => {
                let found = wipe::parse_wipefs(&c.text());
                if !found.is_empty() {
                    why.push(format!("wipefs found {}", found.join(", ")));
                }
            }
            Err(e) => why.push(format!("wipefs: {e}")),
        }
    }
    if !why.is_empty() {
        return Err(why);
    }
    usage::claim(&bd.node).map_err(|e| vec![format!("cannot open exclusively (in use?): {e}")])
}

/// Tests one disk and reports its part.
async fn disk(
    ctx: &StageCtx,
    spec: &StorageSpec,
    roots: &Roots,
    dev: &str,
) -> Result<Outcome, ToolError> {
    let write = ctx.stage.destructive;
    // Held for the whole write test: nothing else can mount or claim the disk meanwhile.
    let _claim = if write {
        match gate(ctx, roots, dev).await {
            Ok(f) => Some(f),
            Err(why) => {
                let detail = format!("not written: {}", why.join("; "));
                ctx.note(&format!("{dev}: held: {detail}"));
                ctx.part(dev, Outcome::Held, &detail, vec![]);
                return Ok(Outcome::Held);
            }
        }
    } else {
        None
    };
    let mode = if write { "write+read" } else { "read-only" };
    ctx.note(&format!("{dev}: {mode} test with {}", tool_name(spec.tool)));
    let (outcome, detail) = match spec.tool {
        StorageTool::Fio => run_fio(ctx, spec, dev, write).await?,
        StorageTool::Badblocks => run_badblocks(ctx, spec, dev, write).await?,
    };
    ctx.part(dev, outcome, &detail, vec![]);
    Ok(outcome)
}

async fn run_fio(
    ctx: &StageCtx,
    spec: &StorageSpec,
    dev: &str,
    write: bool,
) -> Result<(Outcome, String), ToolError> {
    let argv = fio::argv(dev, spec.duration_s, spec.size_bytes, write);
    let c = Tool::new(argv, spec.duration_s * 2 + 300).run(ctx).await?;
    let run = match fio::parse(&c.text()) {
        Ok(r) => r,
        Err(e) => {
            let tail = c.stderr.last().cloned().unwrap_or_default();
            return Ok((Outcome::Error, format!("fio exit {}: {e} {tail}", c.code)));
        }
    };
    let p = format!("storage.{}.", base(dev));
    let mut summary = Vec::new();
    for r in &run.results {
        let k = format!("{p}{}.", r.job);
        ctx.measure(&format!("{k}bw"), r.bw_mib_s, "MiB/s");
        ctx.measure(&format!("{k}iops"), r.iops, "ops/s");
        ctx.measure(&format!("{k}lat_mean"), r.lat_mean_us, "us");
        for (q, name) in [(50.0, "lat_p50"), (99.0, "lat_p99"), (99.9, "lat_p99.9")] {
            if let Some(v) = r.percentile(q) {
                ctx.measure(&format!("{k}{name}"), v, "us");
            }
        }
        let line = format!(
            "{} {}: {:.1} MiB/s, {:.0} IOPS, p99 {:.0} µs",
            r.job,
            r.dir,
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
    if c.code != 0 {
        return Ok((Outcome::Error, format!("fio exited {}", c.code)));
    }
    Ok((Outcome::Passed, summary.join("; ")))
}

async fn run_badblocks(
    ctx: &StageCtx,
    spec: &StorageSpec,
    dev: &str,
    write: bool,
) -> Result<(Outcome, String), ToolError> {
    let limit = if spec.duration_s > 0 {
        spec.duration_s
    } else {
        7 * 24 * 3600
    };
    let c = match Tool::new(fio::badblocks_argv(dev, spec.size_bytes, write), limit)
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
    if c.code != 0 {
        let tail = c.stderr.last().cloned().unwrap_or_default();
        return Ok((
            Outcome::Error,
            format!("badblocks exited {}: {tail}", c.code),
        ));
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
        let o = match disk(ctx, spec, &roots, dev).await {
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
