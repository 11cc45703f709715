//! One matrix cell: get its image, run the container with streamed output, remove
//! it whatever happened, and upload what it left in /artifacts.
use kiln_protocol::{ContainerSpec, ImageRef, Outcome};
use smol::future::FutureExt;
use smol::lock::Mutex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::args::{self, Cell, Mounts};
use super::build::Build;
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
    /// Each cell's build (by cell index), where its image is built: resolved, or why
    /// not.
    pub builds: Vec<Option<Result<Build, String>>>,
    /// Each build's end by tag, once known (cells sharing a tag build once).
    pub built: BTreeMap<String, Mutex<Option<BuildEnd>>>,
}

/// How a build ended (remembered for the cells that share it).
#[derive(Debug, Clone)]
pub enum BuildEnd {
    /// The image is there (built now, or reused).
    Ready,
    /// The build failed: the test's Containerfile or context (the cell fails).
    Failed(String, Vec<String>),
    /// The engine failed (the cell is an `error`).
    Error(String),
}

impl<'a> Shared<'a> {
    /// The shared state of a stage's cells.
    pub fn new(
        engine: Engine,
        spec: &'a ContainerSpec,
        cells: &[Cell],
        base: PathBuf,
        secrets: Option<PathBuf>,
        builds: Vec<Option<Result<Build, String>>>,
    ) -> Self {
        let built = builds
            .iter()
            .flatten()
            .flatten()
            .map(|b| (b.tag.clone(), Mutex::new(None)))
            .collect();
        Shared {
            builds,
            built,
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

    /// Builds `b` unless its tag is there (or another cell built it already); the
    /// `build` part reports what happened, once per tag.
    async fn build(&self, ctx: &StageCtx, b: &Build) -> Result<BuildEnd, Stop> {
        let Some(lock) = self.built.get(&b.tag) else {
            return Ok(BuildEnd::Error(format!("no build slot for {}", b.tag)));
        };
        let mut known = lock.lock().await;
        if let Some(end) = known.as_ref() {
            return Ok(end.clone());
        }
        let end = if !b.no_cache {
            match self.engine.image_state(&b.tag).await {
                Err(e) => Some(BuildEnd::Error(e)),
                Ok(true) => {
                    let detail = format!("reused {} (built nothing)", b.tag);
                    ctx.note(&format!("[{}] {detail}", b.part));
                    ctx.part(&b.part, Outcome::Passed, &detail, vec![]);
                    Some(BuildEnd::Ready)
                }
                Ok(false) => None,
            }
        } else {
            None
        };
        let end = match end {
            Some(end) => end,
            None => {
                let started = std::time::Instant::now();
                let out = self.engine.build(ctx, b, self.spec.network).await;
                let last = out.tail.last().cloned().unwrap_or_default();
                let (outcome, end) = match out.end {
                    ProcEnd::Exited(0) => (Outcome::Passed, BuildEnd::Ready),
                    ProcEnd::Stopped(s) => {
                        ctx.part(
                            &b.part,
                            s.outcome(),
                            &s.detail(ctx.stage.timeout_s),
                            out.tail,
                        );
                        return Err(s);
                    }
                    ProcEnd::Exited(c) => (
                        Outcome::Failed,
                        BuildEnd::Failed(
                            format!("build failed (exit {c}): {last}"),
                            out.tail.clone(),
                        ),
                    ),
                    ProcEnd::Signaled(sig) => (
                        Outcome::Error,
                        BuildEnd::Error(format!(
                            "{} build was killed by signal {sig}",
                            self.engine.program
                        )),
                    ),
                    ProcEnd::SpawnFailed(e) => (
                        Outcome::Error,
                        BuildEnd::Error(format!("could not start the build: {e}")),
                    ),
                    ProcEnd::TimedOut(d) => (
                        Outcome::Error,
                        BuildEnd::Error(format!(
                            "the build did not finish within {}s",
                            d.as_secs()
                        )),
                    ),
                };
                let detail = match &end {
                    BuildEnd::Ready => {
                        format!("built {} in {:.1}s", b.tag, started.elapsed().as_secs_f64())
                    }
                    BuildEnd::Failed(d, _) | BuildEnd::Error(d) => d.clone(),
                };
                ctx.part(&b.part, outcome, &detail, out.tail);
                end
            }
        };
        *known = Some(end.clone());
        Ok(end)
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
    let image = match shared.builds.get(cell.index) {
        Some(Some(Err(e))) => return CellRun::new(Outcome::Error, e.clone()),
        Some(Some(Ok(b))) => match shared.build(ctx, b).await {
            Err(s) => return CellRun::stopped(s, ctx.stage.timeout_s),
            Ok(BuildEnd::Ready) => b.tag.clone(),
            Ok(BuildEnd::Error(e)) => return CellRun::new(Outcome::Error, e),
            Ok(BuildEnd::Failed(detail, tail)) => {
                return CellRun {
                    tail,
                    ..CellRun::new(Outcome::Failed, detail)
                };
            }
        },
        _ => match shared.ready(ctx, &label, &cell.image).await {
            Ok(()) => cell.image.label().to_string(),
            Err(ImageError::Stopped(s)) => return CellRun::stopped(s, ctx.stage.timeout_s),
            Err(ImageError::Failed(e)) => return CellRun::new(Outcome::Error, e),
        },
    };
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
    let argv = args::run_args(
        shared.engine.kind,
        shared.spec,
        cell,
        &image,
        &name,
        &mounts,
        &env,
    );
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
