//! The README's quick start, run as written (examples/quickstart.sh), so it cannot rot;
//! and small CLI conveniences a new user hits first.
use crate::common::*;
use std::process::Command;

#[test]
fn the_readme_quick_start_runs_to_a_passed_result() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let bin_dir = bin("kiln-agent").parent().expect("bin dir").to_path_buf();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("examples/quickstart.sh"))
        .env("KILN_BIN", &bin_dir)
        .env("KILN_STATE", tmp.path().join("state"))
        .env("KILN_WORK", tmp.path().join("work"))
        .env("KILN_ADDR_FILE", tmp.path().join("addr"))
        .env("KILN_LISTEN", format!("127.0.0.1:{port}"))
        .env("KILN_QUICKSTART_NO_WAIT", "1")
        .output()
        .expect("running quickstart.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("passed"),
        "no passed run in:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{port}/runs/")),
        "no result page URL in:\n{stdout}"
    );
}

#[test]
fn ticket_out_accepts_a_bare_file_name() {
    let (tmp, state) = fresh_state();
    add_local_host(&state, "me");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = Command::new(bin("kiln-coordinator"))
        .current_dir(tmp.path())
        .arg("--state")
        .arg(&state)
        .args([
            "ticket", "issue", "--host", "me", "--out", "t.kiln", "--plan",
        ])
        .arg(root.join("examples/plans/smoke.toml"))
        .output()
        .expect("ticket issue");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(tmp.path().join("t.kiln").is_file());
    assert!(tmp.path().join("t.kiln.cas").is_dir());
}

#[test]
fn bad_arguments_exit_2_and_help_exits_0() {
    let o = agent(&["verify"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("--ticket"), "{}", o.stderr);
    let o = agent(&["run", "--ticket", "t", "--trust", "k", "--bogus"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert_eq!(agent(&["--help"]).code, 0);
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = kc(tmp.path(), &["no-such-command"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("no-such-command"), "{}", o.stderr);
    assert_eq!(kc(tmp.path(), &["ticket", "--help"]).code, 0);
}
