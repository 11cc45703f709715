//! What every stage gets: its settings, a folder, secrets, a way to report ([`Sink`]),
//! and a stop signal ([`Stop`], [`StopSignal`]: timeout or abort) — the [`StageCtx`];
//! and what it returns ([`StageResult`]).
use kiln_protocol::{Event, HostBinding, Outcome, RunId, Sha256, Stage, Stream};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::{artifacts, lines};

/// Why a stage is being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The attempt ran past its timeout.
    Timeout,
    /// The coordinator (or the operator) aborted the run.
    Abort(String),
}

impl Stop {
    /// The outcome a stage stopped this way ends with.
    pub fn outcome(&self) -> Outcome {
        match self {
            Stop::Timeout => Outcome::TimedOut,
            Stop::Abort(_) => Outcome::Aborted,
        }
    }

    /// A detail line for the stage's result.
    pub fn detail(&self, timeout_s: u64) -> String {
        match self {
            Stop::Timeout => format!("timed out after {timeout_s}s"),
            Stop::Abort(r) => format!("aborted: {r}"),
        }
    }
}

/// How a stage attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct StageResult {
    /// The outcome.
    pub outcome: Outcome,
    /// The process exit code, where there was one.
    pub exit_code: Option<i32>,
    /// One line for people.
    pub detail: String,
}

impl StageResult {
    /// A result without an exit code.
    pub fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        StageResult {
            outcome,
            exit_code: None,
            detail: detail.into(),
        }
    }

    /// An infrastructure error (never the test's fault).
    pub fn error(detail: impl Into<String>) -> Self {
        Self::new(Outcome::Error, detail)
    }
}

/// Where a stage's events and files go: the reporter (online or offline), or a
/// test's memory sink.
pub trait Sink: Send + Sync {
    /// Queues an event; never blocks on the network.
    fn emit(&self, event: Event);
    /// Stores an open file's bytes (CAS upload or bundle blob); returns digest and
    /// size. The caller opened it without following links ([`artifacts`]). An error
    /// of kind [`io::ErrorKind::QuotaExceeded`] means the coordinator will not take it
    /// (the run's upload quota, the artifact cap): the caller leaves it out and goes on.
    /// Blocking: call through `smol::unblock` (as [`StageCtx::artifact`] does).
    fn store_artifact(&self, file: std::fs::File) -> io::Result<(Sha256, u64)>;
    /// A local path holding the CAS object `sha` (downloaded and verified if needed).
    /// Blocking.
    fn fetch_cas(&self, sha: &Sha256) -> io::Result<PathBuf>;
}

/// A stop signal shared by a stage and the runner.
#[derive(Clone, Debug)]
pub struct StopSignal(Arc<StopInner>);

#[derive(Debug)]
struct StopInner {
    reason: Mutex<Option<Stop>>,
    tx: smol::channel::Sender<()>,
    rx: smol::channel::Receiver<()>,
}

/// Every stop signal still held somewhere, so [`stop_all`] reaches the running stages.
static LIVE: Mutex<Vec<Weak<StopInner>>> = Mutex::new(Vec::new());
/// Set by [`stop_all`]: signals made afterwards are born fired.
static STOPPING: Mutex<Option<Stop>> = Mutex::new(None);

impl Default for StopSignal {
    fn default() -> Self {
        let (tx, rx) = smol::channel::bounded(1);
        let s = StopSignal(Arc::new(StopInner {
            reason: Mutex::new(None),
            tx,
            rx,
        }));
        let stopping = STOPPING.lock().expect("stop lock poisoned").clone();
        if let Some(why) = stopping {
            s.fire(why);
        }
        let mut live = LIVE.lock().expect("stop lock poisoned");
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&s.0));
        s
    }
}

/// Fires every stop signal, those of running stages and any made from now on (the
/// agent itself is stopping: SIGTERM, SIGINT, SIGHUP).
pub fn stop_all(why: Stop) {
    STOPPING
        .lock()
        .expect("stop lock poisoned")
        .get_or_insert(why.clone());
    let live: Vec<_> = LIVE
        .lock()
        .expect("stop lock poisoned")
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for s in live {
        StopSignal(s).fire(why.clone());
    }
}

impl StopSignal {
    /// Fires the signal (the first reason wins).
    pub fn fire(&self, why: Stop) {
        let mut r = self.0.reason.lock().expect("stop lock poisoned");
        if r.is_none() {
            *r = Some(why);
        }
        self.0.tx.close();
    }

    /// The reason, once fired.
    pub fn reason(&self) -> Option<Stop> {
        self.0.reason.lock().expect("stop lock poisoned").clone()
    }

    /// Resolves once the signal fires.
    pub async fn fired(&self) -> Stop {
        let _ = self.0.rx.recv().await;
        self.reason().unwrap_or(Stop::Abort("stopped".into()))
    }
}

