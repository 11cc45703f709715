//! The netboot image registry: `images.toml` names kernel + initrd pairs in the CAS.
use anyhow::{Context, Result, bail};
use kiln_protocol::Sha256;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::PathBuf;

use crate::fsutil::write_atomic;
use crate::state::{State, check_name, one_line};

const HEADER: &str =
    "# kiln netboot images: kernel + initrd in cas/ (kiln-coordinator image add)\n";

/// `images.toml`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    /// The images, by name.
    #[serde(default, rename = "image")]
    pub images: Vec<Image>,
}

/// One netboot image: a kernel and an initrd stored in the CAS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Unique name (`host add --image NAME`).
    pub name: String,
    /// sha256 of the kernel in `cas/`.
    pub kernel: String,
    /// sha256 of the initrd in `cas/`.
    pub initrd: String,
    /// Extra kernel command line, appended after kiln's own arguments.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
}

impl Image {
    /// The kernel's digest.
    pub fn kernel_sha(&self) -> Result<Sha256> {
        self.kernel
            .parse()
            .map_err(|_| anyhow::anyhow!("image {}: bad kernel sha256", self.name))
    }

    /// The initrd's digest.
    pub fn initrd_sha(&self) -> Result<Sha256> {
        self.initrd
            .parse()
            .map_err(|_| anyhow::anyhow!("image {}: bad initrd sha256", self.name))
    }
}

impl Images {
    /// The image named `name`.
    pub fn get(&self, name: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.name == name)
    }

    /// Adds `image`, replacing one of the same name.
    pub fn upsert(&mut self, image: Image) {
        match self.images.iter_mut().find(|i| i.name == image.name) {
            Some(slot) => *slot = image,
            None => self.images.push(image),
        }
    }
}

/// Path of `images.toml`.
pub fn path(state: &State) -> PathBuf {
    state.root.join("images.toml")
}

/// Reads `images.toml` (none yet: empty).
pub fn load(state: &State) -> Result<Images> {
    let p = path(state);
    let text = match kiln_protocol::io::read_text_capped(
        &p,
        crate::state::MAX_TOML_BYTES,
        "images.toml",
    ) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Images::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", p.display(), one_line(&e)))
}

/// Writes `images.toml` atomically.
pub fn save(state: &State, images: &Images) -> Result<()> {
    let body = toml::to_string_pretty(images).context("encoding images.toml")?;
    write_atomic(&path(state), format!("{HEADER}{body}").as_bytes(), 0o644)
}

/// The image named `name`, or an error saying how to add it (for `host add --image`).
pub fn require(state: &State, name: &str) -> Result<Image> {
    match load(state)?.get(name) {
        Some(i) => Ok(i.clone()),
        None => bail!(
            "no image {name:?} (add it with `kiln-coordinator image add {name} --kernel K --initrd I`)"
        ),
    }
}

/// Stores kernel and initrd in the CAS and records the image under `name`.
pub fn add(
    state: &State,
    name: &str,
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    cmdline: &str,
) -> Result<(Image, u64, u64)> {
    check_name(name, "image")?;
    if cmdline.contains(['\n', '\r']) {
        bail!("--cmdline must be one line");
    }
    for (what, p) in [("kernel", kernel), ("initrd", initrd)] {
        let md = fs::metadata(p).with_context(|| format!("reading {what} {}", p.display()))?;
        if !md.is_file() || md.len() == 0 {
            bail!("{what} {} is not a non-empty file", p.display());
        }
    }
    let cas = state.cas();
    let (k, ksize) = cas.put_file(kernel).context("storing the kernel")?;
    let (i, isize) = cas.put_file(initrd).context("storing the initrd")?;
    let image = Image {
        name: name.to_string(),
        kernel: k.to_string(),
        initrd: i.to_string(),
        cmdline: cmdline.trim().to_string(),
    };
    let mut images = load(state)?;
    images.upsert(image.clone());
    save(state, &images)?;
    Ok((image, ksize, isize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, State) {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = State::init(&d.path().join("s")).unwrap();
        (d, s)
    }

    #[test]
    fn add_stores_both_files_and_replaces_by_name() {
        let (d, s) = state();
        let k = d.path().join("k");
        let i = d.path().join("i");
        fs::write(&k, b"kernel").unwrap();
        fs::write(&i, b"initrd").unwrap();
        let (img, ks, is) = add(&s, "burnin", &k, &i, "quiet").unwrap();
        assert_eq!((ks, is), (6, 6));
        assert!(s.cas().has(&img.kernel_sha().unwrap()));
        assert!(s.cas().has(&img.initrd_sha().unwrap()));
        fs::write(&i, b"initrd2").unwrap();
        add(&s, "burnin", &k, &i, "").unwrap();
        let all = load(&s).unwrap();
        assert_eq!(all.images.len(), 1);
        assert_eq!(all.images[0].initrd, Sha256::of(b"initrd2").to_string());
        assert_eq!(all.images[0].cmdline, "");
    }

    #[test]
    fn bad_input_is_refused() {
        let (d, s) = state();
        let k = d.path().join("k");
        fs::write(&k, b"kernel").unwrap();
        let empty = d.path().join("empty");
        fs::write(&empty, b"").unwrap();
        assert!(add(&s, "../x", &k, &k, "").is_err());
        assert!(add(&s, "a", &k, &empty, "").is_err());
        assert!(add(&s, "a", &k, &d.path().join("missing"), "").is_err());
        assert!(add(&s, "a", &k, &k, "a\nb").is_err());
        let e = require(&s, "nope").unwrap_err().to_string();
        assert!(e.contains("image add nope"), "{e}");
    }
}
