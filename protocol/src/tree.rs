//! Test folders on disk: the tree hash, deterministic tar bundles, safe unpacking.
//!
//! Bundles are tars with entries in sorted path order, mtime 0, uid/gid 0, empty
//! owner names, and modes normalized to 0755 (directories, executables) or 0644, so
//! the same folder always gives the same bytes. Paths that leave the folder (`..`,
//! absolute paths, links pointing out or at other links) are refused both when
//! packing and when unpacking.
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::Digest;

use crate::{Error, Sha256};

/// One entry of a folder walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir,
    /// A regular file; `true` when any execute bit is set.
    File(bool),
    /// A symbolic link with its (relative, in-folder) target.
    Link(String),
}

fn unsafe_path(p: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Error::UnsafePath(p.into()))
}

/// What a path in a folder or bundle is, for [`check_links`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Link,
}

/// The folder's link rule, checked on the whole list of entries (so it does not
/// depend on the order of a walk or a tar). A link's target must be relative, must
/// not climb above the folder, and must not name a link, at its end or on the way:
/// `a -> b` where `b` is a link, and `x -> y/..` where `y` is a link, are refused.
/// With no link on the way, the target's text is the path the kernel follows, so a
/// link that stays inside by its text stays inside for real. No entry may lie under
/// a link either.
fn check_links<'a>(
    entries: impl Iterator<Item = (&'a [u8], Kind, Option<&'a [u8]>)> + Clone,
) -> io::Result<()> {
    use std::collections::HashMap;
    let mut kinds: HashMap<&[u8], Kind> = HashMap::new();
    for (path, kind, _) in entries.clone() {
        // A path listed twice (a tar may) counts as a link if either entry is one.
        let k = kinds.entry(path).or_insert(kind);
        if kind == Kind::Link {
            *k = Kind::Link;
        }
    }
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for (path, _, target) in entries {
        for (i, _) in path.iter().enumerate().filter(|(_, b)| **b == b'/') {
            if kinds.get(&path[..i]) == Some(&Kind::Link) {
                return Err(unsafe_path(format!(
                    "{} (inside the link {})",
                    show(path),
                    show(&path[..i])
                )));
            }
        }
        let Some(target) = target else { continue };
        let refuse =
            |why: String| unsafe_path(format!("{} -> {} ({why})", show(path), show(target)));
        if target.is_empty() {
            return Err(refuse("link without target".into()));
        }
        if target[0] == b'/' {
            return Err(refuse("link leaves the folder".into()));
        }
        let mut at: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
        at.pop();
        for part in target.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    if at.pop().is_none() {
                        return Err(refuse("link leaves the folder".into()));
                    }
                }
                p => {
                    at.push(p);
                    let here = at.join(&b'/');
                    if kinds.get(here.as_slice()) == Some(&Kind::Link) {
                        return Err(refuse(format!(
                            "link through the link {}; links may not point at links",
                            show(&here)
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Every entry under `root`, as (posix relative path, entry), sorted by path bytes.
/// Refuses non-UTF-8 names, special files, and links that break the folder's link
/// rule (absolute, climbing above the folder, or naming a link; see [`unpack`]).
pub fn walk(root: &Path) -> io::Result<Vec<(String, Entry)>> {
    let meta = fs::metadata(root)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", root.display())))?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a folder", root.display()),
        ));
    }
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for item in fs::read_dir(&dir)? {
            let item = item?;
            let name = item
                .file_name()
                .into_string()
                .map_err(|n| unsafe_path(format!("{prefix}{} (not UTF-8)", n.to_string_lossy())))?;
            let rel = format!("{prefix}{name}");
            let ft = item.file_type()?;
            if ft.is_symlink() {
                let target = fs::read_link(item.path())?;
                let target = target
                    .to_str()
                    .ok_or_else(|| unsafe_path(format!("{rel} (link target not UTF-8)")))?
                    .to_string();
                out.push((rel, Entry::Link(target)));
            } else if ft.is_dir() {
                stack.push((item.path(), format!("{rel}/")));
                out.push((rel, Entry::Dir));
            } else if ft.is_file() {
                use std::os::unix::fs::PermissionsExt;
                let exec = item.metadata()?.permissions().mode() & 0o111 != 0;
                out.push((rel, Entry::File(exec)));
            } else {
                return Err(unsafe_path(format!("{rel} (not a file, folder or link)")));
            }
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    check_links(out.iter().map(|(rel, e)| match e {
        Entry::Dir => (rel.as_bytes(), Kind::Dir, None),
        Entry::File(_) => (rel.as_bytes(), Kind::File, None),
        Entry::Link(t) => (rel.as_bytes(), Kind::Link, Some(t.as_bytes())),
    }))?;
    Ok(out)
}

/// The tree hash of a folder: sha256 over `"<path>\0<sha256 hex of contents>\n"` for
/// each regular file, in sorted path order. Modes and links do not count.
pub fn tree_hash(root: &Path) -> io::Result<Sha256> {
    let mut h = sha2::Sha256::new();
    for (rel, entry) in walk(root)? {
        if let Entry::File(_) = entry {
            let mut fh = sha2::Sha256::new();
            io::copy(
                &mut fs::File::open(root.join(&rel))?,
                &mut HashWriter(&mut fh),
            )?;
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(crate::hex(&fh.finalize()).as_bytes());
            h.update(b"\n");
        }
    }
    Ok(Sha256(h.finalize().into()))
}

struct HashWriter<'a>(&'a mut sha2::Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the deterministic tar of `root` into `out` and returns `out`.
pub fn pack<W: Write>(root: &Path, out: W) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    for (rel, entry) in walk(root)? {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match entry {
            Entry::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{rel}/"), io::empty())?;
            }
            Entry::File(exec) => {
                let f = fs::File::open(root.join(&rel))?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if exec { 0o755 } else { 0o644 });
                h.set_size(f.metadata()?.len());
                b.append_data(&mut h, &rel, f)?;
            }
            Entry::Link(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, &rel, &target)?;
            }
        }
    }
    b.into_inner()
}

