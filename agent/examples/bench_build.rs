//! Wall time of a container stage whose image is built from a Containerfile: the first
//! run (a fresh build, `no_cache`) against later runs of the unchanged folder (the
//! tagged image reused, nothing built).
//!
//! `cargo run --release -p kiln-agent --example bench_build -- [RUNS] [ENGINE]`
//! (default 5 reused runs on `podman`; `docker` needs `.ci/docker.sh`). The
//! Containerfile builds `FROM localhost/kiln-test-a:1` (`.ci/podman.sh`) with a 4 MiB
//! context and three `RUN` steps. Prints figures; asserts nothing about time.
use kiln_agent::stages::{StageCtx, container};
use kiln_protocol::{BuildSpec, ContainerSpec, ImageRef, Outcome, Runtime, Stage, StageKind};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const STAGE: &str = "bench-build";

fn spec(runtime: Runtime, no_cache: bool) -> ContainerSpec {
    ContainerSpec {
        runtime,
        images: vec![ImageRef::Build(BuildSpec {
            file: "Containerfile".into(),
            context: String::new(),
            args: vec![],
            no_cache,
        })],
        axes: vec![],
        command: vec!["sh".into(), "-c".into(), "cat /stamp".into()],
        workdir: None,
        concurrency: 1,
        fail_fast: true,
        read_only: true,
        network: false,
        user: None,
        cap_add: vec![],
        no_new_privileges: true,
        memory_bytes: 2 << 30,
        cpu_millis: 2000,
        pids_limit: 1024,
        tmpfs_bytes: 64 << 20,
        mounts: vec![],
        services: vec![],
        keep_failed: false,
    }
}

fn folder(dir: &Path) {
    std::fs::create_dir_all(dir).expect("stage folder");
    std::fs::write(
        dir.join("Containerfile"),
        "FROM localhost/kiln-test-a:1\nCOPY blob /blob\n\
         RUN sha256sum /blob > /stamp\nRUN echo step two >> /stamp\nRUN echo step three >> /stamp\n",
    )
    .expect("Containerfile");
    let blob: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("blob"), blob).expect("blob");
}

fn once(runtime: Runtime, no_cache: bool) -> (Duration, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = spec(runtime, no_cache);
    let stage = Stage::new(STAGE, StageKind::Container(s.clone()));
    let (ctx, sink) = StageCtx::for_test(stage, dir.path().join("stage"));
    folder(&ctx.dir);
    let t0 = Instant::now();
    let r = smol::block_on(container::run(&ctx, &s));
    let took = t0.elapsed();
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}: {:?}", sink.lines());
    let detail = sink
        .events
        .lock()
        .expect("sink lock")
        .iter()
        .find_map(|e| match e {
            kiln_protocol::Event::Part { name, detail, .. } if name == "build" => {
                Some(detail.clone())
            }
            _ => None,
        })
        .expect("a build part");
    (took, detail)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map_or(5, |a| a.parse().expect("RUNS"));
    let engine = args.next().unwrap_or_else(|| "podman".into());
    let runtime = match engine.as_str() {
        "podman" => Runtime::Podman,
        "docker" => Runtime::Docker,
        other => panic!("ENGINE is podman or docker, not {other}"),
    };
    let (first, detail) = once(runtime, true);
    assert!(detail.starts_with("built "), "{detail}");
    let tag = detail
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut reused: Vec<Duration> = (0..runs)
        .map(|_| {
            let (t, d) = once(runtime, false);
            assert!(d.starts_with("reused "), "{d}");
            t
        })
        .collect();
    reused.sort();
    let median = reused[reused.len() / 2];
    println!("engine {engine}, image {tag}");
    println!("first build (no_cache) : {:8.1} ms", ms(first));
    println!(
        "reused, median of {runs:2} : {:8.1} ms (min {:.1}, max {:.1})",
        ms(median),
        ms(reused[0]),
        ms(reused[reused.len() - 1])
    );
    let _ = Command::new(&engine)
        .args(["rmi", "--force", &tag])
        .output();
}
