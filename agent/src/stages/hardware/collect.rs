//! Reading the machine from sysfs and procfs: CPU, memory, DMI identity, disks, NICs,
//! PCI devices. Roots are parameters so tests read captured trees.
use std::fs;
use std::path::{Path, PathBuf};

use super::model::{Cpu, Disk, Dmi, Nic, Pci};

/// Where sysfs, procfs and device nodes live.
#[derive(Debug, Clone)]
pub struct Roots {
    /// sysfs (`/sys`).
    pub sys: PathBuf,
    /// procfs (`/proc`).
    pub proc: PathBuf,
}

impl Roots {
    /// The real roots, or `KILN_SYSFS` / `KILN_PROCFS` when set (tests).
    pub fn detect() -> Roots {
        let var = |k: &str, d: &str| std::env::var_os(k).map(PathBuf::from).unwrap_or(d.into());
        Roots {
            sys: var("KILN_SYSFS", "/sys"),
            proc: var("KILN_PROCFS", "/proc"),
        }
    }
}

/// A sysfs attribute, trimmed; empty when unreadable.
pub fn attr(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default()
}

fn sorted_dir(path: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The basename a sysfs link points at (`device/driver` → `e1000`).
fn link_name(path: &Path) -> String {
    fs::read_link(path)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// CPU facts from `/proc/cpuinfo` text.
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    let mut sockets = std::collections::BTreeSet::new();
    let mut cores = std::collections::BTreeSet::new();
    let mut phys = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => cpu.logical += 1,
            "model name" if cpu.model.is_empty() => cpu.model = v.to_string(),
            "physical id" => {
                phys = v.to_string();
                sockets.insert(phys.clone());
            }
            "core id" => {
                cores.insert((phys.clone(), v.to_string()));
            }
            _ => {}
        }
    }
    cpu.sockets = sockets.len().max(1) as u32;
    cpu.cores = if cores.is_empty() {
        cpu.logical
    } else {
        cores.len() as u32
    };
    cpu
}

/// `MemTotal` of `/proc/meminfo` text, MiB.
pub fn parse_meminfo_mib(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

/// Online memory from `/sys/devices/system/memory`, MiB (0 when unavailable).
pub fn sysfs_memory_mib(sys: &Path) -> u64 {
    let base = sys.join("devices/system/memory");
    let Ok(block) = u64::from_str_radix(attr(&base.join("block_size_bytes")).as_str(), 16) else {
        return 0;
    };
    let online = sorted_dir(&base)
        .into_iter()
        .filter(|(n, p)| n.starts_with("memory") && attr(&p.join("online")) == "1")
        .count() as u64;
    online * block / (1024 * 1024)
}

/// Firmware identity from `/sys/class/dmi/id`.
pub fn dmi(sys: &Path) -> Dmi {
    let d = sys.join("class/dmi/id");
    let a = |n: &str| attr(&d.join(n));
    Dmi {
        vendor: a("sys_vendor"),
        product: a("product_name"),
        serial: a("product_serial"),
        board_vendor: a("board_vendor"),
        board: a("board_name"),
        board_serial: a("board_serial"),
        bios_vendor: a("bios_vendor"),
        bios_version: a("bios_version"),
        bios_date: a("bios_date"),
    }
}

/// Whether a `/sys/block` entry is a physical disk (not loop, RAM, device-mapper,
/// md, optical, or a hidden NVMe multipath path).
pub fn is_physical_disk(name: &str, dir: &Path) -> bool {
    const VIRTUAL: [&str; 8] = ["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"];
    if VIRTUAL.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    // nvme0c0n1: a path of a multipath namespace, shown again as nvme0n1.
    if name.starts_with("nvme") && name[4..].contains('c') {
        return false;
    }
    dir.join("device").exists()
}

/// One block device's facts from `/sys/block/NAME` (any device, physical or not).
pub fn disk(sys: &Path, name: &str) -> Disk {
    let dir = sys.join("block").join(name);
    let dev = dir.join("device");
    let mut serial = attr(&dev.join("serial"));
    if serial.is_empty() {
        serial = attr(&dir.join("serial"));
    }
    if serial.is_empty() {
        serial = vpd_serial(&dev.join("vpd_pg80"));
    }
    let sectors: u64 = attr(&dir.join("size")).parse().unwrap_or(0);
    let real = fs::canonicalize(&dir).unwrap_or(dir.clone());
    Disk {
        name: name.to_string(),
        path: format!("/dev/{name}"),
        model: attr(&dev.join("model")),
        serial,
        size_bytes: sectors * 512,
        rotational: attr(&dir.join("queue/rotational")) == "1",
        transport: transport(name, &real.to_string_lossy()),
        removable: attr(&dir.join("removable")) == "1",
    }
}

/// The serial in a SCSI VPD page 0x80 (4-byte header, then ASCII).
fn vpd_serial(path: &Path) -> String {
    match fs::read(path) {
        Ok(b) if b.len() > 4 && b[1] == 0x80 => {
            let len = (u16::from_be_bytes([b[2], b[3]]) as usize).min(b.len() - 4);
            String::from_utf8_lossy(&b[4..4 + len])
                .trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string()
        }
        _ => String::new(),
    }
}

/// The bus a disk hangs off, from its name and sysfs device path.
pub fn transport(name: &str, real: &str) -> String {
    let t = if name.starts_with("nvme") {
        "nvme"
    } else if name.starts_with("vd") {
        "virtio"
    } else if name.starts_with("mmcblk") {
        "mmc"
    } else if real.contains("/usb") {
        "usb"
    } else if real.contains("/ata") {
        "ata"
    } else if real.contains("/virtio") {
        "virtio"
    } else if real.contains("/end_device-") || real.contains("/sas_") {
        "sas"
    } else {
        "scsi"
    };
    t.to_string()
}

/// Physical disks, sorted by name.
pub fn disks(sys: &Path) -> Vec<Disk> {
    sorted_dir(&sys.join("block"))
        .into_iter()
        .filter(|(n, p)| is_physical_disk(n, p))
        .map(|(n, _)| disk(sys, &n))
        .collect()
}

/// Physical NICs (entries with a `device`), sorted by name.
pub fn nics(sys: &Path) -> Vec<Nic> {
    sorted_dir(&sys.join("class/net"))
        .into_iter()
        .filter(|(n, p)| n != "lo" && p.join("device").exists())
        .map(|(name, p)| Nic {
            mac: attr(&p.join("address")).to_ascii_lowercase(),
            driver: link_name(&p.join("device/driver")),
            speed_mbps: attr(&p.join("speed"))
                .parse::<i64>()
                .ok()
                .and_then(|s| u32::try_from(s).ok().filter(|s| *s > 0 && *s != u32::MAX)),
            state: attr(&p.join("operstate")),
            name,
        })
        .collect()
}

fn hex(s: &str) -> u32 {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0)
}