/// Everything a stage attempt gets.
pub struct StageCtx {
    /// The run.
    pub run: RunId,
    /// Index of the stage in the plan.
    pub index: u16,
    /// The stage's settings.
    pub stage: Stage,
    /// The host binding (with the expected spec).
    pub host: HostBinding,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// A fresh folder for this attempt; the test bundle, if any, is unpacked here.
    pub dir: PathBuf,
    /// The test bundle's tar file (verified), if the stage has tests.
    pub tests_tar: Option<PathBuf>,
    /// The stage's named secrets.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Where events and files go.
    pub sink: Arc<dyn Sink>,
    /// Fires on timeout or abort.
    pub stop: StopSignal,
    /// Serials of disks an operator approved past the storage wipe gate (a verified
    /// `Approve` order of a held run); empty otherwise.
    pub approved: Vec<String>,
}

impl StageCtx {
    /// Reports one line of output, with every secret value redacted.
    pub fn log(&self, stream: Stream, text: &str) {
        self.sink.emit(Event::Log {
            stage: self.index,
            stream,
            text: self.redact(text),
        });
    }

    /// Reports a line from the agent itself.
    pub fn note(&self, text: &str) {
        self.log(Stream::Agent, text);
    }

    /// Reports a measurement.
    pub fn measure(&self, name: &str, value: f64, unit: &str) {
        self.sink.emit(Event::Measure {
            stage: self.index,
            name: name.into(),
            value,
            unit: unit.into(),
        });
    }

    /// Reports a part's outcome (matrix cell, disk, spec difference).
    pub fn part(&self, name: &str, outcome: Outcome, detail: &str, tail: Vec<String>) {
        self.sink.emit(Event::Part {
            stage: self.index,
            name: name.into(),
            outcome,
            detail: self.redact(detail),
            tail: lines::cap_tail(
                tail.iter().map(|l| self.redact(l)).collect(),
                lines::MAX_TAIL_BYTES,
                lines::MAX_TAIL_LINE,
            ),
        });
    }

    /// Stores a file as an artifact named `name` and reports it. The file is opened
    /// without following a link at `path`'s last component, and must be a regular
    /// file (for files a stage wrote at a known path, such as a hardware report).
    /// `None` when the coordinator refused it for the run's upload quota (see
    /// [`StageCtx::artifacts_under`]).
    pub async fn artifact(&self, path: &Path, name: &str) -> io::Result<Option<Sha256>> {
        let p = path.to_path_buf();
        let file = smol::unblock(move || artifacts::open_file(&p)).await?;
        self.store(file, name).await
    }

    /// Stores one artifact and reports it. Over the run's upload quota (the
    /// coordinator's 413) the artifact is left out with a log line
    /// `artifact NAME not uploaded: over the run's quota (...)` and `None`: the stage's
    /// outcome stays the test's verdict.
    async fn store(&self, file: std::fs::File, name: &str) -> io::Result<Option<Sha256>> {
        let sink = self.sink.clone();
        let (sha256, size) = match smol::unblock(move || sink.store_artifact(file)).await {
            Ok(stored) => stored,
            Err(e) if e.kind() == io::ErrorKind::QuotaExceeded => {
                self.note(&format!("artifact {name} not uploaded: {e}"));
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.sink.emit(Event::Artifact {
            stage: self.index,
            name: name.into(),
            sha256,
            size,
        });
        Ok(Some(sha256))
    }

    /// Stores every regular file under `dir` as an artifact named by its relative
    /// path (sorted). Returns how many.
    pub async fn artifacts_from_dir(&self, dir: &Path) -> io::Result<usize> {
        self.artifacts_under(dir, "").await
    }

    /// Stores every regular file under `dir` as an artifact named `<prefix><relative
    /// path>` (sorted), walking the folder without following any link
    /// ([`artifacts::list`]); links, special files and files that change into one
    /// while collected are noted in the log and skipped, and so is a file over the
    /// run's upload quota (the rest are still tried). Returns how many were stored.
    pub async fn artifacts_under(&self, dir: &Path, prefix: &str) -> io::Result<usize> {
        let d = dir.to_path_buf();
        let listing = smol::unblock(move || artifacts::list(&d)).await?;
        for (rel, why) in &listing.skipped {
            if rel.is_empty() {
                self.note(&format!("artifacts skipped: {why}"));
            } else {
                self.note(&format!("artifact {prefix}{rel} skipped: {why}"));
            }
        }
        let mut n = 0;
        for rel in listing.files {
            let (d, r) = (dir.to_path_buf(), rel.clone());
            match smol::unblock(move || artifacts::open_inside(&d, &r)).await {
                Ok(file) => {
                    if self.store(file, &format!("{prefix}{rel}")).await?.is_some() {
                        n += 1;
                    }
                }
                Err(e) => self.note(&format!("artifact {prefix}{rel} skipped: {e}")),
            }
        }
        Ok(n)
    }

    /// A local path for a CAS object (fetched and verified if needed).
    pub async fn fetch_cas(&self, sha: &Sha256) -> io::Result<PathBuf> {
        let sink = self.sink.clone();
        let sha = *sha;
        smol::unblock(move || sink.fetch_cas(&sha)).await
    }

    /// Resolves when the stage must stop.
    pub async fn stopped(&self) -> Stop {
        self.stop.fired().await
    }

    /// Replaces every secret value in `text` with `[redacted:NAME]`; each line of a
    /// multi-line secret (a key, a certificate) too, since output is logged a line at
    /// a time.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, value) in &self.secrets {
            let v = String::from_utf8_lossy(value);
            let whole = [v.as_ref(), v.trim()];
            for candidate in whole.into_iter().chain(v.lines().map(str::trim)) {
                if candidate.len() >= 4 && out.contains(candidate) {
                    out = out.replace(candidate, &format!("[redacted:{name}]"));
                }
            }
        }
        out
    }

