//! Holding a machine for a person after its run (the plan's `hold`): an SSH server
//! with the ticket's keys (boot mode), a `Held` frame, and orders from the coordinator
//! (release, retry a stage, approve a held disk) until the hold ends.
use base64::Engine;
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How this agent holds a run whose plan asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HoldMode {
    /// The plan's hold is not kept (`kiln-agent run` without `--hold`): the run ends.
    #[default]
    Off,
    /// Wait for orders, start no SSH server (`kiln-agent run --hold`: an installed
    /// host has its own).
    Wait,
    /// Start an SSH server with the ticket's keys, then wait (boot mode).
    Ssh(SshConfig),
}

/// Where the held image's SSH server keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    /// root's home: `.ssh/authorized_keys` is written there.
    pub home: PathBuf,
    /// The host key file, made at boot.
    pub host_key: PathBuf,
    /// TCP port.
    pub port: u16,
}

impl SshConfig {
    /// The netboot image's: `/root`, `/etc/dropbear`, port 22.
    pub fn image() -> SshConfig {
        SshConfig {
            home: PathBuf::from("/root"),
            host_key: PathBuf::from("/etc/dropbear/dropbear_ed25519_host_key"),
            port: 22,
        }
    }
}

/// A running SSH server; killed when dropped.
#[derive(Debug)]
pub struct SshServer {
    child: Child,
    /// The host key's fingerprint, `SHA256:…` as `ssh` prints it.
    pub fingerprint: String,
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `SHA256:…` fingerprint of an OpenSSH public key line (`TYPE BASE64 …`), as
/// `ssh-keygen -lf` and `ssh` print it.
pub fn fingerprint(line: &str) -> Result<String, String> {
    let blob = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("not a public key line: {line:?}"))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|e| format!("public key is not base64: {e}"))?;
    let sum = sha2::Sha256::digest(&raw);
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sum)
    ))
}

/// Writes `home/.ssh/authorized_keys` with exactly `keys` (0700 folder, 0600 file,
/// replacing what was there).
pub fn write_authorized_keys(home: &Path, keys: &[String]) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = home.join(".ssh");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let path = dir.join("authorized_keys");
    let tmp = dir.join("authorized_keys.tmp");
    let mut text = String::new();
    for k in keys {
        // One key per line: a key with a newline in it would smuggle in another.
        let k = k.trim();
        if k.is_empty() || k.contains(['\n', '\r']) {
            continue;
        }
        text.push_str(k);
        text.push('\n');
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Makes a fresh ed25519 host key with `dropbearkey` and returns its public line.
fn make_host_key(path: &Path) -> Result<String, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let out = Command::new("dropbearkey")
        .args(["-t", "ed25519", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("dropbearkey: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "dropbearkey failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("ssh-ed25519 "))
        .map(str::to_string)
        .ok_or_else(|| "dropbearkey printed no public key".to_string())
}

/// Starts dropbear: key-only (`-s`), root allowed by key only, the ticket's keys
/// alone in root's authorized_keys, a host key made now. Its log goes to the console.
pub fn start_ssh(c: &SshConfig, keys: &[String]) -> Result<SshServer, String> {
    if keys.is_empty() {
        return Err("the plan's hold names no keys (hold_keys): no SSH server".into());
    }
    write_authorized_keys(&c.home, keys)?;
    let line = make_host_key(&c.host_key)?;
    let fingerprint = fingerprint(&line)?;
    let child = Command::new("dropbear")
        // Foreground, log to stderr, no passwords at all, no remote forwarding.
        .args(["-F", "-E", "-s", "-g", "-k", "-r"])
        .arg(&c.host_key)
        .args(["-p", &c.port.to_string(), "-P", "/run/dropbear.pid"])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("dropbear: {e}"))?;
    Ok(SshServer { child, fingerprint })
}

/// The machine's addresses for `ssh root@ADDR`: every interface's IPv4 and global
/// IPv6 address, loopback and link-local left out.
pub fn addresses() -> Vec<String> {
    let Ok(ifs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in ifs {
        let Some(a) = i.address else { continue };
        if let Some(v4) = a.as_sockaddr_in() {
            let ip = v4.ip();
            if !ip.is_loopback() && !ip.is_link_local() {
                out.push(ip.to_string());
            }
        } else if let Some(v6) = a.as_sockaddr_in6() {
            let ip = v6.ip();
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            if !ip.is_loopback() && !link_local {
                out.push(ip.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

static REBOOT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static HELD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records that this process held a run (boot mode powers off after it, whatever
/// happens to the final report).
pub fn note_held() {
    HELD.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether this process held a run.
pub fn was_held() -> bool {
    HELD.load(std::sync::atomic::Ordering::SeqCst)
}

/// Records that the release asked for a reboot (`run release --reboot`).
pub fn ask_reboot(reboot: bool) {
    REBOOT.store(reboot, std::sync::atomic::Ordering::SeqCst);
}

/// Whether the held run's release asked for a reboot instead of a power off.
pub fn reboot_asked() -> bool {
    REBOOT.load(std::sync::atomic::Ordering::SeqCst)
}

/// How long a hold lasts, in words (`1m`, `4h`, `90s`).
pub fn words(secs: u64) -> String {
    match secs {
        s if s % 86400 == 0 && s > 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint agrees with what dropbearkey itself prints for a key it made
    /// (and with `ssh-keygen -lf` on the same line).
    #[test]
    fn fingerprint_matches_the_tools() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("hk");
        let Ok(out) = Command::new("dropbearkey")
            .args(["-t", "ed25519", "-f"])
            .arg(&key)
            .output()
        else {
            panic!("dropbearkey is not installed (Debian dropbear-bin)");
        };
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text.lines().find(|l| l.starts_with("ssh-ed25519")).unwrap();
        let want = text
            .lines()
            .find_map(|l| l.strip_prefix("Fingerprint: "))
            .unwrap();
        assert_eq!(fingerprint(line).unwrap(), want.trim());
        std::fs::write(d.path().join("k.pub"), format!("{line}\n")).unwrap();
        let kg = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(d.path().join("k.pub"))
            .output()
            .unwrap();
        let kg = String::from_utf8_lossy(&kg.stdout).to_string();
        assert!(kg.contains(&fingerprint(line).unwrap()), "{kg}");
        assert!(fingerprint("ssh-ed25519").is_err());
        assert!(fingerprint("ssh-ed25519 !!!").is_err());
    }

    #[test]
    fn authorized_keys_hold_exactly_the_tickets_keys() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".ssh")).unwrap();
        std::fs::write(d.path().join(".ssh/authorized_keys"), "ssh-ed25519 OLD x\n").unwrap();
        let keys = vec![
            "ssh-ed25519 AAAA one".to_string(),
            "ssh-ed25519 BBBB two\nssh-ed25519 EVIL x".to_string(),
            "  ".to_string(),
        ];
        let p = write_authorized_keys(d.path(), &keys).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "ssh-ed25519 AAAA one\n"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&p), mode(&d.path().join(".ssh"))), (0o600, 0o700));
    }

    #[test]
    fn hold_lengths_in_words() {
        assert_eq!(
            [words(60), words(4 * 3600), words(7 * 86400), words(90)],
            ["1m", "4h", "7d", "90s"]
        );
    }
}
