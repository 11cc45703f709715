//! The structured inventory: what the `inventory` stage found, as uploaded in
//! `inventory.json` and diffed against the host's expected spec.
use serde::Serialize;

/// Everything the inventory stage found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    /// Processors.
    pub cpu: Cpu,
    /// Installed memory.
    pub memory: Memory,
    /// Firmware identity (`/sys/class/dmi/id`).
    pub dmi: Dmi,
    /// Physical disks (`/sys/block`, virtual devices left out).
    pub disks: Vec<Disk>,
    /// Physical network interfaces (`/sys/class/net` entries with a device).
    pub nics: Vec<Nic>,
    /// PCI devices (`/sys/bus/pci/devices`, names from `lspci` when present).
    pub pci: Vec<Pci>,
    /// GPUs (3D controllers, and display controllers from NVIDIA and AMD).
    pub gpus: Vec<Gpu>,
    /// `lshw -json` as it printed it, when lshw is installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lshw: Option<serde_json::Value>,
}

/// Processors, from `/proc/cpuinfo`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cpu {
    /// Model name of the first processor.
    pub model: String,
    /// Logical CPUs.
    pub logical: u32,
    /// Distinct physical packages.
    pub sockets: u32,
    /// Distinct physical cores.
    pub cores: u32,
}

/// Memory: the best total available and where it came from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// Installed memory, MiB (DIMM sum, else online memory blocks, else MemTotal).
    pub total_mib: u64,
    /// `dmi`, `sysfs` or `meminfo`.
    pub source: String,
    /// `MemTotal` of `/proc/meminfo`, MiB (what the kernel can use).
    pub usable_mib: u64,
    /// Populated DIMMs, from `dmidecode -t 17`.
    pub dimms: Vec<Dimm>,
}

/// One populated memory module.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Dimm {
    /// Slot name (`DIMM 0`, `P1-DIMMA1`).
    pub locator: String,
    /// Size, MiB.
    pub size_mib: u64,
    /// Type (`DDR4`, `RAM`).
    pub kind: String,
    /// Speed as printed (`3200 MT/s`).
    pub speed: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Part number.
    pub part: String,
    /// Serial number.
    pub serial: String,
}

/// Firmware identity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dmi {
    /// System vendor.
    pub vendor: String,
    /// Product name.
    pub product: String,
    /// Product serial (what tickets bind to).
    pub serial: String,
    /// Board vendor.
    pub board_vendor: String,
    /// Board name.
    pub board: String,
    /// Board serial.
    pub board_serial: String,
    /// BIOS vendor.
    pub bios_vendor: String,
    /// BIOS version.
    pub bios_version: String,
    /// BIOS date.
    pub bios_date: String,
}

/// A physical disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Disk {
    /// Kernel name (`sda`, `nvme0n1`).
    pub name: String,
    /// Device path (`/dev/sda`).
    pub path: String,
    /// Model (may be empty: virtio disks have none).
    pub model: String,
    /// Serial (may be empty).
    pub serial: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Spinning disk.
    pub rotational: bool,
    /// `nvme`, `ata` (SATA or PATA), `sas`, `usb`, `virtio`, `mmc`, `scsi`.
    pub transport: String,
    /// Removable media.
    pub removable: bool,
}

/// A network interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Nic {
    /// Kernel name (`eth0`, `enp1s0`).
    pub name: String,
    /// MAC address, lowercase with colons.
    pub mac: String,
    /// Driver (`e1000`, `mlx5_core`).
    pub driver: String,
    /// Link speed, Mbit/s, when the link is up and the driver says.
    pub speed_mbps: Option<u32>,
    /// `operstate` (`up`, `down`).
    pub state: String,
}

/// A PCI function.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Pci {
    /// Address (`0000:00:04.0`).
    pub slot: String,
    /// Class code, 24 bits.
    pub class: u32,
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Class name (from lspci).
    pub class_name: String,
    /// Vendor name (from lspci).
    pub vendor: String,
    /// Device name (from lspci).
    pub device: String,
    /// Bound driver.
    pub driver: String,
}

/// A GPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Gpu {
    /// PCI address.
    pub slot: String,
    /// Model name (from nvidia-smi or lspci).
    pub name: String,
    /// Vendor name.
    pub vendor: String,
    /// Memory, MiB (from nvidia-smi), when known.
    pub memory_mib: Option<u64>,
}
