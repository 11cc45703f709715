//! `serve`: the HTTP server's flags, the optional iperf3 server, then [`Server`].
use anyhow::{Context, Result};
use argh::FromArgs;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::exit;
use crate::http::{Limits, Net, Server, WORKERS, net};
use crate::state::State;

/// `serve`: bind, write the address file, answer requests until killed.
pub fn cmd_serve(state: &State, c: &ServeCmd) -> Result<i32> {
    // Started before the workers; its guard kills it when this process ends.
    let _iperf = if c.iperf { Some(spawn_iperf()?) } else { None };
    let mut limits = Limits::from_env()?;
    if let Some(q) = &c.upload_quota {
        limits.run_quota =
            crate::units::parse_size(q).map_err(|e| anyhow::anyhow!("--upload-quota: {e}"))?;
    }
    limits.claim_check =
        crate::neigh::ClaimCheck::from_flag(&c.claim_check, c.neigh_table.clone())?;
    limits.claim_check.probe();
    limits.public_read = c.public_read;
    let net = net_options(c)?;
    let server = Server::start_net(state, &c.listen, WORKERS, limits, net)?;
    log::info!(
        "serving {} on http://{}",
        state.root.display(),
        server.addr()
    );
    log::info!(
        "at most {} connections; read timeout {:?}, idle timeout {:?}; listen backlog {}",
        net.max_connections,
        net.read_timeout,
        net.idle_timeout,
        net::somaxconn().map_or("as the kernel allows".into(), |n| format!(
            "{n} (net.core.somaxconn)"
        )),
    );
    if c.power_concurrency == 0 {
        anyhow::bail!("--power-concurrency must be at least 1");
    }
    // The lights-out loop: power queue, boot watchdog, lost agents, power off.
    crate::powerq::spawn(
        state.clone(),
        state.public_key()?,
        crate::powerq::Options {
            concurrency: c.power_concurrency,
        },
    );
    if let Some(f) = &c.addr_file {
        // A bare file name has an empty parent; write_atomic wants a real folder.
        let f = std::path::Path::new(".").join(f);
        crate::fsutil::write_atomic(&f, format!("{}\n", server.addr()).as_bytes(), 0o644)
            .context("writing the address file")?;
    }
    // Delivers the notification outbox (what a crash left queued included).
    crate::notify::sender::spawn(state)?;
    let lost_after = Duration::from_secs(match &c.lost_after {
        Some(v) => match crate::units::parse_duration(v) {
            Ok(0) => anyhow::bail!("--lost-after must be longer than 0s"),
            Ok(s) => s,
            Err(e) => anyhow::bail!("--lost-after: {e}"),
        },
        None => crate::power::DEFAULT_LOST_AFTER_S,
    });
    let ctx = server.ctx().clone();
    std::thread::Builder::new()
        .name("lost".into())
        .spawn(move || {
            loop {
                std::thread::sleep(crate::lost::EVERY);
                if let Err(e) = ctx.index.sync() {
                    log::warn!("lost-agent watch: {e:#}");
                    continue;
                }
                for id in ctx.index.live() {
                    crate::lost::check(&ctx.state, ctx.ingest.key(), &id, lost_after);
                }
            }
        })
        .context("starting the lost-agent watch")?;
    if let Some(every) = &c.gc_every {
        let s =
            crate::units::parse_duration(every).map_err(|e| anyhow::anyhow!("--gc-every: {e}"))?;
        if s == 0 {
            anyhow::bail!("--gc-every must be longer than 0s");
        }
        let state = state.clone();
        std::thread::Builder::new()
            .name("gc".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(s));
                    match crate::gc::collect(&state, &crate::gc::Policy::default(), false) {
                        Ok(r) => log::info!(
                            "gc: {}",
                            super::gc::summary(&r, false).lines().last().unwrap_or("")
                        ),
                        Err(e) => log::warn!("gc: {e:#}"),
                    }
                }
            })
            .context("starting the gc thread")?;
    }
    server.join();
    Ok(exit::OK)
}

/// Raises the open-file limit, then sizes the connection cap to it (or checks the
/// one asked for fits) and reads the timeouts.
fn net_options(c: &ServeCmd) -> Result<Net> {
    let soft = match net::raise_fd_limit() {
        Ok((soft, hard)) => {
            log::info!("open-file limit: {soft} (hard limit {hard})");
            soft
        }
        Err(e) => {
            log::warn!("{e:#}");
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(s, _)| s)
        }
    };
    let fits = net::max_connections_for(soft);
    let max_connections = match c.max_connections {
        Some(0) => anyhow::bail!("--max-connections must be at least 1"),
        Some(n) => {
            if n > fits {
                log::warn!(
                    "--max-connections {n} may run out of file descriptors under an \
                     open-file limit of {soft} (about {fits} fit)"
                );
            }
            n
        }
        None => fits,
    };
    let secs = |v: Option<u64>, flag: &str, default: Duration| match v {
        Some(0) => Err(anyhow::anyhow!("{flag} must be at least 1 second")),
        Some(n) => Ok(Duration::from_secs(n)),
        None => Ok(default),
    };
    Ok(Net {
        max_connections,
        read_timeout: secs(c.read_timeout, "--read-timeout", net::DEFAULT_READ_TIMEOUT)?,
        idle_timeout: secs(c.idle_timeout, "--idle-timeout", net::DEFAULT_IDLE_TIMEOUT)?,
    })
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

/// Run the HTTP server.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
pub struct ServeCmd {
    /// address to listen on (default 127.0.0.1:7373; port 0 picks one)
    #[argh(option, default = "kiln_protocol::DEFAULT_LISTEN.to_string()")]
    pub listen: String,
    /// also run an iperf3 server for network stages (on iperf3's default port)
    #[argh(switch)]
    pub iperf: bool,
    /// write the bound address to this file once listening (for scripts and tests)
    #[argh(option)]
    pub addr_file: Option<PathBuf>,
    /// most bytes all artifact uploads of one run may take (default 4G, or
    /// KILN_RUN_ARTIFACT_QUOTA)
    #[argh(option)]
    pub upload_quota: Option<String>,
    /// check a claim's source address against the neighbour table: on (default) or
    /// off. A claim whose address maps to a MAC the ticket does not name is refused
    #[argh(option, default = "String::from(\"on\")")]
    pub claim_check: String,
    /// the IPv4 neighbour table read by the claim check (default /proc/net/arp;
    /// another file in its format, for tests)
    #[argh(option)]
    pub neigh_table: Option<PathBuf>,
    /// most connections open at once; more are answered 503 and closed (default
    /// 4096, less if the open-file limit is lower)
    #[argh(option)]
    pub max_connections: Option<usize>,
    /// seconds one read of a request's header or body may wait, and a header may take
    /// in all (default 30)
    #[argh(option)]
    pub read_timeout: Option<u64>,
    /// seconds an idle keep-alive connection stays open (default 60)
    #[argh(option)]
    pub idle_timeout: Option<u64>,
    /// a claimed run without power control whose agent sends nothing this long ends
    /// `error: agent lost` (default 10m; lights-out runs use their own lost_after)
    #[argh(option)]
    pub lost_after: Option<String>,
    /// pages and the JSON API readable without a login (acting still needs one)
    #[argh(switch)]
    pub public_read: bool,
    /// run `gc` (its default ages) this often while serving, e.g. 1d (default: never)
    #[argh(option)]
    pub gc_every: Option<String>,
    /// lights-out: most runs powering or booting at once; the rest wait in the power
    /// queue (default 4)
    #[argh(option, default = "crate::powerq::DEFAULT_CONCURRENCY")]
    pub power_concurrency: usize,
}
