//! The HTTP server (tiny_http, a small pool of threads) and its routes.
//!
//! Every handler reads the state folder per request, so tickets issued while the
//! server runs are served at once. A refusal is a 4xx with a one-line text reason;
//! a panicking handler answers 500 and the worker carries on. Routes and status codes
//! are listed in `coordinator/HTTP.md`.
use anyhow::{Context, Result};
use kiln_protocol::{RunId, Sha256};
use std::io::Read;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use tiny_http::{Header, Method, Request, Response, ResponseBox, StatusCode};

use crate::cli::ServeCmd;
use crate::ingest::{Ingester, Refusal};
use crate::state::State;

mod api;
mod artifacts;
mod cas;
mod pages;

/// Worker threads answering requests.
pub const WORKERS: usize = 16;
/// Default cap on one artifact upload (`KILN_ARTIFACT_CAP` overrides, e.g. `64M`).
pub const DEFAULT_ARTIFACT_CAP: u64 = 1 << 30;
pub use artifacts::DEFAULT_RUN_QUOTA;
#[doc(hidden)]
pub use cas::{Range, parse_range};

/// Upload limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single upload, bytes.
    pub artifact_cap: u64,
    /// Most bytes all uploads of one run may take.
    pub run_quota: u64,
}

impl Limits {
    /// `KILN_ARTIFACT_CAP` and `KILN_RUN_ARTIFACT_QUOTA`, else the defaults.
    pub fn from_env() -> Result<Limits> {
        Ok(Limits {
            artifact_cap: size_env("KILN_ARTIFACT_CAP", DEFAULT_ARTIFACT_CAP)?,
            run_quota: size_env("KILN_RUN_ARTIFACT_QUOTA", DEFAULT_RUN_QUOTA)?,
        })
    }
}

/// What every handler needs.
#[derive(Debug)]
pub struct Ctx {
    /// The state folder.
    pub state: State,
    /// The batch writer (holds the per-run locks).
    pub ingest: Ingester,
    /// Largest artifact upload, bytes.
    pub artifact_cap: u64,
    /// Most bytes all uploads of one run may take.
    pub run_quota: u64,
    /// Upload bytes in flight per run (reserved against the quota).
    pub uploads: artifacts::InFlight,
    /// The bound address (for URLs when a request names no Host).
    pub addr: SocketAddr,
}

/// A refusal on its way to the client.
pub type Reply = std::result::Result<ResponseBox, Refusal>;

