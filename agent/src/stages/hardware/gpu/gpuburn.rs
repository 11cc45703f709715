//! `gpu_burn`'s output: the verdict lines it ends with (`GPU 0: OK`, `GPU 1: FAULTY`)
//! and its progress line (`100.0%  proc'd: 1120 (51401 Gflop/s) - …   errors: 0 -
//! 0  (DIED!)   temps: …`), of which the last one counts. GPUs are numbered in CUDA's
//! order, which the stage pins to PCI bus order (nvidia-smi's `index`).
use std::collections::BTreeMap;

/// What one gpu_burn run said about each GPU.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BurnReport {
    /// The final verdict per GPU: `true` = FAULTY (its results differed).
    pub faulty: BTreeMap<u32, bool>,
    /// Each GPU's compute rate in the last progress report, Gflop/s.
    pub gflops: BTreeMap<u32, f64>,
    /// GPUs whose worker died (gpu_burn marks them `(DIED!)` yet may still call them
    /// OK at the end).
    pub died: Vec<u32>,
}

/// Parses gpu_burn's stdout (lines as a terminal shows them, or raw with `\r`s).
pub fn parse(text: &str) -> BurnReport {
    let mut r = BurnReport::default();
    let mut progress: Option<&str> = None;
    for line in text.lines() {
        // What a terminal shows of a line that was rewritten with `\r`.
        let line = line
            .rsplit('\r')
            .find(|s| !s.trim().is_empty())
            .unwrap_or("");
        let t = line.trim();
        if let Some((gpu, verdict)) = t.strip_prefix("GPU ").and_then(|r| r.split_once(": "))
            && let Ok(i) = gpu.parse::<u32>()
        {
            match verdict.trim() {
                "OK" => {
                    r.faulty.insert(i, false);
                }
                "FAULTY" => {
                    r.faulty.insert(i, true);
                }
                _ => {}
            }
        }
        if t.contains("proc'd: ") && t.contains("errors: ") {
            progress = Some(t);
        }
    }
    if let Some(p) = progress {
        let section = |from: &str, to: &str| -> Vec<String> {
            let Some((_, rest)) = p.split_once(from) else {
                return vec![];
            };
            let body = rest.split_once(to).map(|(b, _)| b).unwrap_or(rest);
            body.split(" - ").map(|s| s.trim().to_string()).collect()
        };
        for (i, gpu) in section("proc'd: ", "errors: ").iter().enumerate() {
            let rate = gpu
                .split_once('(')
                .and_then(|(_, r)| r.split_once(" Gflop/s"))
                .and_then(|(v, _)| v.trim().parse::<f64>().ok());
            if let Some(v) = rate.filter(|v| v.is_finite()) {
                r.gflops.insert(i as u32, v);
            }
        }
        for (i, gpu) in section("errors: ", "temps: ").iter().enumerate() {
            if gpu.contains("DIED") {
                r.died.push(i as u32);
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        crate::stages::hardware::testutil::fixture("gpu_burn", name)
    }

    /// A real run: gpu_burn 30 s on an H100 (see the fixtures' README).
    #[test]
    fn a_real_h100_run() {
        let r = parse(&fixture("h100-30s.txt"));
        assert_eq!(r.faulty, BTreeMap::from([(0, false)]));
        assert_eq!(r.gflops, BTreeMap::from([(0, 51376.0)]));
        assert!(r.died.is_empty());
    }

    #[test]
    fn several_gpus_one_faulty_one_dead() {
        let text = "Burning for 10 seconds.\n\
            \r50.0%  proc'd: 10 (40000 Gflop/s) - 9 (39000 Gflop/s) - -1 (0 Gflop/s)   \
            errors: 0 - 12  (WARNING!) - -1  (DIED!)   temps: 60 C - 61 C - -- \n\
            \r100.0%  proc'd: 20 (41000 Gflop/s) - 18 (38000 Gflop/s) - -1 (0 Gflop/s)   \
            errors: 0 - 3  (WARNING!) - -1  (DIED!)   temps: 62 C - 63 C - -- \n\
            Killing processes with SIGTERM (soft kill)\ndone\n\n\
            Tested 3 GPUs:\n\tGPU 0: OK\n\tGPU 1: FAULTY\n\tGPU 2: OK\n";
        let r = parse(text);
        assert_eq!(
            r.faulty,
            BTreeMap::from([(0, false), (1, true), (2, false)])
        );
        assert_eq!(
            r.gflops,
            BTreeMap::from([(0, 41000.0), (1, 38000.0), (2, 0.0)])
        );
        assert_eq!(r.died, [2]);
    }

    #[test]
    fn nvidia_smi_listing_lines_are_not_verdicts() {
        let r = parse("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\nGPU x: OK\n");
        assert_eq!(r, BurnReport::default());
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "",
            "proc'd: errors: temps:",
            "proc'd: (  Gflop/s - ( Gflop/s errors: DIED",
            "GPU : FAULTY\nGPU 99999999999: OK",
            "\r\r\r",
            "proc'd: 1 (NaN Gflop/s)   errors: 0",
        ] {
            let r = parse(text);
            assert!(
                r.faulty.is_empty() && r.gflops.is_empty(),
                "{text:?}: {r:?}"
            );
        }
    }
}
