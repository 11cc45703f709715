//! HTTP to the coordinator (ureq): batches, artifacts, CAS objects, secrets, tickets;
//! and the jittered exponential backoff every retry uses.
use kiln_protocol::{Ack, RunId, Sha256};
use std::io::{self, Read};
use std::time::Duration;

/// Largest ack, secrets reply or ticket read from the coordinator.
const MAX_REPLY: u64 = 4 << 20;

/// What became of a POSTed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// 200: stored up to `ack.upto`.
    Acked(Ack),
    /// 422: the coordinator expects this seq next; resend from it.
    ResendFrom(u64),
    /// Any other 4xx: the coordinator will never take this batch (one-line reason).
    Refused(String),
    /// Connection error or 5xx: keep the frames and try again later.
    Retry(String),
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fail {
    /// A 4xx: asking again will not help (one-line reason).
    Refused(String),
    /// A connection error or 5xx: try again later.
    Transient(String),
}

fn fail(e: ureq::Error) -> Fail {
    match e {
        ureq::Error::Status(code, r) if code >= 500 || code == 429 => Fail::Transient(reason(r)),
        ureq::Error::Status(_, r) => Fail::Refused(reason(r)),
        e => Fail::Transient(e.to_string()),
    }
}

/// A coordinator at a base URL.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.base)
    }
}

fn read_limited(r: ureq::Response) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.into_reader().take(MAX_REPLY).read_to_end(&mut out)?;
    Ok(out)
}

fn reason(r: ureq::Response) -> String {
    let status = r.status();
    let text = r.into_string().unwrap_or_default();
    let line = text.lines().next().unwrap_or("").trim();
    format!("{status} {line}").trim().to_string()
}

impl Client {
    /// A client for `base` (`http://host:port`, trailing slash optional).
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(3))
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    /// POST `/v1/runs/{run}/events` with a sealed batch.
    pub fn post_batch(&self, run: &RunId, sealed: &[u8]) -> Posted {
        let url = format!("{}/v1/runs/{run}/events", self.base);
        match self
            .agent
            .post(&url)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(sealed)
        {
            Ok(r) => match read_limited(r) {
                Ok(body) => match postcard::from_bytes::<Ack>(&body) {
                    Ok(ack) => Posted::Acked(ack),
                    Err(e) => Posted::Retry(format!("undecodable ack: {e}")),
                },
                Err(e) => Posted::Retry(format!("reading ack: {e}")),
            },
            Err(ureq::Error::Status(422, r)) => {
                match r
                    .header("Kiln-Expected-Seq")
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(seq) => Posted::ResendFrom(seq),
                    None => Posted::Refused(reason(r)),
                }
            }
            Err(ureq::Error::Status(code, r)) if code >= 500 || code == 429 => {
                Posted::Retry(reason(r))
            }
            Err(ureq::Error::Status(_, r)) => Posted::Refused(reason(r)),
            Err(e) => Posted::Retry(e.to_string()),
        }
    }

    /// PUT `/v1/runs/{run}/artifacts/{sha}`.
    pub fn put_artifact(&self, run: &RunId, sha: &Sha256, bytes: &[u8]) -> Result<(), Fail> {
        let url = format!("{}/v1/runs/{run}/artifacts/{sha}", self.base);
        self.agent
            .put(&url)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes)
            .map(|_| ())
            .map_err(fail)
    }

    /// GET `/cas/{sha}` into `w`; returns the byte count.
    pub fn get_cas(&self, sha: &Sha256, w: &mut impl io::Write) -> Result<u64, Fail> {
        let url = format!("{}/cas/{sha}", self.base);
        let r = self.agent.get(&url).call().map_err(fail)?;
        io::copy(&mut r.into_reader(), w).map_err(|e| Fail::Transient(e.to_string()))
    }

    /// POST `/v1/runs/{run}/secrets` with a sealed request; the reply's name/value pairs.
    pub fn post_secrets(&self, run: &RunId, sealed: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Fail> {
        let url = format!("{}/v1/runs/{run}/secrets", self.base);
        let r = self
            .agent
            .post(&url)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(sealed)
            .map_err(fail)?;
        let body = read_limited(r).map_err(|e| Fail::Transient(e.to_string()))?;
        postcard::from_bytes(&body).map_err(|e| Fail::Refused(format!("undecodable reply: {e}")))
    }
}

/// GETs a ticket file from a URL (one attempt; the caller reports failure).
pub fn fetch_url(url: &str) -> Result<Vec<u8>, String> {
    let r = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .get(url)
        .call()
        .map_err(|e| match e {
            ureq::Error::Status(_, r) => format!("fetching ticket {url}: {}", reason(r)),
            e => format!("fetching ticket {url}: {e}"),
        })?;
    let mut out = Vec::new();
    r.into_reader()
        .take(kiln_protocol::MAX_TICKET_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("fetching ticket {url}: {e}"))?;
    Ok(out)
}

/// Jittered exponential backoff: 250 ms doubling to 5 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next_ms: 250 }
    }
}

impl Backoff {
    /// The next delay (between half and all of the current step), then doubles the step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(5_000);
        let mut r = [0u8; 2];
        let _ = getrandom::getrandom(&mut r);
        let jitter = u16::from_le_bytes(r) as u64 % (step / 2 + 1);
        Duration::from_millis(step / 2 + jitter)
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.next_ms = 250;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds_with_jitter() {
        let mut b = Backoff::default();
        let ds: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert!((125..=250).contains(&ds[0]), "{ds:?}");
        assert!((250..=500).contains(&ds[1]), "{ds:?}");
        assert!(ds[7] >= 2_500 && ds[7] <= 5_000, "{ds:?}");
        b.reset();
        assert!(b.next_delay().as_millis() <= 250);
    }
}
