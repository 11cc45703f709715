//! Index benchmark: a lab of H hosts, H pending tickets and R finished runs written
//! straight into a state folder; a coordinator (this program re-run as a child, so its
//! memory is its own) serving it; and, side by side with nginx serving a static file
//! of the same bytes on the same machine, the request rate and p50/p99 latency of
//! `GET /ipxe/{mac}` (a host with an image and a pending ticket: the netboot case)
//! and `GET /v1/hosts/{mac}/ticket`; the time of `GET /` and
//! `GET /v1/runs?limit=100`; the coordinator's start-up time (first start, when every
//! summary.json is written, and a restart) and its memory. Prints figures; asserts
//! nothing.
//!
//! `cargo run --release -p kiln-coordinator --example bench_index -- [HOSTS] [RUNS]
//! [SECONDS] [CLIENTS]` (defaults 10000 hosts, 100000 finished runs, 5 s a
//! measurement, 4 client connections). `KILN_BENCH_DIR` picks the folder for the
//! state (default: the system temp dir). Needs `nginx` on PATH or in /usr/sbin.
use kiln_coordinator::state::State;
use kiln_protocol::{
    Event, Frame, HostBinding, HostSpec, Mac, Outcome, Plan, RunId, SecretKey, SignedTicket, Stage,
    StageKind, Ticket, VERSION, encode_record,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
use common::{now_s, random};

/// Log lines of the one big live run in the lab.
const BIG_RUN: usize = 200_000;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .map(|a| a.parse().expect("arguments are numbers"))
        .unwrap_or(default)
}

