//! The container engine: picking podman or docker, getting images (pull with retries,
//! or load an archive from the CAS), and removing containers.
use kiln_protocol::{ImageRef, Runtime};
use smol::future::FutureExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::args::EngineKind;
use crate::stages::ctx::{StageCtx, Stop};
use crate::stages::proc::{ProcEnd, ProcSpec, run_streamed};

/// Pull attempts before an image counts as unavailable.
pub const PULL_ATTEMPTS: u32 = 3;
/// Wait before the second pull attempt; doubled for each later one.
pub const PULL_BACKOFF: Duration = Duration::from_secs(1);

/// A container engine on this host.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Which command-line dialect.
    pub kind: EngineKind,
    /// The program to run (`podman` or `docker`, looked up in PATH).
    pub program: &'static str,
}

/// Why an image could not be made ready.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageError {
    /// The stage was stopped meanwhile.
    Stopped(Stop),
    /// Pull or load failed (an infrastructure error).
    Failed(String),
}

fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

impl Engine {
    /// The engine the plan asks for: `auto` is podman if installed, else docker.
    pub fn detect(runtime: Runtime) -> Result<Engine, String> {
        Self::detect_with(runtime, on_path)
    }

    /// [`Engine::detect`] with `installed` telling which programs exist.
    pub fn detect_with(
        runtime: Runtime,
        installed: impl Fn(&str) -> bool,
    ) -> Result<Engine, String> {
        let podman = Engine {
            kind: EngineKind::Podman,
            program: "podman",
        };
        let docker = Engine {
            kind: EngineKind::Docker,
            program: "docker",
        };
        let wanted = match runtime {
            Runtime::Podman => vec![podman],
            Runtime::Docker => vec![docker],
            Runtime::Auto => vec![podman, docker],
        };
        let names: Vec<&str> = wanted.iter().map(|e| e.program).collect();
        wanted
            .into_iter()
            .find(|e| installed(e.program))
            .ok_or_else(|| format!("no container runtime: {} not installed", names.join(" or ")))
    }

