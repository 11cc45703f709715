//! The Windows flow: start (lock + fresh folder), upload, entrypoint streamed over
//! its own session, fetch artifacts, teardown (`taskkill /T` on a stop).
use std::time::Duration;

use super::conn::{Captured, Conn, Out};
use super::errors::{classify, last_line};
use super::{CLEANUP_LIMIT, RemoteRun, exited, reply_line, stopped, store_fetched, windows};
use crate::stages::ctx::{StageCtx, StageResult};
use crate::stages::proc::{ProcEnd, ProcSpec, run_streamed};

/// Windows: start (lock + folder), upload, entrypoint streamed, fetch, teardown.
pub async fn run(ctx: &StageCtx, conn: &Conn, r: &RemoteRun, bundle: Vec<u8>) -> StageResult {
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
                return StageResult::error(format!("remote setup failed: {}", last_line(&err)));
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
                last_line(&err)
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
        &ProcSpec::new(conn.argv(&windows::entry(&dir, &r.env, &r.secrets))),
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
        ProcEnd::TimedOut(d) => {
            teardown(true).await;
            return StageResult::error(format!("ssh did not finish within {}s", d.as_secs()));
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