fn mac(i: usize) -> Mac {
    let b = (i as u32).to_be_bytes();
    format!("02:4b:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
        .parse()
        .expect("mac")
}

fn ticket(key: &SecretKey, run: RunId, host: usize, issued_at: u64) -> SignedTicket {
    let t = Ticket {
        version: VERSION,
        run,
        issued_at,
        not_after: now_s() + 30 * 86400,
        host: HostBinding {
            name: format!("h{host:05}"),
            macs: vec![mac(host)],
            serial: None,
            spec: HostSpec::default(),
            agent_key: None,
        },
        coordinator: None,
        plan: Plan {
            name: "burnin".into(),
            stages: vec![Stage::new(
                "cpu",
                StageKind::Exec {
                    command: vec!["true".into()],
                },
            )],
            fail_fast: true,
            timeout_s: 0,
            hold: Default::default(),
        },
    };
    SignedTicket::sign(&t, key)
}

/// Writes the lab: hosts.toml, an image, H pending tickets, R finished runs.
fn build_lab(root: &Path, hosts: usize, runs: usize) -> State {
    let (state, _) = State::init(root).expect("init");
    let key = state.signing_key().expect("key");
    let t0 = Instant::now();
    let k = root.join("vmlinuz.in");
    let i = root.join("initrd.in");
    std::fs::write(&k, b"kernel").expect("kernel");
    std::fs::write(&i, b"initrd").expect("initrd");
    kiln_coordinator::images::add(&state, "burnin", &k, &i, "").expect("image add");
    let mut text = String::with_capacity(hosts * 80);
    for h in 0..hosts {
        text.push_str(&format!(
            "[[host]]\nname = \"h{h:05}\"\nmacs = [\"{}\"]\nimage = \"burnin\"\n",
            mac(h)
        ));
    }
    std::fs::write(state.hosts_path(), text).expect("hosts.toml");
    let now = now_s();
    for h in 0..hosts {
        let run = RunId(random());
        let dir = state.run_dir(&run);
        std::fs::create_dir_all(&dir).expect("run folder");
        std::fs::write(dir.join("ticket.kiln"), ticket(&key, run, h, now).to_file())
            .expect("ticket");
    }
    // Finished runs: a claim, a stage, a result.
    let agent = SecretKey::from_seed([7; 32]);
    for n in 0..runs {
        let run = RunId(random());
        let dir = state.run_dir(&run);
        std::fs::create_dir_all(&dir).expect("run folder");
        let issued = now - 86400 * 30 + n as u64 * 20;
        std::fs::write(
            dir.join("ticket.kiln"),
            ticket(&key, run, n % hosts.max(1), issued).to_file(),
        )
        .expect("ticket");
        let at = issued * 1000;
        let frames = [
            Event::Claim {
                agent_key: agent.public(),
                agent_version: "bench".into(),
                boot_id: "b".into(),
            },
            Event::StageStarted {
                stage: 0,
                attempt: 1,
            },
            Event::StageFinished {
                stage: 0,
                attempt: 1,
                outcome: if n % 10 == 0 {
                    Outcome::Failed
                } else {
                    Outcome::Passed
                },
                exit_code: Some(0),
                duration_ms: 1000,
                detail: String::new(),
            },
            Event::RunFinished {
                outcome: if n % 10 == 0 {
                    Outcome::Failed
                } else {
                    Outcome::Passed
                },
            },
        ];
        let mut log = Vec::new();
        for (s, event) in frames.into_iter().enumerate() {
            let f = Frame {
                seq: s as u64 + 1,
                at_ms: at + s as u64,
                event,
            };
            log.extend(encode_record(&postcard::to_allocvec(&f).expect("frame")));
        }
        std::fs::write(dir.join("events.log"), log).expect("events.log");
        std::fs::write(
            dir.join("claim.pub"),
            format!("{}\n", agent.public().to_line("bench")),
        )
        .expect("claim.pub");
    }
    // One live run with BIG_RUN log lines (the run page must load its tail fast).
    let run = RunId([0xb1; 16]);
    let dir = state.run_dir(&run);
    std::fs::create_dir_all(&dir).expect("run folder");
    std::fs::write(dir.join("ticket.kiln"), ticket(&key, run, 0, now).to_file()).expect("ticket");
    let mut log = Vec::with_capacity(BIG_RUN * 64);
    let mut push = |seq: u64, event: Event| {
        let f = Frame {
            seq,
            at_ms: now * 1000 + seq,
            event,
        };
        log.extend(encode_record(&postcard::to_allocvec(&f).expect("frame")));
    };
    push(
        1,
        Event::Claim {
            agent_key: agent.public(),
            agent_version: "bench".into(),
            boot_id: "b".into(),
        },
    );
    push(
        2,
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    );
    for i in 0..BIG_RUN as u64 {
        push(
            3 + i,
            Event::Log {
                stage: 0,
                stream: kiln_protocol::Stream::Stdout,
                text: format!("burn-in line {i}: all cores at 100%, 71 C"),
            },
        );
    }
    std::fs::write(dir.join("events.log"), log).expect("events.log");
    std::fs::write(
        dir.join("claim.pub"),
        format!("{}\n", agent.public().to_line("bench")),
    )
    .expect("claim.pub");
    eprintln!(
        "lab: {hosts} hosts, {hosts} pending tickets, {runs} finished runs written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    state
}

/// The coordinator as a child process; returns it, its URL and the start-up time
/// (spawn → the address file written, which happens once the index is built and the
/// port is bound).
#[allow(clippy::zombie_processes)] // the caller reaps it (`Reap`)
fn start(state: &Path) -> (Child, String, Duration) {
    let addr_file = state.join("bench.addr");
    let _ = std::fs::remove_file(&addr_file);
    let t0 = Instant::now();
    let child = Command::new(std::env::current_exe().expect("exe"))
        .env("KILN_BENCH_CHILD", state)
        .env("KILN_BENCH_ADDR", &addr_file)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the coordinator");
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file)
            && a.ends_with('\n')
        {
            return (child, format!("http://{}", a.trim()), t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kills the coordinator when the benchmark ends, however it ends.
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child: serve `state` until killed.
fn child(state: &Path, addr_file: &Path) {
    let state = State::open(state).expect("state");
    let limits = kiln_coordinator::http::Limits {
        public_read: true,
        ..kiln_coordinator::http::Limits::from_env().expect("limits")
    };
    let server = kiln_coordinator::http::Server::start_with(&state, "127.0.0.1:0", 16, limits)
        .expect("serve");
    std::fs::write(addr_file, format!("{}\n", server.addr())).expect("addr file");
    server.join();
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A keep-alive HTTP/1.1 connection that reads Content-Length bodies.
struct Conn {
    r: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Conn {
            r: BufReader::new(s),
            host: addr.to_string(),
        }
    }

    /// One GET: status and body.
    fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        let rq = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.r.get_mut().write_all(rq.as_bytes()).expect("send");
        let mut line = String::new();
        self.r.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (mut len, mut chunked) = (None, false);
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        if !chunked {
            let mut body = vec![0; len.expect("a Content-Length or chunked answer")];
            self.r.read_exact(&mut body).expect("body");
            return (status, body);
        }
        let mut body = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("chunk size");
            let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            let at = body.len();
            body.resize(at + n, 0);
            self.r.read_exact(&mut body[at..]).expect("chunk");
            line.clear();
            self.r.read_line(&mut line).expect("chunk end");
            if n == 0 {
                return (status, body);
            }
        }
    }
}

/// Figures of one load measurement.
struct Load {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

/// `clients` connections, each sending `path(i)` GETs back to back for `secs`,
/// after an unmeasured warm-up pass over every path once (kiln checks a pending
/// ticket's signature the first time it is served; nginx fills its caches).
fn load(
    addr: &str,
    clients: usize,
    secs: u64,
    paths: usize,
    path: &(dyn Fn(usize) -> String + Sync),
) -> Load {
    let mut warm = Conn::new(addr);
    for i in 0..paths {
        warm.get(&path(i));
    }
    drop(warm);
    let until = Instant::now() + Duration::from_secs(secs);
    let results: Vec<(Vec<Duration>, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    let mut conn = Conn::new(addr);
                    let (mut lat, mut errors) = (Vec::new(), 0);
                    let mut i = c * 7919;
                    while Instant::now() < until {
                        let p = path(i);
                        i += 1;
                        let t = Instant::now();
                        let (status, _) = conn.get(&p);
                        lat.push(t.elapsed());
                        if status != 200 {
                            errors += 1;
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("client")).collect()
    });
    let mut all: Vec<Duration> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let errors = results.iter().map(|r| r.1).sum();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Load {
        rps: all.len() as f64 / secs as f64,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// nginx serving `files` (name → bytes) from `dir` on a free loopback port.
fn start_nginx(dir: &Path, files: &[(&str, &[u8])]) -> Option<(Child, String)> {
    let bin = nginx()?;
    let www = dir.join("www");
    std::fs::create_dir_all(&www).ok()?;
    for (name, bytes) in files {
        std::fs::write(www.join(name), bytes).ok()?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes auto; pid {d}/nginx.pid;\n\
             error_log {d}/error.log; events {{ worker_connections 1024; }}\n\
             http {{ access_log off; default_type text/plain; keepalive_requests 1000000;\n\
             server {{ listen 127.0.0.1:{port}; root {www}; }} }}\n",
            d = dir.display(),
            www = www.display()
        ),
    )
    .ok()?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..500 {
        if TcpStream::connect(&addr).is_ok() {
            return Some((child, addr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn timed(conn: &mut Conn, path: &str, n: usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = conn.get(path);
        assert_eq!(status, 200, "{path}");
        best = best.min(t.elapsed());
        size = body.len();
    }
    (best, size)
}

fn main() {
    if let Some(state) = std::env::var_os("KILN_BENCH_CHILD") {
        let addr = std::env::var_os("KILN_BENCH_ADDR").expect("KILN_BENCH_ADDR");
        child(Path::new(&state), Path::new(&addr));
        return;
    }
    let (hosts, runs, secs, clients) =
        (arg(1, 10_000), arg(2, 100_000), arg(3, 5) as u64, arg(4, 4));
    let base = std::env::var_os("KILN_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::Builder::new()
        .prefix("kiln-bench-index")
        .tempdir_in(base)
        .expect("temp dir");
    let root = dir.path().join("state");
    build_lab(&root, hosts, runs);
    if std::env::var_os("KILN_BENCH_LAB_ONLY").is_some() {
        // Keep the lab for a look by hand (`serve` it) and stop.
        println!("{}", dir.keep().join("state").display());
        return;
    }

    let (first, _, first_start) = start(&root);
    drop(Reap(first));
    let (coord, url, restart) = start(&root);
    let pid = coord.id();
    let coord = Reap(coord);
    let addr = url.trim_start_matches("http://").to_string();
    let rss_start = rss_kib(pid, "VmRSS:");

    let mut conn = Conn::new(&addr);
    let probe = mac(hosts / 2).to_string().replace(':', "-");
    let (status, script) = conn.get(&format!("/ipxe/{probe}"));
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&script).contains("kiln.run="),
        "the probe host boots its pending run"
    );
    let (status, tkt) = conn.get(&format!("/v1/hosts/{}/ticket", mac(hosts / 2)));
    assert_eq!(status, 200, "ticket lookup");
    let big = format!("/runs/{}", RunId([0xb1; 16]));
    let (big_cold, big_len) = timed(&mut conn, &big, 1);
    let (big_warm, _) = timed(&mut conn, &big, 5);
    let (big_log, big_log_len) = timed(&mut conn, &format!("{big}/log?stage=0&before=100000"), 3);
    let (index_t, index_len) = timed(&mut conn, "/", 5);
    let (runs_t, runs_len) = timed(&mut conn, "/v1/runs?limit=100", 5);

    let ipxe = |i: usize| format!("/ipxe/{}", mac(i % hosts).to_string().replace(':', "-"));
    let host_ticket = |i: usize| format!("/v1/hosts/{}/ticket", mac(i % hosts));
    let k_ipxe = load(&addr, clients, secs, hosts, &ipxe);
    let k_ticket = load(&addr, clients, secs, hosts, &host_ticket);
    let rss_after = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");
    drop(coord);

    let ng = start_nginx(dir.path(), &[("ipxe", &script), ("ticket", &tkt)]);
    let (n_ipxe, n_ticket) = match &ng {
        Some((_, a)) => (
            Some(load(a, clients, secs, 1, &|_| "/ipxe".into())),
            Some(load(a, clients, secs, 1, &|_| "/ticket".into())),
        ),
        None => (None, None),
    };
    if let Some((c, _)) = ng {
        drop(Reap(c));
    }

    println!(
        "lab: {hosts} hosts with an image, {hosts} pending tickets, {runs} finished runs; \
         {clients} keep-alive connections, {secs} s a measurement, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "coordinator start-up: first {:.0} ms (every summary.json written), restart {:.0} ms",
        first_start.as_secs_f64() * 1000.0,
        restart.as_secs_f64() * 1000.0
    );
    println!(
        "coordinator memory: {} MiB after start, {} MiB after the load, peak {} MiB",
        rss_start / 1024,
        rss_after / 1024,
        hwm / 1024
    );
    println!(
        "run page of a {BIG_RUN}-line run: first load {} ({} bytes), then {} (best of 5); \
         a page back through its log: {} ({} bytes)",
        ms(big_cold),
        big_len,
        ms(big_warm),
        ms(big_log),
        big_log_len
    );
    println!(
        "GET / (the fleet page: 100 hosts, 100 runs): {} ({} bytes); GET /v1/runs?limit=100: {} ({} bytes) (best of 5)",
        ms(index_t),
        index_len,
        ms(runs_t),
        runs_len
    );
    println!(
        "{:<28} {:>12} {:>10} {:>10} {:>7}   {:>12} {:>10} {:>10}   {:>6}",
        "route", "kiln req/s", "p50", "p99", "errors", "nginx req/s", "p50", "p99", "ratio"
    );
    for (name, k, n, bytes) in [
        ("GET /ipxe/{mac}", &k_ipxe, &n_ipxe, script.len()),
        (
            "GET /v1/hosts/{mac}/ticket",
            &k_ticket,
            &n_ticket,
            tkt.len(),
        ),
    ] {
        let (nr, n50, n99, ratio) = match n {
            Some(n) => (
                format!("{:.0}", n.rps),
                ms(n.p50),
                ms(n.p99),
                format!("{:.2}", k.rps / n.rps),
            ),
            None => ("no nginx".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<28} {:>12.0} {:>10} {:>10} {:>7}   {:>12} {:>10} {:>10}   {:>6}   ({bytes} bytes)",
            name,
            k.rps,
            ms(k.p50),
            ms(k.p99),
            k.errors,
            nr,
            n50,
            n99,
            ratio
        );
    }
}
