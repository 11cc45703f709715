//! Finding and opening a stage's artifact files without ever following a link.
//!
//! A stage's artifacts folder is written by the test (a container, a remote host's
//! tar, a process that may outlive its stage), so its links are hostile: a link
//! `artifacts/key -> /etc/ssh/ssh_host_ed25519_key`, or an `artifacts` folder that
//! is itself a link, would otherwise upload the agent host's files. The folder is
//! walked with `openat` from a descriptor of the folder, one component at a time,
//! each opened with `O_NOFOLLOW`: links (and sockets, FIFOs, devices) are listed as
//! skipped and never opened, and a file swapped for a link between listing and
//! opening fails to open instead of being followed.
use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, fstat, openat, statat};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Folders nested deeper than this under the artifacts folder are skipped.
pub const MAX_DEPTH: usize = 64;

const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const FILE: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// What a walk of an artifacts folder found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Regular files, as `/`-separated paths relative to the folder, sorted.
    pub files: Vec<String>,
    /// Everything left out, with why: links, special files, names that are not
    /// UTF-8, folders nested too deep.
    pub skipped: Vec<(String, String)>,
}

/// Opens the folder itself, refusing a link.
fn open_root(dir: &Path) -> io::Result<OwnedFd> {
    Ok(openat(CWD, dir, DIR, Mode::empty())?)
}

/// Opens the folder `rel` under `root`, one component at a time, following no link.
fn open_dir_inside(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    let mut fd = root.try_clone()?;
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        fd = openat(&fd, part, DIR, Mode::empty())?;
    }
    Ok(fd)
}

/// Why a path was skipped, from its type.
fn skip_reason(t: FileType) -> &'static str {
    match t {
        FileType::Symlink => "a symbolic link (links are never followed)",
        _ => "not a regular file",
    }
}

/// Lists the regular files under `dir` without following any link. A missing folder
/// lists nothing; a folder that is itself a link (or not a folder) is skipped whole.
pub fn list(dir: &Path) -> io::Result<Listing> {
    let mut out = Listing::default();
    let root = match open_root(dir) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) if is_link_or_not_dir(&e) => {
            let why = match std::fs::symlink_metadata(dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    "the folder is a link (links are never followed)"
                }
                _ => "not a folder",
            };
            out.skipped.push((String::new(), why.into()));
            return Ok(out);
        }
        Err(e) => return Err(e),
    };
    let mut pending = vec![(String::new(), 0usize)];
    while let Some((rel, depth)) = pending.pop() {
        let fd = match open_dir_inside(&root, &rel) {
            Ok(fd) => fd,
            Err(e) if is_link_or_not_dir(&e) || e.kind() == io::ErrorKind::NotFound => {
                out.skipped
                    .push((rel, format!("changed while listed ({e})")));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in Dir::new(fd.try_clone()?)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        for name in names {
            let shown = String::from_utf8_lossy(&name).into_owned();
            let path = if rel.is_empty() {
                shown.clone()
            } else {
                format!("{rel}/{shown}")
            };
            if std::str::from_utf8(&name).is_err() {
                out.skipped.push((path, "the name is not UTF-8".into()));
                continue;
            }
            let st = match statat(&fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => out.files.push(path),
                FileType::Directory if depth < MAX_DEPTH => pending.push((path, depth + 1)),
                FileType::Directory => out
                    .skipped
                    .push((path, format!("nested deeper than {MAX_DEPTH} folders"))),
                t => out.skipped.push((path, skip_reason(t).into())),
            }
        }
    }
    out.files.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    out.skipped.sort();
    Ok(out)
}

/// Opens the regular file `rel` (as [`list`] gives it) under `dir`, one component at
/// a time, following no link; anything but a regular file is an error.
pub fn open_inside(dir: &Path, rel: &str) -> io::Result<File> {
    let root = open_root(dir)?;
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let at = open_dir_inside(&root, parent)?;
    regular(openat(&at, name, FILE, Mode::empty())?)
}

/// Opens `path` for reading without following a link at its last component, and
/// only if it is a regular file (for files a stage wrote at a known path).
pub fn open_file(path: &Path) -> io::Result<File> {
    regular(openat(CWD, path, FILE, Mode::empty())?)
}

fn regular(fd: OwnedFd) -> io::Result<File> {
    let t = FileType::from_raw_mode(fstat(&fd)?.st_mode);
    if t != FileType::RegularFile {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, skip_reason(t)));
    }
    Ok(File::from(fd))
}

/// `ELOOP` (`O_NOFOLLOW` met a link) or `ENOTDIR` (`O_DIRECTORY` met something else).
fn is_link_or_not_dir(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::LOOP.raw_os_error()
            || code == rustix::io::Errno::NOTDIR.raw_os_error()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_listed_as_skipped_and_never_opened() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host secret").unwrap();
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("artifacts");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::write(a.join("ok.txt"), "ok").unwrap();
        std::fs::write(a.join("sub/deep.txt"), "deep").unwrap();
        symlink(outside.path().join("secret"), a.join("key")).unwrap();
        symlink(outside.path(), a.join("dir")).unwrap();
        symlink("ok.txt", a.join("inside")).unwrap();
        let l = list(&a).unwrap();
        assert_eq!(l.files, vec!["ok.txt", "sub/deep.txt"]);
        let skipped: Vec<&str> = l.skipped.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(skipped, vec!["dir", "inside", "key"]);
        assert!(l.skipped[0].1.contains("never followed"), "{:?}", l.skipped);
        assert!(open_inside(&a, "key").is_err());
        assert!(open_inside(&a, "dir/secret").is_err());
        assert!(open_file(&a.join("key")).is_err());
        let mut s = String::new();
        io::Read::read_to_string(&mut open_inside(&a, "sub/deep.txt").unwrap(), &mut s).unwrap();
        assert_eq!(s, "deep");
    }

    #[test]
    fn a_linked_artifacts_folder_is_skipped_whole() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host secret").unwrap();
        let d = tempfile::tempdir().unwrap();
        symlink(outside.path(), d.path().join("artifacts")).unwrap();
        let l = list(&d.path().join("artifacts")).unwrap();
        assert!(l.files.is_empty(), "{l:?}");
        assert!(l.skipped[0].1.contains("folder is a link"), "{l:?}");
        assert_eq!(list(&d.path().join("none")).unwrap(), Listing::default());
    }

    #[test]
    fn a_folder_swapped_for_a_link_after_listing_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), "host").unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), "mine").unwrap();
        assert_eq!(list(d.path()).unwrap().files, vec!["sub/f"]);
        std::fs::remove_dir_all(d.path().join("sub")).unwrap();
        symlink(outside.path(), d.path().join("sub")).unwrap();
        let e = open_inside(d.path(), "sub/f").unwrap_err();
        assert!(is_link_or_not_dir(&e), "{e}");
    }

    #[test]
    fn special_files_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&d.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(d.path().join("sock")).unwrap();
        let l = list(d.path()).unwrap();
        assert!(l.files.is_empty());
        assert_eq!(l.skipped.len(), 2, "{l:?}");
        assert!(
            open_file(&d.path().join("fifo")).is_err(),
            "a FIFO never blocks the agent"
        );
    }
}
