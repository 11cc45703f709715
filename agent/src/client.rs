//! HTTP to the coordinator (ureq): batches, artifacts, CAS objects, secrets, tickets;
//! and the jittered exponential backoff every retry uses.
use kiln_protocol::{
    Ack, PublicKey, RunId, SecretKey, Sha256, UPLOAD_AUTH_HEADER, UPLOAD_LENGTH_HEADER,
    UPLOAD_OFFSET_HEADER, UploadAuth,
};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Skew;

/// Largest ack, secrets reply or ticket read from the coordinator.
const MAX_REPLY: u64 = 4 << 20;

/// What became of a POSTed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// 200 with an ack that verifies: stored up to `ack.upto`.
    Acked(Ack),
    /// 200 with an ack that does not verify (signature, run, or an `upto` above
    /// the last seq sent): a protocol error, never a success (one-line reason).
    BadAck(String),
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

/// What became of an artifact upload request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// 200 or 201: the object is in the CAS.
    Stored,
    /// 413: over the artifact cap or the run's upload quota; it will not be stored
    /// (one-line reason).
    OverQuota(String),
    /// 416: the coordinator holds another part than the request assumed; ask again
    /// where to go on from.
    Resync,
    /// Any other 4xx: the coordinator will never take it (one-line reason).
    Refused(String),
    /// A connection error, a 503 (busy, or over the connection cap) or another 5xx, a
    /// 429: ask where to go on from and resume after a backoff.
    Retry(String),
}

/// How much of an upload the coordinator holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The object is in the CAS already.
    Stored,
    /// This many bytes of it are staged (0: none): send the rest.
    Have(u64),
}

fn put_fail(e: ureq::Error) -> Put {
    match e {
        ureq::Error::Status(413, r) => Put::OverQuota(reason(r)),
        ureq::Error::Status(416, _) => Put::Resync,
        e => match fail(e) {
            Fail::Refused(why) => Put::Refused(why),
            Fail::Transient(why) => Put::Retry(why),
        },
    }
}

/// How long requests may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting, for every request.
    pub connect: Duration,
    /// The whole of a small API call (batch, secrets), body included.
    pub api: Duration,
    /// CAS downloads and artifact uploads: the longest wait for the next bytes,
    /// read or written. No total bound: a big transfer over a slow link takes what it
    /// takes as long as bytes keep moving.
    pub transfer_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            api: Duration::from_secs(30),
            transfer_idle: Duration::from_secs(30),
        }
    }
}

/// A coordinator at a base URL.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    bulk: ureq::Agent,
    /// The coordinator's clock as its `Date` headers show it (shared by clones).
    skew: Arc<Skew>,
}

