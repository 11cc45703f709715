//! The one process supervisor of the agent: stage commands (exec, container cells,
//! ssh) and hardware tools ([`super::hardware::tools::Tool`]) all run through
//! [`run_streamed`]. A child runs in its own process group (tracked in memory and in
//! the attempt folder, [`super::groups`]); its output is split into lines, logged as
//! `Log` frames and kept as the [`ProcSpec`] asks (a shared tail, raw bytes, last
//! lines); it ends by itself, by its own timeout or by the stage's stop.
//!
//! One stop policy: SIGTERM to the whole group, [`GRACE`] to exit, then SIGKILL; a
//! group whose main process exited is swept with SIGKILL, and a dropped (cancelled)
//! run SIGKILLs its group. One exit encoding: [`ProcEnd::Exited`] with the exit code,
//! [`ProcEnd::Signaled`] with the signal that killed it (never `128 + signal`).
use kiln_protocol::Stream;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use smol::future::FutureExt;
use smol::io::AsyncReadExt;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::ctx::{StageCtx, Stop};
use super::groups::Group;
use super::lines::LineSplitter;

/// Longest line sent as one `Log` frame; longer output is split.
pub const MAX_LINE: usize = 16 * 1024;
/// How long a stopped group gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(2);
/// How long output is still drained after the main process ended.
const DRAIN: Duration = Duration::from_secs(2);

/// What is kept of one stream, besides logging it and the shared [`ProcOutput::tail`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Keep {
    /// Nothing more.
    #[default]
    Nothing,
    /// The raw bytes, up to this many (the rest is dropped).
    Raw(usize),
    /// The last this many lines.
    Lines(usize),
    /// The last this many raw bytes (an error's end, where the cause is).
    RawTail(usize),
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ProcSpec {
    /// argv; `argv[0]` is looked up in PATH.
    pub argv: Vec<String>,
    /// Working folder (default: the stage's folder).
    pub cwd: Option<PathBuf>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Variables removed from the inherited environment.
    pub env_remove: Vec<String>,
    /// Shown before each line as `[prefix] ` (matrix cells).
    pub prefix: Option<String>,
    /// How many of the last lines to keep in [`ProcOutput::tail`].
    pub tail_lines: usize,
    /// Bytes written to the child's stdin (then closed); `None`: /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Ends the process after this long ([`ProcEnd::TimedOut`]); `None`: only the
    /// stage's stop ends it early.
    pub timeout: Option<Duration>,
    /// Do not log stdout lines (a tool's machine-readable output is kept, not shown).
    pub quiet_stdout: bool,
    /// What to keep of stdout ([`ProcOutput::stdout`]).
    pub keep_stdout: Keep,
    /// What to keep of stderr ([`ProcOutput::stderr`]).
    pub keep_stderr: Keep,
    /// Do not log stderr lines either (kiln's own control commands).
    pub quiet_stderr: bool,
    /// Stdout goes straight into this file (a stream of bytes, never split into
    /// lines), not through a pipe.
    pub stdout_file: Option<std::sync::Arc<std::fs::File>>,
    /// Run to the end (or the timeout) even when the stage is stopped: clean-up that
    /// must happen after a stop.
    pub ignore_stop: bool,
}

impl ProcSpec {
    /// A spec for `argv` with defaults.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        ProcSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcEnd {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal (not by us).
    Signaled(i32),
    /// We stopped it (the stage's timeout or abort).
    Stopped(Stop),
    /// We stopped it: it ran past [`ProcSpec::timeout`].
    TimedOut(Duration),
    /// It could not be started.
    SpawnFailed(String),
}

/// What was kept of one stream ([`Keep`]).
#[derive(Debug, Clone, Default)]
pub struct Kept {
    /// The raw bytes ([`Keep::Raw`], [`Keep::RawTail`]).
    pub raw: Vec<u8>,
    /// The last lines ([`Keep::Lines`]).
    pub lines: Vec<String>,
}

/// The end and the last lines of output.
#[derive(Debug, Clone)]
pub struct ProcOutput {
    /// How it ended.
    pub end: ProcEnd,
    /// The last `tail_lines` lines (both streams, in arrival order, unprefixed), with
    /// the last of stderr always among them ([`Tail`]).
    pub tail: Vec<String>,
    /// What [`ProcSpec::keep_stdout`] kept.
    pub stdout: Kept,
    /// What [`ProcSpec::keep_stderr`] kept.
    pub stderr: Kept,
}

