//! The storage stage on loop devices: read-only fio leaves data alone; a destructive
//! plan writes only to a blank, expected, unused disk and holds every other one.
use kiln_protocol::{DiskSpec, Outcome, StageKind, StorageTool};
use std::path::Path;

use crate::stages::hardware::testutil::{ctx_for, filled, have, measure, parts, sh, spec};

fn base(dev: &str) -> &str {
    dev.rsplit('/').next().unwrap()
}

#[test]
fn read_only_fio_measures_and_leaves_data() {
    if !have("fio") || !have("losetup") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = filled(d.path(), "ro", 0x5a) else {
        return;
    };
    let before = lo.hash();
    let s = spec(&[&lo.dev], StorageTool::Fio);
    let (c, sink, _w) = ctx_for(StageKind::Storage(s.clone()));
    let r = smol::block_on(super::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    let k = format!("storage.{}.", base(&lo.dev));
    let bw = measure(&sink, &format!("{k}seqread.bw")).expect("seqread bandwidth");
    let iops = measure(&sink, &format!("{k}randread.iops")).expect("randread iops");
    let p99 = measure(&sink, &format!("{k}randread.lat_p99")).expect("randread p99");
    eprintln!("loop read-only: seqread {bw:.1} MiB/s, randread {iops:.0} IOPS, p99 {p99:.1} µs");
    assert!(bw > 0.0 && iops > 0.0 && p99 > 0.0);
    assert_eq!(lo.hash(), before, "a read-only test changed the disk");
}

#[test]
fn destructive_writes_only_blank_expected_disks() {
    if !have("fio") || !have("losetup") || !have("mkfs.ext4") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (Some(blank), Some(stranger), Some(ext4)) = (
        filled(d.path(), "blank", 0),
        filled(d.path(), "stranger", 0),
        filled(d.path(), "ext4", 0),
    ) else {
        return;
    };
    sh(&["mkfs.ext4", "-q", "-F", &ext4.dev]);
    let (h_blank, h_stranger, h_ext4) = (blank.hash(), stranger.hash(), ext4.hash());
    let s = spec(&[&blank.dev, &stranger.dev, &ext4.dev], StorageTool::Fio);
    let (mut c, sink, _w) = ctx_for(StageKind::Storage(s.clone()));
    c.stage.destructive = true;
    c.host.spec.disks = [&blank.dev, &ext4.dev]
        .map(|p| DiskSpec {
            path: Some(p.to_string()),
            ..Default::default()
        })
        .to_vec();
    let r = smol::block_on(super::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Held, "{r:?} {:?}", sink.lines());
    let p = parts(&sink);
    let part = |dev: &str| p.iter().find(|x| x.0 == dev).cloned().expect("part");
    assert_eq!(part(&blank.dev).1, Outcome::Passed, "{p:?}");
    let (_, o, why) = part(&stranger.dev);
    assert_eq!(o, Outcome::Held);
    assert!(why.contains("not among the host's expected disks"), "{why}");
    let (_, o, why) = part(&ext4.dev);
    assert_eq!(o, Outcome::Held);
    assert!(why.contains("ext2/3/4 at byte 1080"), "{why}");
    assert_ne!(blank.hash(), h_blank, "the blank expected disk was written");
    assert_eq!(
        stranger.hash(),
        h_stranger,
        "an unexpected disk was touched"
    );
    assert_eq!(ext4.hash(), h_ext4, "the ext4 disk was touched");
    assert!(
        measure(
            &sink,
            &format!("storage.{}.seqwrite.write.bw", base(&blank.dev))
        )
        .is_some()
    );
    assert!(
        measure(
            &sink,
            &format!("storage.{}.seqwrite.verify.bw", base(&blank.dev))
        )
        .is_some()
    );
}

#[test]
fn destructive_holds_a_disk_someone_else_claimed() {
    if !have("fio") || !have("losetup") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = filled(d.path(), "busy", 0) else {
        return;
    };
    let before = lo.hash();
    let _other = crate::stages::hardware::usage::claim(Path::new(&lo.dev)).expect("exclusive open");
    let s = spec(&[&lo.dev], StorageTool::Fio);
    let (mut c, sink, _w) = ctx_for(StageKind::Storage(s.clone()));
    c.stage.destructive = true;
    c.host.spec.disks = vec![DiskSpec {
        path: Some(lo.dev.clone()),
        ..Default::default()
    }];
    let r = smol::block_on(super::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Held, "{r:?}");
    let p = parts(&sink);
    assert!(p[0].2.contains("cannot open exclusively"), "{p:?}");
    assert_eq!(lo.hash(), before);
}

#[test]
fn destructive_holds_a_mounted_disk() {
    if !have("losetup") || !have("mkfs.ext4") || !have("fio") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = filled(d.path(), "mounted", 0) else {
        return;
    };
    sh(&["mkfs.ext4", "-q", "-F", &lo.dev]);
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = std::process::Command::new("mount")
        .arg(&lo.dev)
        .arg(&mnt)
        .status();
    if !m.is_ok_and(|s| s.success()) {
        kiln_testkit::skip("cannot mount ext4 here (root and ext4 support needed)");
        return;
    }
    let s = spec(&[&lo.dev], StorageTool::Fio);
    let (mut c, sink, _w) = ctx_for(StageKind::Storage(s.clone()));
    c.stage.destructive = true;
    c.host.spec.disks = vec![DiskSpec {
        path: Some(lo.dev.clone()),
        ..Default::default()
    }];
    let r = smol::block_on(super::run(&c, &s));
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert_eq!(r.outcome, Outcome::Held, "{r:?}");
    let why = &parts(&sink)[0].2;
    assert!(
        why.contains(&format!("mounted at {}", mnt.display())),
        "{why}"
    );
}

#[test]
fn badblocks_read_only() {
    if !have("badblocks") || !have("losetup") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = filled(d.path(), "bb", 0x33) else {
        return;
    };
    let before = lo.hash();
    let s = spec(&[&lo.dev], StorageTool::Badblocks);
    let (c, sink, _w) = ctx_for(StageKind::Storage(s.clone()));
    let r = smol::block_on(super::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    assert_eq!(
        measure(&sink, &format!("storage.{}.bad_blocks", base(&lo.dev))),
        Some(0.0)
    );
    assert_eq!(lo.hash(), before);
}

#[test]
fn a_file_is_never_written() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("plain");
    std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
    let dev = f.to_str().unwrap();
    let s = spec(&[dev], StorageTool::Fio);
    if !have("fio") {
        return;
    }
    let (mut c, sink, _w) = ctx_for(StageKind::Storage(s.clone()));
    c.stage.destructive = true;
    c.host.spec.disks = vec![DiskSpec {
        path: Some(dev.into()),
        ..Default::default()
    }];
    let r = smol::block_on(super::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Held);
    assert!(
        parts(&sink)[0].2.contains("not a block device"),
        "{:?}",
        parts(&sink)
    );
    assert_eq!(std::fs::read(&f).unwrap(), vec![0u8; 1 << 20]);
}
