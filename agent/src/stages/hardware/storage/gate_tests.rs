//! The storage write gate on loop devices: a wipefs that cannot probe, data with no
//! known signature, and a spec serial that cannot be confirmed all hold the disk;
//! a by-path name with colons reaches the device itself, never files beside it.
use kiln_protocol::{DiskSpec, Outcome, StageKind, StorageTool};
use std::path::Path;

use crate::stages::hardware::testutil::{
    ctx_for, fake_tool, filled, have, measure, parts, sh, spec,
};

/// Runs the storage stage destructively on `dev`, listed in the spec as `disk`, with
/// `wipefs` as the wipefs program; returns the stage outcome and the disk's part.
fn destructive(dev: &str, disk: DiskSpec, wipefs: &str) -> (Outcome, Outcome, String) {
    let s = spec(&[dev], StorageTool::Fio);
    let (mut c, sink, _w) = ctx_for(StageKind::Storage(s.clone()));
    c.stage.destructive = true;
    c.host.spec.disks = vec![disk];
    let r = smol::block_on(super::run_with(&c, &s, wipefs));
    let p = parts(&sink);
    assert_eq!(p.len(), 1, "{p:?}");
    (r.outcome, p[0].1, p[0].2.clone())
}

fn by_path(dev: &str) -> DiskSpec {
    DiskSpec {
        path: Some(dev.to_string()),
        ..Default::default()
    }
}

/// A FAKE wipefs each way the real one can fail to answer: exit 1, output that is
/// not its JSON, killed; and none on PATH. A blank expected disk is held each time.
#[test]
fn a_wipefs_that_cannot_probe_holds_the_disk() {
    if !have("fio") || !have("losetup") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = filled(d.path(), "blank", 0) else {
        return;
    };
    let before = lo.hash();
    let fails = fake_tool(
        d.path(),
        "wipefs-exit1",
        "echo 'wipefs: probe failed' >&2\nexit 1",
    );
    let junk = fake_tool(d.path(), "wipefs-junk", "echo 'libblkid says hello'");
    let killed = fake_tool(d.path(), "wipefs-killed", "kill -SEGV $$");
    for (wipefs, want) in [
        (fails.as_str(), "exited 1: wipefs: probe failed"),
        (junk.as_str(), "output is not JSON"),
        (killed.as_str(), "killed by signal"),
        (
            "kiln-no-such-wipefs",
            "kiln-no-such-wipefs not found on PATH",
        ),
    ] {
        let (stage, part, why) = destructive(&lo.dev, by_path(&lo.dev), wipefs);
        assert_eq!(
            (stage, part),
            (Outcome::Held, Outcome::Held),
            "{wipefs}: {why}"
        );
        assert!(why.contains("wipefs could not probe"), "{why}");
        assert!(why.contains(want), "{want}: {why}");
        assert_eq!(lo.hash(), before, "{wipefs}: the disk was written");
    }
}

/// The reviewer's case: minix (which the built-in probe does not know) and a wipefs
/// that exits 1. Held, twice over: not blank, and wipefs gave no answer.
#[test]
fn an_unknown_filesystem_with_a_failing_wipefs_is_held() {
    if !have("fio") || !have("losetup") || !have("mkfs.minix") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = filled(d.path(), "minix", 0) else {
        return;
    };
    sh(&["mkfs.minix", &lo.dev]);
    let before = lo.hash();
    let fails = fake_tool(d.path(), "wipefs", "exit 1");
    let (stage, _, why) = destructive(&lo.dev, by_path(&lo.dev), &fails);
    assert_eq!(stage, Outcome::Held, "{why}");
    assert!(why.contains("hold data but no known signature"), "{why}");
    assert!(why.contains("wipefs could not probe"), "{why}");
    assert_eq!(lo.hash(), before, "the minix disk was written");
}

