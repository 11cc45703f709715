//! Tests of the inventory: sysfs collection on a built tree shaped like a qemu
//! guest's, the spec diff's severities, and the stage's parts and artifact.
use kiln_protocol::{DiskSpec, HostSpec, Mac, NicSpec, Outcome, StageKind};
use std::fs;
use std::path::Path;

use super::specdiff::{Severity, diff_spec};
use super::{collect_base, gpus_from_pci, judge};
use crate::stages::hardware::collect::{self, Roots};
use crate::stages::hardware::testutil::{ctx_for, parts};

fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

/// A sysfs + procfs tree like the qemu guest the fixtures came from: an NVMe disk,
/// an AHCI disk, a loop device, an e1000 NIC, 1 GiB in 8 memory blocks.
pub fn qemu_tree(root: &Path) -> Roots {
    let sys = root.join("sys");
    let proc = root.join("proc");
    for (k, v) in [
        ("sys_vendor", "Kiln"),
        ("product_name", "Testbox"),
        ("product_serial", "KILN-SER-0001"),
        ("bios_vendor", "SeaBIOS"),
        ("bios_version", "1.16.2-debian-1.16.2-1"),
    ] {
        put(
            &sys,
            &format!("class/dmi/id/{k}"),
            format!("{v}\n").as_bytes(),
        );
    }
    put(
        &sys,
        "block/nvme0n1/device/model",
        b"QEMU NVMe Ctrl                          \n",
    );
    put(
        &sys,
        "block/nvme0n1/device/serial",
        b"NVME-SER-1          \n",
    );
    put(&sys, "block/nvme0n1/size", b"524288\n");
    put(&sys, "block/nvme0n1/queue/rotational", b"0\n");
    let sda = "devices/pci0000:00/0000:00:05.0/ata1/host0/target0:0:0/0:0:0:0";
    put(&sys, &format!("{sda}/model"), b"KilnDisk        \n");
    let mut vpd = vec![0u8, 0x80, 0, 12];
    vpd.extend_from_slice(b"ATA-SER-1   ");
    put(&sys, &format!("{sda}/vpd_pg80"), &vpd);
    put(&sys, &format!("{sda}/block/sda/size"), b"1048576\n");
    put(&sys, &format!("{sda}/block/sda/queue/rotational"), b"1\n");
    link(&sys, &format!("{sda}/block/sda/device"), "../../../0:0:0:0");
    link(&sys, "block/sda", &format!("../{sda}/block/sda"));
    put(&sys, "block/loop0/size", b"2048\n");
    put(&sys, "class/net/lo/address", b"00:00:00:00:00:00\n");
    put(&sys, "class/net/eth0/address", b"52:54:00:12:34:56\n");
    put(&sys, "class/net/eth0/speed", b"1000\n");
    put(&sys, "class/net/eth0/operstate", b"up\n");
    put(&sys, "bus/pci/drivers/e1000/.keep", b"");
    link(
        &sys,
        "class/net/eth0/device/driver",
        "../../../../bus/pci/drivers/e1000",
    );
    put(&sys, "bus/pci/devices/0000:00:03.0/class", b"0x020000\n");
    put(&sys, "bus/pci/devices/0000:00:03.0/vendor", b"0x8086\n");
    put(&sys, "bus/pci/devices/0000:00:03.0/device", b"0x100e\n");
    put(&sys, "bus/pci/devices/0000:00:02.0/class", b"0x030000\n");
    put(&sys, "bus/pci/devices/0000:00:02.0/vendor", b"0x1234\n");
    put(&sys, "devices/system/memory/block_size_bytes", b"8000000\n");
    for i in 0..8 {
        put(
            &sys,
            &format!("devices/system/memory/memory{i}/online"),
            b"1\n",
        );
    }
    put(&sys, "devices/system/memory/memory9/online", b"0\n");
    put(&proc, "cpuinfo", b"processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\nphysical id\t: 0\ncore id\t\t: 0\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\nphysical id\t: 0\ncore id\t\t: 1\n");
    put(
        &proc,
        "meminfo",
        b"MemTotal:         985432 kB\nMemFree:          800000 kB\n",
    );
    Roots { sys, proc }
}