/// How a CAS download into a `.part` file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// The whole object was written from byte 0.
    Whole,
    /// The bytes already in the file were kept and the rest appended (206), or the
    /// server said there is nothing after them (416).
    Resumed,
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
        Self::with_timeouts(base, Timeouts::default())
    }

    /// A client with other timeouts (tests use short ones).
    pub fn with_timeouts(base: &str, t: Timeouts) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(t.connect)
                .timeout(t.api)
                .build(),
            bulk: ureq::AgentBuilder::new()
                .timeout_connect(t.connect)
                .timeout_read(t.transfer_idle)
                .timeout_write(t.transfer_idle)
                .build(),
            skew: Arc::default(),
        }
    }

    /// Unix milliseconds on the coordinator's clock as far as its `Date` headers
    /// showed it: what every time-stamped request (secrets, upload signatures) and
    /// frame carries, so a skewed host is not refused.
    pub fn now_ms(&self) -> u64 {
        self.skew.now_ms()
    }

    /// The offset of the local clock from the coordinator's, in milliseconds
    /// (positive: behind), 0 within [`crate::clock::SKEW_TOLERANCE_MS`].
    pub fn skew_ms(&self) -> i64 {
        self.skew.offset_ms()
    }

    /// Takes the `Date` of a reply just received into the clock offset.
    fn note_date(&self, r: &ureq::Response) {
        if let Some(d) = r.header("Date") {
            self.skew.note_date(d);
        }
    }

    /// POST `/v1/runs/{run}/events` with a sealed batch; the ack is checked by `check`.
    pub fn post_batch(&self, sealed: &[u8], check: &AckCheck) -> Posted {
        let run = check.run;
        let url = format!("{}/v1/runs/{run}/events", self.base);
        let sent = self
            .agent
            .post(&url)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(sealed);
        if let Ok(r) | Err(ureq::Error::Status(_, r)) = &sent {
            self.note_date(r);
        }
        match sent {
            Ok(r) => match read_limited(r) {
                Ok(body) => match check.open(&body) {
                    Ok(ack) => Posted::Acked(ack),
                    Err(why) => Posted::BadAck(why),
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

    /// A fresh `Kiln-Upload-Auth` for an object of `total` bytes.
    fn upload_auth(&self, run: &RunId, sha: &Sha256, total: u64, claim: &SecretKey) -> String {
        UploadAuth {
            run: *run,
            sha256: *sha,
            len: total,
            at_ms: self.now_ms(),
        }
        .header(claim)
    }

    /// HEAD `/v1/runs/{run}/artifacts/{sha}`: how much of an upload of `total` bytes
    /// the coordinator holds, signed by the claim key. A 413 (the run's quota) is
    /// [`Put::OverQuota`] in the `Err`.
    pub fn artifact_offset(
        &self,
        run: &RunId,
        sha: &Sha256,
        total: u64,
        claim: &SecretKey,
    ) -> Result<Offset, Put> {
        let url = format!("{}/v1/runs/{run}/artifacts/{sha}", self.base);
        let r = self
            .agent
            .head(&url)
            .set(UPLOAD_LENGTH_HEADER, &total.to_string())
            .set(
                UPLOAD_AUTH_HEADER,
                &self.upload_auth(run, sha, total, claim),
            )
            .call()
            .map_err(put_fail)?;
        if r.status() == 200 {
            return Ok(Offset::Stored);
        }
        r.header(UPLOAD_OFFSET_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Offset::Have)
            .ok_or_else(|| Put::Retry(format!("{} without {UPLOAD_OFFSET_HEADER}", r.status())))
    }

    /// PUT `/v1/runs/{run}/artifacts/{sha}` of an object of `total` bytes: `body`
    /// holds its bytes from `from` on, sent as they are read, with `Content-Length`
    /// (and `Content-Range: bytes from-(total-1)/total` when `from > 0`); signed by
    /// the claim key (a fresh `Kiln-Upload-Auth` per try).
    pub fn put_artifact(
        &self,
        run: &RunId,
        sha: &Sha256,
        total: u64,
        from: u64,
        body: impl Read,
        claim: &SecretKey,
    ) -> Put {
        let url = format!("{}/v1/runs/{run}/artifacts/{sha}", self.base);
        let mut rq = self
            .bulk
            .put(&url)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &(total - from).to_string())
            .set(
                UPLOAD_AUTH_HEADER,
                &self.upload_auth(run, sha, total, claim),
            );
        if from > 0 {
            rq = rq.set(
                "Content-Range",
                &format!("bytes {from}-{}/{total}", total - 1),
            );
        }
        match rq.send(body) {
            Ok(_) => Put::Stored,
            Err(e) => put_fail(e),
        }
    }

    /// GET `/cas/{sha}` into `part`, resuming after the bytes it already holds with
    /// `Range: bytes=N-`: a 206 appends, a 200 (no range support) starts the file
    /// over, a 416 means nothing follows them. Bytes received before a failure stay
    /// in the file for the next try.
    pub fn get_cas(&self, sha: &Sha256, part: &mut std::fs::File) -> Result<Fetched, Fail> {
        use std::io::{Seek, SeekFrom};
        let io = |e: io::Error| Fail::Transient(e.to_string());
        let url = format!("{}/cas/{sha}", self.base);
        let have = part.metadata().map_err(io)?.len();
        let mut rq = self.bulk.get(&url);
        if have > 0 {
            rq = rq.set("Range", &format!("bytes={have}-"));
        }
        let r = match rq.call() {
            Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(Fetched::Resumed),
            r => r.map_err(fail)?,
        };
        let how = if have > 0 && r.status() == 206 {
            let start = r
                .header("Content-Range")
                .and_then(|v| v.trim().strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if start != Some(have) {
                part.set_len(0).map_err(io)?;
                return Err(Fail::Transient(format!(
                    "asked for bytes {have}- and got Content-Range {:?}",
                    r.header("Content-Range")
                )));
            }
            part.seek(SeekFrom::End(0)).map_err(io)?;
            Fetched::Resumed
        } else {
            part.set_len(0).map_err(io)?;
            part.seek(SeekFrom::Start(0)).map_err(io)?;
            Fetched::Whole
        };
        io::copy(&mut r.into_reader(), part).map_err(io)?;
        Ok(how)
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

/// What an ack must be to count: signed by the coordinator key for this run and this
/// agent's claim key, and acking no frame the agent never sent.
#[derive(Debug, Clone, Copy)]
pub struct AckCheck {
    /// The run the batch is for.
    pub run: RunId,
    /// The trusted key that signed the ticket (the coordinator's).
    pub coordinator: PublicKey,
    /// This agent's claim key.
    pub claim: PublicKey,
    /// The highest seq this agent can have sent (what its spool held when it
    /// started, and every batch since).
    pub sent: u64,
}

impl AckCheck {
    /// Verifies and decodes an ack's bytes; `Err` is a one-line reason.
    pub fn open(&self, body: &[u8]) -> Result<Ack, String> {
        let ack = Ack::open(body, &self.coordinator, &self.claim)
            .map_err(|e| format!("ack refused: {e}"))?;
        if ack.run != self.run {
            return Err(format!("ack refused: it is for run {}", ack.run));
        }
        if ack.upto > self.sent {
            return Err(format!(
                "ack refused: it acks seq {} but only {} were sent",
                ack.upto, self.sent
            ));
        }
        Ok(ack)
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

/// Jittered exponential backoff for every retry of a connection error (refused,
/// reset, timed out), a 5xx or a 429: the step starts at `first` and doubles up to
/// `max`; each delay is drawn uniformly from the upper half of the current step, so a
/// fleet that lost its coordinator at the same moment does not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    first_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Default for Backoff {
    /// 250 ms doubling to 5 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Steps from `first` doubling to `max` (both at least 2 ms).
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let first_ms = (first.as_millis() as u64).max(2);
        let max_ms = (max.as_millis() as u64).max(first_ms);
        Backoff {
            first_ms,
            max_ms,
            next_ms: first_ms,
        }
    }

    /// The next delay (uniform between half and all of the current step), then
    /// doubles the step up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next_ms;
        self.next_ms = self.next_ms.saturating_mul(2).min(self.max_ms);
        let mut r = [0u8; 8];
        let _ = getrandom::getrandom(&mut r);
        let jitter = u64::from_le_bytes(r) % (step / 2 + 1);
        Duration::from_millis(step - step / 2 + jitter)
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.next_ms = self.first_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds_with_jitter() {
        // Every delay lies in the upper half of its step: 250, 500, 1000, 2000,
        // 4000, then 5000 for good.
        let steps = [250u64, 500, 1000, 2000, 4000, 5000, 5000, 5000];
        for _ in 0..200 {
            let mut b = Backoff::default();
            for step in steps {
                let d = b.next_delay().as_millis() as u64;
                assert!((step - step / 2..=step).contains(&d), "{d} for step {step}");
            }
            b.reset();
            assert!(b.next_delay().as_millis() <= 250);
        }
        // Jitter: agents that start together spread over the step instead of
        // retrying in lockstep.
        let firsts: std::collections::BTreeSet<u64> = (0..200)
            .map(|_| Backoff::default().next_delay().as_millis() as u64)
            .collect();
        assert!(firsts.len() > 50, "{} distinct first delays", firsts.len());
        let (lo, hi) = (firsts.first().unwrap(), firsts.last().unwrap());
        assert!(*lo < 150 && *hi > 225, "first delays span {lo}..{hi} ms");
        // Other bounds: 1 s doubling to 30 s.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let ds: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert!((500..=1000).contains(&ds[0]), "{ds:?}");
        assert!((15_000..=30_000).contains(&ds[7]), "{ds:?}");
    }
}
