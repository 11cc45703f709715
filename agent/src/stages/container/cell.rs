//! One matrix cell: get its image, run the container with streamed output, remove
//! it whatever happened, and upload what it left in /artifacts.
use kiln_protocol::{ContainerSpec, ImageRef, Outcome};
use smol::future::FutureExt;
use smol::lock::Mutex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::args::{self, Cell, Mounts};
use super::engine::{Engine, ImageError};
use crate::stages::ctx::{StageCtx, Stop};
use crate::stages::proc::{ProcEnd, ProcSpec, run_streamed};

/// Lines of each cell's output kept for the report.
pub const TAIL_LINES: usize = 200;

/// What every cell of a stage shares.
pub struct Shared<'a> {
    /// The engine.
    pub engine: Engine,
    /// The stage's settings.
    pub spec: &'a ContainerSpec,
    /// Whether this is a matrix (more than one cell): lines get a `[cell]` prefix and
    /// artifacts a `<cell>/` folder.
    pub multi: bool,
    /// Folder holding each cell's artifact folder.
    pub artifacts_base: PathBuf,
    /// The folder of secret files mounted at `/run/secrets`, when the stage has secrets.
    pub secrets: Option<PathBuf>,
    /// Each image's readiness by label, once known (pulled or loaded once per stage;
    /// a failure is remembered too, so a matrix does not pull a missing image per cell).
    pub images: BTreeMap<String, Mutex<Option<Result<(), String>>>>,
}

impl<'a> Shared<'a> {
    /// The shared state of a stage's cells.
    pub fn new(
        engine: Engine,
        spec: &'a ContainerSpec,
        cells: &[Cell],
        base: PathBuf,
        secrets: Option<PathBuf>,
    ) -> Self {
        Shared {
            engine,
            spec,
            multi: cells.len() > 1,
            artifacts_base: base,
            secrets,
            images: spec
                .images
                .iter()
                .map(|i| (i.label().to_string(), Mutex::new(None)))
                .collect(),
        }
    }

    async fn ready(
        &self,
        ctx: &StageCtx,
        prefix: &str,
        image: &ImageRef,
    ) -> Result<(), ImageError> {
        let Some(lock) = self.images.get(image.label()) else {
            return self.engine.prepare(ctx, prefix, image).await;
        };
        let mut known = lock.lock().await;
        if let Some(r) = known.as_ref() {
            return r.clone().map_err(ImageError::Failed);
        }
        let r = self.engine.prepare(ctx, prefix, image).await;
        match &r {
            Ok(()) => *known = Some(Ok(())),
            Err(ImageError::Failed(e)) => *known = Some(Err(e.clone())),
            Err(ImageError::Stopped(_)) => {}
        }
        r
    }
}

/// How a cell ended.
#[derive(Debug, Clone)]
pub struct CellRun {
    /// Its outcome.
    pub outcome: Outcome,
    /// The container's exit code, where it had one.
    pub exit_code: Option<i32>,
    /// One line for people.
    pub detail: String,
    /// Its last lines of output.
    pub tail: Vec<String>,
    /// Why it was stopped, if it was.
    pub stopped: Option<Stop>,
}

impl CellRun {
    fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        CellRun {
            outcome,
            exit_code: None,
            detail: detail.into(),
            tail: vec![],
            stopped: None,
        }
    }

    fn stopped(stop: Stop, timeout_s: u64) -> Self {
        CellRun {
            stopped: Some(stop.clone()),
            ..CellRun::new(stop.outcome(), stop.detail(timeout_s))
        }
    }
}

