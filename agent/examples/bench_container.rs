//! Wall time of a container stage against a raw `podman run` (or `docker run`) of the
//! same command.
//!
//! `cargo run --release -p kiln-agent --example bench_container -- [RUNS] [IMAGE] [ENGINE]`
//! (default 10 runs of `localhost/kiln-test-a:1`, built by `.ci/podman.sh`, on
//! `podman`: export the CONTAINERS_CONF it writes; `docker` needs `.ci/docker.sh`). Runs are interleaved: raw, raw with the stage's
//! hardening flags, stage. Target: stage ≤ raw × 1.05 + 50 ms. Prints figures; asserts
//! nothing about time.
use kiln_agent::stages::container::args::{self, EngineKind, Mounts};
use kiln_agent::stages::{StageCtx, container};
use kiln_protocol::{ContainerSpec, ImageRef, Outcome, Runtime, Stage, StageKind};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str =
    "echo hello from the bench; i=0; while [ $i -lt 100 ]; do echo line $i; i=$((i+1)); done";

/// The engine benchmarked: its program, dialect and the plan's runtime for it.
#[derive(Clone, Copy)]
struct Eng(&'static str, EngineKind, Runtime);

fn spec(e: Eng, image: &str) -> ContainerSpec {
    ContainerSpec {
        runtime: e.2,
        images: vec![ImageRef::Registry(image.into())],
        axes: vec![],
        command: vec!["sh".into(), "-c".into(), SCRIPT.into()],
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

fn timed(e: Eng, args: &[&str]) -> Duration {
    let t0 = Instant::now();
    let st = Command::new(e.0)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("running the engine");
    assert!(st.success(), "{} {args:?} failed", e.0);
    t0.elapsed()
}

fn stage_once(e: Eng, image: &str, i: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::new(format!("bench{i}"), StageKind::Container(spec(e, image)));
    let (ctx, sink) = StageCtx::for_test(stage, dir.path().join("stage"));
    let t0 = Instant::now();
    let r = smol::block_on(container::run(&ctx, &spec(e, image)));
    let took = t0.elapsed();
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}: {:?}", sink.lines());
    let stdout = sink
        .events
        .lock()
        .expect("sink lock")
        .iter()
        .filter(|e| {
            matches!(
                e,
                kiln_protocol::Event::Log {
                    stream: kiln_protocol::Stream::Stdout,
                    ..
                }
            )
        })
        .count();
    assert_eq!(stdout, 101, "every line streamed");
    took
}

/// From a timeout firing on a running container to the stage's end (container removed).
fn stop_latency(e: Eng, image: &str, i: usize) -> Duration {
    use smol::future::FutureExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sp = spec(e, image);
    sp.command = vec!["sh".into(), "-c".into(), "echo ready; sleep 300".into()];
    let stage = Stage::new(format!("bench-stop{i}"), StageKind::Container(sp.clone()));
    let (ctx, sink) = StageCtx::for_test(stage, dir.path().join("stage"));
    let fired = std::cell::Cell::new(None);
    let r = smol::block_on(container::run(&ctx, &sp).or(async {
        while !sink.lines().iter().any(|l| l == "ready") {
            smol::Timer::after(Duration::from_millis(5)).await;
        }
        fired.set(Some(Instant::now()));
        ctx.stop.fire(kiln_agent::stages::Stop::Timeout);
        std::future::pending().await
    }));
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    fired.get().expect("fired").elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args
        .next()
        .map(|a| a.parse().expect("RUNS is a number"))
        .unwrap_or(10);
    let image = args
        .next()
        .unwrap_or_else(|| "localhost/kiln-test-a:1".into());
    let e = match args.next().as_deref() {
        None | Some("podman") => Eng("podman", EngineKind::Podman, Runtime::Podman),
        Some("docker") => Eng("docker", EngineKind::Docker, Runtime::Docker),
        Some(other) => panic!("ENGINE is podman or docker, not {other}"),
    };
    let engine = e.0;
    let hardened = [
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        "65534:65534",
        "--network",
        "none",
        "--memory",
        "2147483648",
        "--cpus",
        "2.000",
        "--pids-limit",
        "1024",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,mode=1777,size=67108864",
    ];
    // Warm up the image and the engine's caches once each way.
    timed(e, &["run", "--rm", &image, "sh", "-c", SCRIPT]);
    stage_once(e, &image, usize::MAX);

    // The exact argv the stage runs, with folders of its own.
    let own = tempfile::tempdir().expect("tempdir");
    let mounts = Mounts {
        workspace: own.path().to_string_lossy().into(),
        artifacts: own.path().to_string_lossy().into(),
        secrets: None,
    };
    let spec = spec(e, &image);
    let cell = &args::cells(&spec)[0];
    let exact = args::run_args(
        e.1,
        (&kiln_protocol::RunId([0; 16]), "bench"),
        &spec,
        cell,
        &image,
        "kiln-bench-exact",
        &args::CellNet::None,
        &mounts,
        &[],
    );
    let exact: Vec<&str> = exact.iter().map(String::as_str).collect();

    let (mut raw, mut raw_hard, mut raw_exact, mut stage) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        raw_exact.push(timed(e, &exact));
        raw.push(timed(e, &["run", "--rm", &image, "sh", "-c", SCRIPT]));
        let mut a = vec!["run", "--rm"];
        a.extend(hardened);
        a.extend([image.as_str(), "sh", "-c", SCRIPT]);
        raw_hard.push(timed(e, &a));
        stage.push(stage_once(e, &image, i));
    }
    let stops: Vec<Duration> = (0..runs.min(5))
        .map(|i| stop_latency(e, &image, i))
        .collect();
    let (r, h, x, s) = (
        median(raw),
        median(raw_hard),
        median(raw_exact),
        median(stage),
    );
    println!(
        "container stage bench: {runs} runs of `sh -c` printing 101 lines in {image} (medians)"
    );
    println!("  raw {engine:6} run --rm             {:8.1} ms", ms(r));
    println!("  raw {engine:6} run --rm + hardening {:8.1} ms", ms(h));
    println!("  raw {engine:6} run, the stage's argv {:7.1} ms", ms(x));
    println!("  kiln container stage            {:8.1} ms", ms(s));
    println!("  stage / raw                     {:8.3}", ms(s) / ms(r));
    println!("  stage / raw hardened            {:8.3}", ms(s) / ms(h));
    println!("  stage / raw with stage's argv   {:8.3}", ms(s) / ms(x));
    println!(
        "  timeout → container removed     {:8.1} ms",
        ms(median(stops))
    );
    for (what, base) in [("raw", r), ("the stage's argv", x)] {
        let target = ms(base) * 1.05 + 50.0;
        let verdict = if ms(s) <= target { "within" } else { "over" };
        println!("  target: {what} × 1.05 + 50 ms = {target:.1} ms: {verdict}");
    }
}