/// Packs `root` into memory; returns the tar bytes and their sha256.
pub fn pack_to_vec(root: &Path) -> io::Result<(Vec<u8>, Sha256)> {
    let bytes = pack(root, Vec::new())?;
    let sha = Sha256::of(&bytes);
    Ok((bytes, sha))
}

fn checked_rel(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return Err(unsafe_path(path.display().to_string())),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(unsafe_path(path.display().to_string()));
    }
    Ok(out)
}

/// Unpacks a bundle into `dest` (an existing, empty folder). Refuses absolute paths,
/// `..`, hard links, special files, and links that break the folder's link rule: a
/// link's target must be relative, stay inside the folder, and name no link, at its
/// end or on the way (so `x -> y/..` with `y` a link is refused: the kernel would
/// follow `y` first). The rule is checked on all entries before any link is made,
/// and links are created last, so no file is ever written through one.
pub fn unpack<R: Read>(tar: R, dest: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let mut archive = tar::Archive::new(tar);
    let mut links = Vec::new();
    let mut seen: Vec<(PathBuf, Kind)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let rel = checked_rel(&raw)?;
        let target = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target)?;
                seen.push((rel, Kind::Dir));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                let mode = entry.header().mode()?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)?;
                io::copy(&mut entry, &mut f)?;
                let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                f.set_permissions(fs::Permissions::from_mode(mode))?;
                seen.push((rel, Kind::File));
            }
            tar::EntryType::Symlink => {
                let to = entry
                    .link_name()?
                    .ok_or_else(|| unsafe_path(format!("{} (link without target)", raw.display())))?
                    .into_owned();
                links.push((target, rel, to));
            }
            _ => {
                return Err(unsafe_path(format!(
                    "{} (entry type not allowed)",
                    raw.display()
                )));
            }
        }
    }
    check_links(
        seen.iter()
            .map(|(rel, kind)| (rel.as_os_str().as_bytes(), *kind, None))
            .chain(links.iter().map(|(_, rel, to)| {
                (
                    rel.as_os_str().as_bytes(),
                    Kind::Link,
                    Some(to.as_os_str().as_bytes()),
                )
            })),
    )?;
    for (at, _, to) in links {
        if let Some(parent) = at.parent() {
            fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(to, at)?;
    }
    Ok(())
}
