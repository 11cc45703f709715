//! Import benchmark: writes an offline result bundle of about SIZE MiB (BLOBS artifact
//! blobs of pseudo-random bytes, the frames naming them) into a temp folder, runs the
//! real `kiln-coordinator import` on it as a child process, and prints the bundle's
//! size next to the importer's peak RSS (getrusage of the child: `ru_maxrss`) and the
//! time taken. The bundle is streamed to disk (never held) and deleted afterwards.
//!
//! `cargo build --release -p kiln-coordinator && cargo run --release -p
//! kiln-coordinator --example bench_import -- [SIZE_MIB] [BLOBS]` (defaults 1024 MiB,
//! 4 blobs). `KILN_BENCH_DIR` picks the folder (default: the system temp dir).
use kiln_coordinator::state::State;
use kiln_protocol::{
    BUNDLE_MAGIC, Batch, Event, Frame, Outcome, ResultRecord, RunId, SecretKey, Sha256,
};
use sha2::Digest;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;
use common::random;

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .map(|a| a.parse().expect("arguments are numbers"))
        .unwrap_or(default)
}

/// COBS-encodes a record as it is written: blocks of up to 254 non-zero bytes.
struct CobsWriter<W: Write> {
    out: W,
    block: Vec<u8>,
}

impl<W: Write> CobsWriter<W> {
    fn new(out: W) -> Self {
        CobsWriter {
            out,
            block: Vec::with_capacity(254),
        }
    }

    fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        for &b in bytes {
            if b == 0 {
                self.flush_block()?;
            } else {
                self.block.push(b);
                if self.block.len() == 254 {
                    self.out.write_all(&[0xff])?;
                    self.out.write_all(&self.block)?;
                    self.block.clear();
                }
            }
        }
        Ok(())
    }

    fn flush_block(&mut self) -> std::io::Result<()> {
        self.out.write_all(&[self.block.len() as u8 + 1])?;
        self.out.write_all(&self.block)?;
        self.block.clear();
        Ok(())
    }

    /// Ends the record: the last block, then the terminator.
    fn end(mut self) -> std::io::Result<W> {
        self.flush_block()?;
        self.out.write_all(&[0])?;
        Ok(self.out)
    }
}

/// Writes one `Blob` record of `len` pseudo-random bytes; returns their digest.
fn write_blob(out: &mut impl Write, len: u64, seed: u64) -> std::io::Result<Sha256> {
    let mut w = CobsWriter::new(out);
    w.push(&postcard::to_allocvec(&2u32).expect("varint"))?;
    w.push(&postcard::to_allocvec(&len).expect("varint"))?;
    let mut h = sha2::Sha256::new();
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        h.update(&buf[..n]);
        w.push(&buf[..n])?;
        left -= n as u64;
    }
    w.end()?;
    Ok(Sha256(h.finalize().into()))
}

/// Writes the bundle; returns its size.
fn write_bundle(path: &Path, key: &SecretKey, bytes: u64, blobs: u64) -> u64 {
    let run = RunId(random());
    let agent = SecretKey::from_seed(random());
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("bundle"));
    out.write_all(BUNDLE_MAGIC).expect("write");
    out.write_all(&ResultRecord::Ticket(common::signed(key, run, "load")).encode())
        .expect("write");
    let mut events = vec![
        Event::Claim {
            agent_key: agent.public(),
            agent_version: "bench".into(),
            boot_id: "bench".into(),
        },
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    ];
    for i in 0..blobs {
        let len = bytes / blobs;
        let sha = write_blob(&mut out, len, 0x9e37_79b9_7f4a_7c15 ^ (i << 8)).expect("write blob");
        events.push(Event::Artifact {
            stage: 0,
            name: format!("blob-{i}.bin"),
            sha256: sha,
            size: len,
        });
    }
    events.push(Event::StageFinished {
        stage: 0,
        attempt: 1,
        outcome: Outcome::Passed,
        exit_code: Some(0),
        duration_ms: 1,
        detail: String::new(),
    });
    events.push(Event::RunFinished {
        outcome: Outcome::Passed,
    });
    let frames = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Frame {
            seq: i as u64 + 1,
            at_ms: 0,
            event,
        })
        .collect();
    let sealed = Batch { run, frames }.seal(&agent);
    out.write_all(&ResultRecord::Batch(sealed).encode())
        .expect("write");
    let f = out.into_inner().expect("flush");
    f.sync_all().expect("sync");
    f.metadata().expect("size").len()
}

/// The `kiln-coordinator` binary beside this example's folder.
fn coordinator_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target folder")
        .join("kiln-coordinator");
    assert!(
        bin.is_file(),
        "{} is missing: cargo build --release -p kiln-coordinator",
        bin.display()
    );
    bin
}

/// Peak RSS of the waited-for children, KiB.
fn children_maxrss_kib() -> i64 {
    let mut r = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the buffer we pass it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, r.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: filled by the successful call above.
    unsafe { r.assume_init() }.ru_maxrss
}

fn main() {
    let mib = arg(1, 1024);
    let blobs = arg(2, 4).max(1);
    let base = std::env::var_os("KILN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let (state, _) = State::init(&dir.path().join("state")).expect("state");
    let key = state.signing_key().expect("key");
    let bundle = dir.path().join("bench.kres");
    let t = Instant::now();
    let size = write_bundle(&bundle, &key, mib << 20, blobs);
    println!(
        "bundle: {size} bytes ({:.1} MiB, {blobs} blob(s)), written in {:.1}s",
        size as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let out = Command::new(coordinator_bin())
        .arg("--state")
        .arg(&state.root)
        .arg("import")
        .arg(&bundle)
        .output()
        .expect("running kiln-coordinator import");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let rss = children_maxrss_kib();
    println!(
        "import of a {:.1} MiB bundle: peak RSS {rss} KiB ({:.1} MiB), {:.1}s ({:.0} MiB/s)",
        size as f64 / (1 << 20) as f64,
        rss as f64 / 1024.0,
        took.as_secs_f64(),
        size as f64 / (1 << 20) as f64 / took.as_secs_f64()
    );
    // The temp folder (bundle and state) goes when `dir` drops.
}
