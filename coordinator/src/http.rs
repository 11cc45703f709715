//! The HTTP server (tiny_http, a pool of threads that grows while all are busy) and
//! its routes.
//!
//! Lookups go through the in-memory index (`crate::index`), which follows the change
//! journal, so tickets issued while the server runs are served at once and no
//! request's work grows with the number of hosts and runs. A refusal is a 4xx with a one-line text reason;
//! a panicking handler answers 500 and the worker carries on. Routes and status codes
//! are listed in `coordinator/HTTP.md`; connection limits in `net.rs`.
use anyhow::{Context, Result};
use kiln_protocol::{RunId, Sha256};
use std::io::Read;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Request, Response, ResponseBox, StatusCode};

use crate::ingest::{Ingester, Refusal};
use crate::state::State;

mod actions;
mod api;
mod artifacts;
pub mod login;
pub mod net;
mod objects;
mod pages;
mod stream;

pub use net::Net;

/// Kept for callers that name a worker count: requests are now answered on the
/// thread of the connection that sent them (vendored tiny_http patch 9), so there is
/// no shared pool to size; the connection cap bounds the threads.
pub const WORKERS: usize = 16;
pub use crate::limits::{DEFAULT_ARTIFACT_CAP, DEFAULT_RUN_QUOTA, Limits};
#[doc(hidden)]
pub use objects::{Range, parse_range};

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
    /// The coordinator's signing key (signs acks), read once at start.
    pub signer: kiln_protocol::SecretKey,
    /// The in-memory index of the state folder, following its change journal.
    pub index: crate::index::Index,
    /// Login sessions and failed-login counts.
    pub sessions: crate::auth::Sessions,
    /// Pages and the JSON API readable without a login (`serve --public-read`).
    pub public_read: bool,
}

/// A refusal on its way to the client.
pub type Reply = std::result::Result<ResponseBox, Refusal>;

/// A running server: each connection is served on its own thread, which reads a
/// request, answers it and reads the next; [`Server::stop`] stops accepting.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    ctx: Arc<Ctx>,
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
        Self::start_net(state, listen, workers, limits, Net::default())
    }

    /// [`Server::start_with`] with explicit connection caps and timeouts.
    pub fn start_net(
        state: &State,
        listen: &str,
        workers: usize,
        limits: Limits,
        net: Net,
    ) -> Result<Server> {
        let Limits {
            artifact_cap,
            run_quota,
            claim_check,
            public_read,
        } = limits;
        let ingest = Ingester::new(state)?.with_claim_check(claim_check);
        let signer = state.signing_key()?;
        let (index, built) = crate::index::Index::build(state, true)?;
        log::info!(
            "index: {} runs ({} pending) read in {} ms{}",
            built.runs,
            built.pending,
            built.ms,
            match built.summarized {
                0 => String::new(),
                n => format!("; {n} summary.json written"),
            }
        );
        let idle = std::time::Duration::from_secs(60);
        let swept =
            state.cas().sweep_temp(idle) + artifacts::sweep_at_start(state.cas().dir(), idle);
        if swept > 0 {
            log::info!("removed {swept} leftover upload temp file(s) from cas/");
        }
        let listener = net::listen_on(listen)?;
        let addr = listener
            .local_addr()
            .context("listening on a non-IP address")?;
        let ctx = Ctx {
            state: state.clone(),
            ingest,
            artifact_cap,
            run_quota,
            uploads: Default::default(),
            addr,
            signer,
            index,
            sessions: Default::default(),
            public_read,
        };
        let _ = workers;
        let ctx = Arc::new(ctx);
        let shared = ctx.clone();
        let handler: tiny_http::Handler = Arc::new(move |rq| handle(&shared, rq));
        let http = Arc::new(
            tiny_http::Server::from_listener_with_handler(listener, None, net.limits(), handler)
                .map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?,
        );
        Ok(Server { http, addr, ctx })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until [`Server::stop`] (or the process ends).
    pub fn join(self) {
        let _ = self.http.recv();
    }

    /// What the handlers share (the index, the ingester).
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.http.num_connections()
    }

    /// Stops accepting connections; connections open now finish the request they are
    /// answering and then close when their clients do.
    pub fn stop(self) {
        self.http.unblock();
    }
}

