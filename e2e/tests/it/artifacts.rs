//! Artifact collection never follows a link out of the attempt's artifacts folder:
//! a stage that plants links to the agent host's files (a file, a folder, or the
//! artifacts folder itself) gets only its own regular files stored, and the linked
//! bytes reach nothing the coordinator keeps. Exec stages with the real agent, and a
//! container stage (whose cells' folders are collected by the same walk).
use crate::common::*;
use crate::runs::{Fx, s, wait_exit};
use std::path::Path;
use std::time::Duration;

/// Host files a stage must not get out: `outside/secret`, unique to this test.
fn outside(dir: &Path, tag: &str) -> (std::path::PathBuf, String) {
    let secret = format!("host-only-{tag}-{}", std::process::id());
    let out = dir.join("outside");
    write(&out, "secret", &secret);
    (out, secret)
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(e.path().display().to_string());
                }
            }
        }
    }
    hits
}

fn artifact_names(stage: &serde_json::Value) -> Vec<String> {
    stage["artifacts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn exec_stage_links_never_carry_host_files_into_the_cas() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let (out, secret) = outside(&fx.dir, "exec");
    let o = s(&out);
    let plan = fx.plan(
        "links.toml",
        &format!(
            r#"name = "links"
fail_fast = false

[[stage]]
name = "linked-folder"
kind = "exec"
command = ["sh", "-c", "rmdir artifacts && ln -s {o} artifacts"]

[[stage]]
name = "links-inside"
kind = "exec"
command = ["sh", "-c", "mkdir -p artifacts/sub && echo mine > artifacts/ok.txt && ln -s {o}/secret artifacts/key && ln -s {o} artifacts/dir && ln -s /etc/ssh/ssh_host_ed25519_key artifacts/hostkey && ln -s ../ok.txt artifacts/sub/inside && ln -s . artifacts/r && ln -s r/.. artifacts/q && mkfifo artifacts/fifo"]
"#
        ),
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut a = fx.spawn_agent(s(&ticket), &fx.dir.join("work"), &[]);
    let code = wait_exit(&mut a, Duration::from_secs(60));
    assert_eq!(
        files_containing(&fx.state, &secret),
        Vec::<String>::new(),
        "the host file reached the coordinator"
    );
    assert_eq!(code, 0, "the run passes");
    let show = fx.show(&run);
    let stages = show["stages"].as_array().expect("stages");
    assert_eq!(artifact_names(&stages[0]), Vec::<String>::new(), "{show}");
    assert_eq!(artifact_names(&stages[1]), vec!["ok.txt"], "{show}");
    let logs = kc(&fx.state, &["run", "logs", &run]).stdout;
    for skipped in [
        "artifacts skipped: the folder is a link",
        "artifact key skipped: a symbolic link",
        "artifact dir skipped: a symbolic link",
        "artifact q skipped: a symbolic link",
        "artifact fifo skipped: not a regular file",
    ] {
        assert!(logs.contains(skipped), "no {skipped:?} in {logs}");
    }
}

#[test]
fn container_stage_links_never_carry_host_files_into_the_cas() {
    if !crate::container::require_podman() {
        return;
    }
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let (out, secret) = outside(&fx.dir, "container");
    let o = s(&out);
    let plan = fx.plan(
        "links.toml",
        &format!(
            r#"name = "links"
[[stage]]
name = "plant"
kind = "container"
image = "{image}"
command = ["sh", "-c", "echo mine > /artifacts/ok.txt && ln -s {o}/secret /artifacts/key && ln -s {o} /artifacts/dir && mkdir /artifacts/sub && ln -s ../../../../../../../../{o}/secret /artifacts/sub/up"]
"#,
            image = crate::container::IMAGE_A
        ),
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut a = fx.spawn_agent(s(&ticket), &fx.dir.join("work"), &[]);
    let code = wait_exit(&mut a, Duration::from_secs(180));
    assert_eq!(
        files_containing(&fx.state, &secret),
        Vec::<String>::new(),
        "the host file reached the coordinator"
    );
    assert_eq!(code, 0, "the run passes");
    let show = fx.show(&run);
    assert_eq!(artifact_names(&show["stages"][0]), vec!["ok.txt"], "{show}");
    let logs = kc(&fx.state, &["run", "logs", &run]).stdout;
    assert!(
        logs.contains("artifact key skipped: a symbolic link"),
        "{logs}"
    );
    assert!(
        logs.contains("artifact sub/up skipped: a symbolic link"),
        "{logs}"
    );
}

#[test]
fn an_artifact_over_the_run_quota_is_left_out_with_a_log_line_and_the_run_goes_on() {
    let fx = Fx::new();
    // 4 000 bytes in all: the 5 000-byte file does not fit, the small ones do.
    let server = Coordinator::start_with(&fx.state, &["--upload-quota", "4000"]);
    let plan = fx.plan(
        "quota.toml",
        r#"name = "quota"

[[stage]]
name = "big"
kind = "exec"
command = ["sh", "-c", "mkdir -p artifacts && head -c 5000 /dev/zero > artifacts/big.bin && echo small > artifacts/small.txt"]

[[stage]]
name = "after"
kind = "exec"
command = ["sh", "-c", "mkdir -p artifacts && echo later > artifacts/later.txt"]
"#,
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut a = fx.spawn_agent(s(&ticket), &fx.dir.join("work"), &[]);
    let code = wait_exit(&mut a, Duration::from_secs(60));
    let show = fx.show(&run);
    assert_eq!(code, 0, "the run passes: {show}");
    let stages = show["stages"].as_array().expect("stages");
    assert_eq!(stages[0]["outcome"], "passed", "{show}");
    assert_eq!(stages[1]["outcome"], "passed", "{show}");
    assert_eq!(artifact_names(&stages[0]), vec!["small.txt"], "{show}");
    assert_eq!(artifact_names(&stages[1]), vec!["later.txt"], "{show}");
    let logs = kc(&fx.state, &["run", "logs", &run]).stdout;
    assert!(
        logs.contains("artifact big.bin not uploaded: over the run's upload quota"),
        "{logs}"
    );
}
