//! The reporter: bounded queue, on-disk spool, batching, resend with backoff, acks; or an offline bundle.
//!
//! `emit` numbers a frame, appends it to the spool and, while there is room, to a
//! bounded in-memory queue (heapless); it never touches the network. Online, a
//! sender thread posts sealed batches (every ~250 ms, early at 64 KiB, an empty one
//! at least every 2 s as the heartbeat), drops acked frames, resends from the spool
//! after errors or a 422, and obeys the ack's command at once. Offline, the spool
//! becomes the bundle at the end.
use kiln_protocol::{BATCH_MAX_BYTES, Event, Frame, PublicKey, RunId, SecretKey, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::spool::Spool;
use crate::stages::ctx::Sink;
use crate::transfer;

mod cap;
mod control;
mod sender;

pub use cap::{FRAME_CAP, TRUNCATED, cap_event};

pub use control::Control;

/// Frames kept in memory for sending; beyond it they are read back from the spool.
pub const QUEUE_CAP: usize = 1024;

/// Where reports go.
#[derive(Debug, Clone)]
pub enum Mode {
    /// POST to a coordinator.
    Online {
        /// The coordinator.
        client: Client,
        /// The trusted key that signed the ticket: acks must be signed by it.
        coordinator: PublicKey,
    },
    /// Into a bundle at the end; CAS objects from a local folder.
    Offline {
        /// Folder of CAS objects named by sha256.
        cas_dir: Option<PathBuf>,
    },
}

struct Inner {
    spool: Spool,
    queue: heapless::Deque<Frame, QUEUE_CAP>,
    /// A frame went to the spool only: the queue takes no more until it empties.
    spilled: bool,
    acked: u64,
    /// Next seq the sender puts in a batch.
    next_send: u64,
    /// Record bytes emitted since the sender last built a batch.
    unsent_bytes: usize,
    closing: bool,
    /// The coordinator refused our batches for good (one-line reason).
    refused: Option<String>,
    /// The sender gave up on its own: acks kept failing their checks (a protocol
    /// error) or the spool became unreadable (one-line reason).
    broken: Option<String>,
    io_error: Option<String>,
    /// Seq of this start's Claim frame (0 before it is emitted).
    claim_seq: u64,
    /// The highest seq this agent can have sent: the spool's when it opened (an
    /// earlier start may have sent all of it), then every batch's last.
    sent: u64,
}

impl Inner {
    /// Why the sender stopped for good, if it did.
    fn stopped(&self) -> Option<&String> {
        self.refused.as_ref().or(self.broken.as_ref())
    }
}

/// The run's [`Sink`]: numbers, spools, queues and (online) sends frames.
pub struct Reporter {
    run: RunId,
    key: SecretKey,
    work: PathBuf,
    mode: Mode,
    control: Arc<Control>,
    inner: Mutex<Inner>,
    wake: Condvar,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Reporter {
    /// Opens the spool in `work`; returns the reporter and the frames a previous
    /// start of this run already spooled (empty for a fresh run).
    pub fn open(
        run: RunId,
        key: SecretKey,
        work: &Path,
        mode: Mode,
        control: Arc<Control>,
    ) -> io::Result<(Arc<Reporter>, Vec<Frame>)> {
        let (spool, old) = Spool::open(work)?;
        let acked = spool.load_acked();
        let sent = spool.last_seq();
        let r = Reporter {
            run,
            key,
            work: work.to_path_buf(),
            mode,
            control,
            inner: Mutex::new(Inner {
                spool,
                queue: heapless::Deque::new(),
                // Old unacked frames are read back from the spool.
                spilled: false,
                acked,
                next_send: acked + 1,
                unsent_bytes: 0,
                closing: false,
                refused: None,
                broken: None,
                io_error: None,
                claim_seq: 0,
                sent,
            }),
            wake: Condvar::new(),
        };
        Ok((Arc::new(r), old))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("reporter lock poisoned")
    }

    /// Emits an event (cut to [`FRAME_CAP`] if larger) and returns its seq; on a
    /// spool failure the frame is lost and the seq is handed out again.
    pub fn emit_seq(&self, event: Event) -> u64 {
        let event = cap_event(event);
        let mut g = self.lock();
        let frame = Frame {
            seq: g.spool.last_seq() + 1,
            at_ms: match &self.mode {
                Mode::Online { client, .. } => client.now_ms(),
                Mode::Offline { .. } => now_ms(),
            },
            event,
        };
        let seq = frame.seq;
        let is_claim = matches!(frame.event, Event::Claim { .. });
        let size = match g.spool.append(&frame) {
            Ok(n) => n,
            Err(e) => {
                // Without a spool the frame cannot be numbered durably; keep running,
                // report the infrastructure failure at the end.
                if g.io_error.is_none() {
                    log::error!("spool write failed: {e}");
                    g.io_error = Some(format!("spool write failed: {e}"));
                }
                return seq;
            }
        };
        if is_claim {
            g.claim_seq = seq;
        }
        let contiguous = g.queue.back().is_none_or(|b| b.seq + 1 == seq);
        if g.queue.is_empty() {
            g.spilled = false;
        }
        if !g.spilled && contiguous && !g.queue.is_full() {
            let _ = g.queue.push_back(frame);
        } else {
            g.spilled = true;
        }
        let was_idle = g.unsent_bytes == 0;
        g.unsent_bytes += size;
        if was_idle || g.unsent_bytes >= BATCH_MAX_BYTES {
            self.wake.notify_all();
        }
        seq
    }

    /// The highest seq spooled.
    pub fn last_seq(&self) -> u64 {
        self.lock().spool.last_seq()
    }

    /// The highest seq the coordinator acked.
    pub fn acked(&self) -> u64 {
        self.lock().acked
    }

    /// The claim key.
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// A spool failure, a refusal by the coordinator or a protocol error, if one
    /// happened.
    pub fn failure(&self) -> Option<String> {
        let g = self.lock();
        g.stopped().cloned().or_else(|| g.io_error.clone())
    }

    /// The coordinator's refusal of our batches, if it refused them.
    pub fn refused(&self) -> Option<String> {
        self.lock().refused.clone()
    }

    /// Why the sender stopped for good (a refusal or a protocol error), if it did.
    pub fn stopped(&self) -> Option<String> {
        self.lock().stopped().cloned()
    }

    /// Waits until every frame up to `seq` is acked; `Err` with a reason on a
    /// refusal or after `limit`.
    pub fn wait_acked(&self, seq: u64, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut g = self.lock();
        loop {
            if g.acked >= seq {
                return Ok(());
            }
            if let Some(r) = g.stopped() {
                return Err(r.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "coordinator unreachable: frames up to {seq} not acked after {}s",
                    limit.as_secs()
                ));
            }
            g = self
                .wake
                .wait_timeout(g, deadline - now)
                .expect("reporter lock poisoned")
                .0;
        }
    }

    /// Starts the sender thread (online only).
    pub fn start_sender(self: &Arc<Self>) -> Option<std::thread::JoinHandle<()>> {
        let Mode::Online {
            client,
            coordinator,
        } = &self.mode
        else {
            return None;
        };
        let me = self.clone();
        let (client, coordinator) = (client.clone(), *coordinator);
        Some(
            std::thread::Builder::new()
                .name("kiln-sender".into())
                .spawn(move || me.send_loop(&client, coordinator))
                .expect("spawning the sender thread"),
        )
    }

    /// Stops the sender after its current batch.
    pub fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_all();
    }

    /// Flushes the spool to disk.
    pub fn sync(&self) -> io::Result<()> {
        self.lock().spool.sync()
    }

    /// About a batch of frames from seq `from` on, from the spool (empty past the end).
    pub fn frames_from(&self, from: u64) -> io::Result<Vec<Frame>> {
        self.lock().spool.read_from(from, BATCH_MAX_BYTES)
    }

    /// The work folder.
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// Frames from `from` on, about `BATCH_MAX_BYTES` worth: from the queue where it
    /// holds them, else from the spool.
    fn take_batch(g: &mut Inner, from: u64) -> io::Result<Vec<Frame>> {
        if let (Some(f), Some(b)) = (g.queue.front(), g.queue.back())
            && f.seq <= from
            && from <= b.seq
        {
            let mut out = Vec::new();
            let mut bytes = 0;
            for fr in g.queue.iter().skip((from - f.seq) as usize) {
                let n = postcard::experimental::serialized_size(fr).unwrap_or(0) + 2;
                if !out.is_empty() && bytes + n > BATCH_MAX_BYTES {
                    break;
                }
                bytes += n;
                out.push(fr.clone());
            }
            return Ok(out);
        }
        g.spool.read_from(from, BATCH_MAX_BYTES)
    }
}

impl Sink for Reporter {
    fn emit(&self, event: Event) {
        self.emit_seq(event);
    }

    fn store_artifact(&self, file: std::fs::File) -> io::Result<(Sha256, u64)> {
        match &self.mode {
            Mode::Online { client, .. } => {
                // The coordinator takes uploads for claimed runs only.
                self.wait_acked(1, crate::end::ACK_LIMIT)
                    .map_err(io::Error::other)?;
                transfer::upload_artifact(client, &self.run, &self.key, file)
            }
            Mode::Offline { .. } => transfer::keep_blob(&self.work, file),
        }
    }

    fn fetch_cas(&self, sha: &Sha256) -> io::Result<PathBuf> {
        match &self.mode {
            Mode::Online { client, .. } => transfer::download_cas(client, &self.work, sha),
            Mode::Offline { cas_dir } => transfer::local_cas(cas_dir.as_deref(), sha),
        }
    }
}
