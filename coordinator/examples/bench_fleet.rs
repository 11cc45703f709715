//! Fleet benchmark: one coordinator (this program re-run as a child process, so its
//! memory and threads are its own) on 127.0.0.1, and N agents (threads with ureq,
//! each its own keep-alive connection) that all connect at once, claim their own run,
//! then every 2 s send a heartbeat (an empty batch) and a batch of 32 log frames.
//! Phase 1 runs D seconds like that; phase 2 another D seconds with 200 slow clients
//! trickling request bodies (batches for pending runs, uploads for a finished one)
//! at the same time. A prober sends `GET /boot.ipxe` on a fresh connection every
//! 100 ms throughout. Prints figures; asserts nothing.
//!
//! `cargo run --release -p kiln-coordinator --example bench_fleet -- [AGENTS]
//! [SECONDS] [SLOW]` (defaults 1000 agents, 60 s a phase, 200 slow clients).
//! `KILN_BENCH_DIR` picks the folder for the state (default: the system temp dir).
use kiln_coordinator::http::{Limits, Net, Server, WORKERS};
use kiln_coordinator::state::State;
use kiln_protocol::{Ack, Batch, Event, Frame, Outcome, RunId, SecretKey, Stream};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
use common::random;

/// How often an agent reports.
const PERIOD: Duration = Duration::from_secs(2);
/// Log frames in each agent's batch.
const FRAMES: usize = 32;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .map(|a| a.parse().expect("arguments are numbers"))
        .unwrap_or(default)
}

/// What every agent, slow client and the prober add to.
#[derive(Default)]
struct Tally {
    /// Transport errors (connect refused, reset, timeout), per phase.
    conn_errors: [AtomicU64; 2],
    /// Non-200 answers to batches, per phase.
    refused: [AtomicU64; 2],
    /// Frames acked, per phase.
    frames: [AtomicU64; 2],
    /// Ack latencies, per phase.
    acks: [Mutex<Vec<Duration>>; 2],
    /// `GET /boot.ipxe` latencies, per phase; failures count as conn_errors.
    boot: [Mutex<Vec<Duration>>; 2],
    /// Requests slow clients started.
    slow_requests: AtomicU64,
}

/// The phase an instant falls in (0 before `switch`, else 1).
fn phase(switch: Instant) -> usize {
    usize::from(Instant::now() >= switch)
}

