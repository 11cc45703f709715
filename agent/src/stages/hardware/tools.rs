//! Hardware tools: looked up on PATH first (a missing tool is an error that names
//! it), run by the agent's one process supervisor ([`crate::stages::proc`]: own
//! process group, stderr streamed as `Log` lines, the group stopped on the tool's
//! timeout or the stage's stop), stdout captured; and the errors of a tool run.
use std::path::PathBuf;
use std::time::Duration;

use crate::stages::ctx::{StageCtx, StageResult, Stop};
use crate::stages::proc::{Keep, ProcEnd, ProcSpec, run_streamed};

/// Most stdout bytes kept from one tool run; the rest is dropped.
pub const MAX_STDOUT: usize = 32 * 1024 * 1024;
/// Lines of stdout kept from a streamed tool (all of it is in the log): a long run's
/// verdict comes at its end, so the end is what is kept.
pub const STREAMED_TAIL: usize = 200;
/// Lines of stderr kept.
const STDERR_TAIL: usize = 50;

/// What a tool run printed and how it exited.
#[derive(Debug, Clone)]
pub struct Captured {
    /// How it ended: [`ProcEnd::Exited`] or [`ProcEnd::Signaled`] (a signal we did
    /// not send); the other ends are a [`ToolError`].
    pub end: ProcEnd,
    /// All of stdout (up to [`MAX_STDOUT`]); for a [`Tool::streamed`] tool, its last
    /// [`STREAMED_TAIL`] lines as a terminal shows them (the whole is in the log).
    pub stdout: Vec<u8>,
    /// The last lines of stderr.
    pub stderr: Vec<String>,
}

impl Captured {
    /// stdout as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The exit code, if it exited (rather than being killed by a signal).
    pub fn code(&self) -> Option<i32> {
        match self.end {
            ProcEnd::Exited(c) => Some(c),
            _ => None,
        }
    }

    /// The signal that killed the tool, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.end {
            ProcEnd::Signaled(s) => Some(s),
            _ => None,
        }
    }

    /// It exited with status 0.
    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }

    /// How it ended, for details: `exit N` or `killed by signal N`.
    pub fn status(&self) -> String {
        match self.signal() {
            Some(s) => format!("killed by signal {s}"),
            None => format!("exit {}", self.code().unwrap_or(-1)),
        }
    }
}

/// Why a tool run produced no output to judge.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolError {
    /// The tool is not on PATH.
    Missing(String),
    /// It could not be started.
    Spawn(String, String),
    /// It ran past its own time limit and was killed.
    TimedOut(String, u64),
    /// The stage was stopped (timeout or abort) while it ran.
    Stopped(Stop),
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolError::Missing(t) => write!(f, "{t} not found on PATH"),
            ToolError::Spawn(t, e) => write!(f, "could not start {t}: {e}"),
            ToolError::TimedOut(t, s) => write!(f, "{t} did not finish within {s}s"),
            ToolError::Stopped(s) => write!(f, "stopped: {s:?}"),
        }
    }
}

impl ToolError {
    /// The stage result for a tool that could not do its job: `error` (never the
    /// machine's fault), or the stop's own outcome.
    pub fn result(&self, ctx: &StageCtx) -> StageResult {
        match self {
            ToolError::Stopped(s) => StageResult::new(s.outcome(), s.detail(ctx.stage.timeout_s)),
            other => StageResult::error(other.to_string()),
        }
    }
}