impl ProcOutput {
    fn failed(why: String) -> Self {
        ProcOutput {
            end: ProcEnd::SpawnFailed(why),
            tail: vec![],
            stdout: Kept::default(),
            stderr: Kept::default(),
        }
    }
}

fn signal_group(pgid: i32, sig: Signal) {
    // ESRCH (group already gone) is fine.
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// Runs a process in its own group, streaming its output; ends it on `ctx.stopped()`
/// or its own timeout.
pub async fn run_streamed(ctx: &StageCtx, spec: &ProcSpec) -> ProcOutput {
    let tail = RefCell::new(Tail::new(spec.tail_lines));
    let Some(program) = spec.argv.first() else {
        return ProcOutput::failed("empty command".into());
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(&spec.argv[1..])
        .current_dir(spec.cwd.as_ref().unwrap_or(&ctx.dir))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .process_group(0);
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    // async-process tracks stdio itself: set it on its Command, not the std one.
    let mut cmd = async_process::Command::from(cmd);
    cmd.stdin(if spec.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(match &spec.stdout_file {
        Some(f) => match f.try_clone() {
            Ok(f) => Stdio::from(f),
            Err(e) => return ProcOutput::failed(format!("{program}: stdout file: {e}")),
        },
        None => Stdio::piped(),
    })
    .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return ProcOutput::failed(format!("{program}: {e}")),
    };
    let pgid = child.id() as i32;
    // Killed when dropped unended: a cancelled run (a sampler dropped when the load
    // it samples ends) leaves nothing behind; recorded for a crashed agent's next
    // attempt.
    let group = Group::track(pgid, &ctx.dir);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stdin = child.stdin.take();
    let (done_tx, done_rx) = smol::channel::bounded::<()>(1);
    let kept = RefCell::new((Kept::default(), Kept::default()));

    let feed = async {
        if let (Some(mut w), Some(bytes)) = (stdin, spec.stdin.as_ref()) {
            use smol::io::AsyncWriteExt;
            let _ = w.write_all(bytes).await;
            let _ = w.close().await;
        }
    };
    let pumps = async {
        let a = async {
            let k = pump(ctx, spec, stdout, Stream::Stdout, &tail).await;
            kept.borrow_mut().0 = k;
        };
        let b = async {
            let k = pump(ctx, spec, stderr, Stream::Stderr, &tail).await;
            kept.borrow_mut().1 = k;
        };
        smol::future::zip(smol::future::zip(a, b), feed).await;
    }
    .or(async {
        let _ = done_rx.recv().await;
        smol::Timer::after(DRAIN).await;
    });
    let waiter = async {
        enum First {
            Status(std::io::Result<std::process::ExitStatus>),
            Stop(Stop),
            Timeout(Duration),
        }
        let first = async { First::Status(child.status().await) }
            .or(async {
                if spec.ignore_stop {
                    std::future::pending().await
                } else {
                    First::Stop(ctx.stopped().await)
                }
            })
            .or(async {
                match spec.timeout {
                    Some(d) => {
                        smol::Timer::after(d).await;
                        First::Timeout(d)
                    }
                    None => std::future::pending().await,
                }
            })
            .await;
        let end = match first {
            First::Status(Ok(status)) => {
                // Sweep what the main process left behind in its group.
                signal_group(pgid, Signal::SIGKILL);
                match (status.code(), status.signal()) {
                    (Some(code), _) => ProcEnd::Exited(code),
                    (None, Some(sig)) => ProcEnd::Signaled(sig),
                    (None, None) => ProcEnd::Signaled(0),
                }
            }
            First::Status(Err(e)) => ProcEnd::SpawnFailed(format!("waiting for {program}: {e}")),
            First::Stop(stop) => {
                stop_group(pgid, &mut child).await;
                ProcEnd::Stopped(stop)
            }
            First::Timeout(d) => {
                stop_group(pgid, &mut child).await;
                ProcEnd::TimedOut(d)
            }
        };
        done_tx.close();
        end
    };
    let ((), end) = smol::future::zip(pumps, waiter).await;
    group.ended();
    let (stdout, stderr) = kept.into_inner();
    ProcOutput {
        end,
        tail: tail.into_inner().lines(),
        stdout,
        stderr,
    }
}

/// The stop policy: SIGTERM to the group, [`GRACE`] for the main process to exit,
/// then SIGKILL to whatever is left, and the main process reaped.
async fn stop_group(pgid: i32, child: &mut async_process::Child) {
    signal_group(pgid, Signal::SIGTERM);
    let exited = async { child.status().await.is_ok() }
        .or(async {
            smol::Timer::after(GRACE).await;
            false
        })
        .await;
    signal_group(pgid, Signal::SIGKILL);
    if !exited {
        let _ = child.status().await;
    }
}

/// The last lines of a process's output, both streams in arrival order, with stderr's
/// last quarter-tail protected: stdout lines are dropped first to make room, so a
/// failure's error message stays in the report even when a long stdout follows it, or
/// when the engine delivers stderr early (docker relays the two streams separately and
/// can put an error printed last ahead of hundreds of stdout lines printed before it).
#[derive(Debug)]
pub struct Tail {
    lines: VecDeque<(Stream, String)>,
    max: usize,
    keep_stderr: usize,
}

impl Tail {
    /// A tail of at most `max` lines, its last `max / 4` (at least 1) of stderr kept.
    pub fn new(max: usize) -> Self {
        Tail {
            lines: VecDeque::new(),
            max,
            keep_stderr: (max / 4).max(1),
        }
    }

    /// Adds a line; past the limit, drops the oldest line that is not one of the last
    /// `max / 4` stderr lines.
    pub fn push(&mut self, stream: Stream, line: String) {
        if self.max == 0 {
            return;
        }
        self.lines.push_back((stream, line));
        if self.lines.len() <= self.max {
            return;
        }
        let stderr = self
            .lines
            .iter()
            .filter(|(s, _)| *s == Stream::Stderr)
            .count();
        // Past its share, stderr's oldest line may go too; within it, none does.
        let stderr_may_go = stderr > self.keep_stderr;
        let victim = self
            .lines
            .iter()
            .position(|(s, _)| *s != Stream::Stderr || stderr_may_go);
        self.lines.remove(victim.unwrap_or(0));
    }

    /// The lines, oldest first.
    pub fn lines(self) -> Vec<String> {
        self.lines.into_iter().map(|(_, l)| l).collect()
    }
}

/// Reads one pipe to its end: logs its lines (unless quiet), feeds the shared tail,
/// keeps what the spec asks for this stream.
async fn pump(
    ctx: &StageCtx,
    spec: &ProcSpec,
    reader: Option<impl smol::io::AsyncRead + Unpin>,
    stream: Stream,
    tail: &RefCell<Tail>,
) -> Kept {
    let mut kept = Kept::default();
    let Some(mut reader) = reader else {
        return kept;
    };
    let (log, keep) = match stream {
        Stream::Stdout => (!spec.quiet_stdout, spec.keep_stdout),
        _ => (!spec.quiet_stderr, spec.keep_stderr),
    };
    let last: RefCell<VecDeque<String>> = RefCell::default();
    let emit = |raw: &[u8]| {
        let line = String::from_utf8_lossy(raw).into_owned();
        if log {
            match &spec.prefix {
                Some(p) => ctx.log(stream, &format!("[{p}] {line}")),
                None => ctx.log(stream, &line),
            }
        }
        if spec.tail_lines > 0 {
            tail.borrow_mut().push(stream, ctx.redact(&line));
        }
        if let Keep::Lines(n) = keep
            && n > 0
        {
            let mut l = last.borrow_mut();
            if l.len() == n {
                l.pop_front();
            }
            l.push_back(line);
        }
    };
    let split = log || spec.tail_lines > 0 || matches!(keep, Keep::Lines(_));
    let mut lines = LineSplitter::new(MAX_LINE);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match keep {
            Keep::Raw(max) if kept.raw.len() < max => {
                let room = max - kept.raw.len();
                kept.raw.extend_from_slice(&buf[..n.min(room)]);
            }
            Keep::RawTail(max) => {
                kept.raw.extend_from_slice(&buf[..n]);
                if kept.raw.len() > max {
                    kept.raw.drain(..kept.raw.len() - max);
                }
            }
            _ => {}
        }
        if split {
            lines.push(&buf[..n], &emit);
        }
    }
    if split {
        lines.finish(&emit);
    }
    kept.lines = last.into_inner().into();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::ctx::{MemorySink, StageCtx, Stop};
    use kiln_protocol::{Stage, StageKind};

    fn ctx() -> (StageCtx, std::sync::Arc<MemorySink>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let stage = Stage::new("t", StageKind::Exec { command: vec![] });
        let (c, s) = StageCtx::for_test(stage, dir.path().to_path_buf());
        (c, s, dir)
    }

    #[test]
    fn progress_rewritten_with_carriage_returns_logs_its_last_state() {
        let (c, sink, _d) = ctx();
        let spec = ProcSpec::new([
            "sh",
            "-c",
            "printf 'start\\n'; for i in 1 2 3; do printf '\\r%s%%' $i; sleep 0.01; done; printf '\\r\\n'; printf 'crlf\\r\\n'",
        ]);
        let out = smol::block_on(run_streamed(&c, &spec));
        assert_eq!(out.end, ProcEnd::Exited(0));
        assert_eq!(sink.lines(), ["start", "3%", "crlf"]);
    }

    #[test]
    fn streams_lines_and_exit_code() {
        let (c, sink, _d) = ctx();
        let mut spec = ProcSpec::new(["sh", "-c", "echo one; echo two >&2; printf three; exit 7"]);
        spec.tail_lines = 2;
        let out = smol::block_on(run_streamed(&c, &spec));
        assert_eq!(out.end, ProcEnd::Exited(7));
        let mut lines = sink.lines();
        lines.sort();
        assert_eq!(lines, ["one", "three", "two"]);
        assert_eq!(out.tail.len(), 2);
    }

    #[test]
    fn stop_kills_the_whole_group() {
        let (c, _sink, d) = ctx();
        let pidfile = d.path().join("bg.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let spec = ProcSpec::new(["sh", "-c", script.as_str()]);
        let stop = c.stop.clone();
        let out = smol::block_on(async {
            let fire = async {
                // The shell creates the file before it writes the pid into it.
                let written = || {
                    std::fs::read_to_string(&pidfile)
                        .is_ok_and(|s| s.ends_with('\n') && s.trim().parse::<i32>().is_ok())
                };
                while !written() {
                    smol::Timer::after(Duration::from_millis(20)).await;
                }
                stop.fire(Stop::Timeout);
                std::future::pending::<ProcOutput>().await
            };
            run_streamed(&c, &spec).or(fire).await
        });
        assert_eq!(out.end, ProcEnd::Stopped(Stop::Timeout));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep is gone (or a zombie about to be reaped by init).
        assert!(
            crate::stages::groups::gone(pid),
            "background process {pid} survived the stop"
        );
    }

    #[test]
    fn a_tail_keeps_the_last_lines_and_the_last_of_stderr() {
        let fill = |t: &mut Tail, stream: Stream, name: &str, n: usize| {
            for i in 0..n {
                t.push(stream, format!("{name}{i}"));
            }
        };
        // An error delivered ahead of 250 stdout lines (docker) stays; stdout keeps
        // its last 199.
        let mut t = Tail::new(200);
        t.push(Stream::Stderr, "error".into());
        fill(&mut t, Stream::Stdout, "o", 250);
        let l = t.lines();
        assert_eq!(l.len(), 200);
        assert_eq!((l[0].as_str(), l[1].as_str()), ("error", "o51"));
        assert_eq!(l[199], "o249");
        // Stderr's protection is its last quarter: of 100 early stderr lines, 50 stay.
        let mut t = Tail::new(200);
        fill(&mut t, Stream::Stderr, "e", 100);
        fill(&mut t, Stream::Stdout, "o", 300);
        let l = t.lines();
        assert_eq!(l.len(), 200);
        assert_eq!((l[0].as_str(), l[49].as_str()), ("e50", "e99"));
        assert_eq!((l[50].as_str(), l[199].as_str()), ("o150", "o299"));
        // One stream alone: simply its last lines.
        let mut t = Tail::new(3);
        fill(&mut t, Stream::Stderr, "e", 10);
        assert_eq!(t.lines(), ["e7", "e8", "e9"]);
        let mut t = Tail::new(3);
        fill(&mut t, Stream::Stdout, "o", 10);
        assert_eq!(t.lines(), ["o7", "o8", "o9"]);
        let mut t = Tail::new(0);
        fill(&mut t, Stream::Stdout, "o", 10);
        assert!(t.lines().is_empty());
    }

    #[test]
    fn a_running_group_is_recorded_in_the_attempt_folder_and_removed_after() {
        let (c, _sink, d) = ctx();
        let spec = ProcSpec::new(["sh", "-c", "sleep 300"]);
        let stop = c.stop.clone();
        let dir = d.path().to_path_buf();
        let records = move || -> Vec<String> {
            std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(crate::stages::groups::RECORD_PREFIX))
                .collect()
        };
        let seen = RefCell::new(vec![]);
        let out = smol::block_on(async {
            let fire = async {
                while records().is_empty() {
                    smol::Timer::after(Duration::from_millis(20)).await;
                }
                *seen.borrow_mut() = records();
                stop.fire(Stop::Abort("test".into()));
                std::future::pending::<ProcOutput>().await
            };
            run_streamed(&c, &spec).or(fire).await
        });
        assert_eq!(out.end, ProcEnd::Stopped(Stop::Abort("test".into())));
        assert_eq!(seen.borrow().len(), 1);
        assert!(records().is_empty(), "record left after the stage ended");
    }

    /// One exit encoding on the stage path too: the signal, not 128 + signal.
    #[test]
    fn a_signal_is_reported_as_the_signal() {
        let (c, _sink, _d) = ctx();
        let out = smol::block_on(run_streamed(
            &c,
            &ProcSpec::new(["sh", "-c", "kill -FPE $$"]),
        ));
        assert_eq!(out.end, ProcEnd::Signaled(libc::SIGFPE));
    }

    /// The spec's own timeout stops the group as a stage's stop does: SIGTERM first.
    #[test]
    fn a_timeout_stops_the_group_with_sigterm_first() {
        let (c, sink, d) = ctx();
        let ready = d.path().join("ready");
        let script = format!(
            "trap 'echo cleaned up; exit 0' TERM; touch '{}'; while :; do sleep 1; done",
            ready.display()
        );
        let mut spec = ProcSpec::new(["sh", "-c", script.as_str()]);
        // Long enough for the shell to set its trap (checked below), short for a test.
        spec.timeout = Some(Duration::from_secs(3));
        let out = smol::block_on(run_streamed(&c, &spec));
        assert!(ready.exists(), "the shell never got to its loop");
        assert_eq!(out.end, ProcEnd::TimedOut(Duration::from_secs(3)));
        // (The shell may also report its `sleep` as "Terminated".)
        assert!(
            sink.lines().contains(&"cleaned up".to_string()),
            "{:?}",
            sink.lines()
        );
    }

    /// Stdout kept raw and unlogged, stderr's last lines kept and logged (a tool's run).
    #[test]
    fn streams_can_be_kept_and_quiet() {
        let (c, sink, _d) = ctx();
        let mut spec = ProcSpec::new(["sh", "-c", "printf 'a\\nb'; echo e1 >&2; echo e2 >&2"]);
        spec.quiet_stdout = true;
        spec.keep_stdout = Keep::Raw(3);
        spec.keep_stderr = Keep::Lines(1);
        let out = smol::block_on(run_streamed(&c, &spec));
        assert_eq!(out.end, ProcEnd::Exited(0));
        assert_eq!(out.stdout.raw, b"a\nb");
        assert_eq!(out.stderr.lines, ["e2"]);
        assert_eq!(sink.lines(), ["e1", "e2"]);
    }

    #[test]
    fn missing_program_is_spawn_failure() {
        let (c, _sink, _d) = ctx();
        let out = smol::block_on(run_streamed(&c, &ProcSpec::new(["/nonexistent/prog"])));
        assert!(matches!(out.end, ProcEnd::SpawnFailed(_)), "{:?}", out.end);
    }
}