/// A running server; its workers stop on [`Server::stop`].
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `listen` and starts `workers` threads on `state`, with upload limits
    /// from the environment.
    pub fn start(state: &State, listen: &str, workers: usize) -> Result<Server> {
        Self::start_with(state, listen, workers, Limits::from_env()?)
    }

    /// [`Server::start`] with explicit upload limits.
    pub fn start_with(
        state: &State,
        listen: &str,
        workers: usize,
        limits: Limits,
    ) -> Result<Server> {
        let Limits {
            artifact_cap,
            run_quota,
        } = limits;
        let ingest = Ingester::new(state)?;
        let swept = state.cas().sweep_temp(std::time::Duration::from_secs(60));
        if swept > 0 {
            log::info!("removed {swept} leftover upload temp file(s) from cas/");
        }
        let http = tiny_http::Server::http(listen)
            .map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?;
        let addr = http
            .server_addr()
            .to_ip()
            .context("listening on a non-IP address")?;
        let ctx = Arc::new(Ctx {
            state: state.clone(),
            ingest,
            artifact_cap,
            run_quota,
            uploads: Default::default(),
            addr,
        });
        let http = Arc::new(http);
        let workers = (0..workers.max(1))
            .map(|n| {
                let (http, ctx) = (http.clone(), ctx.clone());
                std::thread::Builder::new()
                    .name(format!("http-{n}"))
                    .spawn(move || {
                        while let Ok(rq) = http.recv() {
                            handle(&ctx, rq);
                        }
                    })
                    .context("starting a worker thread")
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Server {
            http,
            addr,
            workers,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the workers end (they end on [`Server::stop`] or process exit).
    pub fn join(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }

    /// Stops accepting requests and waits for the workers.
    pub fn stop(self) {
        self.http.unblock();
        for _ in 1..self.workers.len() {
            self.http.unblock();
        }
        self.join();
    }
}

/// A size from the environment variable `name` (`64M`, `4G`), else `default`.
fn size_env(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => crate::units::parse_size(&v).map_err(|e| anyhow::anyhow!("{name}: {e}")),
        Err(_) => Ok(default),
    }
}

/// `serve`: bind, write the address file, answer requests until killed.
pub fn cmd_serve(state: &State, c: &ServeCmd) -> Result<i32> {
    // Started before the workers; its guard kills it when this process ends.
    let _iperf = if c.iperf { Some(spawn_iperf()?) } else { None };
    let mut limits = Limits::from_env()?;
    if let Some(q) = &c.upload_quota {
        limits.run_quota =
            crate::units::parse_size(q).map_err(|e| anyhow::anyhow!("--upload-quota: {e}"))?;
    }
    let server = Server::start_with(state, &c.listen, WORKERS, limits)?;
    log::info!(
        "serving {} on http://{}",
        state.root.display(),
        server.addr()
    );
    if let Some(f) = &c.addr_file {
        // A bare file name has an empty parent; write_atomic wants a real folder.
        let f = std::path::Path::new(".").join(f);
        crate::fsutil::write_atomic(&f, format!("{}\n", server.addr()).as_bytes(), 0o644)
            .context("writing the address file")?;
    }
    server.join();
    Ok(0)
}

/// An `iperf3 -s` that dies with this process, however it ends: a shell watches our
/// end of a pipe and kills iperf3 once the pipe closes (even on SIGKILL).
struct Iperf {
    _child: Child,
    _pipe: ChildStdin,
}

fn spawn_iperf() -> Result<Iperf> {
    let mut child = Command::new("sh")
        .args([
            "-c",
            "command -v iperf3 >/dev/null || { echo 'iperf3 is not installed' >&2; exit 127; }
             iperf3 -s >/dev/null & p=$!; read -r _; kill -KILL $p",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting iperf3")?;
    let pipe = child.stdin.take().context("iperf3 watcher has no stdin")?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    if let Some(st) = child.try_wait()? {
        anyhow::bail!("iperf3 -s exited at once ({st})");
    }
    log::info!("iperf3 server running on its default port (5201)");
    Ok(Iperf {
        _child: child,
        _pipe: pipe,
    })
}

fn handle(ctx: &Ctx, mut rq: Request) {
    let method = rq.method().clone();
    let url = rq.url().to_string();
    let path = url.split(['?', '#']).next().unwrap_or("").to_string();
    let reply = std::panic::catch_unwind(AssertUnwindSafe(|| route(ctx, &mut rq, &method, &path)))
        .unwrap_or_else(|_| {
            log::error!("{method} {path}: handler panicked");
            Err(Refusal::new(500, "internal error"))
        });
    let resp = match reply {
        Ok(r) => r,
        Err(r) => {
            if r.status >= 500 {
                log::error!("{method} {path}: {} {}", r.status, r.reason);
            } else {
                log::debug!("{method} {path}: {} {}", r.status, r.reason);
            }
            refusal(&r)
        }
    };
    let _ = rq.respond(resp);
}

fn route(ctx: &Ctx, rq: &mut Request, method: &Method, path: &str) -> Reply {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = |m: &Method| matches!(m, Method::Get | Method::Head);
    match segs.as_slice() {
        [""] => only(get(method), "GET").and_then(|_| pages::index(ctx)),
        ["boot.ipxe"] => only(get(method), "GET")
            .map(|_| text(200, crate::ipxe::boot_script(), "text/plain; charset=utf-8")),
        ["ipxe", mac] => only(get(method), "GET").map(|_| {
            let base = base_url(rq, ctx.addr);
            let mac = mac.replace("%3A", ":").replace("%3a", ":");
            let script = crate::ipxe::mac_script(&ctx.state, &mac, &base);
            text(200, script, "text/plain; charset=utf-8")
        }),
        ["cas", sha] => only(get(method), "GET").and_then(|_| cas::get(ctx, rq, &parse_sha(sha)?)),
        ["runs", run] => only(get(method), "GET").and_then(|_| pages::run(ctx, &parse_run(run)?)),
        ["v1", "runs"] => only(get(method), "GET").and_then(|_| api::list_runs(ctx)),
        ["v1", "runs", run] => {
            only(get(method), "GET").and_then(|_| api::show_run(ctx, &parse_run(run)?))
        }
        ["v1", "runs", run, "ticket"] => {
            only(get(method), "GET").and_then(|_| api::run_ticket(ctx, &parse_run(run)?))
        }
        ["v1", "runs", run, "events"] => only(*method == Method::Post, "POST")
            .and_then(|_| api::post_events(ctx, rq, &parse_run(run)?)),
        ["v1", "runs", run, "secrets"] => only(*method == Method::Post, "POST")
            .and_then(|_| api::post_secrets(ctx, rq, &parse_run(run)?)),
        ["v1", "runs", run, "artifacts", sha] => only(*method == Method::Put, "PUT")
            .and_then(|_| artifacts::put(ctx, rq, &parse_run(run)?, &parse_sha(sha)?)),
        ["v1", "hosts", mac, "ticket"] => {
            only(get(method), "GET").and_then(|_| api::host_ticket(ctx, mac))
        }
        _ => Err(Refusal::new(404, format!("no route {path}"))),
    }
}

/// Routes one request as a worker would, without catching panics or writing the
/// answer anywhere, and returns its status code. For the in-process fuzz targets in
/// `fuzz/` (a panic there is a finding); not a stable API.
#[doc(hidden)]
pub fn route_for_fuzzing(ctx: &Ctx, rq: &mut Request) -> u16 {
    let method = rq.method().clone();
    let url = rq.url().to_string();
    let path = url.split(['?', '#']).next().unwrap_or("").to_string();
    match route(ctx, rq, &method, &path) {
        Ok(r) => r.status_code().0,
        Err(r) => r.status,
    }
}

fn only(ok: bool, allowed: &str) -> std::result::Result<(), Refusal> {
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            405,
            format!("method not allowed (use {allowed})"),
        ))
    }
}

