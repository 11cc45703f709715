//! The `ssh` stage: ship the test bundle to another host over one multiplexed
//! OpenSSH connection, run its entrypoint there, stream its output, fetch
//! `./artifacts/`, and leave the host clean and unlocked.
//!
//! Connection, authentication, host key and upload problems end `error` with the
//! reason; only the test's own exit code makes a stage `failed`.
use kiln_protocol::{Os, Outcome, SshSpec};
use std::time::Duration;

use super::proc::{ProcEnd, ProcSpec, run_streamed};
use super::{StageCtx, StageResult, Stop};

mod conn;
pub mod linux;
mod linux_run;
pub mod windows;

use conn::{Captured, Conn, Out};
pub use conn::{classify, pinned_line};

/// How long cleanup commands (teardown, exit status) may take.
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

/// What identifies this attempt's remote run folder and lock.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteRun {
    /// The run id (hex): the lock's owner.
    pub run: String,
    /// Folder name under `<base>/runs/`: `<run>-<stage>-<attempt>`.
    pub name: String,
    /// The plan's base folder (`None`: `~/.kiln`).
    pub base: Option<String>,
    /// Keep the run folder after fetching artifacts.
    pub keep: bool,
    /// The plan's environment for the entrypoint.
    pub env: Vec<(String, String)>,
    /// Random token of this agent session; the run's owner once started or reattached.
    pub token: String,
}

impl RemoteRun {
    /// The remote run of a stage attempt; refuses environment names that are not
    /// shell identifiers.
    pub fn new(ctx: &StageCtx, spec: &SshSpec) -> Result<RemoteRun, String> {
        let stage: String = ctx
            .stage
            .name
            .chars()
            .take(40)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        for (k, _) in ctx.env() {
            let ok = k
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!("environment name {k:?} is not a valid identifier"));
            }
        }
        let base = spec.base_dir.clone().filter(|b| !b.is_empty());
        if spec.os == Os::Windows
            && let Some(b) = &base
        {
            windows::check_path(b)?;
        }
        Ok(RemoteRun {
            run: ctx.run.to_string(),
            name: format!("{}-{stage}-{}", ctx.run, ctx.attempt),
            base,
            keep: spec.keep,
            env: ctx.env(),
            token: conn::random_hex(),
        })
    }
}

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &SshSpec) -> StageResult {
    let remote = match RemoteRun::new(ctx, spec) {
        Ok(r) => r,
        Err(e) => return StageResult::error(e),
    };
    let bundle = match bundle_bytes(ctx).await {
        Ok(b) => b,
        Err(e) => return StageResult::error(format!("reading the test bundle: {e}")),
    };
    let conn = match Conn::new(ctx, spec) {
        Ok(c) => c,
        Err(e) => return StageResult::error(e),
    };
    ctx.note(&format!(
        "ssh {}@{}:{} ({}), run folder runs/{}",
        spec.user,
        spec.host,
        spec.port,
        match spec.os {
            Os::Linux => "linux",
            Os::Windows => "windows",
        },
        remote.name
    ));
    let result = match spec.os {
        Os::Linux => linux_run::run(ctx, &conn, &remote, bundle).await,
        Os::Windows => run_windows(ctx, &conn, &remote, bundle).await,
    };
    conn.close(ctx).await;
    result
}

/// The bundle's tar bytes: the verified tar, or (with no tests) the stage folder packed.
async fn bundle_bytes(ctx: &StageCtx) -> std::io::Result<Vec<u8>> {
    let tar = ctx.tests_tar.clone();
    let dir = ctx.dir.clone();
    smol::unblock(move || match tar {
        Some(p) => std::fs::read(p),
        None => kiln_protocol::tree::pack_to_vec(&dir).map(|(b, _)| b),
    })
    .await
}

/// The result of a stopped stage.
fn stopped(ctx: &StageCtx, stop: Stop) -> StageResult {
    StageResult::new(stop.outcome(), stop.detail(ctx.stage.timeout_s))
}

/// The result of a test's exit code.
fn exited(code: i32) -> StageResult {
    StageResult {
        outcome: Outcome::from_exit(code),
        exit_code: Some(code),
        detail: format!("exit {code}"),
    }
}

