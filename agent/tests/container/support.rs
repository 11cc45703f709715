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

/// True when `KILN_CI=1`: missing tools or images fail instead of skipping.
fn in_ci() -> bool {
    std::env::var("KILN_CI").map(|v| v == "1").unwrap_or(false)
}

/// Whether podman and the test images are here; fails in CI, skips loudly elsewhere.
pub fn require_podman() -> bool {
    let have = |args: &[&str]| {
        Command::new("podman")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let why = if !have(&["--version"]) {
        "podman is not installed"
    } else if !have(&["image", "exists", IMAGE_A]) || !have(&["image", "exists", IMAGE_B]) {
        "the test images are missing (run `. .ci/podman.sh`)"
    } else {
        if std::env::var_os("CONTAINERS_CONF").is_none() {
            eprintln!(
                "note: CONTAINERS_CONF is unset; hosts like CI's need `. .ci/podman.sh`'s config"
            );
        }
        return true;
    };
    if in_ci() {
        panic!("{why}: required in CI (KILN_CI=1)");
    }
    eprintln!("SKIPPED: {why} (this test would fail in CI)");
    false
}

/// A hardened single-image spec running `sh -c script`.
pub fn spec(images: &[&str], script: &str) -> ContainerSpec {
    ContainerSpec {
        runtime: Runtime::Podman,
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
    }
}

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

/// Names of containers (any state) of stage `name` in [`StageCtx::for_test`]'s run.
pub fn containers_of(name: &str) -> Vec<String> {
    let out = Command::new("podman")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .expect("podman ps");
    let prefix = format!("kiln-07070707-{name}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
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