/// `http://<Host header>`, as the client reached us.
fn base_url(rq: &Request, addr: SocketAddr) -> String {
    let host = header(rq, "Host").unwrap_or_default();
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if ok {
        format!("http://{host}")
    } else {
        format!("http://{addr}")
    }
}

/// A request header's value.
pub(crate) fn header(rq: &Request, name: &'static str) -> Option<String> {
    rq.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_string())
}

/// A strictly checked run id: exactly 32 hex digits.
fn parse_run(s: &str) -> std::result::Result<RunId, Refusal> {
    s.parse()
        .map_err(|_| Refusal::new(400, "invalid run id (want 32 hex digits)"))
}

/// A strictly checked sha256: exactly 64 hex digits.
fn parse_sha(s: &str) -> std::result::Result<Sha256, Refusal> {
    s.parse()
        .map_err(|_| Refusal::new(400, "invalid sha256 (want 64 hex digits)"))
}

/// A response with a body and content type.
pub(crate) fn text(status: u16, body: impl Into<Vec<u8>>, ctype: &str) -> ResponseBox {
    Response::from_data(body.into())
        .with_status_code(StatusCode(status))
        .with_header(hdr("Content-Type", ctype))
        .boxed()
}

/// A header from a name and value known to be ASCII.
pub(crate) fn hdr(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn refusal(r: &Refusal) -> ResponseBox {
    let line = r.reason.replace(['\n', '\r'], " ");
    let mut resp = text(r.status, format!("{line}\n"), "text/plain; charset=utf-8");
    if let Some(seq) = r.expected_seq {
        resp.add_header(hdr("Kiln-Expected-Seq", &seq.to_string()));
    }
    resp
}

/// Reads a request body of at most `cap` bytes (413 beyond).
pub(crate) fn read_body(rq: &mut Request, cap: usize) -> std::result::Result<Vec<u8>, Refusal> {
    let too_big = || Refusal::new(413, format!("request body exceeds {cap} bytes"));
    if rq.body_length().is_some_and(|n| n > cap) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    rq.as_reader()
        .take(cap as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Refusal::new(400, format!("reading the request body: {e}")))?;
    if body.len() > cap {
        return Err(too_big());
    }
    Ok(body)
}
