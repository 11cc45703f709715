//! fio and badblocks for the `storage` stage: the job lines (read-only or, gated,
//! writing) and their results (bandwidth, IOPS, latency percentiles, bad blocks).
use serde_json::Value;

/// One direction of one fio job.
#[derive(Debug, Clone, PartialEq)]
pub struct FioResult {
    /// Job name (`seqread`, `randread`, `seqwrite`).
    pub job: String,
    /// `read` or `write`.
    pub dir: &'static str,
    /// Bandwidth, MiB/s.
    pub bw_mib_s: f64,
    /// Operations per second.
    pub iops: f64,
    /// Completion latency percentiles, µs: (percentile, value).
    pub clat_us: Vec<(f64, f64)>,
    /// Mean total latency, µs.
    pub lat_mean_us: f64,
    /// Bytes moved.
    pub io_bytes: u64,
}

/// A parsed fio run: results and the jobs' error numbers (errno; 0 = fine).
#[derive(Debug, Clone, PartialEq)]
pub struct FioRun {
    /// Results of the jobs' directions that moved data.
    pub results: Vec<FioResult>,
    /// (job, errno) of jobs that failed.
    pub errors: Vec<(String, i64)>,
}

/// Reads fio's JSON output (fio may print warnings before it: they are skipped).
pub fn parse(text: &str) -> Result<FioRun, String> {
    let start = text.find('{').ok_or("fio printed no JSON")?;
    let doc: Value = serde_json::from_str(&text[start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let jobs = doc["jobs"].as_array().ok_or("fio JSON has no jobs")?;
    let mut run = FioRun {
        results: vec![],
        errors: vec![],
    };
    for j in jobs {
        let name = j["jobname"].as_str().unwrap_or("?").to_string();
        let err = j["error"].as_i64().unwrap_or(0);
        if err != 0 {
            run.errors.push((name.clone(), err));
        }
        for dir in ["read", "write"] {
            let d = &j[dir];
            let io = d["io_bytes"].as_u64().unwrap_or(0);
            if io == 0 {
                continue;
            }
            let mut clat_us: Vec<(f64, f64)> = d["clat_ns"]["percentile"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(p, v)| Some((p.parse().ok()?, v.as_f64()? / 1000.0)))
                        .collect()
                })
                .unwrap_or_default();
            clat_us.sort_by(|a, b| a.0.total_cmp(&b.0));
            run.results.push(FioResult {
                job: name.clone(),
                dir,
                bw_mib_s: d["bw"].as_f64().unwrap_or(0.0) / 1024.0,
                iops: d["iops"].as_f64().unwrap_or(0.0),
                clat_us,
                lat_mean_us: d["lat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
                io_bytes: io,
            });
        }
    }
    Ok(run)
}

/// How many blocks fio verifies at a time while the write job runs. The write is
/// capped by time, and fio skips its after-write verify pass when the cap ends the
/// job: verifying as it goes is what makes a capped write checked at all.
pub const VERIFY_BACKLOG: u32 = 256;

impl FioResult {
    /// The measurement name below `storage.<dev>.`: the job, and for the write job
    /// its direction (`seqwrite.write`, `seqwrite.verify` for the verify reads).
    pub fn key(&self) -> String {
        match (self.job.as_str(), self.dir) {
            ("seqwrite", "write") => "seqwrite.write".into(),
            ("seqwrite", _) => "seqwrite.verify".into(),
            (job, _) => job.to_string(),
        }
    }

    /// The completion latency at percentile `p` (e.g. 99.0), µs.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        self.clat_us
            .iter()
            .find(|(q, _)| (*q - p).abs() < 1e-9)
            .map(|x| x.1)
    }
}

/// Why the write job does not count as checked: it wrote but verified nothing.
pub fn unverified(run: &FioRun) -> Option<String> {
    let bytes = |dir: &str| {
        run.results
            .iter()
            .filter(|r| r.job == "seqwrite" && r.dir == dir)
            .map(|r| r.io_bytes)
            .sum::<u64>()
    };
    let (written, verified) = (bytes("write"), bytes("read"));
    (written > 0 && verified == 0).then(|| {
        format!(
            "seqwrite wrote {:.1} MiB but verified none: the written data was never checked",
            written as f64 / (1 << 20) as f64
        )
    })
}

