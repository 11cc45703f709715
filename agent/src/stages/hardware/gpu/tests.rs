//! The `gpu` stage with fake nvidia-smi and gpu_burn programs: readings, the load
//! test, link and clock health, row remapping.
use super::nvsmi::GpuReading;
use super::read::problems;
use super::*;
use crate::stages::hardware::testutil::{ctx_for, fake_tool, measures, parts};
use kiln_protocol::StageKind;

/// Runs a 60 s load test with a FAKE nvidia-smi (no GPU here) that answers the
/// first query with two healthy H100s and every later one with `then`, and a FAKE
/// gpu_burn that ends, healthy, once the sampler has queried three times (so the
/// second query's answer has been judged).
fn load_with_later_query(then: &str) -> StageResult {
    load_test(then, "echo 'GPU 0: OK'; echo 'GPU 1: OK'").0
}

/// [`load_with_later_query`] with the fake gpu_burn ending with `burn_end` (sh);
/// returns the result, the parts (name, outcome, detail), the measurements and
/// what the fake saw of its environment.
#[allow(clippy::type_complexity)]
fn load_test(
    then: &str,
    burn_end: &str,
) -> (
    StageResult,
    Vec<(String, Outcome, String)>,
    Vec<(String, f64)>,
    String,
) {
    load_test_with(&Fakes {
        then,
        burn_end,
        ..Fakes::default()
    })
}

/// What the FAKE nvidia-smi and gpu_burn answer (sh snippets; no GPU here).
struct Fakes<'a> {
    /// Load test length; 0: query only.
    duration_s: u64,
    /// Every main query after the first (which is h100x2.csv: two H100s).
    then: &'a str,
    /// gpu_burn's end, once the sampler has made two main queries.
    burn_end: &'a str,
    /// The link query at the start (idle).
    link_idle: &'a str,
    /// Every link query under load.
    link_loaded: &'a str,
    /// The row-remapping query.
    remap: &'a str,
}

/// Both GPUs' links at gen 5 x16, no clock cuts, idle.
const LINKS_IDLE: &str = "\
    echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 0'\n\
    echo '1, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 0'";

/// [`LINKS_IDLE`], busy.
const LINKS_BUSY: &str = "\
    echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'\n\
    echo '1, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'";

impl Default for Fakes<'_> {
    fn default() -> Self {
        Fakes {
            duration_s: 60,
            then: TWO_HEALTHY,
            burn_end: "echo 'GPU 0: OK'; echo 'GPU 1: OK'",
            link_idle: LINKS_IDLE,
            link_loaded: LINKS_BUSY,
            remap: "echo '00000000:18:00.0, 0, 0, No, No'\n\
                    echo '00000000:2A:00.0, 0, 0, No, No'",
        }
    }
}

/// Runs the stage against `f`; returns as [`load_test`].
#[allow(clippy::type_complexity)]
fn load_test_with(
    f: &Fakes,
) -> (
    StageResult,
    Vec<(String, Outcome, String)>,
    Vec<(String, f64)>,
    String,
) {
    let d = tempfile::tempdir().unwrap();
    let fx =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hardware/nvidia-smi");
    let n = d.path().join("n");
    let idle = d.path().join("idle-link-done");
    let smi = fake_tool(
        d.path(),
        "nvidia-smi",
        &format!(
            "case \"$*\" in\n\
             *pcie.link*) if [ -e '{idle}' ]; then\n{loaded}\nelse touch '{idle}'\n{link_idle}\nfi\nexit ;;\n\
             *remapped*) {remap}\nexit ;;\n\
             esac\n\
             n=$(($(cat '{n}' 2>/dev/null || echo 0) + 1)); echo $n > '{n}.'$$; mv '{n}.'$$ '{n}'\n\
             if mkdir '{first}' 2>/dev/null; then cat '{h100}'; exit 0; fi\n{then}",
            idle = idle.display(),
            loaded = f.link_loaded,
            link_idle = f.link_idle,
            remap = f.remap,
            n = n.display(),
            // The first main query only: mkdir is atomic, where the counter's
            // read-then-write is not (a sample racing the first query read 0 too).
            first = d.path().join("first-query").display(),
            h100 = fx.join("h100x2.csv").display(),
            then = f.then,
        ),
    );
    let env = d.path().join("env");
    let burn = fake_tool(
        d.path(),
        "gpu_burn",
        &format!(
            // The count is renamed into place: a plain `echo > n` truncates first, and
            // a read in between saw "" (so `[ "" -lt 3 ]` failed and the fake ended
            // before any sample was taken: a CI flake).
            "echo \"$CUDA_DEVICE_ORDER ${{CUDA_VISIBLE_DEVICES-unset}}\" > '{}'\n\
             while [ \"$(cat '{}' 2>/dev/null || echo 0)\" -lt 3 ]; do sleep 0.05; done\n\
             {}",
            env.display(),
            n.display(),
            f.burn_end,
        ),
    );
    let spec = GpuSpec {
        duration_s: f.duration_s,
        max_temperature_c: None,
    };
    let (c, sink, _w) = ctx_for(StageKind::Gpu(spec.clone()));
    let progs = Programs {
        nvidia_smi: &smi,
        gpu_burn: &burn,
        sample_every: Duration::from_millis(50),
    };
    let r = smol::block_on(run_with(&c, &spec, &progs));
    let m = measures(&sink)
        .into_iter()
        .map(|(n, v, _)| (n, v))
        .collect();
    let env = std::fs::read_to_string(&env).unwrap_or_default();
    (r, parts(&sink), m, env.trim().to_string())
}

