//! The wipe probe on images made by the real tools (mkfs.ext4, mkfs.xfs, mkfs.btrfs,
//! sgdisk, sfdisk, mkswap, cryptsetup, pvcreate), and on hand-placed md/ZFS magic
//! where the kernel here has no md driver to make a real member.
use std::path::Path;

use super::wipe::{Ends, parse_wipefs, probe};
use crate::stages::hardware::testutil::{Loop, have, sh};

fn image(dir: &Path, name: &str, size: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn kinds(path: &Path) -> Vec<&'static str> {
    probe(&Ends::read(path).unwrap())
        .into_iter()
        .map(|s| s.kind)
        .collect()
}

#[test]
fn blank_and_patterned_disks_have_no_signature() {
    let d = tempfile::tempdir().unwrap();
    let blank = image(d.path(), "blank", 8 << 20);
    let e = Ends::read(&blank).unwrap();
    assert!(probe(&e).is_empty() && e.blank());
    let data = d.path().join("data");
    std::fs::write(&data, vec![0x11u8; 3 << 20]).unwrap();
    let e = Ends::read(&data).unwrap();
    assert!(probe(&e).is_empty() && !e.blank());
    for size in [0usize, 1, 511, 4096, 70_000] {
        let tiny = d.path().join(format!("tiny{size}"));
        std::fs::write(&tiny, vec![0u8; size]).unwrap();
        assert!(kinds(&tiny).is_empty(), "{size}");
    }
}

#[test]
fn filesystems() {
    let d = tempfile::tempdir().unwrap();
    let cases: [(&str, u64, &[&str], &str); 4] = [
        ("mkfs.ext4", 16 << 20, &["-q", "-F"], "ext2/3/4"),
        ("mkfs.xfs", 320 << 20, &["-q", "-f"], "xfs"),
        ("mkfs.btrfs", 128 << 20, &["-q", "-f"], "btrfs"),
        ("mkswap", 8 << 20, &[], "swap"),
    ];
    for (tool, size, args, want) in cases {
        if !have(tool) {
            continue;
        }
        let img = image(d.path(), tool, size);
        let mut argv = vec![tool];
        argv.extend_from_slice(args);
        argv.push(img.to_str().unwrap());
        sh(&argv);
        assert!(kinds(&img).contains(&want), "{tool}: {:?}", kinds(&img));
    }
}

#[test]
fn partition_tables() {
    let d = tempfile::tempdir().unwrap();
    if have("sgdisk") {
        let img = image(d.path(), "gpt", 16 << 20);
        sh(&["sgdisk", "-o", img.to_str().unwrap()]);
        let k = kinds(&img);
        for want in [
            "gpt",
            "gpt (backup header)",
            "dos boot sector (MBR, FAT or NTFS)",
        ] {
            assert!(k.contains(&want), "{k:?}");
        }
    }
    if have("sfdisk") {
        let img = image(d.path(), "dos", 16 << 20);
        let mut child = std::process::Command::new("sfdisk")
            .args(["-q", img.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"label: dos\n,,83\n")
            .unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(kinds(&img), ["dos boot sector (MBR, FAT or NTFS)"]);
    }
}

#[test]
fn luks_header() {
    if !have("cryptsetup") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), "luks", 32 << 20);
    let key = d.path().join("key");
    std::fs::write(&key, "kiln-test-passphrase").unwrap();
    sh(&[
        "cryptsetup",
        "luksFormat",
        "-q",
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        key.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert!(kinds(&img).contains(&"luks"), "{:?}", kinds(&img));
}

#[test]
fn lvm_physical_volume() {
    if !have("pvcreate") || !have("losetup") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = Loop::new(&d.path().join("pv"), 16 << 20) else {
        return;
    };
    sh(&["pvcreate", "-ff", "-y", &lo.dev]);
    let k = kinds(Path::new(&lo.dev));
    assert!(k.contains(&"lvm2 physical volume"), "{k:?}");
    // Drop the label again so LVM forgets the loop device before it is detached.
    let _ = std::process::Command::new("pvremove")
        .args(["-ff", "-y", &lo.dev])
        .output();
}

/// md superblocks placed by hand (no md driver here to build a real array).
#[test]
fn md_superblocks_synthetic() {
    let d = tempfile::tempdir().unwrap();
    let size: u64 = 64 << 20;
    let magic = 0xa92b4efc_u32.to_le_bytes();
    let v090 = ((size >> 16) - 1) << 16;
    let v10 = (((size >> 9) - 16) & !7) << 9;
    for (name, off) in [("1.1", 0u64), ("1.2", 4096), ("0.90", v090), ("1.0", v10)] {
        let mut bytes = vec![0u8; size as usize];
        bytes[off as usize..off as usize + 4].copy_from_slice(&magic);
        let p = d.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(kinds(&p), ["linux raid (md) member"], "md {name}");
    }
}

/// A ZFS uberblock placed by hand in label 3 (zpool is not installed here).
#[test]
fn zfs_label_synthetic() {
    let d = tempfile::tempdir().unwrap();
    let size = 8usize << 20;
    let mut bytes = vec![0u8; size];
    let off = size - 256 * 1024 + 128 * 1024 + 5 * 1024;
    bytes[off..off + 8].copy_from_slice(&0x00bab10c_u64.to_le_bytes());
    let p = d.path().join("zfs");
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(kinds(&p), ["zfs member"]);
}

#[test]
fn wipefs_output() {
    if !have("wipefs") || !have("mkfs.ext4") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), "ext4", 16 << 20);
    sh(&["mkfs.ext4", "-q", "-F", img.to_str().unwrap()]);
    let out = sh(&["wipefs", "--no-act", "--json", img.to_str().unwrap()]);
    assert_eq!(parse_wipefs(&out), Ok(vec!["ext4 at 0x438".to_string()]));
    assert_eq!(parse_wipefs(""), Ok(vec![]));
    let blank = image(d.path(), "blank", 1 << 20);
    let out = sh(&["wipefs", "--no-act", "--json", blank.to_str().unwrap()]);
    assert_eq!(parse_wipefs(&out), Ok(vec![]));
    // Anything that is not wipefs's JSON is no answer, never "no signatures".
    for junk in [
        "wipefs: error: /dev/x: probing initialization failed",
        "{}",
        "[1]",
    ] {
        assert!(parse_wipefs(junk).is_err(), "{junk}");
    }
}
