//! `kiln-coordinator --version`: the crate version, the commit when known, the
//! wire-format version; exit 0.
use std::process::Command;

#[test]
fn version_prints_crate_commit_and_wire_format_and_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-coordinator"))
        .arg("--version")
        .output()
        .expect("running kiln-coordinator");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "kiln-coordinator {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        text.trim_end()
            .ends_with(&format!(", wire format {})", kiln_protocol::VERSION)),
        "{text}"
    );
    assert!(out.stderr.is_empty(), "{out:?}");
}