    /// Environment for the stage's processes: the plan's env.
    pub fn env(&self) -> Vec<(String, String)> {
        self.stage.env.clone()
    }
}

/// A sink that keeps everything in memory, for tests of single stages.
#[derive(Default)]
pub struct MemorySink {
    /// Every event emitted, in order.
    pub events: Mutex<Vec<Event>>,
    /// Stored artifacts: digest to bytes.
    pub blobs: Mutex<BTreeMap<Sha256, Vec<u8>>>,
    /// CAS objects offered to `fetch_cas`: digest to path.
    pub cas: Mutex<BTreeMap<Sha256, PathBuf>>,
}

impl MemorySink {
    /// All log lines so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.events
            .lock()
            .expect("sink lock")
            .iter()
            .filter_map(|e| match e {
                Event::Log { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Sink for MemorySink {
    fn emit(&self, event: Event) {
        self.events.lock().expect("sink lock").push(event);
    }
    fn store_artifact(&self, mut file: std::fs::File) -> io::Result<(Sha256, u64)> {
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut file, &mut bytes)?;
        let sha = Sha256::of(&bytes);
        let size = bytes.len() as u64;
        self.blobs.lock().expect("sink lock").insert(sha, bytes);
        Ok((sha, size))
    }
    fn fetch_cas(&self, sha: &Sha256) -> io::Result<PathBuf> {
        self.cas
            .lock()
            .expect("sink lock")
            .get(sha)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no cas object {sha}")))
    }
}

impl StageCtx {
    /// A context for testing one stage: the memory sink, a fresh stop signal,
    /// attempt 1, host binding `test`.
    pub fn for_test(stage: Stage, dir: PathBuf) -> (StageCtx, Arc<MemorySink>) {
        let sink = Arc::new(MemorySink::default());
        let ctx = StageCtx {
            run: RunId([7; 16]),
            index: 0,
            stage,
            host: HostBinding {
                name: "test".into(),
                macs: vec![],
                serial: None,
                spec: Default::default(),
                agent_key: None,
            },
            attempt: 1,
            dir,
            tests_tar: None,
            secrets: BTreeMap::new(),
            sink: sink.clone(),
            stop: StopSignal::default(),
            approved: Vec::new(),
        };
        (ctx, sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::StageKind;

    #[test]
    fn a_part_keeps_at_most_a_capped_tail() {
        let (c, sink) = StageCtx::for_test(
            Stage::new("s", StageKind::Exec { command: vec![] }),
            PathBuf::from("/nonexistent"),
        );
        let tail: Vec<String> = (0..200)
            .map(|i| format!("{i} {}", "x".repeat(16 * 1024)))
            .collect();
        c.part("debian:12", Outcome::Failed, "exit 1", tail);
        let events = sink.events.lock().unwrap();
        let Some(Event::Part { tail, .. }) = events.last() else {
            panic!("no part: {events:?}");
        };
        assert!(tail.iter().map(String::len).sum::<usize>() <= lines::MAX_TAIL_BYTES);
        assert!(tail.last().unwrap().starts_with("199 "));
        let frame = postcard::to_allocvec(events.last().unwrap()).unwrap();
        assert!(frame.len() < 128 * 1024, "{}", frame.len());
    }

    #[test]
    fn redact_hides_whole_values_and_each_line_of_multi_line_ones() {
        let (mut c, _) = StageCtx::for_test(
            Stage::new("s", StageKind::Exec { command: vec![] }),
            PathBuf::from("/nonexistent"),
        );
        c.secrets.insert("token".into(), b"tok-12345\n".to_vec());
        c.secrets.insert(
            "key".into(),
            b"-----BEGIN KEY-----\nAAAAbase64line1\nBBBBbase64line2\n-----END KEY-----\n".to_vec(),
        );
        c.secrets.insert("pin".into(), b"123".to_vec());
        assert_eq!(c.redact("t=tok-12345!"), "t=[redacted:token]!");
        assert_eq!(c.redact("  BBBBbase64line2"), "  [redacted:key]");
        assert_eq!(
            c.redact("AAAAbase64line1\nBBBBbase64line2"),
            "[redacted:key]\n[redacted:key]"
        );
        // Values under 4 characters are left: redacting them would shred the log.
        assert_eq!(c.redact("pin 123"), "pin 123");
        assert_eq!(c.redact("nothing secret"), "nothing secret");
    }
}
