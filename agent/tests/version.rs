//! `kiln-agent --version`: exit 0, one line with the crate version, the git commit
//! (or `unknown` outside a checkout) and the wire-format version.
use std::process::Command;

#[test]
fn version_names_the_crate_the_commit_and_the_wire_format() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .arg("--version")
        .output()
        .expect("run kiln-agent");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let want = format!("kiln-agent {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&want), "{text}");
    assert!(
        text.trim_end()
            .ends_with(&format!(", wire format {})", kiln_protocol::VERSION)),
        "{text}"
    );
    let commit = text[want.len()..].split(',').next().unwrap_or("");
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn help_mentions_version_and_bad_arguments_still_exit_2() {
    let help = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .arg("--help")
        .output()
        .expect("run kiln-agent");
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--version"));
    let bad = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(["--version", "extra"])
        .output()
        .expect("run kiln-agent");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}
