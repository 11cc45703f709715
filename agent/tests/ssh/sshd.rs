//! A real OpenSSH sshd on loopback for tests: its own host key, an authorized client
//! key, a free port, readiness by connecting; killed on drop.
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts sshd (it must be started by absolute path: it re-executes itself).
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd.
pub struct Sshd {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its folder (config, keys, log).
    pub dir: tempfile::TempDir,
    /// The host's public key line (`ssh-ed25519 AAAA… comment`).
    pub host_pub: String,
    /// The authorized client's private key.
    pub client_key: Vec<u8>,
    /// The login user (the user running the tests).
    pub user: String,
}

/// Makes an ed25519 key pair `dir/name`, `dir/name.pub`; returns (private, public line).
pub fn keygen(dir: &Path, name: &str) -> (Vec<u8>, String) {
    let path = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .expect("running ssh-keygen");
    assert!(st.success(), "ssh-keygen failed");
    let private = std::fs::read(&path).expect("reading private key");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("reading public key");
    (private, public.trim().to_string())
}

/// Whether sshd and ssh are installed; with `KILN_CI=1` a missing one fails the test,
/// otherwise the test is skipped loudly.
pub fn available() -> bool {
    let ok = Path::new(SSHD).is_file()
        && Command::new("sh")
            .args(["-c", "command -v ssh && command -v ssh-keygen"])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !ok {
        kiln_testkit::skip("openssh-server and openssh-client are not installed");
    }
    ok
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local addr").port()
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("running id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Sshd {
    /// Starts sshd on a free loopback port and waits until it greets.
    pub fn start() -> Sshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, host_pub) = keygen(dir.path(), "host");
        let (client_key, client_pub) = keygen(dir.path(), "client");
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{client_pub}\n"),
        )
        .expect("authorized_keys");
        // Privilege separation needs this folder (as root); harmless otherwise.
        let _ = std::fs::create_dir_all("/run/sshd");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let cfg = config(dir.path(), port);
            let cfg_path = dir.path().join("sshd_config");
            std::fs::write(&cfg_path, cfg).expect("writing sshd_config");
            let log = std::fs::File::create(dir.path().join("sshd.log")).expect("sshd.log");
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting sshd");
            if wait_ready(&mut child, port) {
                return Sshd {
                    child,
                    port,
                    dir,
                    host_pub,
                    client_key,
                    user: current_user(),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last = std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default();
        }
        panic!("sshd did not start: {last}");
    }

    /// The sshd log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// A scratch path inside the sshd's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nPidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
         PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\nMaxStartups 100\nMaxSessions 100\n\
         Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
}

/// Waits until the port answers with an SSH banner (or sshd exits).
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 8];
            if s.read_exact(&mut b).is_ok() && b.starts_with(b"SSH-") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
