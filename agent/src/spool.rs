//! The on-disk spool: every frame of the run as a COBS record of postcard(Frame), plus
//! the acked high-water mark, so a restarted agent resends what was not acked.
use kiln_protocol::{Frame, RecordReader, encode_record};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// File name of the frame log inside the work folder.
pub const SPOOL_FILE: &str = "spool.log";
/// File name of the acked high-water mark inside the work folder.
pub const ACKED_FILE: &str = "spool.acked";

/// An append-only frame log with an index from seq to byte offset.
#[derive(Debug)]
pub struct Spool {
    file: File,
    acked_path: PathBuf,
    /// `offsets[i]` is where the record of seq `i + 1` starts; the last entry is the end.
    offsets: Vec<u64>,
    /// A failed append could not be undone: the file's tail is unknown, so nothing
    /// more is appended.
    broken: bool,
}

impl Spool {
    /// Opens (or creates) the spool in `work`; returns it with the frames already in it.
    /// A torn tail (a crash mid-write) is cut off; a damaged record or a seq gap
    /// ends the readable log there.
    pub fn open(work: &Path) -> io::Result<(Spool, Vec<Frame>)> {
        let path = work.join(SPOOL_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut reader = RecordReader::new(&bytes);
        let mut frames = Vec::new();
        let mut offsets = vec![0u64];
        while let Some(Ok(payload)) = reader.next() {
            match postcard::from_bytes::<Frame>(&payload) {
                Ok(f) if f.seq == frames.len() as u64 + 1 => frames.push(f),
                _ => break,
            }
            offsets.push(reader.consumed() as u64);
        }
        let good = *offsets.last().expect("offsets starts with 0");
        if good < bytes.len() as u64 {
            log::warn!(
                "spool: dropping {} damaged or torn bytes at the end",
                bytes.len() as u64 - good
            );
            file.set_len(good)?;
        }
        let spool = Spool {
            file,
            acked_path: work.join(ACKED_FILE),
            offsets,
            broken: false,
        };
        Ok((spool, frames))
    }

    /// The highest seq in the spool (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.offsets.len() as u64 - 1
    }

    /// Appends the next frame (its seq must be `last_seq() + 1`); returns the
    /// record's size in bytes. A failed or short write (a full disk) is cut back off,
    /// so the seq is not used and the log stays whole; if even that fails, every
    /// later append fails too.
    pub fn append(&mut self, frame: &Frame) -> io::Result<usize> {
        debug_assert_eq!(frame.seq, self.last_seq() + 1);
        if self.broken {
            return Err(io::Error::other("spool tail unknown after a failed write"));
        }
        let rec = encode_record(&postcard::to_allocvec(frame).expect("frames always encode"));
        let good = *self.offsets.last().expect("offsets starts with 0");
        // One write per record: a SIGKILL leaves whole records (the page cache keeps
        // them); a power cut leaves at most a torn tail, cut on the next open.
        if let Err(e) = self.file.write_all(&rec) {
            if let Err(t) = self.file.set_len(good) {
                self.broken = true;
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e} (and cutting the partial record failed: {t})"),
                ));
            }
            return Err(e);
        }
        let end = good + rec.len() as u64;
        self.offsets.push(end);
        Ok(rec.len())
    }

    /// Reads frames from `from` on, at least one and up to about `max_bytes` of records.
    pub fn read_from(&self, from: u64, max_bytes: usize) -> io::Result<Vec<Frame>> {
        let last = self.last_seq();
        if from == 0 || from > last {
            return Ok(vec![]);
        }
        let start = self.offsets[from as usize - 1];
        let mut end_seq = from;
        while end_seq < last && self.offsets[end_seq as usize + 1] - start <= max_bytes as u64 {
            end_seq += 1;
        }
        let end = self.offsets[end_seq as usize];
        let mut buf = vec![0u8; (end - start) as usize];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf)?;
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        let mut frames = Vec::new();
        for r in RecordReader::new(&buf) {
            let payload = r.map_err(|e| bad(e.to_string()))?;
            let f: Frame = postcard::from_bytes(&payload).map_err(|e| bad(e.to_string()))?;
            let want = from + frames.len() as u64;
            if f.seq != want {
                // Someone else wrote into this file (the index no longer fits it).
                return Err(bad(format!(
                    "spool holds seq {} where {want} belongs",
                    f.seq
                )));
            }
            frames.push(f);
        }
        if frames.len() as u64 != end_seq - from + 1 {
            return Err(bad(format!(
                "spool holds {} records where {} belong",
                frames.len(),
                end_seq - from + 1
            )));
        }
        Ok(frames)
    }

    /// Flushes the log to disk.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The acked high-water mark stored on disk (0 when none).
    pub fn load_acked(&self) -> u64 {
        fs::read_to_string(&self.acked_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
            .min(self.last_seq())
    }

    /// Stores the acked high-water mark (write to a temp file, then rename).
    pub fn store_acked(&self, upto: u64) -> io::Result<()> {
        let tmp = self.acked_path.with_extension("tmp");
        fs::write(&tmp, format!("{upto}\n"))?;
        fs::rename(&tmp, &self.acked_path)
    }
}