/// Data at the ends but no signature anyone knows (the real wipefs finds none either).
#[test]
fn data_without_a_signature_is_not_blank() {
    if !have("fio") || !have("losetup") || !have("wipefs") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = filled(d.path(), "data", 0x5a) else {
        return;
    };
    let before = lo.hash();
    let (stage, _, why) = destructive(&lo.dev, by_path(&lo.dev), "wipefs");
    assert_eq!(stage, Outcome::Held, "{why}");
    assert_eq!(
        why,
        "not written: the first/last MiB hold data but no known signature: not blank"
    );
    assert_eq!(lo.hash(), before);
}

/// A spec entry naming a path and a serial: the path alone does not admit the disk.
/// A loop device has no serial, so the spec's serial cannot be confirmed.
#[test]
fn a_spec_serial_must_be_confirmed() {
    if !have("fio") || !have("losetup") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = filled(d.path(), "serial", 0) else {
        return;
    };
    let before = lo.hash();
    let disk = DiskSpec {
        path: Some(lo.dev.clone()),
        serial: Some("S1".into()),
        ..Default::default()
    };
    let (stage, _, why) = destructive(&lo.dev, disk, "wipefs");
    assert_eq!(stage, Outcome::Held, "{why}");
    assert!(why.contains("not among the host's expected disks"), "{why}");
    assert!(why.contains("serial \"S1\" cannot be confirmed"), "{why}");
    assert_eq!(lo.hash(), before);
}

/// Files in `dir` other than `keep`.
fn strays(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// A by-path name (fio splits `--filename` on `:`): fio and badblocks get the loop
/// device itself, read-only and writing; names keep the plan's path.
#[test]
fn a_by_path_name_with_colons_reaches_the_device() {
    if !have("fio") || !have("losetup") || !have("badblocks") || !have("wipefs") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = filled(d.path(), "backing", 0) else {
        return;
    };
    let link = d.path().join("pci-0000:00:1f.2-ata-1");
    std::os::unix::fs::symlink(&lo.dev, &link).unwrap();
    let dev = link.to_str().unwrap();
    let k = "storage.pci-0000:00:1f.2-ata-1.";
    let keep = ["backing", "pci-0000:00:1f.2-ata-1"];

    for tool in [StorageTool::Fio, StorageTool::Badblocks] {
        let s = spec(&[dev], tool);
        let (c, sink, w) = ctx_for(StageKind::Storage(s.clone()));
        let r = smol::block_on(super::run(&c, &s));
        assert_eq!(
            r.outcome,
            Outcome::Passed,
            "{tool:?} {r:?} {:?}",
            sink.lines()
        );
        assert_eq!(parts(&sink)[0].0, dev);
        let m = match tool {
            StorageTool::Fio => "seqread.bw",
            StorageTool::Badblocks => "bad_blocks",
        };
        assert!(measure(&sink, &format!("{k}{m}")).is_some(), "{tool:?}");
        assert_eq!(strays(w.path(), &[]), Vec::<String>::new(), "{tool:?}");
    }
    assert_eq!(strays(d.path(), &keep), Vec::<String>::new());

    let before = lo.hash();
    let s = spec(&[dev], StorageTool::Fio);
    let (mut c, sink, w) = ctx_for(StageKind::Storage(s.clone()));
    c.stage.destructive = true;
    c.host.spec.disks = vec![by_path(dev)];
    let r = smol::block_on(super::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    assert_ne!(lo.hash(), before, "fio did not write the device");
    let written = measure(&sink, &format!("{k}seqwrite.write.bw")).expect("write bw");
    let verified = measure(&sink, &format!("{k}seqwrite.verify.bw")).expect("verify bw");
    eprintln!("loop via by-path name: write {written:.1} MiB/s, verify {verified:.1} MiB/s");
    assert_eq!(strays(w.path(), &[]), Vec::<String>::new());
    assert_eq!(strays(d.path(), &keep), Vec::<String>::new());
}
