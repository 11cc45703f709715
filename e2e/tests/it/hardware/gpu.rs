//! The GPU stage through an offline agent run, with a fake `nvidia-smi` (no GPU
//! here) printing captured query output: ECC errors fail a GPU, no driver skips; and
//! the load test with a fake `gpu_burn`: the GPUs are sampled while it runs, the
//! hottest reading is judged, and a GPU it calls FAULTY fails the stage.
use super::{measure, part, repo, s, stage};
use crate::common::*;
use serde_json::Value;
use std::process::Command;

/// A fake `nvidia-smi` (there is no GPU here) that prints a captured query output and
/// exits with `code`, first on PATH for an offline `kiln-agent run` of a gpu stage.
/// Returns the imported run's `run show --json`.
fn gpu_run_with_fake_nvidia_smi(fixture: &str, code: i32) -> Value {
    let fixtures = repo().join("agent/tests/fixtures/hardware/nvidia-smi");
    let script = format!(
        "#!/bin/sh\ncat '{}'\nexit {code}\n",
        s(&fixtures.join(fixture))
    );
    gpu_run_with_fakes(&[("nvidia-smi", &script)], "")
}

/// An offline `kiln-agent run` of a gpu stage (`max_temperature = 80`, plus `extra`
/// plan lines) with the fake `tools` (name, sh script) first on PATH. Returns the
/// imported run's `run show --json`.
fn gpu_run_with_fakes(tools: &[(&str, &str)], extra: &str) -> Value {
    gpu_run_logged(tools, extra).show
}

