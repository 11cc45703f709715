//! Test helpers: a stage context on a memory sink, and readers for its events.
use kiln_protocol::{Event, Outcome, Stage, StageKind};
use std::sync::Arc;

use crate::stages::ctx::{MemorySink, StageCtx};

/// A stage of `kind` with defaults.
pub fn stage(kind: StageKind) -> Stage {
    Stage::new("hw", kind)
}

/// A context for an exec stage in a fresh folder.
pub fn ctx() -> (StageCtx, Arc<MemorySink>, tempfile::TempDir) {
    ctx_for(StageKind::Exec { command: vec![] })
}

/// A context for a stage of `kind` in a fresh folder.
pub fn ctx_for(kind: StageKind) -> (StageCtx, Arc<MemorySink>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, s) = StageCtx::for_test(stage(kind), dir.path().to_path_buf());
    (c, s, dir)
}

/// The text of the captured tool output `agent/tests/fixtures/hardware/<folder>/<name>`.
pub fn fixture(folder: &str, name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hardware")
        .join(folder)
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every measurement: (name, value, unit).
pub fn measures(sink: &MemorySink) -> Vec<(String, f64, String)> {
    sink.events
        .lock()
        .expect("sink lock")
        .iter()
        .filter_map(|e| match e {
            Event::Measure {
                name, value, unit, ..
            } => Some((name.clone(), *value, unit.clone())),
            _ => None,
        })
        .collect()
}

/// The value of the measurement `name`, if reported.
pub fn measure(sink: &MemorySink, name: &str) -> Option<f64> {
    measures(sink)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, v, _)| v)
}

/// Every part: (name, outcome, detail).
pub fn parts(sink: &MemorySink) -> Vec<(String, Outcome, String)> {
    sink.events
        .lock()
        .expect("sink lock")
        .iter()
        .filter_map(|e| match e {
            Event::Part {
                name,
                outcome,
                detail,
                ..
            } => Some((name.clone(), *outcome, detail.clone())),
            _ => None,
        })
        .collect()
}

/// Whether `tool` is on PATH. Missing: a failure under `KILN_CI=1`, else the test
/// skips loudly (the caller returns).
pub fn have(tool: &str) -> bool {
    if super::tools::find(tool).is_some() {
        return true;
    }
    kiln_testkit::skip(&format!("{tool} is not installed"));
    false
}

/// Runs a command that must succeed; returns stdout.
pub fn sh(argv: &[&str]) -> String {
    let o = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv[0]));
    assert!(
        o.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A loop device over a sparse file; detached on drop.
pub struct Loop {
    /// `/dev/loopN`.
    pub dev: String,
}

impl Loop {
    /// A loop device over `file` (created `size` bytes long if missing). `None` (a
    /// loud skip; a failure under `KILN_CI=1`) where loop devices are unavailable.
    pub fn new(file: &std::path::Path, size: u64) -> Option<Loop> {
        if !file.exists() {
            std::fs::File::create(file)
                .and_then(|f| f.set_len(size))
                .expect("backing file");
        }
        let o = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(Loop {
                dev: String::from_utf8_lossy(&o.stdout).trim().to_string(),
            }),
            other => {
                kiln_testkit::skip(&format!("loop devices unavailable: {other:?}"));
                None
            }
        }
    }

    /// sha256 hex of the device's whole contents.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let bytes = std::fs::read(&self.dev).expect("read loop device");
        format!("{:x}", sha2::Sha256::digest(&bytes))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
    }
}

/// A FAKE tool: an executable `sh` script named `name` in `dir`, for cases the real
/// tool cannot show here (a crash, a failed probe). Returns its path, which a stage's
/// `run_with` takes in place of the tool's name, so PATH is left alone.
pub fn fake_tool(dir: &std::path::Path, name: &str, script: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("#!/bin/sh\n# FAKE {name} for a kiln test\n{script}\n"),
    )
    .expect("write fake tool");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod fake");
    p.to_string_lossy().into_owned()
}

/// A storage spec for `devices`: a 2 s run over 8 MiB.
pub fn spec(devices: &[&str], tool: kiln_protocol::StorageTool) -> kiln_protocol::StorageSpec {
    kiln_protocol::StorageSpec {
        devices: devices.iter().map(|d| d.to_string()).collect(),
        tool,
        duration_s: 2,
        size_bytes: 8 << 20,
    }
}

/// A 16 MiB loop device filled with `byte` (backed by `dir/name`), if loop devices work.
pub fn filled(dir: &std::path::Path, name: &str, byte: u8) -> Option<Loop> {
    let p = dir.join(name);
    std::fs::write(&p, vec![byte; 16 << 20]).unwrap();
    Loop::new(&p, 0)
}
