//! The content-addressed store: `cas/<sha256 hex>`, written once, never changed.
use anyhow::{Context, Result, bail};
use kiln_protocol::Sha256;
use sha2::Digest;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An object written to a temp file in `cas/` and not yet visible: see
/// [`Cas::stage`]. Dropping it removes the temp file.
#[derive(Debug)]
pub struct Staged {
    /// Digest of the bytes.
    pub sha: Sha256,
    /// Length of the bytes.
    pub size: u64,
    tmp: Option<PathBuf>,
}

impl Staged {
    /// The temp file, now the caller's to rename or remove.
    fn keep(mut self) -> PathBuf {
        self.tmp.take().expect("a staged object has its temp file")
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// An object [`Cas::publish`] created: enough to take it back.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// Its digest.
    pub sha: Sha256,
    ino: u64,
}

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

    /// The `cas/` folder.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        let staged = self.stage(reader, cap, "upload")?;
        if let Some(want) = expect
            && *want != staged.sha
        {
            bail!("content hashes to {}, not {want}", staged.sha);
        }
        let (sha, size) = (staged.sha, staged.size);
        let tmp = staged.keep();
        let result = fs::rename(&tmp, self.path(&sha))
            .map_err(anyhow::Error::from)
            .and_then(|_| self.sync());
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|_| (sha, size))
    }

    /// Streams `reader` into a temp file in `cas/` (fsynced), at most `cap` bytes
    /// (`what` names them in the error), hashing as it goes. Nothing is visible under
    /// an object name until [`Cas::publish`]; a dropped [`Staged`] removes its file.
    pub fn stage(&self, reader: &mut dyn Read, cap: u64, what: &str) -> Result<Staged> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        self.stage_in(&self.dir, reader, cap, what)
    }

    /// [`Cas::stage`] into a temp file in `dir` instead of `cas/` (an import's
    /// staging folder, so a killed importer's blobs go with that folder). `dir` must
    /// be on the CAS's file system: [`Cas::publish`] hard-links from it.
    pub fn stage_in(
        &self,
        dir: &Path,
        reader: &mut dyn Read,
        cap: u64,
        what: &str,
    ) -> Result<Staged> {
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).context("reading random bytes")?;
        let mut staged = Staged {
            sha: Sha256([0; 32]),
            size: 0,
            tmp: Some(dir.join(format!(".in-{}", kiln_protocol::hex(&nonce)))),
        };
        let tmp = staged.tmp.clone().expect("just set");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
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
                bail!("{what} exceeds the {cap}-byte cap");
            }
            h.update(&buf[..n]);
            f.write_all(&buf[..n])
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        f.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        staged.sha = Sha256(h.finalize().into());
        staged.size = total;
        Ok(staged)
    }

    /// Makes a staged object visible under its name, never replacing one that is
    /// there. Returns what this call created (for [`Cas::unpublish`]), or `None`
    /// when the object already existed. Call [`Cas::sync`] after the last one.
    pub fn publish(&self, mut staged: Staged) -> Result<Option<Published>> {
        let tmp = staged
            .tmp
            .take()
            .expect("a staged object has its temp file");
        let path = self.path(&staged.sha);
        if let Err(e) = fs::create_dir_all(&self.dir) {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("creating {}", self.dir.display()));
        }
        let created = match fs::hard_link(&tmp, &path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("storing cas object {}", staged.sha));
            }
        };
        let ino = fs::metadata(&tmp).map(|m| m.ino());
        let _ = fs::remove_file(&tmp);
        if !created {
            return Ok(None);
        }
        Ok(Some(Published {
            sha: staged.sha,
            ino: ino.with_context(|| format!("storing cas object {}", staged.sha))?,
        }))
    }

    /// Takes back an object [`Cas::publish`] created, unless it was replaced since
    /// (another writer's rename gives it a new inode; content-addressed, it then
    /// belongs to that writer too).
    pub fn unpublish(&self, p: &Published) {
        let path = self.path(&p.sha);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == p.ino) {
            let _ = fs::remove_file(&path);
        }
    }

    /// fsyncs `cas/` so renames and links into it are durable.
    pub fn sync(&self) -> Result<()> {
        crate::fsutil::sync_dir(&self.dir)
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
