//! What keeps the server answering whatever the network sends: its own listening
//! socket with a fleet-sized backlog, the open-file limit, a cap on connections, and
//! per-connection caps and timeouts (enforced by the vendored tiny_http,
//! `vendor/tiny_http/KILN-PATCHES.md`).
use anyhow::{Context, Result};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Longest request line, bytes (longer: 414).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Most bytes all header lines of one request may take (more: 431).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default socket read timeout, and the time a request's header has to arrive.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time an idle keep-alive connection stays open.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default connection cap (lowered to fit the open-file limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept for everything but connections (state files, CAS uploads,
/// the log, iperf3).
const FD_RESERVE: u64 = 256;
/// File descriptors one connection may cost: its socket, tiny_http's duplicate of
/// it, and a file its handler has open.
const FDS_PER_CONNECTION: u64 = 3;
/// A body must arrive at this rate on average (after [`BODY_GRACE`]); a slower one is
/// cut off (408), so no client holds a worker for longer than its body deserves.
pub const BODY_MIN_RATE: u64 = 64 * 1024;
/// Time every body gets on top of [`BODY_MIN_RATE`].
pub const BODY_GRACE: Duration = Duration::from_secs(30);

/// Connection caps and timeouts of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    /// Most connections open at once; beyond it new ones get 503 and are closed.
    pub max_connections: usize,
    /// Socket read timeout (each read of a header or body), the time a request's
    /// line and headers have to arrive, and the write timeout (a response write that
    /// makes no progress for this long fails).
    pub read_timeout: Duration,
    /// An idle keep-alive connection is closed after this long without a byte.
    pub idle_timeout: Duration,
}

impl Default for Net {
    /// The defaults, the connection cap fitted to the current open-file limit.
    fn default() -> Self {
        let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s);
        Net {
            max_connections: max_connections_for(soft),
            read_timeout: DEFAULT_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl Net {
    /// tiny_http's per-connection limits for these settings.
    pub(crate) fn limits(&self) -> tiny_http::ConnectionLimits {
        tiny_http::ConnectionLimits {
            max_request_line: MAX_REQUEST_LINE,
            max_header_bytes: MAX_HEADER_BYTES,
            max_connections: Some(self.max_connections.max(1)),
            read_timeout: Some(self.read_timeout),
            header_timeout: Some(self.read_timeout),
            idle_timeout: Some(self.idle_timeout),
            write_timeout: Some(self.read_timeout),
        }
    }
}

/// The default connection cap under an open-file limit of `soft`: 4096, or what the
/// limit leaves after a reserve for state files (at least 16).
pub fn max_connections_for(soft: u64) -> usize {
    let fit = soft.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION;
    (fit.max(16) as usize).min(DEFAULT_MAX_CONNECTIONS)
}

/// Raises the soft open-file limit to the hard one; returns (soft, hard) as they are
/// afterwards.
pub fn raise_fd_limit() -> Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
        return Ok((hard, hard));
    }
    Ok((soft, hard))
}

/// `net.core.somaxconn`: the largest listen backlog the kernel grants.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A listening TCP socket on `addr` (the first of its addresses that binds) with the
/// largest backlog the kernel allows (`net.core.somaxconn`, as Go does), not the
/// standard library's 128: a fleet that connects at once must not overflow it.
pub fn listen_on(addr: &str) -> Result<TcpListener> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .collect();
    let mut last = None;
    for a in addrs {
        match listen_one(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no address"))
        .context(format!("listening on {addr}")))
}

fn listen_one(addr: std::net::SocketAddr) -> Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::MAXALLOWABLE)?;
    Ok(TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        assert_eq!(max_connections_for(1024), 256);
        assert_eq!(max_connections_for(65536), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(max_connections_for(100), 16);
    }

    #[test]
    fn the_own_listener_accepts() {
        let l = listen_on("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        l.accept().unwrap();
    }
}
