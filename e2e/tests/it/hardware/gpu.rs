//! The GPU stage through an offline agent run, with a fake `nvidia-smi` (no GPU
//! here) printing captured query output: ECC errors fail a GPU, no driver skips.
use super::{measure, part, repo, s, stage};
use crate::common::*;
use serde_json::Value;
use std::process::Command;

/// A fake `nvidia-smi` (there is no GPU here) that prints a captured query output and
/// exits with `code`, first on PATH for an offline `kiln-agent run` of a gpu stage.
/// Returns the imported run's `run show --json`.
fn gpu_run_with_fake_nvidia_smi(fixture: &str, code: i32) -> Value {
    let (tmp, state) = fresh_state();
    let dir = tmp.path();
    add_local_host(&state, "here");
    let fixtures = repo().join("agent/tests/fixtures/hardware/nvidia-smi");
    let fake = dir.join("fake-bin");
    let script = format!(
        "#!/bin/sh\ncat '{}'\nexit {code}\n",
        s(&fixtures.join(fixture))
    );
    let f = write(&fake, "nvidia-smi", &script);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let plan = "name = \"gpu\"\n[[stage]]\nname = \"gpu\"\nkind = \"gpu\"\nmax_temperature = 80\n";
    let p = write(dir, "plan.toml", plan);
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
        .output()
        .expect("kiln-agent run")
        .into();
    assert!(bundle.is_file(), "no bundle: {}", o.stderr);
    let i = kc(&state, &["import", s(&bundle)]);
    assert_eq!(i.code, 0, "import: {}", i.stderr);
    let o = kc(&state, &["run", "show", &run, "--json"]);
    serde_json::from_str(&o.stdout).expect("run show JSON")
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
