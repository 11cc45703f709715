//! The enrolled host key: `kiln-agent enroll` makes it once; a ticket that names it
//! (an enrolled host's) is claimed with it, so only this machine can report the run.
use kiln_protocol::{PublicKey, SecretKey, Ticket};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::exit::{EXIT_INFRA, EXIT_REFUSED};

/// Where the host key lives unless `--key`/`--agent-key` says otherwise.
pub const DEFAULT_AGENT_KEY: &str = "/var/lib/kiln/agent.key";

/// Largest key file read (one line).
const MAX_KEY_BYTES: u64 = 4096;

/// Reads a secret key file (bounded); the error is one line naming the file.
pub fn load(path: &Path) -> Result<SecretKey, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(m) = f.metadata()
        && m.permissions().mode() & 0o077 != 0
    {
        log::warn!(
            "{}: mode {:o} lets others read the host key (want 0600)",
            path.display(),
            m.permissions().mode() & 0o777
        );
    }
    let mut text = String::new();
    f.take(MAX_KEY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_KEY_BYTES {
        return Err(format!(
            "{}: larger than {MAX_KEY_BYTES} bytes, not a key file",
            path.display()
        ));
    }
    SecretKey::from_line(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The claim key a ticket needs: `None` when it names no enrolled key (the agent then
/// makes a per-run key), else the host key at `path` (default
/// [`DEFAULT_AGENT_KEY`]), which must be the one the ticket names. The error is the
/// one-line refusal.
pub fn for_ticket(t: &Ticket, path: Option<&Path>) -> Result<Option<SecretKey>, String> {
    let Some(want) = t.host.agent_key else {
        return Ok(None);
    };
    let path = path.map_or_else(|| PathBuf::from(DEFAULT_AGENT_KEY), Path::to_path_buf);
    let refuse = |why: String| {
        format!(
            "ticket refused: it is for enrolled host {} and names agent key {}, which this machine does not hold ({why})",
            t.host.name,
            want.fingerprint()
        )
    };
    let key = load(&path).map_err(refuse)?;
    if key.public() != want {
        return Err(refuse(format!(
            "{} holds {}",
            path.display(),
            key.public().fingerprint()
        )));
    }
    Ok(Some(key))
}

/// The public key line printed for `host add --agent-key`.
pub fn public_line(key: &PublicKey) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-._".contains(*c))
        .take(64)
        .collect();
    key.to_line(&format!("kiln-agent@{host}"))
}

/// Makes the host key at `path` (0600) unless one exists: the key and whether it was
/// made now. An existing key is never overwritten. `Err` carries the exit status
/// ([`crate::exit`]) and a one-line reason.
pub fn enroll(path: &Path) -> Result<(SecretKey, bool), (i32, String)> {
    if path.exists() || path.is_symlink() {
        return load(path).map(|k| (k, false)).map_err(|e| {
            (
                EXIT_REFUSED,
                format!("{e}; not a kiln host key, move it away first"),
            )
        });
    }
    let infra = |e: String| (EXIT_INFRA, e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| infra(format!("{}: {e}", dir.display())))?;
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| infra(format!("random key seed: {e}")))?;
    let key = SecretKey::from_seed(seed);
    // Written whole under a temporary name, then linked into place: a crash never
    // leaves a half key, and a key that appeared meanwhile is never replaced.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{}\n", key.to_line()).as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok((key, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load(path)
            .map(|k| (k, false))
            .map_err(|e| (EXIT_REFUSED, e)),
        Err(e) => Err(infra(format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enroll_makes_a_private_key_once_and_tickets_need_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/kiln/agent.key");
        let (key, created) = enroll(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second enroll keeps the key.
        let (again, created) = enroll(&path).unwrap();
        assert!(!created);
        assert_eq!(again.public(), key.public());
        // Something else in its place is refused, never overwritten.
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, "hello").unwrap();
        assert_eq!(enroll(&junk).unwrap_err().0, EXIT_REFUSED);
        assert_eq!(std::fs::read_to_string(&junk).unwrap(), "hello");

        let mut t = Ticket {
            version: kiln_protocol::VERSION,
            run: kiln_protocol::RunId([1; 16]),
            issued_at: 0,
            not_after: u64::MAX,
            host: kiln_protocol::HostBinding {
                name: "rack1".into(),
                macs: vec![],
                serial: Some("S".into()),
                spec: Default::default(),
                agent_key: None,
            },
            coordinator: None,
            plan: kiln_protocol::Plan {
                name: "p".into(),
                stages: vec![],
                fail_fast: true,
                timeout_s: 0,
                hold: Default::default(),
            },
        };
        assert!(for_ticket(&t, Some(&path)).unwrap().is_none());
        t.host.agent_key = Some(key.public());
        let k = for_ticket(&t, Some(&path)).unwrap().unwrap();
        assert_eq!(k.public(), key.public());
        let other = SecretKey::from_seed([9; 32]).public();
        t.host.agent_key = Some(other);
        let e = for_ticket(&t, Some(&path)).unwrap_err();
        assert!(e.contains(&other.fingerprint()) && !e.contains('\n'), "{e}");
        let e = for_ticket(&t, Some(&dir.path().join("missing"))).unwrap_err();
        assert!(e.contains("does not hold"), "{e}");
    }
}
