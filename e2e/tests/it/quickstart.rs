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

#[test]
fn the_quick_start_fails_at_once_naming_the_port_when_it_is_taken() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Hold the port for the whole test: the script's server cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("addr").port();
    let bin_dir = bin("kiln-agent").parent().expect("bin dir").to_path_buf();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new("bash")
        .arg(root.join("examples/quickstart.sh"))
        .env("KILN_BIN", &bin_dir)
        .env("KILN_STATE", tmp.path().join("state"))
        .env("KILN_WORK", tmp.path().join("work"))
        .env("KILN_ADDR_FILE", tmp.path().join("addr"))
        .env("KILN_LISTEN", format!("127.0.0.1:{port}"))
        .env("KILN_QUICKSTART_NO_WAIT", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running quickstart.sh");
    // Not a timing assertion: a script that hangs is killed so the test can fail.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("quickstart.sh still waited 30 s after its server could not listen");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a taken port must fail: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("quickstart:"))
        .unwrap_or_else(|| panic!("no reason given:\n{stderr}"));
    assert!(
        line.contains(&port.to_string()) && line.contains("KILN_LISTEN"),
        "the reason names the port and KILN_LISTEN: {line}"
    );
    drop(taken);
}
