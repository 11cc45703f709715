//! The Linux flow: start (lock + upload + detached `run.sh`, or reattach), follow
//! the output, fetch artifacts and tear down; a stop kills the remote group.
use std::time::Duration;

use super::conn::{Captured, Conn, Out};
use super::errors::{classify, last_line};
use super::{CLEANUP_LIMIT, RemoteRun, exited, linux, stopped, store_fetched};
use crate::stages::ctx::{StageCtx, StageResult};
use crate::stages::proc::{ProcEnd, ProcSpec, run_streamed};

async fn teardown(ctx: &StageCtx, conn: &Conn, r: &RemoteRun) {
    let cmd = linux::remote_command(&linux::teardown(r));
    match conn
        .run(ctx, &cmd, None, Out::Memory, false, CLEANUP_LIMIT)
        .await
    {
        Captured::Done(0, ..) => {}
        Captured::Done(_, _, err) => {
            ctx.note(&format!("remote cleanup failed: {}", classify(&err)))
        }
        Captured::Failed(e) => ctx.note(&format!("remote cleanup failed: {e}")),
        Captured::Stopped(_) => {}
    }
}

/// Logs a takeover of a stale lock (`kiln-takeover <run>`) and returns the reply
/// line that follows it.
fn takeover_then_reply(ctx: &StageCtx, out: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(out);
    let mut lines = text.lines().filter(|l| l.starts_with("kiln-"));
    let mut line = lines.next()?;
    if let Some(old) = line.strip_prefix("kiln-takeover ") {
        ctx.note(&format!(
            "taking over stale lock of run {old} (its test is no longer running)"
        ));
        line = lines.next()?;
    }
    Some(line.to_string())
}

/// Runs the Linux flow.
pub async fn run(ctx: &StageCtx, conn: &Conn, r: &RemoteRun, bundle: Vec<u8>) -> StageResult {
    // The first command opens the master connection: ssh's 255 here is never the test's.
    let start = linux::remote_command(&linux::start(r));
    match conn
        .run(ctx, &start, Some(bundle), Out::Memory, true, Duration::MAX)
        .await
    {
        Captured::Done(255, _, err) => {
            let why = classify(&err);
            if conn.master_alive(ctx).await {
                // Connected, then lost mid-upload: clean up what may have started.
                teardown(ctx, conn, r).await;
                return StageResult::error(format!("upload failed: {why}"));
            }
            return StageResult::error(why);
        }
        Captured::Done(_, out, err) => match takeover_then_reply(ctx, &out).as_deref() {
            Some("kiln-started") => {}
            Some("kiln-resume") => ctx.note("this run already holds the host: reattaching"),
            Some(l) if l.starts_with("kiln-busy ") => {
                return StageResult::error(format!("host busy (run {})", &l["kiln-busy ".len()..]));
            }
            other => {
                teardown(ctx, conn, r).await;
                let why = match other {
                    Some(l) => l.trim_start_matches("kiln-error ").to_string(),
                    None => last_line(&err).to_string(),
                };
                return StageResult::error(format!("remote setup failed: {why}"));
            }
        },
        Captured::Stopped(stop) => {
            teardown(ctx, conn, r).await;
            return stopped(ctx, stop);
        }
        Captured::Failed(e) => return StageResult::error(e),
    }

    // The fetch session opens beside the follow session and waits for the exit
    // status, so the fetch costs no extra round trip after the test ends.
    let tar = conn.private_dir().join("artifacts.tar");
    let file = match std::fs::File::create(&tar) {
        Ok(f) => f,
        Err(e) => {
            teardown(ctx, conn, r).await;
            return StageResult::error(format!("creating {}: {e}", tar.display()));
        }
    };
    let follow = ProcSpec::new(conn.argv(&linux::remote_command(&linux::follow(r))));
    let fetch = linux::remote_command(&linux::fetch_when_done(r));
    let (out, fetched) = smol::future::zip(
        run_streamed(ctx, &follow),
        conn.run(ctx, &fetch, None, Out::File(file), true, Duration::MAX),
    )
    .await;
    let code = match out.end {
        // 255 is ssh's own failure unless the run's exit file says otherwise.
        ProcEnd::Exited(255) => {
            let q = linux::remote_command(&linux::exit_code(r));
            match conn
                .run(ctx, &q, None, Out::Memory, false, CLEANUP_LIMIT)
                .await
            {
                Captured::Done(0, o, _)
                    if String::from_utf8_lossy(&o).trim().parse::<i32>().is_ok() =>
                {
                    String::from_utf8_lossy(&o)
                        .trim()
                        .parse::<i32>()
                        .unwrap_or(255)
                }
                _ => {
                    teardown(ctx, conn, r).await;
                    return StageResult::error(
                        "connection lost while the test ran (or it vanished without an exit status)",
                    );
                }
            }
        }
        ProcEnd::Exited(c) => c,
        ProcEnd::Stopped(stop) => {
            teardown(ctx, conn, r).await;
            return stopped(ctx, stop);
        }
        ProcEnd::Signaled(s) => {
            teardown(ctx, conn, r).await;
            return StageResult::error(format!("ssh killed by signal {s}"));
        }
        ProcEnd::SpawnFailed(e) => {
            teardown(ctx, conn, r).await;
            return StageResult::error(format!("could not start ssh: {e}"));
        }
        ProcEnd::TimedOut(d) => {
            teardown(ctx, conn, r).await;
            return StageResult::error(format!("ssh did not finish within {}s", d.as_secs()));
        }
    };
    match fetched {
        Captured::Done(0, ..) => match store_fetched(ctx, conn, tar).await {
            Ok(_) => exited(code),
            Err(e) => StageResult {
                exit_code: Some(code),
                ..StageResult::error(e)
            },
        },
        Captured::Done(4, ..) => StageResult {
            exit_code: Some(code),
            ..StageResult::error("another agent session has reattached to this run")
        },
        Captured::Done(c, _, err) => {
            teardown(ctx, conn, r).await;
            let why = if c == 255 {
                classify(&err)
            } else {
                last_line(&err).to_string()
            };
            StageResult {
                exit_code: Some(code),
                ..StageResult::error(format!("fetching artifacts failed: {why}"))
            }
        }
        Captured::Stopped(stop) => {
            teardown(ctx, conn, r).await;
            stopped(ctx, stop)
        }
        Captured::Failed(e) => {
            teardown(ctx, conn, r).await;
            StageResult {
                exit_code: Some(code),
                ..StageResult::error(format!("fetching artifacts failed: {e}"))
            }
        }
    }
}
