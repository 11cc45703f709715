//! One matrix cell: get its image, run the container with streamed output, remove
//! it whatever happened, and upload what it left in /artifacts.
use kiln_protocol::{ContainerSpec, ImageRef, Outcome};
use smol::future::FutureExt;
use smol::lock::Mutex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::args::{self, Cell, CellNet, Mounts};
use super::build::Build;
use super::engine::{Engine, ImageError};
use super::services::{self, NotReady, Started};
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
    /// Each service's build per cell (`[cell][service]`), where it is built.
    pub service_builds: Vec<Vec<Option<Result<Build, String>>>>,
    /// Each service's secrets folder (only the secrets it names), by service name.
    pub service_secrets: BTreeMap<String, PathBuf>,
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Engine,
        spec: &'a ContainerSpec,
        cells: &[Cell],
        base: PathBuf,
        secrets: Option<PathBuf>,
        builds: Vec<Option<Result<Build, String>>>,
        service_builds: Vec<Vec<Option<Result<Build, String>>>>,
        service_secrets: BTreeMap<String, PathBuf>,
    ) -> Self {
        let built = builds
            .iter()
            .chain(service_builds.iter().flatten())
            .flatten()
            .flatten()
            .map(|b| (b.tag.clone(), Mutex::new(None)))
            .collect();
        Shared {
            builds,
            built,
            service_builds,
            service_secrets,
            engine,
            spec,
            multi: cells.len() > 1,
            artifacts_base: base,
            secrets,
            images: spec
                .images
                .iter()
                .chain(spec.services.iter().map(|s| &s.image))
                .filter(|i| !matches!(i, ImageRef::Build(_)))
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
                let out = self
                    .engine
                    .build(ctx, b, self.spec.network, TAIL_LINES)
                    .await;
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
    /// Containers `keep_failed` kept (the test's first, then its services').
    pub kept: Vec<String>,
}

impl CellRun {
    fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        CellRun {
            outcome,
            exit_code: None,
            detail: detail.into(),
            tail: vec![],
            stopped: None,
            kept: vec![],
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
/// The image a cell (or a service) runs: a build's tag, or a pulled or loaded image.
async fn image_for(
    ctx: &StageCtx,
    shared: &Shared<'_>,
    prefix: &str,
    image: &ImageRef,
    build: Option<&Result<Build, String>>,
) -> Result<String, CellRun> {
    match build {
        Some(Err(e)) => Err(CellRun::new(Outcome::Error, e.clone())),
        Some(Ok(b)) => match shared.build(ctx, b).await {
            Err(s) => Err(CellRun::stopped(s, ctx.stage.timeout_s)),
            Ok(BuildEnd::Ready) => Ok(b.tag.clone()),
            Ok(BuildEnd::Error(e)) => Err(CellRun::new(Outcome::Error, e)),
            Ok(BuildEnd::Failed(detail, tail)) => Err(CellRun {
                tail,
                ..CellRun::new(Outcome::Failed, detail)
            }),
        },
        None => match shared.ready(ctx, prefix, image).await {
            Ok(()) => Ok(image.label().to_string()),
            Err(ImageError::Stopped(s)) => Err(CellRun::stopped(s, ctx.stage.timeout_s)),
            Err(ImageError::Failed(e)) => Err(CellRun::new(Outcome::Error, e)),
        },
    }
}

/// Runs one cell under `ctx` (whose stop signal is the cell's own): its image, its
/// services (if any), the test, then teardown (or, for a failed cell of a
/// `keep_failed` stage, its containers kept).
pub async fn run(ctx: &StageCtx, shared: &Shared<'_>, cell: &Cell) -> CellRun {
    let label = cell.label();
    let build = shared.builds.get(cell.index).and_then(Option::as_ref);
    let image = match image_for(ctx, shared, &label, &cell.image, build).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let name = args::container_name(&ctx.run, &ctx.stage.name, ctx.attempt, cell);
    let spec = shared.spec;
    if spec.services.is_empty() {
        let net = CellNet::plain(spec);
        return run_test(ctx, shared, cell, &image, &name, &net).await;
    }
    let mut images = Vec::new();
    for (k, svc) in spec.services.iter().enumerate() {
        let prefix = format!("service {}", svc.name);
        let build = shared
            .service_builds
            .get(cell.index)
            .and_then(|b| b.get(k))
            .and_then(Option::as_ref);
        match image_for(ctx, shared, &prefix, &svc.image, build).await {
            Ok(i) => images.push(i),
            Err(mut r) => {
                r.detail = format!("service {}: {}", svc.name, r.detail);
                if r.outcome == Outcome::Failed {
                    r.outcome = Outcome::Error;
                }
                return r;
            }
        }
    }
    let workspace = ctx.dir.to_string_lossy().into_owned();
    let secrets = |svc: &kiln_protocol::ServiceSpec| {
        shared
            .service_secrets
            .get(&svc.name)
            .map(|p| p.to_string_lossy().into_owned())
    };
    let mut started = Started::default();
    let ready = services::start(
        ctx,
        &shared.engine,
        spec,
        &images,
        &name,
        &workspace,
        &secrets,
        &mut started,
    )
    .await;
    let mut unhealthy = None;
    let mut run = match ready {
        Ok(()) => {
            let net = CellNet::Named {
                network: started.network.clone().unwrap_or_default(),
                hosts: started.hosts.clone(),
            };
            run_test(ctx, shared, cell, &image, &name, &net).await
        }
        Err(NotReady::Stopped(s)) => CellRun::stopped(s, ctx.stage.timeout_s),
        Err(NotReady::Error(detail, svc, tail)) => {
            unhealthy = svc;
            CellRun {
                tail,
                ..CellRun::new(Outcome::Error, detail)
            }
        }
    };
    // Each service's log, as a part of the cell.
    for (svc, container) in &started.containers {
        let tail = shared
            .engine
            .log_tail(ctx, container, services::LOG_TAIL)
            .await;
        let part = if shared.multi {
            format!("{label} service {svc}")
        } else {
            format!("service {svc}")
        };
        let (outcome, detail) = if unhealthy.as_deref() == Some(svc) {
            (Outcome::Error, run.detail.clone())
        } else {
            (
                Outcome::Passed,
                format!("{container}: its log's last lines"),
            )
        };
        ctx.part(&part, outcome, &detail, tail);
    }
    if run.kept.is_empty() {
        shared.engine.teardown(&started).await;
    } else {
        let names: Vec<String> = started.containers.iter().map(|(_, c)| c.clone()).collect();
        shared.engine.stop_now(&names).await;
        run.kept.extend(names);
        run.detail = kept_detail(&shared.engine, &run);
    }
    run
}

/// The detail of a kept cell: its containers and how to look inside.
fn kept_detail(engine: &Engine, run: &CellRun) -> String {
    let base = run.detail.split("; kept ").next().unwrap_or_default();
    let Some((test, rest)) = run.kept.split_first() else {
        return base.to_string();
    };
    let p = engine.program;
    let mut d = format!("{base}; kept {test}");
    if !rest.is_empty() {
        d.push_str(&format!(" and services {}", rest.join(", ")));
    }
    d.push_str(&format!(
        " (look inside: `{p} logs {test}`, `{p} commit {test} kiln-debug && {p} run -it --rm --entrypoint sh kiln-debug`; `kiln-agent gc` removes them)"
    ));
    d
}

/// Runs the test container of a cell on `net`, streams its output, removes it (or
/// keeps it: `keep_failed` and a failure), uploads its artifacts.
async fn run_test(
    ctx: &StageCtx,
    shared: &Shared<'_>,
    cell: &Cell,
    image: &str,
    name: &str,
    net: &CellNet,
) -> CellRun {
    let label = cell.label();
    let artifacts = shared
        .artifacts_base
        .join(format!("{}-{}", cell.index, cell.slug()));
    if let Err(e) = fresh_dir(&artifacts, 0o777) {
        return CellRun::new(
            Outcome::Error,
            format!("artifact folder {}: {e}", artifacts.display()),
        );
    }
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
        (&ctx.run, &ctx.stage.name),
        shared.spec,
        cell,
        image,
        name,
        net,
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
            shared.engine.remove(name).await;
        }
    };
    let (out, ()) = smol::future::zip(main, killer).await;
    let clean_exit = matches!(out.end, ProcEnd::Exited(c) if !(125..=127).contains(&c));
    // A failure the test itself reported, under keep_failed: the container stays.
    let keep = shared.spec.keep_failed
        && matches!(out.end, ProcEnd::Exited(c) if Outcome::from_exit(c) == Outcome::Failed && !(125..=127).contains(&c));
    if !keep && (!clean_exit || shared.spec.keep_failed) {
        // `--rm` covers containers that exited (without keep_failed); this covers
        // everything else.
        shared.engine.remove(name).await;
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
    if keep {
        run.kept.push(name.to_string());
        run.detail = kept_detail(&shared.engine, &run);
    }
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
