//! Tree hashes and deterministic bundles: same folder, same bytes; safe unpacking.
use kiln_protocol::tree::{pack_to_vec, tree_hash, unpack};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

fn folder() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("sub/deeper")).unwrap();
    fs::create_dir(d.path().join("empty")).unwrap();
    fs::write(d.path().join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(d.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(d.path().join("sub/data.txt"), "data").unwrap();
    fs::write(d.path().join("sub/deeper/with space.txt"), "x").unwrap();
    symlink("sub/data.txt", d.path().join("link")).unwrap();
    d
}

fn sha(p: &Path) -> String {
    pack_to_vec(p).unwrap().1.to_string()
}

#[test]
fn same_folder_same_bundle_even_after_touch() {
    let a = folder();
    let b = folder();
    assert_eq!(sha(a.path()), sha(b.path()));
    assert_eq!(tree_hash(a.path()).unwrap(), tree_hash(b.path()).unwrap());
    let before = sha(a.path());
    let f = fs::File::options()
        .write(true)
        .open(a.path().join("sub/data.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .unwrap();
    assert_eq!(sha(a.path()), before, "mtime must not change the bundle");
}

#[test]
fn a_byte_or_the_exec_bit_changes_the_bundle() {
    let a = folder();
    let before = sha(a.path());
    let tree_before = tree_hash(a.path()).unwrap();
    fs::write(a.path().join("sub/data.txt"), "dato").unwrap();
    assert_ne!(sha(a.path()), before);
    assert_ne!(tree_hash(a.path()).unwrap(), tree_before);

    let b = folder();
    fs::set_permissions(
        b.path().join("sub/data.txt"),
        fs::Permissions::from_mode(0o744),
    )
    .unwrap();
    assert_ne!(sha(b.path()), before, "exec bit must change the bundle");
    // Other mode bits are normalized away.
    let c = folder();
    fs::set_permissions(
        c.path().join("sub/data.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(sha(c.path()), before);
}

#[test]
fn tree_hash_matches_its_definition() {
    use sha2::{Digest, Sha256};
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("b")).unwrap();
    fs::write(d.path().join("a.txt"), "A").unwrap();
    fs::write(d.path().join("b/c"), "C").unwrap();
    let hx = |s: &str| kiln_protocol::hex(&Sha256::digest(s.as_bytes()));
    let text = format!("a.txt\0{}\nb/c\0{}\n", hx("A"), hx("C"));
    assert_eq!(
        tree_hash(d.path()).unwrap().0,
        <[u8; 32]>::from(Sha256::digest(text.as_bytes()))
    );
}

#[test]
fn unpack_restores_files_modes_and_links() {
    let a = folder();
    let (bytes, _) = pack_to_vec(a.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    unpack(&bytes[..], out.path()).unwrap();
    assert_eq!(tree_hash(out.path()).unwrap(), tree_hash(a.path()).unwrap());
    assert_eq!(sha(out.path()), sha(a.path()));
    let mode = fs::metadata(out.path().join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(out.path().join("empty").is_dir());
    assert_eq!(fs::read_to_string(out.path().join("link")).unwrap(), "data");
}

#[test]
fn escaping_links_are_refused_when_packing() {
    for target in ["../outside", "/etc/passwd", "sub/../../x"] {
        let d = folder();
        symlink(target, d.path().join("bad")).unwrap();
        let err = pack_to_vec(d.path()).unwrap_err().to_string();
        assert!(err.contains("leaves the folder"), "{target}: {err}");
    }
}

fn raw_tar(path: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_old();
    h.set_entry_type(kind);
    h.set_size(if kind == tar::EntryType::Regular {
        1
    } else {
        0
    });
    h.set_mode(0o644);
    // Write the name bytes directly: the tar crate refuses `..` in set_path.
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"x"
    } else {
        b""
    };
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn unpack_refuses_escapes() {
    let cases = [
        raw_tar("../evil", tar::EntryType::Regular, None),
        raw_tar("/abs/evil", tar::EntryType::Regular, None),
        raw_tar("a/../../evil", tar::EntryType::Regular, None),
        raw_tar("l", tar::EntryType::Symlink, Some("../../etc")),
        raw_tar("l", tar::EntryType::Symlink, Some("/etc")),
        raw_tar("h", tar::EntryType::Link, Some("/etc/passwd")),
        raw_tar("dev", tar::EntryType::Char, None),
    ];
    for (i, t) in cases.iter().enumerate() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        fs::create_dir(&out).unwrap();
        let err = unpack(&t[..], &out);
        assert!(err.is_err(), "case {i} unpacked");
        assert!(
            !parent.path().join("evil").exists(),
            "case {i} wrote outside"
        );
    }
}

/// Links that each stay inside by their text but climb out together: `r -> .`, then
/// `q1 -> r/..` (the kernel follows `r` first, so `q1` is the folder's parent),
/// `q2 -> q1/..` and so on up to `/`, then `etc -> q30/etc`.
fn chain_to_etc(d: &Path) {
    symlink(".", d.join("r")).unwrap();
    symlink("r/..", d.join("q1")).unwrap();
    for i in 2..=30 {
        symlink(format!("q{}/..", i - 1), d.join(format!("q{i}"))).unwrap();
    }
    symlink("q30/etc", d.join("etc")).unwrap();
}

#[test]
fn chained_links_that_climb_out_are_refused_when_packing() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("run.sh"), "true\n").unwrap();
    chain_to_etc(d.path());
    // The chain is real: the kernel lands in /etc.
    assert_eq!(
        fs::canonicalize(d.path().join("etc")).unwrap(),
        Path::new("/etc")
    );
    let err = pack_to_vec(d.path()).unwrap_err().to_string();
    assert!(err.contains("links may not point at links"), "{err}");
    assert!(tree_hash(d.path()).is_err());

    // `x -> y/..` with `y` a link to a folder one level up from its text.
    for (links, what) in [
        (
            &[("sub/up", ".."), ("x", "sub/up/..")][..],
            "x -> sub/up/..",
        ),
        (&[("a", "b"), ("b", "sub")][..], "a -> b"),
        (&[("a", "sub/b/c"), ("sub/b", ".")][..], "a -> sub/b/c"),
    ] {
        let d = folder();
        for (at, to) in links {
            symlink(to, d.path().join(at)).unwrap();
        }
        let err = pack_to_vec(d.path()).unwrap_err().to_string();
        assert!(
            err.contains(what) && err.contains("links may not point at links"),
            "{what}: {err}"
        );
    }
}

#[test]
fn links_through_real_folders_still_pack() {
    let d = folder();
    symlink("sub/deeper/../data.txt", d.path().join("ok1")).unwrap();
    symlink("../sub", d.path().join("sub/deeper/ok2")).unwrap();
    symlink("missing/../run.sh", d.path().join("ok3")).unwrap();
    let (bytes, _) = pack_to_vec(d.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    unpack(&bytes[..], out.path()).unwrap();
    assert_eq!(fs::read_to_string(out.path().join("ok1")).unwrap(), "data");
}

/// A tar of symlinks (and files), names written raw.
fn links_tar(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, link) in entries {
        let mut h = tar::Header::new_old();
        let kind = if link.is_some() {
            tar::EntryType::Symlink
        } else {
            tar::EntryType::Regular
        };
        h.set_entry_type(kind);
        h.set_size(if link.is_some() { 0 } else { 1 });
        h.set_mode(0o644);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        let data: &[u8] = if link.is_some() { b"" } else { b"x" };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn unpack_refuses_chained_links() {
    let mut chain: Vec<(String, Option<String>)> = vec![
        ("r".into(), Some(".".into())),
        ("q1".into(), Some("r/..".into())),
    ];
    for i in 2..=30 {
        chain.push((format!("q{i}"), Some(format!("q{}/..", i - 1))));
    }
    chain.push(("etc".into(), Some("q30/etc".into())));
    let chain: Vec<(&str, Option<&str>)> = chain
        .iter()
        .map(|(p, l)| (p.as_str(), l.as_deref()))
        .collect();
    let cases: Vec<Vec<(&str, Option<&str>)>> = vec![
        chain,
        // The link named after its user, so a walk in tar order would meet it late.
        vec![("x", Some("y/..")), ("y", Some("."))],
        vec![("a", Some("b")), ("b", Some("c")), ("c", None)],
        // A file under a link.
        vec![("l", Some("d")), ("d/f", None), ("l/f", None)],
    ];
    for (i, entries) in cases.iter().enumerate() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        fs::create_dir(&out).unwrap();
        let err = unpack(&links_tar(entries)[..], &out).expect_err(&format!("case {i}"));
        assert!(err.to_string().contains("unsafe path"), "case {i}: {err}");
        let made: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().unwrap().is_symlink())
            .collect();
        assert!(made.is_empty(), "case {i}: links were made");
    }
}
