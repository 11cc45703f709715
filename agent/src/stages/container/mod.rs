//! The `container` stage: the test folder run in podman (or docker) with hardened
//! defaults, over a matrix of images × extra env axes.
//!
//! Each cell runs in its own container named `kiln-<run8>-<stage>-<attempt>-<i>-<cell>`,
//! with the stage's folder read-only at `/workspace`, an empty `/artifacts` whose files
//! are uploaded afterwards, and a tmpfs `/tmp`. The container is removed whatever
//! happens (exit, timeout, abort, fail_fast); a later attempt of the stage first
//! removes what earlier attempts left, should the agent have died meanwhile.
//!
//! Inside, besides the plan's env and the cell's axes: `KILN_RUN`, `KILN_STAGE`,
//! `KILN_ATTEMPT`, `KILN_CELL` (the cell's label) and `KILN_ARTIFACTS=/artifacts`.
//! Each named secret is `<NAME>` (upper-cased, other characters as `_`) and, as in
//! the exec stage, `KILN_SECRET_<NAME>`, without the file's final newline; the values
//! travel only in the engine's environment, never on its command line.
use kiln_protocol::{ContainerSpec, Outcome};
use std::path::{Path, PathBuf};

use super::{StageCtx, StageResult};

pub mod args;
pub mod cell;
pub mod engine;
pub mod matrix;

/// Runs the stage: every cell, then the folded outcome.
pub async fn run(ctx: &StageCtx, spec: &ContainerSpec) -> StageResult {
    let engine = match engine::Engine::detect(spec.runtime) {
        Ok(e) => e,
        Err(e) => return StageResult::error(e),
    };
    let cells = args::cells(spec);
    if cells.is_empty() {
        return StageResult::error("the stage names no image");
    }
    // A retry, or a rerun after the agent died: containers of the stage's earlier
    // attempts that a crash left running go first.
    let earlier: Vec<String> = (1..ctx.attempt)
        .flat_map(|a| {
            cells
                .iter()
                .map(move |c| args::container_name(&ctx.run, &ctx.stage.name, a, c))
        })
        .collect();
    engine.remove_all(&earlier).await;
    if let Err(e) = open_workspace(&ctx.dir) {
        return StageResult::error(format!("stage folder {}: {e}", ctx.dir.display()));
    }
    let base = artifacts_base(&ctx.dir);
    let secrets = ctx
        .secrets
        .iter()
        .flat_map(|(name, value)| {
            let v = secret_value(value);
            let plain = args::secret_env_name(name);
            [(format!("KILN_SECRET_{plain}"), v.clone()), (plain, v)]
        })
        .collect();
    let shared = cell::Shared::new(engine, spec, &cells, base.clone(), secrets);
    let ended = matrix::run(ctx, &shared, &cells).await;
    let _ = std::fs::remove_dir_all(&base);
    fold(ctx, &cells, &ended)
}

/// Makes the stage folder readable by the container's (non-root) user.
fn open_workspace(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o055 != 0o055 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o055))?;
    }
    Ok(())
}

/// Beside the stage folder (not inside it: that is mounted as /workspace).
fn artifacts_base(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".artifacts");
    match dir.parent() {
        Some(p) if !name.is_empty() => p.join(name),
        _ => dir.join(".kiln-artifacts"),
    }
}

/// A secret file's bytes as an environment value, without its final newline.
fn secret_value(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.strip_suffix('\n').unwrap_or(&s);
    s.strip_suffix('\r').unwrap_or(s).to_string()
}

/// The stage's result: the worst outcome of the cells that ran to their own end (cells
/// fail_fast cut short follow from the failure that cut them).
fn fold(ctx: &StageCtx, cells: &[args::Cell], ended: &[matrix::Ended]) -> StageResult {
    let counted = ended.iter().filter(|e| !e.cancelled);
    let outcome = counted.fold(Outcome::Passed, |o, e| o.worst(e.run.outcome));
    if let [only] = ended {
        return StageResult {
            outcome: only.run.outcome,
            exit_code: only.run.exit_code,
            detail: only.run.detail.clone(),
        };
    }
    let counts: Vec<String> = Outcome::ALL
        .iter()
        .filter_map(|o| {
            let n = ended.iter().filter(|e| e.run.outcome == *o).count();
            (n > 0).then(|| format!("{n} {o}"))
        })
        .collect();
    let mut detail = format!("{} cells: {}", cells.len(), counts.join(", "));
    if let Some((c, e)) = cells
        .iter()
        .zip(ended)
        .find(|(_, e)| !e.cancelled && e.run.outcome == outcome && !outcome.is_ok())
    {
        detail.push_str(&format!("; {}: {}", c.label(), e.run.detail));
    }
    StageResult {
        outcome,
        exit_code: None,
        detail: ctx.redact(&detail),
    }
}