/// A FAKE nvidia-smi's answer (sh): two healthy H100s. (The h100x2 capture has 2
/// ECC errors on gpu1, which would fail it whatever gpu_burn says.)
const TWO_HEALTHY: &str = "\
    echo '0, 00000000:18:00.0, NVIDIA H100 80GB HBM3, 81559, 40, 300, 0, 1980'\n\
    echo '1, 00000000:2A:00.0, NVIDIA H100 80GB HBM3, 81559, 41, 310, 0, 1980'";

#[test]
fn gpu_burn_verdicts_fail_the_gpus_they_name() {
    // Both GPUs are healthy to nvidia-smi; gpu_burn finds GPU 1 FAULTY.
    let h = TWO_HEALTHY;
    let (r, parts, m, env) = load_test(
        h,
        "printf '\\r100.0%%  proc'\\''d: 9 (50000 Gflop/s) - 9 (49000 Gflop/s)   errors: 0 - 7  (WARNING!)   temps: 60 C - 61 C \\n'\n\
         printf 'Tested 2 GPUs:\\n\\tGPU 0: OK\\n\\tGPU 1: FAULTY\\n'",
    );
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(
        r.detail.starts_with("gpu1 gpu_burn: FAULTY"),
        "{}",
        r.detail
    );
    let gpu1 = parts
        .iter()
        .find(|p| p.0 == "gpu1 0000:2a:00.0")
        .expect("gpu1 part");
    assert_eq!(gpu1.1, Outcome::Failed);
    assert!(gpu1.2.contains("FAULTY"), "{}", gpu1.2);
    let gpu0 = parts
        .iter()
        .find(|p| p.0 == "gpu0 0000:18:00.0")
        .expect("gpu0 part");
    assert_eq!(gpu0.1, Outcome::Passed, "{gpu0:?}");
    assert!(m.contains(&("gpu0.gflops".into(), 50000.0)), "{m:?}");
    assert!(m.contains(&("gpu1.gflops".into(), 49000.0)), "{m:?}");
    // gpu_burn ran with nvidia-smi's numbering and every GPU visible.
    assert_eq!(env, "PCI_BUS_ID unset");
}

/// The part of `gpu` (0 or 1) in `parts`.
fn part_of(parts: &[(String, Outcome, String)], gpu: u32) -> &(String, Outcome, String) {
    parts
        .iter()
        .find(|p| p.0.starts_with(&format!("gpu{gpu} ")))
        .unwrap_or_else(|| panic!("no gpu{gpu} part in {parts:?}"))
}

