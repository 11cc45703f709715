//! The content-addressed store: `cas/<sha256 hex>`, written once, never changed.
use anyhow::{Context, Result, bail};
use kiln_protocol::Sha256;
use sha2::Digest;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Handle on a state folder's `cas/`.
#[derive(Debug, Clone)]
pub struct Cas {
    dir: PathBuf,
}

impl Cas {
    /// The CAS under `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        Cas { dir }
    }

    /// Where the object named `sha` lives (it may not exist).
    pub fn path(&self, sha: &Sha256) -> PathBuf {
        self.dir.join(sha.to_string())
    }

    /// Whether the object exists.
    pub fn has(&self, sha: &Sha256) -> bool {
        self.path(sha).is_file()
    }

    /// Stores `bytes`; returns their digest. Idempotent.
    pub fn put(&self, bytes: &[u8]) -> Result<Sha256> {
        let sha = Sha256::of(bytes);
        if !self.has(&sha) {
            crate::fsutil::write_atomic(&self.path(&sha), bytes, 0o644)?;
        }
        Ok(sha)
    }

    /// Streams `reader` into the CAS, at most `cap` bytes; when `expect` is given the
    /// digest must match or nothing is stored. Returns digest and size.
    pub fn put_stream(
        &self,
        reader: &mut dyn Read,
        cap: u64,
        expect: Option<&Sha256>,
    ) -> Result<(Sha256, u64)> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).context("reading random bytes")?;
        let tmp = self.dir.join(format!(".in-{}", kiln_protocol::hex(&nonce)));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > cap {
                    bail!("upload exceeds the {cap}-byte cap");
                }
                h.update(&buf[..n]);
                f.write_all(&buf[..n])?;
            }
            f.sync_all()?;
            let sha = Sha256(h.finalize().into());
            if let Some(want) = expect
                && *want != sha
            {
                bail!("content hashes to {sha}, not {want}");
            }
            fs::rename(&tmp, self.path(&sha))?;
            crate::fsutil::sync_dir(&self.dir)?;
            Ok((sha, total))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Copies a file into the CAS.
    pub fn put_file(&self, path: &Path) -> Result<(Sha256, u64)> {
        let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        self.put_stream(&mut f, u64::MAX, None)
    }

    /// Reads a whole object.
    pub fn get(&self, sha: &Sha256) -> Result<Vec<u8>> {
        fs::read(self.path(sha)).with_context(|| format!("reading cas object {sha}"))
    }

    /// Removes upload temp files (`.in-*`) that a killed writer left behind and that
    /// nobody has written for `idle` (another process may be storing right now).
    /// Returns how many went.
    pub fn sweep_temp(&self, idle: std::time::Duration) -> usize {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let before = std::time::SystemTime::now() - idle;
        let mut n = 0;
        for e in dir.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < before);
            if old && e.file_name().to_string_lossy().starts_with(".in-") {
                match fs::remove_file(e.path()) {
                    Ok(()) => n += 1,
                    Err(err) => log::warn!("removing {}: {err}", e.path().display()),
                }
            }
        }
        n
    }
}
