//! Whether a block device is in use: partitions, holders (device-mapper, md, bcache),
//! mounts of it or its partitions, swap, and an exclusive open that the kernel refuses
//! while anything else holds it.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A block device as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// The path as given (`/dev/disk/by-id/…`).
    pub given: String,
    /// The device node it resolves to (`/dev/sdb`).
    pub node: PathBuf,
    /// Kernel name (`sdb`).
    pub name: String,
    /// `major:minor`.
    pub devno: String,
}

fn major_minor(rdev: u64) -> String {
    use nix::sys::stat::{major, minor};
    format!("{}:{}", major(rdev), minor(rdev))
}

/// Resolves `path` to a block device (following links such as `/dev/disk/by-id`).
pub fn resolve(sys: &Path, path: &str) -> io::Result<BlockDev> {
    let node = std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(&node)?;
    if !meta.file_type().is_block_device() {
        return Err(io::Error::other(format!("{path} is not a block device")));
    }
    let devno = major_minor(meta.rdev());
    let link = std::fs::read_link(sys.join("dev/block").join(&devno))?;
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::other(format!("no sysfs entry for {devno}")))?;
    Ok(BlockDev {
        given: path.to_string(),
        node,
        name,
        devno,
    })
}

/// The device's partitions: (name, `major:minor`).
pub fn partitions(sys: &Path, name: &str) -> Vec<(String, String)> {
    let dir = sys.join("class/block").join(name);
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("partition").exists())
                .map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let dev = super::collect::attr(&e.path().join("dev"));
                    (n, dev)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Names holding `name` (`holders/`), e.g. `dm-0`, `md127`.
pub fn holders(sys: &Path, name: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sys.join("class/block").join(name).join("holders"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Mount points whose source is one of `devnos`, from `/proc/self/mountinfo` text.
pub fn mounted_at(mountinfo: &str, devnos: &[String]) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && devnos.iter().any(|d| d == f[2])).then(|| f[4].to_string())
        })
        .collect()
}

/// Swap areas in `/proc/swaps` text that are one of `devnos` (or their path).
pub fn swapping(swaps: &str, devnos: &[String], node: &Path) -> Vec<String> {
    swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| {
            Path::new(p) == node
                || std::fs::metadata(p)
                    .map(|m| {
                        m.file_type().is_block_device() && devnos.contains(&major_minor(m.rdev()))
                    })
                    .unwrap_or(false)
        })
        .map(String::from)
        .collect()
}

/// Every reason the device is in use (empty: free), from sysfs and procfs.
pub fn in_use(sys: &Path, proc: &Path, dev: &BlockDev) -> Vec<String> {
    let mut why = Vec::new();
    let parts = partitions(sys, &dev.name);
    if !parts.is_empty() {
        let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
        why.push(format!("has partitions ({})", names.join(", ")));
    }
    let mut devnos = vec![dev.devno.clone()];
    devnos.extend(parts.iter().map(|p| p.1.clone()));
    for n in std::iter::once(dev.name.as_str()).chain(parts.iter().map(|p| p.0.as_str())) {
        let h = holders(sys, n);
        if !h.is_empty() {
            why.push(format!("{n} is held by {}", h.join(", ")));
        }
    }
    let mi = std::fs::read_to_string(proc.join("self/mountinfo")).unwrap_or_default();
    let m = mounted_at(&mi, &devnos);
    if !m.is_empty() {
        why.push(format!("mounted at {}", m.join(", ")));
    }
    let sw = std::fs::read_to_string(proc.join("swaps")).unwrap_or_default();
    let s = swapping(&sw, &devnos, &dev.node);
    if !s.is_empty() {
        why.push(format!("in use as swap ({})", s.join(", ")));
    }
    why
}

/// Opens the device exclusively (`O_EXCL` on a block device: the kernel refuses while
/// it is mounted, held or exclusively open elsewhere). Keep the file while writing so
/// nothing can claim the disk meanwhile.
pub fn claim(node: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_matches_by_device_number() {
        let mi = "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
                  40 22 7:3 / /mnt/x rw - ext4 /dev/loop3 rw\n\
                  41 22 0:45 / /tmp rw - tmpfs tmpfs rw\n";
        assert_eq!(mounted_at(mi, &["7:3".into()]), ["/mnt/x"]);
        assert_eq!(mounted_at(mi, &["259:0".into(), "259:2".into()]), ["/"]);
        assert!(mounted_at(mi, &["8:0".into()]).is_empty());
        assert!(mounted_at("garbage\n\n", &["8:0".into()]).is_empty());
    }

    #[test]
    fn swaps_match_by_path() {
        let s = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/sdz2                               partition\t1048572\t\t0\t\t-2\n";
        assert_eq!(swapping(s, &[], Path::new("/dev/sdz2")), ["/dev/sdz2"]);
        assert!(swapping(s, &[], Path::new("/dev/sdy")).is_empty());
    }
}
