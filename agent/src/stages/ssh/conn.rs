//! One OpenSSH client connection per stage: the key and known_hosts in a private
//! folder, strict host keys, no user config, and a multiplexed master that every
//! command of the stage reuses (closed with `-O exit`).
use kiln_protocol::SshSpec;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::stages::ctx::{StageCtx, Stop};
use crate::stages::proc::{Keep, ProcEnd, ProcSpec, run_streamed};

/// How long a master stays up with no session on it (so a crashed agent leaves none).
const PERSIST_S: u32 = 60;
/// The longest control socket path we put under the stage folder; longer goes to /tmp
/// (sun_path is 108 bytes and ssh adds a 17-byte suffix while binding).
const MAX_SOCKET_PATH: usize = 80;
/// Captured stdout kept at most (replies of our own scripts are a line or two).
const MAX_CAPTURE: usize = 1 << 20;
/// HostKeyAlias under which a pinned `host_key` is written.
const PINNED_ALIAS: &str = "kiln-pinned-host";

/// An open stage connection: files and the argv prefix for every ssh call.
pub struct Conn {
    private: PathBuf,
    socket_dir: Option<PathBuf>,
    args: Vec<String>,
    target: String,
    closed: std::sync::atomic::AtomicBool,
}

/// How a captured command ended.
#[derive(Debug)]
pub enum Captured {
    /// Exited with a code (255: ssh's own failure); stdout (unless sent to a file)
    /// and the tail of stderr.
    Done(i32, Vec<u8>, String),
    /// The stage's stop signal fired first.
    Stopped(Stop),
    /// ssh could not run, was killed, or ran past its time limit.
    Failed(String),
}

/// Where a captured command's stdout goes.
pub enum Out {
    /// Into memory (capped).
    Memory,
    /// Into this file.
    File(fs::File),
}

/// 12 random hex digits.
pub fn random_hex() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::getrandom(&mut b);
    kiln_protocol::hex(&b)
}

/// A pinned key as a known_hosts line under `PINNED_ALIAS`; accepts `type base64
/// [comment]` or a whole known_hosts line (`host type base64`).
pub fn pinned_line(key: &str) -> Result<String, String> {
    let fields: Vec<&str> = key.split_whitespace().collect();
    let is_type =
        |t: &str| t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-");
    let (t, b) = match fields.as_slice() {
        [t, b, ..] if is_type(t) => (*t, *b),
        [_, t, b, ..] if is_type(t) => (*t, *b),
        _ => return Err("host_key is not an OpenSSH public key line (type base64)".into()),
    };
    if key.contains('\n') && key.trim().lines().count() > 1 {
        return Err("host_key must be one line".into());
    }
    Ok(format!("{PINNED_ALIAS} {t} {b}\n"))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    if !bytes.ends_with(b"\n") {
        f.write_all(b"\n")?;
    }
    Ok(())
}

fn safe_word(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.starts_with('-') || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("bad ssh {what} {s:?}"));
    }
    Ok(())
}

impl Conn {
    /// Writes the key and known_hosts into a private folder of the stage folder and
    /// builds the options; connects lazily (the first command becomes the master).
    pub fn new(ctx: &StageCtx, spec: &SshSpec) -> Result<Conn, String> {
        safe_word("host", &spec.host)?;
        safe_word("user", &spec.user)?;
        let key = ctx.secrets.get(&spec.key).ok_or_else(|| {
            format!(
                "secret {:?} (the ssh key) was not handed to the agent",
                spec.key
            )
        })?;
        let mut kh = String::new();
        if let Some(k) = &spec.host_key {
            kh = pinned_line(k)?;
        } else if let Some(name) = &spec.known_hosts {
            let v = ctx.secrets.get(name).ok_or_else(|| {
                format!("secret {name:?} (known_hosts) was not handed to the agent")
            })?;
            kh = String::from_utf8_lossy(v).into_owned();
        }
        if kh.trim().is_empty() {
            return Err(
                "no host key pinned (host_key or known_hosts): refusing trust on first use".into(),
            );
        }
        let private = ctx.dir.join(format!(".kiln-ssh-{}", random_hex()));
        let io = |e: std::io::Error| format!("preparing ssh files: {e}");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(io)?;
        let mut conn = Conn {
            private: private.clone(),
            socket_dir: None,
            args: vec![],
            target: spec.host.clone(),
            // Nothing to close until the options exist.
            closed: true.into(),
        };
        write_private(&private.join("id"), key).map_err(io)?;
        write_private(&private.join("known_hosts"), kh.as_bytes()).map_err(io)?;
        let mut control = private.join("cm");
        if control.as_os_str().len() > MAX_SOCKET_PATH {
            let d = std::env::temp_dir().join(format!("kiln-ssh-{}", random_hex()));
            fs::DirBuilder::new().mode(0o700).create(&d).map_err(io)?;
            control = d.join("cm");
            conn.socket_dir = Some(d);
        }
        let p = |f: &str| private.join(f).display().to_string();
        let mut o = vec!["-F".to_string(), "/dev/null".into(), "-T".into()];
        let opts = [
            "BatchMode=yes".to_string(),
            "StrictHostKeyChecking=yes".into(),
            format!("UserKnownHostsFile={}", p("known_hosts")),
            "GlobalKnownHostsFile=/dev/null".into(),
            "UpdateHostKeys=no".into(),
            "IdentitiesOnly=yes".into(),
            format!("IdentityFile={}", p("id")),
            "IdentityAgent=none".into(),
            "PasswordAuthentication=no".into(),
            "KbdInteractiveAuthentication=no".into(),
            "ConnectTimeout=15".into(),
            "ServerAliveInterval=10".into(),
            "ServerAliveCountMax=3".into(),
            "ControlMaster=auto".into(),
            format!("ControlPath={}", control.display()),
            format!("ControlPersist={PERSIST_S}"),
            "LogLevel=ERROR".into(),
        ];
        for opt in opts {
            o.push("-o".into());
            o.push(opt);
        }
        if spec.host_key.is_some() {
            o.extend(["-o".into(), format!("HostKeyAlias={PINNED_ALIAS}")]);
        }
        o.extend([
            "-p".into(),
            spec.port.to_string(),
            "-l".into(),
            spec.user.clone(),
        ]);
        conn.args = o;
        conn.closed = false.into();
        Ok(conn)
    }

