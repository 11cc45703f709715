//! Shared test helpers: the one way a kiln test skips.
//!
//! A test that needs something this machine lacks (a tool, root, a loop device) calls
//! [`skip`]: under CI (`KILN_CI=1`) that is a failure, never a silent pass; elsewhere
//! it writes `SKIPPED: why` straight to the process's stderr, past the test harness's
//! output capture, so a skipped test never reads as a passing one. `.ci/run` fails
//! when any `SKIPPED:` line appears.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::Write;
use std::process::{Command, Stdio};

/// True when running under CI (`KILN_CI=1`): a missing tool is then a failure.
pub fn in_ci() -> bool {
    std::env::var("KILN_CI").is_ok_and(|v| v == "1")
}

/// Skips the calling test because of `why`: panics under `KILN_CI=1`, else prints
/// `SKIPPED: <why>` to the real stderr (not captured by the harness). The caller
/// returns after it.
pub fn skip(why: &str) {
    if in_ci() {
        panic!("{why}: required in CI (KILN_CI=1)");
    }
    // `eprintln!` goes through the harness's capture and vanishes from a passing
    // test's output; a direct write to fd 2 does not.
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "SKIPPED: {why} (this test would fail in CI)");
    let _ = err.flush();
}

/// Whether `tool` is on PATH. Missing: [`skip`] (a failure in CI); the caller returns
/// when this is false.
pub fn require_tool(tool: &str) -> bool {
    let found = on_path(tool);
    if !found {
        skip(&format!("{tool} is not installed"));
    }
    found
}

/// Whether `tool` is on PATH, silently.
pub fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v '{tool}'")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_a_made_up_tool() {
        assert!(on_path("sh"));
        assert!(!on_path("kiln-no-such-tool-xyz"));
    }

    #[test]
    fn a_skip_in_ci_is_a_failure() {
        // A child process of this very test binary, with KILN_CI=1, runs `skip`.
        if std::env::var_os("KILN_TESTKIT_CHILD").is_some() {
            skip("child");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        for (ci, should_pass) in [("1", false), ("0", true)] {
            let out = Command::new(&exe)
                .args(["--exact", "tests::a_skip_in_ci_is_a_failure", "--nocapture"])
                .env("KILN_TESTKIT_CHILD", "1")
                .env("KILN_CI", ci)
                .output()
                .unwrap();
            assert_eq!(out.status.success(), should_pass, "KILN_CI={ci}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.contains("SKIPPED: child"), should_pass, "{err}");
        }
    }

    #[test]
    fn a_skip_is_seen_past_the_harness_capture() {
        if std::env::var_os("KILN_TESTKIT_CHILD2").is_some() {
            skip("captured?");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        // Without --nocapture: the harness captures eprintln! of a passing test.
        let out = Command::new(&exe)
            .args(["--exact", "tests::a_skip_is_seen_past_the_harness_capture"])
            .env("KILN_TESTKIT_CHILD2", "1")
            .env_remove("KILN_CI")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let all = [out.stdout, out.stderr].concat();
        assert!(
            String::from_utf8_lossy(&all).contains("SKIPPED: captured?"),
            "{}",
            String::from_utf8_lossy(&all)
        );
    }
}
