//! The wipe probe: reads a device's first and last MiB and looks for the magic bytes
//! of partition tables, filesystems, RAID and LVM members, swap and encryption. A disk
//! with any of them is never written to.
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes read from each end of the device.
pub const WINDOW: u64 = 1024 * 1024;

const MD_MAGIC: [u8; 4] = 0xa92b4efc_u32.to_le_bytes();
const BCACHE_MAGIC: [u8; 16] = [
    0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba, 0x6d, 0x81,
];
const ZFS_UBERBLOCK: u64 = 0x00ba_b10c;

/// A signature found: what, and at which byte offset of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// What the bytes mean (`gpt`, `ext4`, `lvm2`, …).
    pub kind: &'static str,
    /// Byte offset on the device.
    pub offset: u64,
}

/// The first and last [`WINDOW`] bytes of a device (overlapping when it is small).
#[derive(Debug, Clone)]
pub struct Ends {
    /// Device size in bytes.
    pub size: u64,
    /// Bytes from offset 0.
    pub head: Vec<u8>,
    /// Bytes ending at `size`.
    pub tail: Vec<u8>,
}

impl Ends {
    /// Reads both ends of `path` (block device or file), read-only.
    pub fn read(path: &Path) -> io::Result<Ends> {
        let mut f = File::open(path)?;
        let size = f.seek(SeekFrom::End(0))?;
        let n = WINDOW.min(size);
        let mut head = vec![0; n as usize];
        f.seek(SeekFrom::Start(0))?;
        f.read_exact(&mut head)?;
        let mut tail = vec![0; n as usize];
        f.seek(SeekFrom::Start(size - n))?;
        f.read_exact(&mut tail)?;
        Ok(Ends { size, head, tail })
    }

    /// `len` bytes at absolute `offset`, if inside one of the windows.
    fn at(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len as u64)?;
        if end <= self.head.len() as u64 {
            return Some(&self.head[offset as usize..end as usize]);
        }
        let tail_start = self.size - self.tail.len() as u64;
        if offset >= tail_start && end <= self.size {
            let o = (offset - tail_start) as usize;
            return Some(&self.tail[o..o + len]);
        }
        None
    }

    fn is(&self, offset: u64, magic: &[u8]) -> bool {
        self.at(offset, magic.len()) == Some(magic)
    }

    /// Whether every byte read is zero (an unknown filesystem looks like non-zero bytes
    /// without a signature, so only zeros count as blank).
    pub fn blank(&self) -> bool {
        self.head.iter().chain(&self.tail).all(|b| *b == 0)
    }
}

/// Every signature in `ends`, in offset order (empty: safe to write).
pub fn probe(e: &Ends) -> Vec<Signature> {
    let mut out = Vec::new();
    let mut hit = |kind: &'static str, offset: u64| out.push(Signature { kind, offset });
    if e.is(510, &[0x55, 0xAA]) {
        hit("dos boot sector (MBR, FAT or NTFS)", 510);
    }
    for sector in [512u64, 4096] {
        if e.is(sector, b"EFI PART") {
            hit("gpt", sector);
        }
        if e.size >= sector && e.is(e.size - sector, b"EFI PART") {
            hit("gpt (backup header)", e.size - sector);
        }
    }
    if e.is(1080, &[0x53, 0xEF]) {
        hit("ext2/3/4", 1080);
    }
    if e.is(0, b"XFSB") {
        hit("xfs", 0);
    }
    if e.is(65536 + 64, b"_BHRfS_M") {
        hit("btrfs", 65536 + 64);
    }
    for i in 0..4u64 {
        if e.is(i * 512, b"LABELONE") {
            hit("lvm2 physical volume", i * 512);
        }
    }
    let mut md = vec![0u64, 4096];
    if e.size >= 128 * 1024 {
        md.push(((e.size >> 16) - 1) << 16); // 0.90
        md.push((((e.size >> 9) - 16) & !7) << 9); // 1.0
    }
    for off in md {
        if e.is(off, &MD_MAGIC) {
            hit("linux raid (md) member", off);
        }
    }
    for page in [4096u64, 8192, 16384, 65536] {
        if e.is(page - 10, b"SWAPSPACE2") || e.is(page - 10, b"SWAP-SPACE") {
            hit("swap", page - 10);
        }
    }
    if e.is(0, b"LUKS\xba\xbe") || e.is(0, b"SKUL\xba\xbe") {
        hit("luks", 0);
    }
    if e.is(32769, b"CD001") {
        hit("iso9660", 32769);
    }
    if e.is(4096 + 24, &BCACHE_MAGIC) {
        hit("bcache", 4096 + 24);
    }
    // ZFS: uberblock arrays at 128 KiB into labels 0 and 1 (start) and 2 and 3 (end).
    let labels = [
        0,
        256 * 1024,
        e.size.saturating_sub(512 * 1024),
        e.size.saturating_sub(256 * 1024),
    ];
    'zfs: for label in labels {
        for k in 0..128u64 {
            let off = label + 128 * 1024 + k * 1024;
            if let Some(b) = e.at(off, 8) {
                let v = b.try_into().map(u64::from_le_bytes).unwrap_or(0);
                if v == ZFS_UBERBLOCK || v.swap_bytes() == ZFS_UBERBLOCK {
                    hit("zfs member", off);
                    break 'zfs;
                }
            }
        }
    }
    out.sort_by_key(|s| s.offset);
    out.dedup();
    out
}

/// `wipefs -n -J` output: the signature types libblkid found. Empty output is "none
/// found" (wipefs prints nothing then); anything else that is not wipefs's JSON is an
/// error, never "none".
pub fn parse_wipefs(text: &str) -> Result<Vec<String>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(vec![]);
    }
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("output is not JSON ({e})"))?;
    let a = v["signatures"]
        .as_array()
        .ok_or("JSON without a signatures list")?;
    Ok(a.iter()
        .map(|s| {
            let t = s["type"].as_str().unwrap_or("?");
            let o = s["offset"].as_str().unwrap_or("?");
            format!("{t} at {o}")
        })
        .collect())
}