#[test]
fn collects_the_qemu_tree() {
    let d = tempfile::tempdir().unwrap();
    let inv = collect_base(&qemu_tree(d.path()));
    assert_eq!(inv.cpu.logical, 2);
    assert_eq!(inv.cpu.cores, 2);
    assert_eq!(inv.cpu.model, "QEMU Virtual CPU version 2.5+");
    assert_eq!(
        (inv.memory.total_mib, inv.memory.source.as_str()),
        (1024, "sysfs")
    );
    assert_eq!(inv.memory.usable_mib, 962);
    assert_eq!(inv.dmi.serial, "KILN-SER-0001");
    assert_eq!(
        inv.disks.len(),
        2,
        "loop0 is not a physical disk: {:?}",
        inv.disks
    );
    let nvme = &inv.disks[0];
    assert_eq!(
        (
            nvme.path.as_str(),
            nvme.model.as_str(),
            nvme.serial.as_str()
        ),
        ("/dev/nvme0n1", "QEMU NVMe Ctrl", "NVME-SER-1")
    );
    assert_eq!(
        (nvme.size_bytes, nvme.transport.as_str(), nvme.rotational),
        (268435456, "nvme", false)
    );
    let sda = &inv.disks[1];
    assert_eq!(
        (
            sda.serial.as_str(),
            sda.model.as_str(),
            sda.transport.as_str()
        ),
        ("ATA-SER-1", "KilnDisk", "ata")
    );
    assert!(sda.rotational);
    assert_eq!(inv.nics.len(), 1);
    assert_eq!(
        (
            inv.nics[0].mac.as_str(),
            inv.nics[0].driver.as_str(),
            inv.nics[0].speed_mbps
        ),
        ("52:54:00:12:34:56", "e1000", Some(1000))
    );
    assert_eq!(inv.pci.len(), 2);
    assert!(
        gpus_from_pci(&inv).is_empty(),
        "an emulated VGA is not a GPU"
    );
}

#[test]
fn lspci_names_merge() {
    let d = tempfile::tempdir().unwrap();
    let mut inv = collect_base(&qemu_tree(d.path()));
    collect::merge_lspci(
        &mut inv.pci,
        include_str!("../../../../tests/fixtures/hardware/lspci/qemu.txt"),
    );
    let nic = inv.pci.iter().find(|p| p.slot == "0000:00:03.0").unwrap();
    assert_eq!(nic.device, "82540EM Gigabit Ethernet Controller");
    assert_eq!(nic.vendor, "Intel Corporation");
    assert_eq!(nic.class_name, "Ethernet controller");
    let nvme = inv.pci.iter().find(|p| p.slot == "0000:00:04.0").unwrap();
    assert_eq!(
        (nvme.class, nvme.vendor_id, nvme.device_id),
        (0x010800, 0x1b36, 0x0010)
    );
    assert_eq!(inv.pci.len(), 9);
}

fn spec() -> HostSpec {
    HostSpec {
        cpu_model: Some("QEMU".into()),
        cpus: Some(2),
        memory_mib: Some(1024),
        memory_tolerance_pct: 0,
        disks: vec![
            DiskSpec {
                serial: Some("NVME-SER-1".into()),
                model: Some("QEMU NVMe".into()),
                size_bytes: Some(268435456),
                ..Default::default()
            },
            DiskSpec {
                path: Some("/dev/sda".into()),
                model: Some("KilnDisk".into()),
                size_bytes: Some(512 << 20),
                size_tolerance_pct: 1,
                ..Default::default()
            },
        ],
        nics: vec![NicSpec {
            mac: Some("52:54:00:12:34:56".parse::<Mac>().unwrap()),
            speed_mbps: Some(1000),
        }],
        gpus: vec![],
    }
}

#[test]
fn matching_spec_has_no_differences() {
    let d = tempfile::tempdir().unwrap();
    let inv = collect_base(&qemu_tree(d.path()));
    assert_eq!(diff_spec(&spec(), &inv), vec![]);
}

