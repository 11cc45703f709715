//! Ingest benchmark: a real server on 127.0.0.1:0, N concurrent agents (threads with
//! ureq), each claiming its own run and streaming signed batches of log frames that
//! the server fsyncs before acking. Prints frames/s and ack latency percentiles.
//!
//! `cargo run --release -p kiln-coordinator --example bench_ingest -- [AGENTS]
//! [BATCHES] [FRAMES]` (defaults 64 agents, 50 batches, 32 frames a batch).
//! `KILN_BENCH_DIR` picks the folder for the state (default: the system temp dir),
//! since fsync cost depends on the file system.
use kiln_coordinator::http::Server;
use kiln_coordinator::state::State;
use kiln_protocol::{Ack, Batch, Event, Frame, PublicKey, RunId, SecretKey, Stream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
use common::random;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .map(|a| a.parse().expect("arguments are numbers"))
        .unwrap_or(default)
}

/// One agent: claim, then `batches` batches of `frames` log lines; ack latencies.
fn agent(
    url: String,
    run: RunId,
    batches: usize,
    frames: usize,
    go: Arc<Barrier>,
    coordinator: PublicKey,
) -> Vec<Duration> {
    let key = SecretKey::from_seed(random());
    let agent = ureq::AgentBuilder::new().build();
    let endpoint = format!("{url}/v1/runs/{run}/events");
    let mut seq = 0u64;
    let mut frame = |event: Event| {
        seq += 1;
        Frame {
            seq,
            at_ms: seq,
            event,
        }
    };
    let claim = frame(Event::Claim {
        agent_key: key.public(),
        agent_version: "bench".into(),
        boot_id: "b".into(),
    });
    let mut pending = vec![vec![claim]];
    for _ in 0..batches {
        pending.push(
            (0..frames)
                .map(|i| {
                    frame(Event::Log {
                        stage: 0,
                        stream: Stream::Stdout,
                        text: format!(
                            "line {i}: the quick brown fox jumps over the lazy dog 0123456789"
                        ),
                    })
                })
                .collect(),
        );
    }
    let sealed: Vec<Vec<u8>> = pending
        .into_iter()
        .map(|frames| Batch { run, frames }.seal(&key))
        .collect();
    go.wait();
    let mut lat = Vec::with_capacity(sealed.len());
    for body in sealed {
        let t0 = Instant::now();
        let resp = agent
            .post(&endpoint)
            .send_bytes(&body)
            .expect("batch acked");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).expect("ack body");
        Ack::open(&bytes, &coordinator, &key.public()).expect("ack verifies");
        lat.push(t0.elapsed());
    }
    lat
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // The server's warnings and errors (KILN_LOG=debug for more).
    kiln_cmdline::logger::init("bench_ingest");
    let (agents, batches, frames) = (arg(1, 64), arg(2, 50), arg(3, 32));
    let base = std::env::var_os("KILN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let (state, _) = State::init(&dir.path().join("state")).expect("state");
    let key = state.signing_key().expect("key");
    let runs: Vec<RunId> = (0..agents)
        .map(|_| common::ticket(&state, &key, "load"))
        .collect();
    let server =
        Server::start(&state, "127.0.0.1:0", kiln_coordinator::http::WORKERS).expect("server");
    let url = format!("http://{}", server.addr());
    let go = Arc::new(Barrier::new(agents + 1));
    let threads: Vec<_> = runs
        .iter()
        .map(|run| {
            let (url, run, go, pk) = (url.clone(), *run, go.clone(), key.public());
            std::thread::spawn(move || agent(url, run, batches, frames, go, pk))
        })
        .collect();
    go.wait();
    let t0 = Instant::now();
    let mut lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("agent thread"))
        .collect();
    let wall = t0.elapsed();
    server.stop();
    lat.sort();
    let total_frames = agents * (batches * frames + 1);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "bench_ingest: {agents} agents x {batches} batches x {frames} frames, {} workers, state in {}",
        kiln_coordinator::http::WORKERS,
        base.display()
    );
    println!(
        "  {total_frames} frames in {} batches, {:.2} s: {:.0} frames/s, {:.0} batches/s (each fsynced)",
        lat.len(),
        wall.as_secs_f64(),
        total_frames as f64 / wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64()
    );
    println!(
        "  ack latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.90)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().expect("some batches"))
    );
}