/// Runs one cell under `ctx` (whose stop signal is the cell's own).
pub async fn run(ctx: &StageCtx, shared: &Shared<'_>, cell: &Cell) -> CellRun {
    let label = cell.label();
    match shared.ready(ctx, &label, &cell.image).await {
        Ok(()) => {}
        Err(ImageError::Stopped(s)) => return CellRun::stopped(s, ctx.stage.timeout_s),
        Err(ImageError::Failed(e)) => return CellRun::new(Outcome::Error, e),
    }
    let artifacts = shared
        .artifacts_base
        .join(format!("{}-{}", cell.index, cell.slug()));
    if let Err(e) = fresh_dir(&artifacts, 0o777) {
        return CellRun::new(
            Outcome::Error,
            format!("artifact folder {}: {e}", artifacts.display()),
        );
    }
    let name = args::container_name(&ctx.run, &ctx.stage.name, ctx.attempt, cell);
    let mounts = Mounts {
        workspace: ctx.dir.to_string_lossy().into_owned(),
        artifacts: artifacts.to_string_lossy().into_owned(),
        secrets: (shared.secrets.as_ref()).map(|d| d.to_string_lossy().into_owned()),
    };
    let mut env = ctx.env();
    env.extend([
        ("KILN_RUN".to_string(), ctx.run.to_string()),
        ("KILN_STAGE".to_string(), ctx.stage.name.clone()),
        ("KILN_ATTEMPT".to_string(), ctx.attempt.to_string()),
        ("KILN_ARTIFACTS".to_string(), "/artifacts".to_string()),
        ("KILN_CELL".to_string(), label.clone()),
    ]);
    if shared.secrets.is_some() {
        env.push((
            "KILN_SECRETS_DIR".to_string(),
            args::SECRETS_DIR.to_string(),
        ));
    }
    let argv = args::run_args(shared.engine.kind, shared.spec, cell, &name, &mounts, &env);
    let mut spec = ProcSpec::new(std::iter::once(shared.engine.program.to_string()).chain(argv));
    spec.prefix = shared.multi.then(|| label.clone());
    spec.tail_lines = TAIL_LINES;

    // On a stop, kill the container at once rather than after the engine's grace:
    // the container's PID 1 usually ignores the SIGTERM the engine forwards.
    let (done_tx, done_rx) = smol::channel::bounded::<()>(1);
    let main = async {
        let out = run_streamed(ctx, &spec).await;
        done_tx.close();
        out
    };
    let killer = async {
        let stopped = async {
            ctx.stopped().await;
            true
        }
        .or(async {
            let _ = done_rx.recv().await;
            false
        })
        .await;
        if stopped {
            shared.engine.remove(&name).await;
        }
    };
    let (out, ()) = smol::future::zip(main, killer).await;
    let clean_exit = matches!(out.end, ProcEnd::Exited(c) if !(125..=127).contains(&c));
    if !clean_exit {
        // `--rm` covers containers that exited; this covers everything else.
        shared.engine.remove(&name).await;
    }
    let last = out.tail.last().cloned().unwrap_or_default();
    let mut run = match out.end {
        ProcEnd::Exited(c @ 125..=127) => CellRun {
            exit_code: Some(c),
            ..CellRun::new(
                Outcome::Error,
                format!(
                    "{} could not start the container (exit {c}): {last}",
                    shared.engine.program
                ),
            )
        },
        ProcEnd::Exited(c) => CellRun {
            exit_code: Some(c),
            ..CellRun::new(Outcome::from_exit(c), format!("exit {c}"))
        },
        ProcEnd::Signaled(s) => CellRun::new(
            Outcome::Error,
            format!("{} was killed by signal {s}", shared.engine.program),
        ),
        ProcEnd::Stopped(s) => CellRun::stopped(s, ctx.stage.timeout_s),
        ProcEnd::SpawnFailed(e) => CellRun::new(Outcome::Error, format!("could not start: {e}")),
        ProcEnd::TimedOut(d) => CellRun::new(
            Outcome::Error,
            format!("did not finish within {}s", d.as_secs()),
        ),
    };
    run.tail = out.tail;
    let prefix = if shared.multi {
        format!("{}/", cell.slug())
    } else {
        String::new()
    };
    if let Err(e) = ctx.artifacts_under(&artifacts, &prefix).await {
        run.outcome = run.outcome.worst(Outcome::Error);
        run.detail = format!("{}; artifacts: {e}", run.detail);
    }
    let _ = std::fs::remove_dir_all(&artifacts);
    run
}

/// Creates `dir` empty with `mode` (the container's user must be able to write it).
fn fresh_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}