#[test]
fn wrong_memory_and_missing_disk_are_critical_other_model_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let inv = collect_base(&qemu_tree(d.path()));
    let mut s = spec();
    s.memory_mib = Some(2048);
    s.memory_tolerance_pct = 5;
    s.disks[0].model = Some("Samsung PM9A3".into());
    s.disks.push(DiskSpec {
        serial: Some("GONE-1".into()),
        size_bytes: Some(1 << 40),
        ..Default::default()
    });
    let diffs = diff_spec(&s, &inv);
    let sev = |item: &str| diffs.iter().find(|d| d.item == item).map(|d| d.severity);
    assert_eq!(sev("memory"), Some(Severity::Critical), "{diffs:?}");
    assert_eq!(sev("disk GONE-1"), Some(Severity::Critical), "{diffs:?}");
    assert_eq!(sev("disk NVME-SER-1"), Some(Severity::Warning), "{diffs:?}");
    assert_eq!(diffs.len(), 3, "{diffs:?}");
    assert_eq!(diffs[0].severity, Severity::Critical, "most severe first");
}

#[test]
fn tolerances_and_extras_are_info() {
    let d = tempfile::tempdir().unwrap();
    let inv = collect_base(&qemu_tree(d.path()));
    let mut s = spec();
    s.memory_mib = Some(1000);
    s.memory_tolerance_pct = 5;
    s.disks[1].size_bytes = Some(530_000_000);
    s.disks.truncate(1);
    s.disks[0].path = Some("/dev/nvme1n1".into());
    let diffs = diff_spec(&s, &inv);
    assert!(
        diffs.iter().all(|d| d.severity == Severity::Info),
        "{diffs:?}"
    );
    let items: Vec<&str> = diffs.iter().map(|d| d.item.as_str()).collect();
    assert_eq!(
        items,
        ["memory", "disk NVME-SER-1", "disk /dev/sda"],
        "{diffs:?}"
    );
}

#[test]
fn fewer_cpus_and_missing_nic_are_critical() {
    let d = tempfile::tempdir().unwrap();
    let inv = collect_base(&qemu_tree(d.path()));
    let mut s = spec();
    s.cpus = Some(4);
    s.nics[0].mac = Some("02:00:00:00:00:01".parse().unwrap());
    s.gpus = vec!["H100".into()];
    let diffs = diff_spec(&s, &inv);
    assert_eq!(diffs.len(), 3, "{diffs:?}");
    assert!(
        diffs.iter().all(|d| d.severity == Severity::Critical),
        "{diffs:?}"
    );
}

#[test]
fn judge_reports_parts_and_fails_on_critical() {
    let d = tempfile::tempdir().unwrap();
    let inv = collect_base(&qemu_tree(d.path()));
    let (mut c, sink, _dir) = ctx_for(StageKind::Inventory);
    c.host.spec = spec();
    c.host.spec.memory_mib = Some(4096);
    c.host.spec.disks[1].model = Some("Other".into());
    let r = judge(&c, &diff_spec(&c.host.spec, &inv));
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(r.detail.contains("memory"), "{}", r.detail);
    let p = parts(&sink);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!((p[0].0.as_str(), p[0].1), ("memory", Outcome::Failed));
    assert_eq!(
        (p[1].0.as_str(), p[1].1),
        ("disk /dev/sda", Outcome::Warning)
    );
    assert!(
        sink.lines()
            .iter()
            .any(|l| l.starts_with("spec critical: memory 1024 MiB")),
        "{:?}",
        sink.lines()
    );
}

#[test]
fn judge_passes_without_a_spec() {
    let (c, sink, _dir) = ctx_for(StageKind::Inventory);
    assert_eq!(judge(&c, &[]).outcome, Outcome::Passed);
    assert!(parts(&sink).is_empty());
}

/// The whole stage on this machine: whatever it has, an `inventory.json` artifact
/// that parses, measurements for CPUs and memory, and a pass without a spec.
#[test]
fn stage_on_this_machine() {
    let (c, sink, _dir) = ctx_for(StageKind::Inventory);
    let r = smol::block_on(super::run(&c));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
    let blobs = sink.blobs.lock().unwrap();
    let (_, json) = blobs.iter().next().expect("inventory.json stored");
    let v: serde_json::Value = serde_json::from_slice(json).unwrap();
    assert!(v["inventory"]["cpu"]["logical"].as_u64().unwrap() >= 1);
    assert!(v["inventory"]["memory"]["total_mib"].as_u64().unwrap() > 0);
    drop(blobs);
    assert!(crate::stages::hardware::testutil::measure(&sink, "cpu.logical").unwrap() >= 1.0);
}
