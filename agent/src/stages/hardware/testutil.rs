//! Test helpers: a stage context on a memory sink, and readers for its events.
use kiln_protocol::{Event, Outcome, Stage, StageKind};
use std::sync::Arc;

use crate::stages::{MemorySink, StageCtx};

/// A stage of `kind` with defaults.
pub fn stage(kind: StageKind) -> Stage {
    Stage {
        name: "hw".into(),
        kind,
        timeout_s: 0,
        retries: 0,
        destructive: false,
        continue_on_failure: false,
        tests: None,
        env: vec![],
        secrets: vec![],
    }
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