    /// The private folder (key, known_hosts, scratch files).
    pub fn private_dir(&self) -> &Path {
        &self.private
    }

    /// `ssh <options> -- <host> <remote>`.
    pub fn argv(&self, remote: &str) -> Vec<String> {
        let mut v = vec!["ssh".to_string()];
        v.extend(self.args.iter().cloned());
        v.extend(["--".into(), self.target.clone(), remote.into()]);
        v
    }

    fn control_op(&self, op: &str) -> Vec<String> {
        let mut v = vec!["ssh".to_string()];
        v.extend(self.args.iter().cloned());
        v.extend(["-O".into(), op.into(), "--".into(), self.target.clone()]);
        v
    }

    /// Whether the master connection is still up.
    pub async fn master_alive(&self, ctx: &StageCtx) -> bool {
        let limit = Duration::from_secs(5);
        matches!(
            capture(
                ctx,
                self.control_op("check"),
                None,
                Out::Memory,
                false,
                limit
            )
            .await,
            Captured::Done(0, ..)
        )
    }

    /// Closes the master connection (`-O exit`).
    pub async fn close(&self, ctx: &StageCtx) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let limit = Duration::from_secs(5);
        let _ = capture(
            ctx,
            self.control_op("exit"),
            None,
            Out::Memory,
            false,
            limit,
        )
        .await;
    }

    /// Runs `remote` over the connection and captures its output.
    pub async fn run(
        &self,
        ctx: &StageCtx,
        remote: &str,
        stdin: Option<Vec<u8>>,
        out: Out,
        honor_stop: bool,
        limit: Duration,
    ) -> Captured {
        capture(ctx, self.argv(remote), stdin, out, honor_stop, limit).await
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            // The stage was dropped mid-way: close the master now (a local socket
            // operation, milliseconds), or it would linger for ControlPersist.
            let argv = self.control_op("exit");
            let _ = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.private);
        if let Some(d) = &self.socket_dir {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// Runs argv through the stage's one process supervisor
/// ([`crate::stages::proc::run_streamed`]: its own process group, SIGTERM then SIGKILL
/// on a stop or the time limit), quietly: stdout to memory (capped) or a file,
/// stderr's tail kept; ended on `limit`, or on the stop signal if `honor_stop`.
async fn capture(
    ctx: &StageCtx,
    argv: Vec<String>,
    stdin: Option<Vec<u8>>,
    out: Out,
    honor_stop: bool,
    limit: Duration,
) -> Captured {
    let mut spec = ProcSpec::new(argv);
    spec.stdin = stdin;
    spec.timeout = Some(limit);
    spec.ignore_stop = !honor_stop;
    spec.quiet_stdout = true;
    spec.quiet_stderr = true;
    spec.keep_stderr = Keep::RawTail(MAX_CAPTURE / 16);
    match out {
        Out::Memory => spec.keep_stdout = Keep::Raw(MAX_CAPTURE),
        Out::File(f) => spec.stdout_file = Some(std::sync::Arc::new(f)),
    }
    let o = run_streamed(ctx, &spec).await;
    let err = String::from_utf8_lossy(&o.stderr.raw).into_owned();
    match o.end {
        ProcEnd::Exited(c) => Captured::Done(c, o.stdout.raw, err),
        ProcEnd::Signaled(_) => Captured::Failed(format!(
            "ssh was killed: {}",
            super::errors::last_line(&err)
        )),
        ProcEnd::Stopped(stop) => Captured::Stopped(stop),
        ProcEnd::TimedOut(_) => {
            Captured::Failed(format!("ssh took longer than {}s", limit.as_secs()))
        }
        ProcEnd::SpawnFailed(e) => Captured::Failed(format!("cannot run ssh: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_lines() {
        assert_eq!(
            pinned_line("ssh-ed25519 AAAAC3 me@x").unwrap(),
            "kiln-pinned-host ssh-ed25519 AAAAC3\n"
        );
        assert_eq!(
            pinned_line("[10.0.0.5]:22 ssh-ed25519 AAAAC3").unwrap(),
            "kiln-pinned-host ssh-ed25519 AAAAC3\n"
        );
        assert!(pinned_line("hello").is_err());
        assert!(pinned_line("").is_err());
    }
}