#[test]
fn a_link_below_its_width_under_load_fails_and_a_lower_gen_warns() {
    // Idle, gpu1's link looks fine; under load it trains to gen 4 x8 of gen 5 x16.
    let (r, parts, m, _) = load_test_with(&Fakes {
        link_loaded: "echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'\n\
                      echo '1, 4, 5, 8, 16, Not Active, Not Active, Not Active, Not Active, 100'",
        ..Fakes::default()
    });
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert_eq!(
        r.detail,
        "gpu1 PCIe link x8 of x16 under load, PCIe gen 4 of 5 under load"
    );
    assert_eq!(part_of(&parts, 0).1, Outcome::Passed);
    assert_eq!(part_of(&parts, 1).1, Outcome::Failed);
    assert!(m.contains(&("gpu1.pcie_width".into(), 8.0)), "{m:?}");
    assert!(m.contains(&("gpu1.pcie_gen".into(), 4.0)), "{m:?}");
    assert!(m.contains(&("gpu0.pcie_width".into(), 16.0)), "{m:?}");

    // A lower generation alone warns: the stage is a warning, not a failure.
    let (r, parts, _, _) = load_test_with(&Fakes {
        link_loaded: "echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'\n\
                      echo '1, 3, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'",
        ..Fakes::default()
    });
    assert_eq!(r.outcome, Outcome::Warning, "{r:?}");
    assert_eq!(r.detail, "gpu1 PCIe gen 3 of 5 under load");
    assert_eq!(part_of(&parts, 1).1, Outcome::Warning);

    // Without a load test an idle link (trained down to save power) is not judged.
    let (r, _, m, _) = load_test_with(&Fakes {
        duration_s: 0,
        then: TWO_HEALTHY,
        link_idle: "echo '0, 1, 5, 2, 16, Not Active, Not Active, Not Active, Not Active, 0'\n\
                    echo '1, 1, 5, 2, 16, Not Active, Not Active, Not Active, Not Active, 0'",
        ..Fakes::default()
    });
    // (The query-only stage judges h100x2's own readings: gpu1's 2 ECC errors.)
    assert_eq!(r.detail, "gpu1 2 uncorrected ECC errors", "{r:?}");
    assert!(m.contains(&("gpu0.pcie_width".into(), 2.0)), "{m:?}");
}

/// A FAKE link query under load (sh) answering `first` the first time, `later`
/// after; and a gpu_burn end that waits until `samples` of them have been answered.
fn link_sequence(k: &std::path::Path, first: &str, later: &str, samples: u32) -> (String, String) {
    let k = k.display();
    (
        format!(
            "k=$(($(cat '{k}' 2>/dev/null || echo 0) + 1)); echo $k > '{k}'\n\
             if [ $k -eq 1 ]; then\n{first}\nelse\n{later}\nfi"
        ),
        // The sampler is sequential: the next query starting means this one ended.
        format!(
            "while [ \"$(cat '{k}' 2>/dev/null || echo 0)\" -le {samples} ]; do sleep 0.05; done\n\
             echo 'GPU 0: OK'; echo 'GPU 1: OK'"
        ),
    )
}

#[test]
fn a_link_that_narrows_during_the_burn_fails() {
    let t = tempfile::tempdir().unwrap();
    let narrowed = "echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'\n\
                    echo '1, 5, 5, 8, 16, Not Active, Not Active, Not Active, Not Active, 100'";
    let (link_loaded, burn_end) = link_sequence(&t.path().join("k"), LINKS_BUSY, narrowed, 2);
    let (r, _, m, _) = load_test_with(&Fakes {
        link_loaded: &link_loaded,
        burn_end: &burn_end,
        ..Fakes::default()
    });
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert_eq!(r.detail, "gpu1 PCIe link x8 of x16 under load");
    assert!(m.contains(&("gpu1.pcie_width".into(), 8.0)), "{m:?}");
}

#[test]
fn link_samples_that_find_the_gpu_idle_do_not_judge_it() {
    // gpu_burn's first seconds are on the CPU: the GPU idles, its link trained down.
    let warmup = "echo '0, 1, 5, 2, 16, Not Active, Not Active, Not Active, Not Active, 0'\n\
                  echo '1, 1, 5, 2, 16, Not Active, Not Active, Not Active, Not Active, 3'";
    let t = tempfile::tempdir().unwrap();
    let (link_loaded, burn_end) = link_sequence(&t.path().join("k"), warmup, warmup, 1);
    let (r, parts, _, _) = load_test_with(&Fakes {
        link_loaded: &link_loaded,
        burn_end: &burn_end,
        ..Fakes::default()
    });
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {parts:?}");
    // Then a busy sample comes: it alone is judged.
    let t = tempfile::tempdir().unwrap();
    let busy_narrow = "echo '0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active, 100'\n\
                       echo '1, 5, 5, 8, 16, Not Active, Not Active, Not Active, Not Active, 99'";
    let (link_loaded, burn_end) = link_sequence(&t.path().join("k"), warmup, busy_narrow, 2);
    let (r, _, _, _) = load_test_with(&Fakes {
        link_loaded: &link_loaded,
        burn_end: &burn_end,
        ..Fakes::default()
    });
    assert_eq!(r.detail, "gpu1 PCIe link x8 of x16 under load", "{r:?}");
}