    /// Runs the engine quietly; true when it exits 0.
    async fn quiet(&self, args: &[&str]) -> bool {
        async_process::Command::new(self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Whether the engine has an image called `name`.
    pub async fn image_exists(&self, name: &str) -> bool {
        matches!(self.image_state(name).await, Ok(true))
    }

    /// Whether the engine has an image called `name`, or why it could not say (an
    /// engine fault: podman's exit 125, docker's answer other than "No such image").
    pub async fn image_state(&self, name: &str) -> Result<bool, String> {
        let args: &[&str] = match self.kind {
            EngineKind::Podman => &["image", "exists", name],
            EngineKind::Docker => &["image", "inspect", "--format", "{{.Id}}", name],
        };
        let out = async_process::Command::new(self.program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("{}: {e}", self.program))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_string();
        match (self.kind, out.status.code()) {
            (_, Some(0)) => Ok(true),
            (EngineKind::Podman, Some(1)) => Ok(false),
            (EngineKind::Docker, Some(1)) if stderr.contains("No such image") => Ok(false),
            (_, code) => Err(format!(
                "{} image lookup failed ({}): {last}",
                self.program,
                code.map_or("killed".to_string(), |c| format!("exit {c}"))
            )),
        }
    }

    /// Runs `<engine> build` for `b` with its output streamed under the build's part
    /// name; the process's end and last `tail_lines` lines.
    pub async fn build(
        &self,
        ctx: &StageCtx,
        b: &super::build::Build,
        network: bool,
        tail_lines: usize,
    ) -> crate::stages::proc::ProcOutput {
        let mut spec = ProcSpec::new(
            std::iter::once(self.program.to_string()).chain(super::build::build_args(b, network)),
        );
        spec.prefix = Some(b.part.clone());
        spec.tail_lines = tail_lines;
        run_streamed(ctx, &spec).await
    }

    /// Force-removes a container and its anonymous volumes; a missing one is fine.
    pub async fn remove(&self, name: &str) {
        self.remove_all(&[name.to_string()]).await;
    }

    /// [`Engine::remove`] for many containers in one call.
    pub async fn remove_all(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let mut args = match self.kind {
            EngineKind::Podman => vec!["rm", "--force", "--ignore", "--volumes", "--time", "0"],
            // docker has no --ignore: it reports missing names and removes the rest.
            EngineKind::Docker => vec!["rm", "--force", "--volumes"],
        };
        args.extend(names.iter().map(String::as_str));
        self.quiet(&args).await;
    }

    /// Runs an engine command with its output streamed under `prefix`; `Ok(())` on
    /// exit 0, else the last line of output (of stderr, if it printed any).
    async fn streamed(
        &self,
        ctx: &StageCtx,
        prefix: &str,
        args: &[&str],
    ) -> Result<(), ImageError> {
        let mut spec = ProcSpec::new(std::iter::once(self.program).chain(args.iter().copied()));
        spec.prefix = Some(prefix.to_string());
        spec.tail_lines = 1;
        let out = run_streamed(ctx, &spec).await;
        let last = out.tail.last().cloned().unwrap_or_default();
        match out.end {
            ProcEnd::Exited(0) => Ok(()),
            ProcEnd::Stopped(s) => Err(ImageError::Stopped(s)),
            ProcEnd::Exited(c) => Err(ImageError::Failed(format!("exit {c}: {last}"))),
            ProcEnd::Signaled(s) => Err(ImageError::Failed(format!("killed by signal {s}"))),
            ProcEnd::SpawnFailed(e) => Err(ImageError::Failed(e)),
            ProcEnd::TimedOut(d) => Err(ImageError::Failed(format!(
                "did not finish within {}s",
                d.as_secs()
            ))),
        }
    }

    /// Makes `image` available: a registry image present locally is used as is,
    /// otherwise pulled (retried with backoff); an archive is fetched from the CAS and
    /// loaded. Output is logged under `prefix`.
    pub async fn prepare(
        &self,
        ctx: &StageCtx,
        prefix: &str,
        image: &ImageRef,
    ) -> Result<(), ImageError> {
        match image {
            ImageRef::Registry(r) => {
                if self.image_exists(r).await {
                    return Ok(());
                }
                let mut delay = PULL_BACKOFF;
                let mut last = String::new();
                for attempt in 1..=PULL_ATTEMPTS {
                    if attempt > 1 {
                        ctx.note(&format!(
                            "[{prefix}] pull failed ({last}); retrying in {}s",
                            delay.as_secs()
                        ));
                        let stop = async { Some(ctx.stopped().await) }
                            .or(async {
                                smol::Timer::after(delay).await;
                                None
                            })
                            .await;
                        if let Some(s) = stop {
                            return Err(ImageError::Stopped(s));
                        }
                        delay *= 2;
                    }
                    match self.streamed(ctx, prefix, &["pull", r]).await {
                        Ok(()) => return Ok(()),
                        Err(ImageError::Failed(e)) => last = e,
                        Err(stopped) => return Err(stopped),
                    }
                }
                Err(ImageError::Failed(format!(
                    "pulling {r} failed {PULL_ATTEMPTS} times: {last}"
                )))
            }
            ImageRef::Archive { name, sha256, .. } => {
                let path = ctx.fetch_cas(sha256).await.map_err(|e| {
                    ImageError::Failed(format!("fetching image archive {sha256}: {e}"))
                })?;
                self.load(ctx, prefix, &path, name).await
            }
            ImageRef::Build(b) => Err(ImageError::Failed(format!(
                "{} is built, not pulled (a build resolved nowhere)",
                b.file
            ))),
        }
    }

    async fn load(
        &self,
        ctx: &StageCtx,
        prefix: &str,
        archive: &Path,
        name: &str,
    ) -> Result<(), ImageError> {
        let path = archive.to_string_lossy();
        self.streamed(ctx, prefix, &["load", "--input", &path])
            .await
            .map_err(|e| match e {
                ImageError::Failed(why) => {
                    ImageError::Failed(format!("loading image archive: {why}"))
                }
                other => other,
            })?;
        if self.image_exists(name).await {
            Ok(())
        } else {
            Err(ImageError::Failed(format!(
                "the image archive holds no image named {name}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_podman_then_docker_then_says_what_is_missing() {
        let pick = |rt, have: &'static [&'static str]| {
            Engine::detect_with(rt, |p| have.contains(&p)).map(|e| e.program)
        };
        assert_eq!(pick(Runtime::Auto, &["podman", "docker"]), Ok("podman"));
        assert_eq!(pick(Runtime::Auto, &["docker"]), Ok("docker"));
        assert_eq!(pick(Runtime::Docker, &["podman", "docker"]), Ok("docker"));
        assert_eq!(
            pick(Runtime::Auto, &[]),
            Err("no container runtime: podman or docker not installed".into())
        );
        assert_eq!(
            pick(Runtime::Podman, &["docker"]),
            Err("no container runtime: podman not installed".into())
        );
    }
}