fn handle(ctx: &Ctx, mut rq: Request) {
    let method = rq.method().clone();
    let url = rq.url().to_string();
    let path = url.split(['?', '#']).next().unwrap_or("").to_string();
    let query = query_of(&url).to_string();
    let reply = std::panic::catch_unwind(AssertUnwindSafe(|| {
        route(ctx, &mut rq, &method, &path, &query)
    }))
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

fn route(ctx: &Ctx, rq: &mut Request, method: &Method, path: &str, query: &str) -> Reply {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = |m: &Method| matches!(m, Method::Get | Method::Head);
    match segs.as_slice() {
        [""] => only(get(method), "GET").and_then(|_| match login::page_reader(ctx, rq, "/") {
            Ok(c) => pages::index(ctx, query, c.as_ref()),
            Err(redirect) => Ok(redirect),
        }),
        ["login"] => match method {
            Method::Get | Method::Head => login::get(query),
            Method::Post => login::post(ctx, rq),
            _ => Err(Refusal::new(405, "method not allowed (use GET or POST)")),
        },
        ["logout"] => only(*method == Method::Post, "POST").and_then(|_| login::logout(ctx, rq)),
        ["kiln.js"] => only(get(method), "GET").map(|_| {
            text(
                200,
                include_str!("http/kiln.js"),
                "text/javascript; charset=utf-8",
            )
        }),
        ["boot.ipxe"] => only(get(method), "GET")
            .map(|_| text(200, crate::ipxe::boot_script(), "text/plain; charset=utf-8")),
        ["ipxe", mac] => only(get(method), "GET").map(|_| {
            let base = base_url(rq, ctx.addr);
            let mac = mac.replace("%3A", ":").replace("%3a", ":");
            let script = crate::ipxe::mac_script(&ctx.index, &mac, &base);
            text(200, script, "text/plain; charset=utf-8")
        }),
        ["cas", sha] => {
            only(get(method), "GET").and_then(|_| objects::get(ctx, rq, &parse_sha(sha)?))
        }
        ["runs", run] => only(get(method), "GET").and_then(|_| {
            let id = parse_run(run)?;
            match login::page_reader(ctx, rq, path) {
                Ok(c) => pages::run(ctx, &id, c.as_ref()),
                Err(redirect) => Ok(redirect),
            }
        }),
        ["runs", run, "log"] => only(get(method), "GET").and_then(|_| {
            let id = parse_run(run)?;
            match login::page_reader(ctx, rq, path) {
                Ok(c) => pages::log_page(ctx, &id, query, c.as_ref()),
                Err(redirect) => Ok(redirect),
            }
        }),
        ["v1", "runs"] => only(get(method), "GET").and_then(|_| {
            login::api_reader(ctx, rq)?;
            api::list_runs(ctx, query)
        }),
        ["v1", "runs", run] => only(get(method), "GET").and_then(|_| {
            let id = parse_run(run)?;
            login::api_reader(ctx, rq)?;
            api::show_run(ctx, &id)
        }),
        ["v1", "runs", run, "stream"] => only(get(method), "GET").and_then(|_| {
            let id = parse_run(run)?;
            login::api_reader(ctx, rq)?;
            stream::stream(ctx, rq, &id, query)
        }),
        ["v1", "runs", run, what @ ("release" | "retry" | "approve")] => {
            only(*method == Method::Post, "POST")
                .and_then(|_| actions::order(ctx, rq, &parse_run(run)?, what))
        }
        ["v1", "runs", run, "abort"] => only(*method == Method::Post, "POST")
            .and_then(|_| actions::abort(ctx, rq, &parse_run(run)?)),
        ["v1", "runs", run, "ticket"] => {
            only(get(method), "GET").and_then(|_| api::run_ticket(ctx, &parse_run(run)?))
        }
        ["v1", "runs", run, "events"] => only(*method == Method::Post, "POST")
            .and_then(|_| api::post_events(ctx, rq, &parse_run(run)?)),
        ["v1", "runs", run, "secrets"] => only(*method == Method::Post, "POST")
            .and_then(|_| api::post_secrets(ctx, rq, &parse_run(run)?)),
        ["v1", "runs", run, "artifacts", sha] => match method {
            Method::Put => artifacts::put(ctx, rq, &parse_run(run)?, &parse_sha(sha)?),
            Method::Head => artifacts::offset(ctx, rq, &parse_run(run)?, &parse_sha(sha)?),
            _ => Err(Refusal::new(405, "method not allowed (use PUT or HEAD)")),
        },
        ["v1", "hosts", host, "tickets"] => {
            only(*method == Method::Post, "POST").and_then(|_| actions::issue(ctx, rq, host))
        }
        ["v1", "hosts", host, "power"] => {
            only(*method == Method::Post, "POST").and_then(|_| actions::power(ctx, rq, host))
        }
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
    match route(ctx, rq, &method, &path, query_of(&url)) {
        Ok(r) => r.status_code().0,
        Err(r) => r.status,
    }
}

/// The query string of a request target (after `?`, before any `#`).
fn query_of(url: &str) -> &str {
    let url = url.split('#').next().unwrap_or("");
    url.split_once('?').map_or("", |(_, q)| q)
}

/// The value of `name` in a query string (`a=1&b=2`), undecoded: kiln's parameters
/// are numbers and run ids, which need no decoding.
pub(crate) fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
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
    // A body in memory goes with its Content-Length, never chunked.
    Response::from_data(body.into())
        .with_chunked_threshold(usize::MAX)
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

/// Reads a request body of at most `cap` bytes (413 beyond), under a deadline (408).
pub(crate) fn read_body(rq: &mut Request, cap: usize) -> std::result::Result<Vec<u8>, Refusal> {
    let too_big = || Refusal::new(413, format!("request body exceeds {cap} bytes"));
    if rq.body_length().is_some_and(|n| n > cap) {
        return Err(too_big());
    }
    let len = rq.body_length().unwrap_or(cap) as u64;
    let mut body = Vec::new();
    timed(rq.as_reader(), len)
        .take(cap as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                Refusal::new(408, format!("request body too slow: {e}"))
            } else {
                Refusal::new(400, format!("reading the request body: {e}"))
            }
        })?;
    if body.len() > cap {
        return Err(too_big());
    }
    Ok(body)
}

/// A body reader that fails once the body of `len` bytes has taken longer than
/// [`net::BODY_GRACE`] plus `len` at [`net::BODY_MIN_RATE`] (each read itself waits
/// at most the socket read timeout).
pub(crate) fn timed(inner: &mut dyn Read, len: u64) -> Timed<'_> {
    let allowed = net::BODY_GRACE + Duration::from_secs(len / net::BODY_MIN_RATE);
    Timed {
        inner,
        deadline: Instant::now() + allowed,
    }
}

/// See [`timed`].
pub(crate) struct Timed<'a> {
    inner: &'a mut dyn Read,
    deadline: Instant,
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body took too long",
            ));
        }
        self.inner.read(buf)
    }
}
