//! The `exec` stage: a command on the agent's host, in the stage's folder.
//!
//! Besides the plan's env the command gets `KILN_RUN`, `KILN_STAGE`, `KILN_ATTEMPT`,
//! `KILN_ARTIFACTS` (files put there are stored as artifacts), and each named secret
//! as `KILN_SECRET_<NAME>` plus a 0600 file in `KILN_SECRETS_DIR` (removed after).
use kiln_protocol::Outcome;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::ctx::{StageCtx, StageResult};
use super::proc::{ProcEnd, ProcSpec, run_streamed};

/// `KILN_SECRET_` plus the name upper-cased, other characters as `_`.
pub fn secret_var(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("KILN_SECRET_{n}")
}

/// Writes each secret as a 0600 file in a folder beside the stage's folder.
fn write_secrets(ctx: &StageCtx) -> std::io::Result<Option<PathBuf>> {
    if ctx.secrets.is_empty() {
        return Ok(None);
    }
    let name = format!(
        ".secrets-{}",
        ctx.dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    );
    let dir = ctx.dir.parent().unwrap_or(Path::new(".")).join(name);
    std::fs::create_dir_all(&dir)?;
    for (name, value) in &ctx.secrets {
        let file = dir.join(name.replace(['/', '\\'], "_"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)?;
        f.write_all(value)?;
    }
    Ok(Some(dir))
}

/// Runs the command; exit 0 passed, 42 warning, 43 skipped, other failed,
/// could-not-start error; a stop ends it timed_out or aborted.
pub async fn run(ctx: &StageCtx, command: &[String]) -> StageResult {
    // The folder a command puts its artifacts in exists before it starts.
    let artifacts = ctx.dir.join("artifacts");
    if let Err(e) = std::fs::create_dir_all(&artifacts) {
        return StageResult::error(format!("creating {}: {e}", artifacts.display()));
    }
    let mut spec = ProcSpec::new(command.iter().cloned());
    spec.env = ctx.env();
    spec.env.extend([
        ("KILN_RUN".to_string(), ctx.run.to_string()),
        ("KILN_STAGE".to_string(), ctx.stage.name.clone()),
        ("KILN_ATTEMPT".to_string(), ctx.attempt.to_string()),
        (
            "KILN_ARTIFACTS".to_string(),
            artifacts.display().to_string(),
        ),
    ]);
    let secrets_dir = match write_secrets(ctx) {
        Ok(d) => d,
        Err(e) => return StageResult::error(format!("writing secrets: {e}")),
    };
    if let Some(d) = &secrets_dir {
        spec.env
            .push(("KILN_SECRETS_DIR".into(), d.display().to_string()));
        for (name, value) in &ctx.secrets {
            if let Ok(v) = std::str::from_utf8(value) {
                spec.env.push((secret_var(name), v.to_string()));
            }
        }
    }
    let out = run_streamed(ctx, &spec).await;
    if let Some(d) = &secrets_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    match out.end {
        ProcEnd::Exited(code) => StageResult {
            outcome: Outcome::from_exit(code),
            exit_code: Some(code),
            detail: format!("exit {code}"),
        },
        ProcEnd::Signaled(sig) => StageResult {
            outcome: Outcome::Failed,
            exit_code: None,
            detail: format!("killed by signal {sig}"),
        },
        ProcEnd::Stopped(stop) => {
            StageResult::new(stop.outcome(), stop.detail(ctx.stage.timeout_s))
        }
        ProcEnd::SpawnFailed(e) => StageResult::error(format!("could not start: {e}")),
        // The stage's timeout is its stop; the spec sets no timeout of its own.
        ProcEnd::TimedOut(d) => {
            StageResult::error(format!("did not finish within {}s", d.as_secs()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{Stage, StageKind};

    #[test]
    fn secrets_reach_the_command_and_are_redacted_from_its_output() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("0-s").join("1");
        std::fs::create_dir_all(&dir).unwrap();
        let stage = Stage {
            secrets: vec!["api-token".into()],
            ..Stage::new("s", StageKind::Exec { command: vec![] })
        };
        let (mut ctx, sink) = StageCtx::for_test(stage, dir);
        ctx.secrets
            .insert("api-token".into(), b"hunter2-xyz".to_vec());
        let cmd: Vec<String> = [
            "sh",
            "-c",
            "echo env=$KILN_SECRET_API_TOKEN; echo file=$(cat $KILN_SECRETS_DIR/api-token); echo a=$KILN_ATTEMPT",
        ]
        .map(String::from)
        .to_vec();
        let r = smol::block_on(run(&ctx, &cmd));
        assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
        assert_eq!(
            sink.lines(),
            [
                "env=[redacted:api-token]",
                "file=[redacted:api-token]",
                "a=1"
            ]
        );
        assert!(!d.path().join("0-s/.secrets-1").exists());
    }

    #[test]
    fn the_artifacts_folder_exists_when_the_command_starts() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("0-s").join("1");
        std::fs::create_dir_all(&dir).unwrap();
        let stage = Stage::new("s", StageKind::Exec { command: vec![] });
        let (ctx, _sink) = StageCtx::for_test(stage, dir.clone());
        let cmd: Vec<String> = ["sh", "-c", "echo report > \"$KILN_ARTIFACTS/out.txt\""]
            .map(String::from)
            .to_vec();
        let r = smol::block_on(run(&ctx, &cmd));
        assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join("artifacts/out.txt")).unwrap(),
            "report\n"
        );
    }
}
