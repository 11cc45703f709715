//! Shared harness: binary paths, state folders, a coordinator on port 0, tool checks.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`kiln-coordinator`, `kiln-agent`).
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        p.display()
    );
    p
}

pub use kiln_testkit::{require_tool, skip};

/// Output of a command, with stdout/stderr as strings.
#[derive(Debug)]
pub struct Out {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `kiln-coordinator --state STATE ARGS…`.
pub fn kc(state: &Path, args: &[&str]) -> Out {
    Command::new(bin("kiln-coordinator"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("running kiln-coordinator")
        .into()
}

/// Runs `kiln-agent ARGS…`.
pub fn agent(args: &[&str]) -> Out {
    Command::new(bin("kiln-agent"))
        .args(args)
        .output()
        .expect("running kiln-agent")
        .into()
}

/// A fresh, initialized state folder inside a temp dir (kept alive by the returned guard).
pub fn fresh_state() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let o = kc(&state, &["init"]);
    assert_eq!(o.code, 0, "init failed: {}", o.stderr);
    (dir, state)
}

/// A running `kiln-coordinator serve` on 127.0.0.1:0; killed on drop.
pub struct Coordinator {
    /// The child process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The state folder.
    pub state: PathBuf,
}

impl Coordinator {
    /// Starts a server on `state` and waits until it listens (no sleeps: it writes
    /// its address file once bound).
    pub fn start(state: &Path) -> Coordinator {
        Self::start_with(state, &[])
    }

    /// Starts a server with extra `serve` arguments, its pages and JSON readable
    /// without a login (`--public-read`), as most tests read them.
    pub fn start_with(state: &Path, extra: &[&str]) -> Coordinator {
        Self::start_env(state, extra, &[])
    }

    /// Starts a server whose pages and JSON need a login (no `--public-read`).
    pub fn start_private(state: &Path, extra: &[&str]) -> Coordinator {
        Self::spawn(state, extra, &[])
    }

    /// Starts a server with extra `serve` arguments and environment variables, its
    /// pages and JSON readable without a login (`--public-read`).
    pub fn start_env(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Coordinator {
        let mut args = vec!["--public-read"];
        args.extend_from_slice(extra);
        Self::spawn(state, &args, env)
    }

    fn spawn(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Coordinator {
        Self::spawn_at(state, "127.0.0.1:0", extra, env)
    }

    /// Starts a server listening on `listen` (a restart on the address agents know),
    /// its pages and JSON readable without a login (`--public-read`).
    pub fn start_at(state: &Path, listen: &str, extra: &[&str]) -> Coordinator {
        let mut args = vec!["--public-read"];
        args.extend_from_slice(extra);
        Self::spawn_at(state, listen, &args, &[])
    }

    fn spawn_at(state: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Coordinator {
        let addr_file = state.join(format!("addr.{}", std::process::id()));
        let _ = std::fs::remove_file(&addr_file);
        let mut child = Command::new(bin("kiln-coordinator"))
            .arg("--state")
            .arg(state)
            .args(["serve", "--listen", listen, "--addr-file"])
            .arg(&addr_file)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kiln-coordinator serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && a.ends_with('\n')
            {
                break a.trim().to_string();
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(e) = child.stderr.take() {
                    for l in BufReader::new(e).lines().map_while(Result::ok) {
                        err.push_str(&l);
                        err.push('\n');
                    }
                }
                panic!("coordinator exited early ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "coordinator did not start listening"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // Forward the server's log to the test's stderr so failures show it.
        if let Some(e) = child.stderr.take() {
            std::thread::spawn(move || {
                for l in BufReader::new(e).lines().map_while(Result::ok) {
                    eprintln!("[coordinator] {l}");
                }
            });
        }
        Coordinator {
            child,
            url: format!("http://{addr}"),
            state: state.to_path_buf(),
        }
    }

    /// SIGKILLs the server and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes (for state that
/// another process changes; never a bare sleep).
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `text` to `dir/name` (creating folders) and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&p, text).expect("write");
    p
}

/// Registers a host bound to this machine's first MAC (and no serial), so tickets
/// for it verify here. Returns the MAC used.
pub fn add_local_host(state: &Path, name: &str) -> String {
    let mac = local_mac().expect("this machine has no non-loopback network interface");
    let o = kc(state, &["host", "add", name, "--mac", &mac]);
    assert_eq!(o.code, 0, "host add failed: {}", o.stderr);
    mac
}

/// The first non-loopback, non-zero MAC in /sys/class/net.
pub fn local_mac() -> Option<String> {
    let mut macs: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .filter(|e| e.file_name() != "lo")
        .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
        .map(|s| s.trim().to_string())
        .filter(|m| m.len() == 17 && m != "00:00:00:00:00:00")
        .collect();
    macs.sort();
    macs.into_iter().next()
}