/// The fio argv for `dev` (the canonical device node:`:` in it is escaped, as fio
/// splits `--filename` on it): a sequential and a random read, both `--readonly`; with
/// `write`, a verified sequential write first (the gates have passed by then).
pub fn argv(dev: &str, duration_s: u64, size_bytes: u64, write: bool) -> Vec<String> {
    let d = duration_s.max(2);
    let mut a: Vec<String> = [
        "fio",
        "--output-format=json",
        "--ioengine=psync",
        "--direct=1",
        "--group_reporting=0",
    ]
    .map(String::from)
    .to_vec();
    a.push(format!("--filename={}", dev.replace(':', "\\:")));
    if size_bytes > 0 {
        a.push(format!("--size={size_bytes}"));
    }
    if write {
        // Bounded by size, capped by time; every block written is read back and
        // checked while writing (the backlog), so the time cap cannot skip it.
        let w = [
            "--name=seqwrite",
            "--rw=write",
            "--bs=1M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_state_save=0",
        ];
        a.extend(w.map(String::from));
        a.push(format!("--verify_backlog={VERIFY_BACKLOG}"));
        a.push(format!("--runtime={}", (d / 2).max(1)));
    } else {
        a.push("--readonly".into());
    }
    let half = (d / 2).max(1);
    for (name, rw, bs) in [("seqread", "read", "1M"), ("randread", "randread", "4k")] {
        a.push(format!("--name={name}"));
        a.extend([
            "--stonewall".into(),
            format!("--rw={rw}"),
            format!("--bs={bs}"),
        ]);
        a.extend(["--time_based".into(), format!("--runtime={half}")]);
    }
    a
}

/// The badblocks argv: read-only, or `-w -t random` (one destructive pattern).
pub fn badblocks_argv(dev: &str, size_bytes: u64, write: bool) -> Vec<String> {
    let mut a: Vec<String> = ["badblocks", "-s", "-v", "-b", "4096"]
        .map(String::from)
        .to_vec();
    if write {
        a.extend(["-w", "-t", "random"].map(String::from));
    }
    a.push(dev.to_string());
    if size_bytes >= 4096 {
        a.push((size_bytes / 4096 - 1).to_string());
    }
    a
}

/// Bad blocks badblocks found: one block number per stdout line.
pub fn bad_blocks(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(n: &str) -> String {
        crate::stages::hardware::testutil::fixture("fio", n)
    }

    #[test]
    fn captured_randread() {
        let r = parse(&fixture("loop-randread-readonly.json")).unwrap();
        assert!(r.errors.is_empty());
        assert_eq!(r.results.len(), 1);
        let x = &r.results[0];
        assert_eq!((x.job.as_str(), x.dir), ("read", "read"));
        assert!((x.bw_mib_s - 80019.0 / 1024.0).abs() < 1e-9, "{x:?}");
        assert!((x.iops - 20004.998334).abs() < 1e-6);
        assert!(x.percentile(50.0).unwrap() > 0.0 && x.percentile(99.0) >= x.percentile(50.0));
        assert_eq!(x.clat_us.len(), 17);
    }

    #[test]
    fn warnings_before_json_and_errors() {
        let t = format!("fio: some warning\n{}", fixture("loop-read-readonly.json"));
        assert_eq!(parse(&t).unwrap().results.len(), 1);
        let e =
            parse(r#"{"jobs":[{"jobname":"seqwrite","error":5,"read":{},"write":{}}]}"#).unwrap();
        assert_eq!(e.errors, [("seqwrite".to_string(), 5)]);
        assert!(parse("").is_err());
        assert!(parse("{\"jobs\":3}").is_err());
    }

    #[test]
    fn readonly_unless_writing() {
        let a = argv("/dev/sdb", 10, 0, false);
        assert!(a.contains(&"--readonly".to_string()));
        assert!(!a.iter().any(|x| x.contains("write")));
        let w = argv("/dev/sdb", 10, 1 << 20, true);
        assert!(!w.contains(&"--readonly".to_string()));
        assert!(w.contains(&"--rw=write".to_string()) && w.contains(&"--size=1048576".to_string()));
        assert!(!badblocks_argv("/dev/sdb", 0, false).contains(&"-w".to_string()));
        assert_eq!(badblocks_argv("/dev/sdb", 8192, true).last().unwrap(), "1");
        assert_eq!(bad_blocks("12\n\n40\nChecking\n"), [12, 40]);
    }

    #[test]
    fn the_capped_write_verifies_as_it_goes() {
        let w = argv("/dev/sdb", 10, 1 << 30, true);
        assert!(
            w.contains(&format!("--verify_backlog={VERIFY_BACKLOG}")),
            "{w:?}"
        );
        assert!(argv("/x/a:b", 10, 0, false).contains(&"--filename=/x/a\\:b".to_string()));
    }

    /// fio 3.33 on a loop device, the write job cut by `--runtime=1` (`--rate=50m` to
    /// make it slow): without a backlog it wrote 51 MiB and verified nothing.
    #[test]
    fn a_cut_write_without_verify_is_flagged() {
        let cut = parse(&fixture("loop-seqwrite-cut-unverified.json")).unwrap();
        assert!(cut.errors.is_empty());
        let why = unverified(&cut).expect("flagged");
        assert!(why.contains("verified none"), "{why}");
        let keys: Vec<String> = cut.results.iter().map(FioResult::key).collect();
        assert_eq!(keys, ["seqwrite.write"]);
        let ok = parse(&fixture("loop-seqwrite-cut-backlog.json")).unwrap();
        assert_eq!(unverified(&ok), None);
        let keys: Vec<String> = ok.results.iter().map(FioResult::key).collect();
        assert_eq!(keys, ["seqwrite.verify", "seqwrite.write"]);
        assert!(ok.results[0].io_bytes > 0);
    }
}
