//! Helpers: a container stage and its context, podman checks, event queries.
#![allow(dead_code)]

use kiln_agent::stages::{MemorySink, StageCtx, StageResult, container};
use kiln_protocol::{ContainerSpec, Event, ImageRef, Outcome, Runtime, Stage, StageKind};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The two local test images (`.ci/podman.sh`), standing in for two distros.
pub const IMAGE_A: &str = "localhost/kiln-test-a:1";
/// See [`IMAGE_A`].
pub const IMAGE_B: &str = "localhost/kiln-test-b:1";

/// The engine a test runs against: each engine-independent test runs on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eng {
    /// podman with runc (`.ci/podman.sh`).
    Podman,
    /// docker: a dockerd holding the same images (`.ci/docker.sh`).
    Docker,
}

impl Eng {
    /// The engine's program.
    pub fn program(self) -> &'static str {
        match self {
            Eng::Podman => "podman",
            Eng::Docker => "docker",
        }
    }

    /// Runs the engine; its output when it exits 0.
    pub fn cmd(self, args: &[&str]) -> Result<String, String> {
        let o = Command::new(self.program())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", self.program()))?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!(
                "{} {args:?}: {}",
                self.program(),
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }

    /// Whether the engine and the test images are here; fails in CI, skips loudly
    /// elsewhere.
    pub fn require(self) -> bool {
        let (probe, setup): (&[&str], _) = match self {
            Eng::Podman => (&["--version"], "podman is not installed"),
            Eng::Docker => (
                &["info"],
                "docker does not answer (install docker.io, run `. .ci/docker.sh`)",
            ),
        };
        let images = [IMAGE_A, IMAGE_B]
            .iter()
            .all(|i| self.cmd(&["image", "inspect", i]).is_ok());
        let why = if self.cmd(probe).is_err() {
            setup
        } else if !images {
            match self {
                Eng::Podman => "the podman test images are missing (run `. .ci/podman.sh`)",
                Eng::Docker => "the docker test images are missing (run `. .ci/docker.sh`)",
            }
        } else {
            if self == Eng::Podman && std::env::var_os("CONTAINERS_CONF").is_none() {
                eprintln!(
                    "note: CONTAINERS_CONF is unset; hosts like CI's need `. .ci/podman.sh`'s config"
                );
            }
            return true;
        };
        kiln_testkit::skip(why);
        false
    }

    /// A hardened single-image spec running `sh -c script` on this engine.
    pub fn spec(self, images: &[&str], script: &str) -> ContainerSpec {
        ContainerSpec {
            runtime: match self {
                Eng::Podman => Runtime::Podman,
                Eng::Docker => Runtime::Docker,
            },
            images: images
                .iter()
                .map(|i| ImageRef::Registry(i.to_string()))
                .collect(),
            axes: vec![],
            command: vec!["sh".into(), "-c".into(), script.into()],
            workdir: None,
            concurrency: 4,
            fail_fast: true,
            read_only: true,
            network: false,
            user: None,
            cap_add: vec![],
            no_new_privileges: true,
            memory_bytes: 256 << 20,
            cpu_millis: 1000,
            pids_limit: 128,
            tmpfs_bytes: 16 << 20,
            mounts: vec![],
            services: vec![],
            keep_failed: false,
        }
    }

    /// Names of this engine's containers (any state) of stage `name` in
    /// [`StageCtx::for_test`]'s run.
    pub fn containers_of(self, name: &str) -> Vec<String> {
        let out = self
            .cmd(&["ps", "-a", "--format", "{{.Names}}"])
            .expect("listing containers");
        let prefix = format!("kiln-07070707-{name}-");
        out.lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

/// Defines, for each `fn name(e: Eng)` given, a module `name` with the tests
/// `podman` and `docker` that run it on that engine (after [`Eng::require`]).
macro_rules! on_both_engines {
    ($($f:ident),* $(,)?) => {$(
        mod $f {
            use crate::support::Eng;
            #[test]
            fn podman() {
                if Eng::Podman.require() {
                    super::$f(Eng::Podman)
                }
            }
            #[test]
            fn docker() {
                if Eng::Docker.require() {
                    super::$f(Eng::Docker)
                }
            }
        }
    )*};
}
pub(crate) use on_both_engines;

/// A stage context for `spec` (stage names must differ between tests: they name
/// the containers), with its folder.
pub fn ctx(name: &str, spec: ContainerSpec) -> (StageCtx, Arc<MemorySink>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage {
        timeout_s: 60,
        ..Stage::new(name, StageKind::Container(spec))
    };
    let (c, s) = StageCtx::for_test(stage, dir.path().join("stage"));
    std::fs::create_dir_all(&c.dir).expect("stage dir");
    (c, s, dir)
}

/// Runs the stage in `ctx` to its end.
pub async fn run(ctx: &StageCtx) -> StageResult {
    let StageKind::Container(spec) = &ctx.stage.kind else {
        panic!("not a container stage")
    };
    container::run(ctx, spec).await
}

/// A reported part: name, outcome, detail, tail.
pub type Part = (String, Outcome, String, Vec<String>);

/// Every `Part` event, in order.
pub fn parts(sink: &MemorySink) -> Vec<Part> {
    sink.events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Part {
                name,
                outcome,
                detail,
                tail,
                ..
            } => Some((name.clone(), *outcome, detail.clone(), tail.clone())),
            _ => None,
        })
        .collect()
}

/// The part called `name`.
pub fn part(sink: &MemorySink, name: &str) -> Part {
    parts(sink)
        .into_iter()
        .find(|p| p.0 == name)
        .unwrap_or_else(|| panic!("no part {name} in {:?}", parts(sink)))
}

/// Waits (polling, up to 60 s) until a log line contains `needle`.
pub async fn log_line(sink: &MemorySink, needle: &str) {
    for _ in 0..3000 {
        if sink.lines().iter().any(|l| l.contains(needle)) {
            return;
        }
        smol::Timer::after(Duration::from_millis(20)).await;
    }
    panic!("no log line with {needle:?} in {:?}", sink.lines());
}
