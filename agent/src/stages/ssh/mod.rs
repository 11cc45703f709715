//! The `ssh` stage: ship the test bundle to another host over one multiplexed
//! OpenSSH connection, run its entrypoint there, stream its output, fetch
//! `./artifacts/`, and leave the host clean and unlocked.
//!
//! Connection, authentication, host key and upload problems end `error` with the
//! reason; only the test's own exit code makes a stage `failed`.
//!
//! The stage's secrets reach the remote test as on the agent (exec): each as
//! `KILN_SECRET_<NAME>` and as a file in `KILN_SECRETS_DIR`, removed when the test
//! ends. They travel inside the upload (a [`SECRETS_DIR`] folder ahead of the bundle's
//! entries, 0700 with 0600 files), never on a command line. The SSH key and the
//! known_hosts secret never leave the agent.
use kiln_protocol::{Os, Outcome, SshSpec};
use std::time::Duration;

use super::ctx::{StageCtx, StageResult, Stop};

mod conn;
mod errors;
pub mod linux;
mod linux_run;
pub mod windows;
mod windows_run;

use conn::Conn;
pub use conn::pinned_line;
pub use errors::classify;

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
    /// Forwarded secrets as (environment name, file name in the secrets folder).
    pub secrets: Vec<(String, String)>,
}

/// The folder, at the top of the upload, that carries the forwarded secrets; the
/// remote start moves it out of the run folder before the test starts.
pub const SECRETS_DIR: &str = ".kiln-secrets";

/// A secret's file name in the remote secrets folder: `[A-Za-z0-9._-]`, the rest `_`.
pub fn secret_file(name: &str) -> String {
    let f: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match f.as_str() {
        "" | "." | ".." => format!("_{f}"),
        _ => f,
    }
}

/// The secrets the remote test gets: the stage's, but the SSH key and the
/// known_hosts secret, sorted by name.
pub fn forwarded_secrets<'a>(ctx: &'a StageCtx, spec: &SshSpec) -> Vec<(&'a str, &'a [u8])> {
    let mut v: Vec<(&str, &[u8])> = ctx
        .secrets
        .iter()
        .filter(|(n, _)| **n != spec.key && Some(*n) != spec.known_hosts.as_ref())
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    v.sort();
    v
}

/// The upload: the forwarded secrets (a 0700 [`SECRETS_DIR`] of 0600 files), then
/// the bundle's own entries, as one tar stream.
pub fn upload_stream(secrets: &[(&str, &[u8])], bundle: Vec<u8>) -> std::io::Result<Vec<u8>> {
    if secrets.is_empty() {
        return Ok(bundle);
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o700);
    h.set_size(0);
    b.append_data(&mut h, format!("{SECRETS_DIR}/"), std::io::empty())?;
    for (name, value) in secrets {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o600);
        h.set_size(value.len() as u64);
        b.append_data(
            &mut h,
            format!("{SECRETS_DIR}/{}", secret_file(name)),
            *value,
        )?;
    }
    let mut out = b.into_inner()?;
    // `into_inner` ends the archive with two zero blocks; the bundle's entries (and
    // its own end) follow instead.
    out.truncate(out.len() - 1024);
    out.extend_from_slice(&bundle);
    Ok(out)
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
        if spec.os == Os::Windows {
            // The entrypoint is a cmd.exe line: inside its "…" a `"` ends the quoting
            // and `%NAME%` expands, whatever PowerShell's quoting says.
            for (k, v) in ctx.env() {
                if let Some(c) = v.chars().find(|c| matches!(c, '"' | '%' | '\r' | '\n')) {
                    return Err(format!(
                        "environment value of {k} contains {c:?}, which a Windows command line cannot carry"
                    ));
                }
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
            secrets: forwarded_secrets(ctx, spec)
                .iter()
                .map(|(n, _)| (super::exec::secret_var(n), secret_file(n)))
                .collect(),
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
    let bundle = match upload_stream(&forwarded_secrets(ctx, spec), bundle) {
        Ok(b) => b,
        Err(e) => return StageResult::error(format!("packing the secrets: {e}")),
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
        Os::Windows => windows_run::run(ctx, &conn, &remote, bundle).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{Stage, StageKind};

    fn spec(os: Os) -> SshSpec {
        SshSpec {
            host: "h".into(),
            port: 22,
            user: "u".into(),
            os,
            key: "k".into(),
            host_key: None,
            known_hosts: Some("kh".into()),
            keep: false,
            base_dir: None,
        }
    }

    #[test]
    fn windows_refuses_env_values_its_command_line_cannot_carry() {
        for (value, ok) in [
            ("plain 'quoted' & <ok>", true),
            ("a\"b", false),
            ("%PATH%", false),
        ] {
            let stage = Stage {
                env: vec![("V".into(), value.into())],
                ..Stage::new("s", StageKind::Ssh(spec(Os::Windows)))
            };
            let (ctx, _) = StageCtx::for_test(stage, "/nonexistent".into());
            let r = RemoteRun::new(&ctx, &spec(Os::Windows));
            assert_eq!(r.is_ok(), ok, "{value}: {r:?}");
            // Linux quotes anything.
            assert!(RemoteRun::new(&ctx, &spec(Os::Linux)).is_ok());
        }
    }

    #[test]
    fn forwarded_secrets_leave_out_the_key_and_known_hosts() {
        let (mut ctx, _) = StageCtx::for_test(
            Stage::new("s", StageKind::Ssh(spec(Os::Linux))),
            "/nonexistent".into(),
        );
        for n in ["k", "kh", "b-token", "a/token"] {
            ctx.secrets.insert(n.into(), n.as_bytes().to_vec());
        }
        let names: Vec<&str> = forwarded_secrets(&ctx, &spec(Os::Linux))
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(names, ["a/token", "b-token"]);
        assert_eq!(secret_file("a/token"), "a_token");
        assert_eq!(secret_file(".."), "_..");
    }
}