/// One agent: claim, then a heartbeat and a batch of log frames every [`PERIOD`]
/// until `end`. A failed request is retried (a resend is harmless).
fn agent(url: String, run: RunId, tally: Arc<Tally>, go: Arc<Barrier>, t: (Instant, Instant)) {
    let (switch, end) = t;
    let key = SecretKey::from_seed(random());
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let endpoint = format!("{url}/v1/runs/{run}/events");
    let mut seq = 0u64;
    let mut next = |event: Event| {
        seq += 1;
        Frame {
            seq,
            at_ms: seq,
            event,
        }
    };
    let claim = vec![next(Event::Claim {
        agent_key: key.public(),
        agent_version: "bench".into(),
        boot_id: "b".into(),
    })];
    let send = |frames: Vec<Frame>| {
        let n = frames.len() as u64;
        let body = Batch { run, frames }.seal(&key);
        loop {
            let t0 = Instant::now();
            let p = phase(switch);
            match agent.post(&endpoint).send_bytes(&body) {
                Ok(resp) => {
                    let mut bytes = Vec::new();
                    if std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).is_ok()
                        // A sealed ack: the body then 64 signature bytes (checking the
                        // signature here would spend the coordinator's cores on this
                        // side of the benchmark).
                        && bytes.len() > 64
                        && postcard::from_bytes::<Ack>(&bytes[..bytes.len() - 64]).is_ok()
                    {
                        tally.acks[p].lock().unwrap().push(t0.elapsed());
                        tally.frames[p].fetch_add(n, Ordering::Relaxed);
                        return;
                    }
                    tally.conn_errors[p].fetch_add(1, Ordering::Relaxed);
                }
                Err(ureq::Error::Status(_, _)) => {
                    tally.refused[p].fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    tally.conn_errors[p].fetch_add(1, Ordering::Relaxed);
                }
            }
            if Instant::now() >= end {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    go.wait();
    send(claim);
    // Spread the agents over the period.
    std::thread::sleep(PERIOD.mul_f64(f64::from(random::<1>()[0]) / 256.0));
    while Instant::now() < end {
        let t0 = Instant::now();
        send(Vec::new());
        let frames = (0..FRAMES)
            .map(|i| {
                next(Event::Log {
                    stage: 0,
                    stream: Stream::Stdout,
                    text: format!("line {i}: the quick brown fox jumps over the lazy dog 0123"),
                })
            })
            .collect();
        send(frames);
        if let Some(rest) = PERIOD.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// A slow client: sends a request header announcing a body, then a byte a second,
/// until the server gives up on it; then again, until `end`.
fn slow_client(addr: String, head: String, len: usize, tally: Arc<Tally>, end: Instant) {
    while Instant::now() < end {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        tally.slow_requests.fetch_add(1, Ordering::Relaxed);
        if write!(s, "{head}Host: x\r\nContent-Length: {len}\r\n\r\n").is_err() {
            continue;
        }
        for _ in 0..len {
            if Instant::now() >= end || s.write_all(b"x").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// `GET /boot.ipxe` on a fresh connection every 100 ms until `end`.
fn prober(addr: String, tally: Arc<Tally>, switch: Instant, end: Instant) {
    while Instant::now() < end {
        let t0 = Instant::now();
        let p = phase(switch);
        let ok = (|| -> std::io::Result<bool> {
            let mut s = TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            write!(
                s,
                "GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok(line.starts_with("HTTP/1.1 200"))
        })();
        match ok {
            Ok(true) => tally.boot[p].lock().unwrap().push(t0.elapsed()),
            _ => {
                tally.conn_errors[p].fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// `VmRSS`, `VmHWM` (kB) and `Threads` of `pid`.
fn proc_status(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS"), get("VmHWM"), get("Threads"))
}

/// The child: a coordinator on `state`, its address written to `addr_file`.
fn serve(state: &Path, addr_file: &Path) {
    let (soft, _) = kiln_coordinator::http::net::raise_fd_limit().expect("open-file limit");
    let state = State::open(state).expect("state");
    let server = Server::start_net(
        &state,
        "127.0.0.1:0",
        WORKERS,
        Limits::from_env().expect("limits"),
        Net::default(),
    )
    .expect("server");
    eprintln!(
        "coordinator: open-file limit {soft}, cap {} connections",
        Net::default().max_connections
    );
    std::fs::write(addr_file, server.addr().to_string()).expect("address file");
    server.join();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve(Path::new(&args[2]), Path::new(&args[3]));
        return;
    }
    let (agents, secs, slow) = (arg(1, 1000), arg(2, 60) as u64, arg(3, 200));
    // This side holds a socket per agent, slow client and probe too.
    kiln_coordinator::http::net::raise_fd_limit().expect("open-file limit");
    let base = std::env::var_os("KILN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let (state, _) = State::init(&dir.path().join("state")).expect("state");
    let key = state.signing_key().expect("key");
    let runs: Vec<RunId> = (0..agents)
        .map(|_| common::ticket(&state, &key, "load"))
        .collect();
    let pending: Vec<RunId> = (0..8)
        .map(|_| common::ticket(&state, &key, "load"))
        .collect();
    let finished = common::ticket(&state, &key, "load");

    let addr_file = dir.path().join("addr");
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("--serve")
        .arg(&state.root)
        .arg(&addr_file)
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

    // The finished run: claimed and ended, so its uploads are refused.
    {
        let k = SecretKey::from_seed(random());
        let frames = vec![
            Frame {
                seq: 1,
                at_ms: 1,
                event: Event::Claim {
                    agent_key: k.public(),
                    agent_version: "bench".into(),
                    boot_id: "b".into(),
                },
            },
            Frame {
                seq: 2,
                at_ms: 2,
                event: Event::RunFinished {
                    outcome: Outcome::Passed,
                },
            },
        ];
        let body = Batch {
            run: finished,
            frames,
        }
        .seal(&k);
        ureq::post(&format!("{url}/v1/runs/{finished}/events"))
            .send_bytes(&body)
            .expect("finishing a run");
    }

    let tally = Arc::new(Tally::default());
    let go = Arc::new(Barrier::new(agents + 1));
    let start = Instant::now() + Duration::from_millis(200);
    let switch = start + Duration::from_secs(secs);
    let end = switch + Duration::from_secs(secs);
    let threads: Vec<_> = runs
        .iter()
        .map(|run| {
            let (url, run, tally, go) = (url.clone(), *run, tally.clone(), go.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || agent(url, run, tally, go, (switch, end)))
                .expect("agent thread")
        })
        .collect();
    println!(
        "bench_fleet: {agents} agents (a heartbeat and {FRAMES} log frames every {PERIOD:?}), \
         {secs} s without and {secs} s with {slow} slow clients; {WORKERS} workers; state in {}",
        base.display()
    );
    go.wait();

    let pid = child.id();
    let peak_threads = Arc::new(AtomicU64::new(0));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (peak, watching) = (peak_threads.clone(), watching.clone());
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                let (_, _, th) = proc_status(pid);
                peak.fetch_max(th, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let probe = {
        let (addr, tally) = (addr.clone(), tally.clone());
        std::thread::spawn(move || prober(addr, tally, switch, end))
    };

    let report = |p: usize, what: &str, wall: f64| {
        let (rss, hwm, th) = proc_status(pid);
        let mut acks = tally.acks[p].lock().unwrap().clone();
        acks.sort();
        let mut boot = tally.boot[p].lock().unwrap().clone();
        boot.sort();
        let frames = tally.frames[p].load(Ordering::Relaxed);
        println!("{what}:");
        println!(
            "  connection errors {}  refused batches {}",
            tally.conn_errors[p].load(Ordering::Relaxed),
            tally.refused[p].load(Ordering::Relaxed)
        );
        println!(
            "  {} batches acked, {:.0} frames/s, {:.0} batches/s",
            acks.len(),
            frames as f64 / wall,
            acks.len() as f64 / wall
        );
        println!(
            "  ack ms: p50 {:.1}  p99 {:.1}  max {:.1}",
            pct(&acks, 0.5),
            pct(&acks, 0.99),
            acks.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        );
        println!(
            "  GET /boot.ipxe ms ({} probes): p50 {:.1}  p99 {:.1}  max {:.1}",
            boot.len(),
            pct(&boot, 0.5),
            pct(&boot, 0.99),
            boot.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        );
        println!(
            "  coordinator: RSS {:.1} MiB (peak {:.1} MiB), {th} threads (peak {})",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            peak_threads.load(Ordering::Relaxed)
        );
    };

    std::thread::sleep(switch.saturating_duration_since(Instant::now()));
    report(0, "phase 1", secs as f64);
    peak_threads.store(0, Ordering::Relaxed);

    let slow_threads: Vec<_> = (0..slow)
        .map(|i| {
            let (head, len) = if i % 2 == 0 {
                let run = pending[i % pending.len()];
                (format!("POST /v1/runs/{run}/events HTTP/1.1\r\n"), 4096)
            } else {
                let sha = kiln_protocol::Sha256::of(&[i as u8]);
                (
                    format!("PUT /v1/runs/{finished}/artifacts/{sha} HTTP/1.1\r\n"),
                    1 << 20,
                )
            };
            let (addr, tally) = (addr.clone(), tally.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || slow_client(addr, head, len, tally, end))
                .expect("slow client thread")
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let _ = probe.join();
    report(
        1,
        &format!("phase 2 (with {slow} slow clients)"),
        secs as f64,
    );
    println!(
        "  slow clients started {} requests",
        tally.slow_requests.load(Ordering::Relaxed)
    );
    watching.store(false, Ordering::Relaxed);
    let _ = watcher.join();
    let _ = child.kill();
    let _ = child.wait();
    for t in slow_threads {
        let _ = t.join();
    }
}