/// PCI functions from `/sys/bus/pci/devices` (ids only; names come from lspci).
pub fn pci(sys: &Path) -> Vec<Pci> {
    sorted_dir(&sys.join("bus/pci/devices"))
        .into_iter()
        .map(|(slot, p)| Pci {
            class: hex(&attr(&p.join("class"))),
            vendor_id: hex(&attr(&p.join("vendor"))) as u16,
            device_id: hex(&attr(&p.join("device"))) as u16,
            driver: link_name(&p.join("driver")),
            slot,
            ..Default::default()
        })
        .collect()
}

/// Quoted and bare fields of one `lspci -mm` line.
fn lspci_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            out.push(chars.by_ref().take_while(|&c| c != '"').collect());
        } else {
            out.push(chars.by_ref().take_while(|c| !c.is_whitespace()).collect());
        }
    }
    out
}

/// Strips lspci's trailing ` [1234]` id.
fn strip_id(s: &str) -> String {
    match s.rfind(" [") {
        Some(i) if s.ends_with(']') => s[..i].to_string(),
        _ => s.to_string(),
    }
}

/// Adds names from `lspci -mm -nn` output to `devs` (matched by slot); devices that
/// only lspci listed are added.
pub fn merge_lspci(devs: &mut Vec<Pci>, text: &str) {
    for line in text.lines() {
        let f = lspci_fields(line);
        if f.len() < 4 {
            continue;
        }
        let slot = if f[0].matches(':').count() == 1 {
            format!("0000:{}", f[0])
        } else {
            f[0].clone()
        };
        let idx = match devs.iter().position(|d| d.slot == slot) {
            Some(i) => i,
            None => {
                let id = |s: &str| {
                    hex(s
                        .rsplit_once('[')
                        .map(|x| x.1)
                        .unwrap_or("")
                        .trim_end_matches(']'))
                };
                devs.push(Pci {
                    slot,
                    class: id(&f[1]) << 8,
                    vendor_id: id(&f[2]) as u16,
                    device_id: id(&f[3]) as u16,
                    ..Default::default()
                });
                devs.len() - 1
            }
        };
        let d = &mut devs[idx];
        d.class_name = strip_id(&f[1]);
        d.vendor = strip_id(&f[2]);
        d.device = strip_id(&f[3]);
    }
}
