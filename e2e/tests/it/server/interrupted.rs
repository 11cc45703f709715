//! `import` SIGKILLed part-way, between the bundle's blobs and its frames (held
//! there by the test-only `KILN_TEST_PAUSE_IMPORT` hook), then imported again: the
//! state folder ends exactly as after one clean import, with nothing the killed
//! import staged left behind.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::full_disk::{clean_import, fixture, snapshot};
use super::*;
use crate::common::{bin, kc, wait_until};

/// Every entry directly under `dir` whose name starts with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// A child process SIGKILLed (and reaped) at the latest when dropped: a paused
/// import never outlives a failed test.
struct Killed(std::process::Child);

impl Killed {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

fn killed_then_imported(half_stored: bool) {
    let (d, state) = keyed_state();
    let fx = fixture(&state);
    let (first, whole) = (d.path().join("first.kres"), d.path().join("whole.kres"));
    std::fs::write(&first, &fx.first).unwrap();
    std::fs::write(&whole, &fx.whole).unwrap();
    if half_stored {
        let o = kc(&state, &["import", first.to_str().unwrap()]);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    let want = clean_import(&state, &[&whole]);
    let before = snapshot(&state);

    let pause = d.path().join("pause");
    let mut child = Killed(
        Command::new(bin("kiln-coordinator"))
            .arg("--state")
            .arg(&state)
            .arg("import")
            .arg(&whole)
            .env("KILN_TEST_PAUSE_IMPORT", &pause)
            .spawn()
            .expect("starting import"),
    );
    let paused = d.path().join("pause.paused");
    let mut exited = None;
    wait_until(Duration::from_secs(60), "the import to pause", || {
        exited = child.0.try_wait().unwrap();
        exited.is_some() || paused.exists()
    });
    assert!(
        exited.is_none(),
        "the import ended before pausing: {exited:?}"
    );
    // Paused between blobs and frames: a blob is staged (in a temp file), nothing
    // is committed.
    let staging = named(&state.join("runs"), ".import-");
    assert_eq!(staging.len(), 1, "{staging:?}");
    let temps = [staging[0].clone(), state.join("cas")].map(|d| named(&d, ".in-").len());
    assert!(temps.iter().sum::<usize>() >= 1, "staged blobs: {temps:?}");
    child.kill();
    // What the killed import left is not part of any run.
    let o = kc(&state, &["runs"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let listed = o.stdout.contains(&fx.run.to_string());
    assert_eq!(listed, half_stored, "{}", o.stdout);
    assert_ne!(snapshot(&state), before, "the killed import left nothing?");

    let o = kc(&state, &["import", whole.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        snapshot(&state),
        want,
        "half stored: {half_stored}: differs from one clean import"
    );
    assert!(named(&state.join("runs"), ".import-").is_empty());
    assert!(named(&state.join("cas"), ".in-").is_empty());
}

#[test]
fn an_import_killed_between_blobs_and_frames_then_repeated_is_one_clean_import() {
    killed_then_imported(false);
}

#[test]
fn an_appending_import_killed_between_blobs_and_frames_then_repeated_is_one_clean_import() {
    killed_then_imported(true);
}