/// The full path of `tool` on PATH, if it is there and executable.
pub fn find(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if tool.contains('/') {
        return Some(PathBuf::from(tool));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Options of one tool run.
#[derive(Debug, Clone)]
pub struct Tool {
    /// argv; `argv[0]` is looked up on PATH.
    pub argv: Vec<String>,
    /// Kill the tool after this long.
    pub timeout: Duration,
    /// Also log stdout lines as they arrive (long runs with human output).
    pub stream_stdout: bool,
    /// Working folder (default: the stage's folder).
    pub cwd: Option<PathBuf>,
    /// Environment changes: a value sets the variable, `None` removes it.
    pub env: Vec<(String, Option<String>)>,
}

impl Tool {
    /// A run of `argv` limited to `timeout_s` seconds, stdout captured silently.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>, timeout_s: u64) -> Tool {
        Tool {
            argv: argv.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(timeout_s),
            stream_stdout: false,
            cwd: None,
            env: Vec::new(),
        }
    }

    /// Logs stdout lines too.
    pub fn streamed(mut self) -> Tool {
        self.stream_stdout = true;
        self
    }

    /// The tool's name (`argv[0]`).
    pub fn name(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or("")
    }

    /// Runs the tool to its end, its timeout, or the stage's stop.
    pub async fn run(&self, ctx: &StageCtx) -> Result<Captured, ToolError> {
        let name = self.name().to_string();
        let Some(program) = find(&name) else {
            return Err(ToolError::Missing(name));
        };
        let mut spec = ProcSpec::new(
            std::iter::once(program.to_string_lossy().into_owned())
                .chain(self.argv[1..].iter().cloned()),
        );
        spec.cwd = self.cwd.clone();
        spec.env.push(("LC_ALL".into(), "C".into()));
        for (k, v) in &self.env {
            match v {
                Some(v) => spec.env.push((k.clone(), v.clone())),
                None => spec.env_remove.push(k.clone()),
            }
        }
        spec.timeout = Some(self.timeout);
        spec.keep_stderr = Keep::Lines(STDERR_TAIL);
        if self.stream_stdout {
            spec.keep_stdout = Keep::Lines(STREAMED_TAIL);
        } else {
            spec.quiet_stdout = true;
            spec.keep_stdout = Keep::Raw(MAX_STDOUT);
        }
        let out = run_streamed(ctx, &spec).await;
        let stdout = match self.stream_stdout {
            true => out
                .stdout
                .lines
                .iter()
                .flat_map(|l| [l.as_bytes(), b"\n"])
                .flatten()
                .copied()
                .collect(),
            false => out.stdout.raw,
        };
        match out.end {
            end @ (ProcEnd::Exited(_) | ProcEnd::Signaled(_)) => Ok(Captured {
                end,
                stdout,
                stderr: out.stderr.lines,
            }),
            ProcEnd::TimedOut(_) => Err(ToolError::TimedOut(name, self.timeout.as_secs())),
            ProcEnd::Stopped(s) => Err(ToolError::Stopped(s)),
            ProcEnd::SpawnFailed(e) => {
                // The supervisor names the program; the error names the tool already.
                let e = e
                    .strip_prefix(&format!("{}: ", spec.argv[0]))
                    .map_or(e.clone(), str::to_string);
                Err(ToolError::Spawn(name, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::hardware::testutil::ctx;
    use smol::future::FutureExt;

    #[test]
    fn a_streamed_tool_logs_everything_and_keeps_its_last_lines() {
        let (c, sink, _d) = ctx();
        // 1000 lines, progress rewritten with \r, then a verdict: the verdict is kept.
        let t = Tool::new(
            [
                "sh",
                "-c",
                "i=0; while [ $i -lt 1000 ]; do echo \"line $i\"; i=$((i+1)); done; \
                 printf '\\r1%%\\r100%%\\n'; echo 'GPU 0: FAULTY'",
            ],
            10,
        )
        .streamed();
        let r = smol::block_on(t.run(&c)).expect("runs");
        let text = r.text();
        let kept: Vec<&str> = text.lines().collect();
        assert_eq!(kept.len(), STREAMED_TAIL);
        assert_eq!(kept[STREAMED_TAIL - 3], "line 999");
        assert_eq!(kept[STREAMED_TAIL - 2], "100%");
        assert_eq!(kept[STREAMED_TAIL - 1], "GPU 0: FAULTY");
        let logged = sink.lines();
        assert_eq!(logged.len(), 1002);
        assert_eq!(logged[0], "line 0");
    }

    #[test]
    fn a_dropped_run_kills_its_tool() {
        // The GPU stage's sampler is dropped mid-query when the load ends: the query
        // must not outlive it (a hung nvidia-smi on a sick GPU would).
        let (c, _sink, d) = ctx();
        let pidfile = d.path().join("tool.pid");
        let script = format!("echo $$ > '{}'; exec sleep 30", pidfile.display());
        let t = Tool::new(["sh", "-c", script.as_str()], 60);
        let pid = smol::block_on(async {
            let run = async {
                let _ = t.run(&c).await;
                unreachable!("the tool sleeps for 30 s")
            };
            let cancel = async {
                loop {
                    if let Ok(s) = std::fs::read_to_string(&pidfile)
                        && let Ok(pid) = s.trim().parse::<i32>()
                    {
                        return pid;
                    }
                    smol::Timer::after(Duration::from_millis(10)).await;
                }
            };
            run.or(cancel).await
        });
        assert!(
            crate::stages::groups::gone(pid),
            "the dropped run's tool {pid} is still running"
        );
    }

    #[test]
    fn captures_stdout_and_logs_stderr() {
        let (c, sink, _d) = ctx();
        let t = Tool::new(["sh", "-c", "echo out; echo err >&2; exit 3"], 10);
        let r = smol::block_on(t.run(&c)).expect("runs");
        assert_eq!(r.end, ProcEnd::Exited(3));
        assert_eq!(r.status(), "exit 3");
        assert_eq!(r.text(), "out\n");
        assert_eq!(r.stderr, ["err"]);
        assert_eq!(sink.lines(), ["err"]);
    }

    #[test]
    fn a_signal_is_not_an_exit_status() {
        let (c, _s, _d) = ctx();
        let t = Tool::new(["sh", "-c", "kill -FPE $$"], 10);
        let r = smol::block_on(t.run(&c)).expect("runs");
        assert_eq!(r.end, ProcEnd::Signaled(libc::SIGFPE), "{r:?}");
        assert_eq!(r.status(), format!("killed by signal {}", libc::SIGFPE));
    }

    #[test]
    fn missing_tool_is_named() {
        let (c, _s, _d) = ctx();
        let e = smol::block_on(Tool::new(["kiln-no-such-tool"], 5).run(&c)).unwrap_err();
        assert_eq!(e, ToolError::Missing("kiln-no-such-tool".into()));
        let r = e.result(&c);
        assert_eq!(r.outcome, kiln_protocol::Outcome::Error);
        assert!(r.detail.contains("kiln-no-such-tool"), "{}", r.detail);
    }

    #[test]
    fn timeout_kills_the_group() {
        let (c, _s, _d) = ctx();
        let start = std::time::Instant::now();
        let mut t = Tool::new(["sh", "-c", "sleep 30 & sleep 30"], 0);
        t.timeout = Duration::from_millis(200);
        let e = smol::block_on(t.run(&c)).unwrap_err();
        assert!(matches!(e, ToolError::TimedOut(..)), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    /// The one stop policy on the tool path: SIGTERM first (the tool may clean up and
    /// say so), then SIGKILL after the grace. Tools were SIGKILLed at once before.
    #[test]
    fn a_stopped_tool_gets_sigterm_first() {
        let (c, sink, d) = ctx();
        let ready = d.path().join("ready");
        let script = format!(
            "trap 'echo cleaned up >&2; exit 0' TERM; touch '{}'; while :; do sleep 1; done",
            ready.display()
        );
        let t = Tool::new(["sh", "-c", script.as_str()], 600);
        let stop = c.stop.clone();
        let e = smol::block_on(async {
            let fire = async {
                while !ready.exists() {
                    smol::Timer::after(Duration::from_millis(10)).await;
                }
                stop.fire(Stop::Abort("test".into()));
                std::future::pending().await
            };
            t.run(&c).or(fire).await
        })
        .unwrap_err();
        assert_eq!(e, ToolError::Stopped(Stop::Abort("test".into())));
        // (The shell may also report its `sleep` as "Terminated".)
        assert!(
            sink.lines().contains(&"cleaned up".to_string()),
            "{:?}",
            sink.lines()
        );
    }

    #[test]
    fn stop_ends_the_run() {
        let (c, _s, _d) = ctx();
        c.stop.fire(Stop::Abort("test".into()));
        let e = smol::block_on(Tool::new(["sleep", "30"], 60).run(&c)).unwrap_err();
        assert_eq!(e, ToolError::Stopped(Stop::Abort("test".into())));
        assert_eq!(e.result(&c).outcome, kiln_protocol::Outcome::Aborted);
    }
}
