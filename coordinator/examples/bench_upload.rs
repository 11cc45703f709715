//! Upload benchmark: one artifact of SIZE bytes (default 2 GiB; a sparse file, read as
//! zeros) uploaded through the agent's own code path (`kiln_agent::transfer::
//! upload_artifact`: a streaming hash pass, then `PUT` from disk with Content-Length)
//! to a real coordinator (this program re-run as a child process) on 127.0.0.1.
//! Prints the upload's wall time and throughput, and the peak RSS (VmHWM) of this
//! process, which did the upload, and of the coordinator. Asserts only that the
//! object arrived.
//!
//! `cargo run --release -p kiln-coordinator --example bench_upload -- [SIZE_MIB]`.
//! `KILN_BENCH_DIR` picks the folder for the state and the file (default: the system
//! temp dir); everything is removed at the end.
use kiln_coordinator::http::{Limits, Net, Server, WORKERS};
use kiln_coordinator::state::State;
use kiln_protocol::{Batch, Event, Frame, SecretKey};
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
use common::random;

/// `VmHWM` (peak resident set) of a process, KiB.
fn peak_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The child: a coordinator on `state`, its address written to `addr_file`.
fn serve(state: &Path, addr_file: &Path, cap: u64) {
    let state = State::open(state).expect("state");
    let limits = Limits {
        artifact_cap: cap,
        run_quota: cap,
        ..Limits::from_env().expect("limits")
    };
    let server =
        Server::start_net(&state, "127.0.0.1:0", WORKERS, limits, Net::default()).expect("server");
    std::fs::write(addr_file, server.addr().to_string()).expect("address file");
    server.join();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        let cap = args[4].parse().expect("cap");
        serve(Path::new(&args[2]), Path::new(&args[3]), cap);
        return;
    }
    let mib: u64 = args
        .get(1)
        .map(|a| a.parse().expect("SIZE_MIB is a number"))
        .unwrap_or(2048);
    let size = mib << 20;
    let base = std::env::var_os("KILN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let (state, _) = State::init(&dir.path().join("state")).expect("state");
    let key = state.signing_key().expect("key");
    let run = common::ticket(&state, &key, "upload");
    let file = dir.path().join("artifact.bin");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(size))
        .expect("the sparse file");

    let addr_file = dir.path().join("addr");
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("--serve")
        .arg(&state.root)
        .arg(&addr_file)
        .arg((size + (1 << 20)).to_string())
        .env("KILN_LOG", "warn")
        .spawn()
        .expect("starting the coordinator");
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file)
            && !a.is_empty()
        {
            break a;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let url = format!("http://{addr}");

    // Claim the run, as the agent does before its first upload.
    let claim = SecretKey::from_seed(random());
    let body = Batch {
        run,
        frames: vec![Frame {
            seq: 1,
            at_ms: 1,
            event: Event::Claim {
                agent_key: claim.public(),
                agent_version: "bench".into(),
                boot_id: "b".into(),
            },
        }],
    }
    .seal(&claim);
    ureq::post(&format!("{url}/v1/runs/{run}/events"))
        .send_bytes(&body)
        .expect("claiming the run");

    let before = peak_rss_kib("self");
    let client = kiln_agent::client::Client::new(&url);
    let t0 = Instant::now();
    let (sha, len) = kiln_agent::transfer::upload_artifact(
        &client,
        &run,
        &claim,
        std::fs::File::open(&file).expect("the file"),
    )
    .expect("the upload");
    let wall = t0.elapsed().as_secs_f64();
    let agent_peak = peak_rss_kib("self");
    let coordinator_peak = peak_rss_kib(&child.id().to_string());
    let stored = std::fs::metadata(state.cas().path(&sha)).expect("the stored object");
    assert_eq!(stored.len(), len, "the stored object's size");
    println!(
        "bench_upload: {len} bytes ({mib} MiB, sparse) from {}",
        base.display()
    );
    println!(
        "  upload (hash pass + PUT + the coordinator's hash check): {wall:.1} s, {:.0} MiB/s",
        mib as f64 / wall
    );
    println!(
        "  uploading process peak RSS (VmHWM): {agent_peak} KiB ({before} KiB before the upload)"
    );
    println!("  coordinator peak RSS (VmHWM): {coordinator_peak} KiB");
    let _ = child.kill();
    let _ = child.wait();
}