/// A small tmpfs for tests of a full disk (needs root to mount).
#[cfg(test)]
pub(crate) mod smallfs {
    use std::path::Path;
    use std::process::Command;

    /// A tmpfs of `size` mounted on a fresh temp folder; unmounted on drop.
    pub struct SmallFs {
        pub dir: tempfile::TempDir,
    }

    impl SmallFs {
        /// Mounts one, or `None` (a loud skip; a failure under `KILN_CI=1`).
        pub fn mount(size: &str) -> Option<SmallFs> {
            let dir = tempfile::tempdir().unwrap();
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Some(SmallFs { dir });
            }
            kiln_testkit::skip("cannot mount a tmpfs (not root?)");
            None
        }

        /// The mount point.
        pub fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{Event, Stream};

    fn frame(seq: u64, text: &str) -> Frame {
        Frame {
            seq,
            at_ms: 1,
            event: Event::Log {
                stage: 0,
                stream: Stream::Stdout,
                text: text.into(),
            },
        }
    }

    #[test]
    fn reopen_keeps_seqs_and_cuts_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, old) = Spool::open(d.path()).unwrap();
        assert!(old.is_empty());
        for i in 1..=5 {
            s.append(&frame(i, &format!("line {i}"))).unwrap();
        }
        s.store_acked(3).unwrap();
        drop(s);
        // A torn half-record at the end, as a crash mid-write would leave.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join(SPOOL_FILE))
            .unwrap();
        f.write_all(&[5, 1, 2]).unwrap();
        drop(f);
        let (mut s, old) = Spool::open(d.path()).unwrap();
        assert_eq!(old.len(), 5);
        assert_eq!(s.last_seq(), 5);
        assert_eq!(s.load_acked(), 3);
        s.append(&frame(6, "after")).unwrap();
        let got = s.read_from(4, 1 << 20).unwrap();
        assert_eq!(got.iter().map(|f| f.seq).collect::<Vec<_>>(), [4, 5, 6]);
        assert_eq!(got[2], frame(6, "after"));
    }

    #[test]
    fn read_from_is_bounded_but_never_empty() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(d.path()).unwrap();
        for i in 1..=100 {
            s.append(&frame(i, &"x".repeat(100))).unwrap();
        }
        let got = s.read_from(10, 1000).unwrap();
        assert!(!got.is_empty() && got.len() < 10, "{}", got.len());
        assert_eq!(got[0].seq, 10);
        assert_eq!(s.read_from(10, 1).unwrap().len(), 1);
        assert!(s.read_from(101, 1000).unwrap().is_empty());
    }

    #[test]
    fn a_write_on_a_full_disk_is_cut_off_and_its_seq_reused() {
        let Some(fs) = smallfs::SmallFs::mount("64k") else {
            return;
        };
        let (mut s, _) = Spool::open(fs.path()).unwrap();
        // Fill the disk with a file we can remove later, then with frames.
        let filler = fs.path().join("filler");
        let _ = std::fs::write(&filler, vec![0u8; 48 << 10]);
        let mut seq = 1;
        let err = loop {
            match s.append(&frame(seq, &"x".repeat(3000))) {
                Ok(_) => seq += 1,
                Err(e) => break e,
            }
            assert!(seq < 100, "the tmpfs never filled up");
        };
        assert!(seq > 1, "no frame fit: {err}");
        assert_eq!(
            s.last_seq(),
            seq - 1,
            "a failed append must not use its seq"
        );
        let len = std::fs::metadata(fs.path().join(SPOOL_FILE)).unwrap().len();
        assert_eq!(
            len,
            s.offsets[seq as usize - 1],
            "partial record left behind"
        );
        // Space again: the same seq goes in and reads back, also after a reopen.
        std::fs::remove_file(&filler).unwrap();
        s.append(&frame(seq, "after")).unwrap();
        assert_eq!(s.read_from(seq, 1 << 20).unwrap(), [frame(seq, "after")]);
        drop(s);
        let (_, old) = Spool::open(fs.path()).unwrap();
        assert_eq!(old.len() as u64, seq);
        assert_eq!(old.last(), Some(&frame(seq, "after")));
    }

    #[test]
    fn records_from_a_second_writer_are_refused_not_misread() {
        let d = tempfile::tempdir().unwrap();
        let (mut a, _) = Spool::open(d.path()).unwrap();
        let (mut b, _) = Spool::open(d.path()).unwrap();
        for i in 1..=3 {
            a.append(&frame(i, "a")).unwrap();
            b.append(&frame(i, "b")).unwrap();
        }
        let e = a.read_from(1, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let e = b.read_from(2, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }
}