#[test]
fn clock_cuts_by_the_hardware_fail_and_by_the_driver_warn() {
    let (r, parts, _, _) = load_test_with(&Fakes {
        link_loaded: "echo '0, 5, 5, 16, 16, Active, Not Active, Active, Not Active, 100'\n\
                      echo '1, 5, 5, 16, 16, Not Active, Not Active, Not Active, Active, 100'",
        ..Fakes::default()
    });
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert_eq!(
        r.detail,
        "gpu0 clocks cut by the hardware (HW slowdown, HW power brake slowdown); \
         gpu1 clocks cut by the driver (SW thermal slowdown)"
    );
    assert_eq!(part_of(&parts, 0).1, Outcome::Failed);
    assert_eq!(part_of(&parts, 1).1, Outcome::Warning);
}

#[test]
fn row_remapping_failed_fails_pending_warns_and_counts_are_measured() {
    let (r, parts, m, _) = load_test_with(&Fakes {
        remap: "echo '00000000:18:00.0, 0, 0, No, Yes'\n\
                echo '00000000:2A:00.0, 5, 1, Yes, No'",
        ..Fakes::default()
    });
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(
        part_of(&parts, 0).2.contains("memory row remapping failed"),
        "{parts:?}"
    );
    let gpu1 = part_of(&parts, 1);
    assert_eq!(gpu1.1, Outcome::Warning, "{gpu1:?}");
    assert!(gpu1.2.contains("remap pending"), "{gpu1:?}");
    assert!(
        m.contains(&("gpu1.remapped_rows_correctable".into(), 5.0)),
        "{m:?}"
    );
    assert!(
        m.contains(&("gpu1.remapped_rows_uncorrectable".into(), 1.0)),
        "{m:?}"
    );
}

#[test]
fn health_queries_a_driver_cannot_answer_are_noted_not_fatal() {
    let (c, sink, _w) = ctx_for(StageKind::Gpu(GpuSpec {
        duration_s: 0,
        max_temperature_c: None,
    }));
    let d = tempfile::tempdir().unwrap();
    let smi = fake_tool(
        d.path(),
        "nvidia-smi",
        "case \"$*\" in\n\
         *pcie.link*) echo 'Field \"pcie.link.gen.max\" is not a valid field to query.'; exit 2 ;;\n\
         *remapped*) echo 'Unknown option --query-remapped-rows' >&2; exit 2 ;;\n\
         esac\n\
         echo '0, 00000000:18:00.0, Tesla T4, 15360, 40, 30, 0, 1590'",
    );
    let progs = Programs {
        nvidia_smi: &smi,
        gpu_burn: "gpu_burn",
        sample_every: Duration::from_millis(50),
    };
    let spec = GpuSpec {
        duration_s: 0,
        max_temperature_c: None,
    };
    let r = smol::block_on(run_with(&c, &spec, &progs));
    assert_eq!(
        (r.outcome, r.detail.as_str()),
        (Outcome::Passed, "1 GPU healthy")
    );
    let lines = sink.lines();
    assert!(
        lines.iter().any(|l| l
            .starts_with("PCIe links and clock-cut reasons not checked: nvidia-smi exit 2: Field")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "memory row remapping not checked: nvidia-smi exit 2: Unknown option --query-remapped-rows"),
        "{lines:?}"
    );
}

