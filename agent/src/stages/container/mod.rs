//! The `container` stage: the test folder run in podman (or docker) with hardened
//! defaults, over a matrix of images × extra env axes.
//!
//! Each cell runs in its own container named `kiln-<run8>-<stage>-<attempt>-<i>-<cell>`,
//! with the stage's folder read-only at `/workspace`, an empty `/artifacts` whose files
//! are uploaded afterwards, and a tmpfs `/tmp`. The container is removed whatever
//! happens (exit, timeout, abort, fail_fast) unless `keep_failed` keeps a failed cell
//! ([`gc`]); a later attempt of the stage first removes what earlier attempts left,
//! should the agent have died meanwhile.
//!
//! The image is a registry reference, an archive from the CAS, or built here from a
//! Containerfile in the test folder ([`build`]). Services ([`services`]) run beside
//! each cell on a private network of the cell's own, healthy before the test starts.
//!
//! Inside, besides the plan's env and the cell's axes: `KILN_RUN`, `KILN_STAGE`,
//! `KILN_ATTEMPT`, `KILN_CELL` (the cell's label) and `KILN_ARTIFACTS=/artifacts`.
//! Each named secret is a read-only file `/run/secrets/<name>` (`KILN_SECRETS_DIR`), as
//! in the exec stage's `KILN_SECRETS_DIR`; never an environment value, so no secret is
//! in the engine's command line or environment, nor in `podman inspect` /
//! `docker inspect` of the container.
use kiln_protocol::{ContainerSpec, ImageRef, Outcome};
use std::path::{Path, PathBuf};

use super::ctx::{StageCtx, StageResult};

pub mod args;
pub mod build;
pub mod cell;
pub mod engine;
pub mod gc;
pub mod matrix;
pub mod services;

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
    // Names become container names, aliases and `--add-host` entries (the coordinator
    // checks them too; a ticket is not trusted further than it must be).
    if let Some(bad) = spec
        .services
        .iter()
        .find(|s| !services::is_host_name(&s.name))
    {
        return StageResult::error(format!(
            "service name {:?} is not a host name ([a-z0-9-], at most 63 bytes)",
            bad.name
        ));
    }
    // A retry, or a rerun after the agent died: containers (tests and services) and
    // networks of the stage's earlier attempts that a crash left go first, and so do
    // the containers an earlier run of this (`keep_failed`) stage kept.
    let mut earlier = Vec::new();
    let mut networks = Vec::new();
    for a in 1..ctx.attempt {
        for c in &cells {
            let name = args::container_name(&ctx.run, &ctx.stage.name, a, c);
            for svc in &spec.services {
                earlier.push(services::container_name(&name, &svc.name));
            }
            networks.push(services::network_name(&name));
            earlier.push(name);
        }
    }
    engine.remove_all(&earlier).await;
    if !spec.services.is_empty() {
        engine.remove_networks(&networks).await;
    }
    if spec.keep_failed {
        // Only keep_failed stages pay for the lookups (two `ps`, one `network ls`).
        gc::remove_kept(&engine, Some(&ctx.stage.name)).await;
    }
    if let Err(e) = open_workspace(&ctx.dir) {
        return StageResult::error(format!("stage folder {}: {e}", ctx.dir.display()));
    }
    let base = artifacts_base(&ctx.dir);
    let holder = secrets_holder(&ctx.dir);
    let secrets = match write_secret_files(&holder, &ctx.secrets) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&holder);
            return StageResult::error(format!("writing secrets: {e}"));
        }
    };
    let builds = cells
        .iter()
        .map(|c| match &c.image {
            ImageRef::Build(b) => Some(build::resolve(&ctx.stage.name, &ctx.dir, b, &c.env)),
            _ => None,
        })
        .collect();
    let service_builds = cells
        .iter()
        .map(|c| {
            spec.services
                .iter()
                .map(|svc| match &svc.image {
                    ImageRef::Build(b) => {
                        Some(build::resolve(&ctx.stage.name, &ctx.dir, b, &c.env))
                    }
                    _ => None,
                })
                .collect()
        })
        .collect();
    let mut service_secrets = std::collections::BTreeMap::new();
    for svc in spec.services.iter().filter(|s| !s.secrets.is_empty()) {
        let mine = ctx
            .secrets
            .iter()
            .filter(|(k, _)| svc.secrets.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let dir = holder.join(format!("service-{}", svc.name));
        match write_secret_files(&dir, &mine) {
            Ok(Some(files)) => {
                service_secrets.insert(svc.name.clone(), files);
            }
            Ok(None) => {}
            Err(e) => {
                let _ = std::fs::remove_dir_all(&holder);
                return StageResult::error(format!("writing service {} secrets: {e}", svc.name));
            }
        }
    }
    let shared = cell::Shared::new(
        engine,
        spec,
        &cells,
        base.clone(),
        secrets,
        builds,
        service_builds,
        service_secrets,
    );
    let ended = matrix::run(ctx, &shared, &cells).await;
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&holder);
    fold(ctx, &cells, &ended)
}

/// Beside the stage folder (inside it, the secrets would be in `/workspace` too).
fn secrets_holder(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".secrets");
    match dir.parent() {
        Some(p) if name.len() > ".secrets".len() => p.join(name),
        _ => dir.join(".kiln-secrets"),
    }
}

/// Writes each secret as a file for the container's `/run/secrets`: `holder` (0700:
/// no other host user gets in) holds `files/` (0755) with one 0444 file per secret,
/// readable by whatever user the container runs as. A folder an earlier attempt left
/// is replaced. `None` when the stage has no secrets (nothing is mounted).
fn write_secret_files(
    holder: &Path,
    secrets: &std::collections::BTreeMap<String, Vec<u8>>,
) -> std::io::Result<Option<PathBuf>> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    match std::fs::remove_dir_all(holder) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if secrets.is_empty() {
        return Ok(None);
    }
    std::fs::DirBuilder::new().mode(0o700).create(holder)?;
    let files = holder.join("files");
    std::fs::DirBuilder::new().mode(0o755).create(&files)?;
    // The umask may have narrowed the modes asked for above.
    std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o755))?;
    for (name, value) in secrets {
        let path = files.join(name.replace(['/', '\\'], "_"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)?;
        f.write_all(value)?;
        f.sync_all()?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))?;
    }
    Ok(Some(files))
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