/// An imported offline gpu run: `run show --json`, `run logs`, and the fakes' folder
/// (kept until this is dropped).
struct GpuRun {
    show: Value,
    logs: String,
    fake: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

/// [`gpu_run_with_fakes`], with the run's logs and the fakes' folder.
fn gpu_run_logged(tools: &[(&str, &str)], extra: &str) -> GpuRun {
    let (tmp, state) = fresh_state();
    let dir = tmp.path();
    add_local_host(&state, "here");
    let fake = dir.join("fake-bin");
    for (name, script) in tools {
        let f = write(&fake, name, &script.replace("@FAKE@", s(&fake)));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let plan = format!(
        "name = \"gpu\"\n[[stage]]\nname = \"gpu\"\nkind = \"gpu\"\nmax_temperature = 80\n{extra}"
    );
    let p = write(dir, "plan.toml", &plan);
    let o = kc(
        &state,
        &["ticket", "issue", "--plan", s(&p), "--host", "here"],
    );
    assert_eq!(o.code, 0, "ticket issue: {}", o.stderr);
    let run = o.stdout.trim().to_string();
    let path = format!("{}:{}", s(&fake), std::env::var("PATH").unwrap_or_default());
    let bundle = dir.join("out.kiln");
    let ticket = state.join("runs").join(&run).join("ticket.kiln");
    let o: Out = Command::new(bin("kiln-agent"))
        .args(["run", "--ticket", s(&ticket)])
        .args(["--trust", s(&state.join("key/coordinator.pub"))])
        .args(["--out", s(&bundle), "--work", s(&dir.join("work"))])
        .env("PATH", path)
        // As a user's shell may have it: the stage must not let it hide GPUs from
        // gpu_burn.
        .env("CUDA_VISIBLE_DEVICES", "1")
        .output()
        .expect("kiln-agent run")
        .into();
    assert!(bundle.is_file(), "no bundle: {}", o.stderr);
    let i = kc(&state, &["import", s(&bundle)]);
    assert_eq!(i.code, 0, "import: {}", i.stderr);
    let o = kc(&state, &["run", "show", &run, "--json"]);
    let show = serde_json::from_str(&o.stdout).expect("run show JSON");
    let logs = kc(&state, &["run", "logs", &run]).stdout;
    GpuRun {
        show,
        logs,
        fake,
        _tmp: tmp,
    }
}

#[test]
fn gpu_stage_with_a_fake_nvidia_smi() {
    let show = gpu_run_with_fake_nvidia_smi("h100x2.csv", 0);
    let gpu = stage(&show, "gpu");
    assert_eq!(
        gpu["outcome"], "failed",
        "gpu1 has uncorrected ECC errors: {show}"
    );
    assert_eq!(part(gpu, "gpu0 0000:18:00.0")["outcome"], "passed");
    let bad = part(gpu, "gpu1 0000:2a:00.0");
    assert_eq!(bad["outcome"], "failed");
    assert!(
        bad["detail"]
            .as_str()
            .unwrap()
            .contains("2 uncorrected ECC errors"),
        "{bad}"
    );
    assert_eq!(measure(gpu, "gpu0.temperature"), Some(31.0));
    assert_eq!(measure(gpu, "gpu0.power"), Some(71.42));
    assert_eq!(measure(gpu, "gpu0.memory_total"), Some(81559.0));
    assert_eq!(measure(gpu, "gpu1.ecc_uncorrected"), Some(2.0));
    assert_eq!(gpu["artifacts"][0]["name"], "nvidia-smi.csv");

    let show = gpu_run_with_fake_nvidia_smi("no-driver.txt", 9);
    let gpu = stage(&show, "gpu");
    assert_eq!(gpu["outcome"], "skipped", "{show}");
    assert!(
        gpu["detail"].as_str().unwrap().contains("no NVIDIA driver"),
        "{gpu}"
    );
}

/// A fake `nvidia-smi`: one cool H100 on the first query, hot on every later one (the
/// samples taken while the load runs). The first query is told by an atomic `mkdir`: a
/// counter file's read-then-write reads empty when a sample is killed mid-write.
const HEATING_NVIDIA_SMI: &str = r#"#!/bin/sh
if mkdir @FAKE@/first-query 2>/dev/null; then t=35; p=70.5; else t=86; p=699.9; fi
echo "0, 00000000:18:00.0, NVIDIA H100 80GB HBM3, 81559, $t, $p, 0, 1980"
"#;

/// A fake `gpu_burn DURATION` (the real one needs a GPU) that loads for a second
/// longer than asked and ends with gpu_burn's verdict line for GPU 0 (`OK`/`FAULTY`).
fn fake_gpu_burn(verdict: &str) -> String {
    format!(
        "#!/bin/sh\necho \"Burning for $1 seconds.\"\nsleep $(($1 + 1))\n\
         echo \"100.0%  proc'd: 1234 (56789 Gflop/s)   errors: 0   temps: 86 C\"\n\
         echo \"Tested 1 GPUs:\"\necho \"\tGPU 0: {verdict}\"\n"
    )
}

#[test]
fn gpu_load_test_samples_while_loaded_and_judges_the_peak() {
    // Fakes, named as such: no GPU here. The load lasts past one sampling interval.
    let show = gpu_run_with_fakes(
        &[
            ("nvidia-smi", HEATING_NVIDIA_SMI),
            ("gpu_burn", &fake_gpu_burn("OK")),
        ],
        "duration = \"6s\"\n",
    );
    let gpu = stage(&show, "gpu");
    assert_eq!(measure(gpu, "gpu0.temperature"), Some(35.0), "{gpu}");
    assert_eq!(measure(gpu, "gpu0.temperature_max"), Some(86.0), "{gpu}");
    assert_eq!(measure(gpu, "gpu0.power_max"), Some(699.9), "{gpu}");
    assert_eq!(
        gpu["outcome"], "failed",
        "86 °C under load is above 80: {gpu}"
    );
    let p = part(gpu, "gpu0 0000:18:00.0");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("temperature 86 °C above 80 °C"),
        "{p}"
    );
}

#[test]
fn gpu_load_test_fails_a_gpu_that_gpu_burn_calls_faulty() {
    let cool =
        "#!/bin/sh\necho '0, 00000000:18:00.0, NVIDIA H100 80GB HBM3, 81559, 40, 300, 0, 1980'\n";
    let show = gpu_run_with_fakes(
        &[("nvidia-smi", cool), ("gpu_burn", &fake_gpu_burn("FAULTY"))],
        "duration = \"1s\"\n",
    );
    let gpu = stage(&show, "gpu");
    assert_eq!(gpu["outcome"], "failed", "{gpu}");
    assert!(
        gpu["detail"]
            .as_str()
            .unwrap()
            .contains("gpu0 gpu_burn: FAULTY"),
        "{gpu}"
    );
    let p = part(gpu, "gpu0 0000:18:00.0");
    assert_eq!(p["outcome"], "failed", "{p}");
    // The same load with every GPU OK passes.
    let show = gpu_run_with_fakes(
        &[("nvidia-smi", cool), ("gpu_burn", &fake_gpu_burn("OK"))],
        "duration = \"1s\"\n",
    );
    assert_eq!(stage(&show, "gpu")["outcome"], "passed", "{show}");
}

/// gpu_burn's real output (captured from a 30 s run on an H100, progress rewritten
/// with `\r`) and nvidia-smi's real answers replayed by fakes, the `gpu_burn` one
/// recording the environment it got: the log shows each progress line as a terminal
/// would, the last report's rate and the link are measured, and gpu_burn numbers GPUs
/// as nvidia-smi does, all of them visible.
#[test]
fn real_gpu_burn_output_is_logged_as_a_terminal_shows_it_and_measured() {
    let capture = repo().join("agent/tests/fixtures/hardware/gpu_burn/h100-30s.txt");
    let burn = format!(
        "#!/bin/sh\necho \"$CUDA_DEVICE_ORDER ${{CUDA_VISIBLE_DEVICES-unset}}\" > @FAKE@/env\n\
         cat '{}'\n",
        s(&capture)
    );
    // nvidia-smi answering each query with its real capture: from the same H100, but
    // the link query's from an H200 of the same machine type (that query gained its
    // utilization field after the H100 runs).
    let fx = repo().join("agent/tests/fixtures/hardware/nvidia-smi");
    let one = format!(
        "#!/bin/sh\ncase \"$*\" in\n\
         *pcie.link*) cat '{}' ;;\n*remapped*) cat '{}' ;;\n*) cat '{}' ;;\nesac\n",
        s(&fx.join("h200-real-link.txt")),
        s(&fx.join("h100-real-remap.txt")),
        s(&fx.join("h100-real.csv")),
    );
    let GpuRun {
        show,
        logs,
        fake,
        _tmp: _keep,
    } = gpu_run_logged(
        &[("nvidia-smi", &one), ("gpu_burn", &burn)],
        "duration = \"30s\"\n",
    );
    let gpu = stage(&show, "gpu");
    assert_eq!(gpu["outcome"], "passed", "{gpu}");
    assert_eq!(measure(gpu, "gpu0.gflops"), Some(51376.0), "{gpu}");
    assert_eq!(measure(gpu, "gpu0.pcie_gen"), Some(5.0), "{gpu}");
    assert_eq!(measure(gpu, "gpu0.pcie_width"), Some(16.0), "{gpu}");
    assert_eq!(
        measure(gpu, "gpu0.remapped_rows_uncorrectable"),
        Some(0.0),
        "{gpu}"
    );
    assert_eq!(
        std::fs::read_to_string(fake.join("env")).unwrap().trim(),
        "PCI_BUS_ID unset"
    );
    // Each rewritten line is logged as its last state, with no carriage return left.
    assert!(!logs.contains('\r'), "{logs}");
    assert!(
        logs.lines().any(|l| l.ends_with(
            "100.0%  proc'd: 1400 (51376 Gflop/s)   errors: 0   temps: 65 C   power: 92 W "
        )),
        "{logs}"
    );
    assert!(logs.lines().any(|l| l.ends_with("GPU 0: OK")), "{logs}");
}