#[test]
fn verdicts_for_another_set_of_gpus_are_not_matched_to_slots() {
    // nvidia-smi lists two GPUs, CUDA (so gpu_burn) saw one: its "GPU 0" may be
    // either slot, so neither passes, and its FAULTY is reported by its number.
    let (r, parts, _, _) = load_test(TWO_HEALTHY, "printf 'Tested 1 GPUs:\\n\\tGPU 0: FAULTY\\n'");
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert_eq!(parts.iter().filter(|p| p.1 == Outcome::Failed).count(), 2);
    assert!(
        part_of(&parts, 0).2.contains(
            "gpu_burn tested 1 GPUs, nvidia-smi lists 2: its verdicts cannot be \
             matched to slots (its GPU 0 FAULTY)"
        ),
        "{parts:?}"
    );
}

#[test]
fn a_gpu_without_a_verdict_or_whose_worker_died_fails() {
    let h = TWO_HEALTHY;
    // gpu_burn's verdicts skip a GPU nvidia-smi lists: that one is not vetted.
    let (r, parts, _, _) = load_test(
        h,
        "printf 'Tested 2 GPUs:\\n\\tGPU 0: OK\\n\\tGPU 2: OK\\n'",
    );
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(
        r.detail.contains("gpu1 gpu_burn gave no verdict"),
        "{}",
        r.detail
    );
    assert_eq!(parts.iter().filter(|p| p.1 == Outcome::Passed).count(), 1);
    // One verdict for two GPUs: nothing is vetted (its numbers name no slot).
    let (r, parts, _, _) = load_test(h, "printf 'Tested 1 GPUs:\\n\\tGPU 0: OK\\n'");
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(
        r.detail.contains("cannot be matched to slots"),
        "{}",
        r.detail
    );
    assert!(parts.iter().all(|p| p.1 == Outcome::Failed), "{parts:?}");
    // A worker that died yet was called OK (gpu_burn does that).
    let (r, _, _, _) = load_test(
        h,
        "printf '\\r50.0%%  proc'\\''d: 9 (50000 Gflop/s) - -1 (0 Gflop/s)   errors: 0 - -1  (DIED!)   temps: 60 C - -- \\n'\n\
         printf 'Tested 2 GPUs:\\n\\tGPU 0: OK\\n\\tGPU 1: OK\\n'",
    );
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(
        r.detail.contains("gpu1 gpu_burn: its worker died"),
        "{}",
        r.detail
    );
    // gpu_burn giving up is the stage's failure, with its last stderr line.
    let (r, _, _, _) = load_test(h, "echo 'No clients are alive!  Aborting' >&2; exit 123");
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert_eq!(
        r.detail,
        "load test: gpu_burn failed (exit 123): No clients are alive!  Aborting"
    );
}

#[test]
fn a_gpu_off_the_bus_during_load_fails() {
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hardware/nvidia-smi/fallen-off-bus.txt");
    let r = load_with_later_query(&format!("cat '{}'\nexit 15", fx.display()));
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(r.detail.contains("during load"), "{}", r.detail);
    assert!(r.detail.contains("fallen off the bus"), "{}", r.detail);
}

#[test]
fn a_lost_gpu_field_during_load_fails() {
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hardware/nvidia-smi/gpu-lost-fields.txt");
    let r = load_with_later_query(&format!("cat '{}'", fx.display()));
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(r.detail.contains("gpu1"), "{}", r.detail);
    assert!(r.detail.contains("[GPU is lost]"), "{}", r.detail);
    assert!(!r.detail.contains("gpu0"), "{}", r.detail);
}

/// The same samples throughout: the load test passes, and only the capture's own
/// ECC errors on gpu1 are judged.
#[test]
fn a_steady_load_is_judged_on_its_readings_only() {
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hardware/nvidia-smi/h100x2.csv");
    let r = load_with_later_query(&format!("cat '{}'", fx.display()));
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert_eq!(r.detail, "gpu1 2 uncorrected ECC errors");
}

#[test]
fn ecc_and_heat_are_problems() {
    let spec = GpuSpec {
        duration_s: 0,
        max_temperature_c: Some(80),
    };
    let mut g = GpuReading {
        temperature_c: Some(85.0),
        ecc_uncorrected: Some(2),
        ..Default::default()
    };
    assert_eq!(problems(&spec, &g, &[]).len(), 2);
    g.temperature_c = Some(40.0);
    g.ecc_uncorrected = Some(0);
    assert!(problems(&spec, &g, &[]).is_empty());
    assert_eq!(problems(&spec, &g, &["burnt".into()]), ["burnt"]);
}