/// Unpacks a fetched artifacts tar (safely) and stores its files as artifacts.
async fn store_fetched(
    ctx: &StageCtx,
    conn: &Conn,
    tar: std::path::PathBuf,
) -> Result<usize, String> {
    let into = conn.private_dir().join("fetched");
    let dest = into.clone();
    smol::unblock(move || -> std::io::Result<()> {
        std::fs::create_dir(&dest)?;
        if std::fs::metadata(&tar)?.len() > 0 {
            kiln_protocol::tree::unpack(std::fs::File::open(&tar)?, &dest)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("bad artifacts from the remote: {e}"))?;
    ctx.artifacts_from_dir(&into.join("artifacts"))
        .await
        .map_err(|e| format!("storing artifacts: {e}"))
}

/// The first `kiln-…` line of a reply.
fn reply_line(stdout: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .find(|l| l.starts_with("kiln-"))
        .map(str::to_string)
}

/// Windows: start (lock + folder), upload, entrypoint streamed, fetch, teardown.
async fn run_windows(ctx: &StageCtx, conn: &Conn, r: &RemoteRun, bundle: Vec<u8>) -> StageResult {
    let teardown = |kill| async move {
        let _ = conn
            .run(
                ctx,
                &windows::teardown(r, kill),
                None,
                Out::Memory,
                false,
                CLEANUP_LIMIT,
            )
            .await;
    };
    let dir = match conn
        .run(
            ctx,
            &windows::start(r),
            None,
            Out::Memory,
            true,
            Duration::MAX,
        )
        .await
    {
        Captured::Done(255, _, err) => return StageResult::error(classify(&err)),
        Captured::Done(_, out, err) => match reply_line(&out) {
            Some(l) if l.starts_with("kiln-ready ") => l["kiln-ready ".len()..].trim().to_string(),
            Some(l) if l.starts_with("kiln-busy ") => {
                return StageResult::error(format!(
                    "host busy (run {})",
                    l["kiln-busy ".len()..].trim()
                ));
            }
            Some(l) => {
                return StageResult::error(format!(
                    "remote setup failed: {}",
                    l.trim_start_matches("kiln-error ")
                ));
            }
            None => {
                return StageResult::error(format!(
                    "remote setup failed: {}",
                    conn::last_line(&err)
                ));
            }
        },
        Captured::Stopped(stop) => {
            teardown(false).await;
            return stopped(ctx, stop);
        }
        Captured::Failed(e) => return StageResult::error(e),
    };
    if let Err(e) = windows::check_path(&dir) {
        teardown(false).await;
        return StageResult::error(e);
    }
    match conn
        .run(
            ctx,
            &windows::upload(&dir),
            Some(bundle),
            Out::Memory,
            true,
            Duration::MAX,
        )
        .await
    {
        Captured::Done(0, ..) => {}
        Captured::Done(255, _, err) => {
            teardown(false).await;
            return StageResult::error(format!("upload failed: {}", classify(&err)));
        }
        Captured::Done(c, _, err) => {
            teardown(false).await;
            return StageResult::error(format!(
                "upload failed (tar exit {c}): {}",
                conn::last_line(&err)
            ));
        }
        Captured::Stopped(stop) => {
            teardown(false).await;
            return stopped(ctx, stop);
        }
        Captured::Failed(e) => {
            teardown(false).await;
            return StageResult::error(format!("upload failed: {e}"));
        }
    }
    let out = run_streamed(
        ctx,
        &ProcSpec::new(conn.argv(&windows::entry(&dir, &r.env))),
    )
    .await;
    let code = match out.end {
        // 255 is ssh's own failure unless the master is still up.
        ProcEnd::Exited(255) if !conn.master_alive(ctx).await => {
            teardown(true).await;
            return StageResult::error("connection lost while the test ran");
        }
        ProcEnd::Exited(c) => c,
        ProcEnd::Stopped(stop) => {
            teardown(true).await;
            return stopped(ctx, stop);
        }
        ProcEnd::Signaled(s) => {
            teardown(true).await;
            return StageResult::error(format!("ssh killed by signal {s}"));
        }
        ProcEnd::SpawnFailed(e) => {
            teardown(true).await;
            return StageResult::error(format!("could not start ssh: {e}"));
        }
    };
    let tar = conn.private_dir().join("artifacts.tar");
    let fetched = match std::fs::File::create(&tar) {
        Ok(f) => {
            conn.run(
                ctx,
                &windows::fetch(&dir),
                None,
                Out::File(f),
                true,
                Duration::MAX,
            )
            .await
        }
        Err(e) => Captured::Failed(format!("creating {}: {e}", tar.display())),
    };
    let result = match fetched {
        Captured::Done(0, ..) => match store_fetched(ctx, conn, tar).await {
            Ok(_) => exited(code),
            Err(e) => StageResult {
                exit_code: Some(code),
                ..StageResult::error(e)
            },
        },
        Captured::Done(_, _, err) => StageResult {
            exit_code: Some(code),
            ..StageResult::error(format!("fetching artifacts failed: {}", classify(&err)))
        },
        Captured::Stopped(stop) => stopped(ctx, stop),
        Captured::Failed(e) => StageResult::error(format!("fetching artifacts failed: {e}")),
    };
    teardown(false).await;
    result
}
