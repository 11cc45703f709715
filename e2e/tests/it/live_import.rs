//! `import` while the server is up and a real agent is reporting another run: the
//! import (held between its blobs and frames by the test-only
//! `KILN_TEST_PAUSE_IMPORT` hook while the online run streams and uploads the very
//! same artifact) and the online run both end complete and correct, the imported
//! run exactly as one import into a quiet copy of the state folder.
use crate::common::*;
use crate::runs::{Fx, s, wait_exit};
use crate::server::full_disk::copy_dir;
use kiln_protocol::Sha256;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn logs(state: &Path, run: &str, stage: &str) -> Vec<String> {
    let o = kc(state, &["run", "logs", run, "--stage", stage]);
    assert_eq!(o.code, 0, "run logs: {}", o.stderr);
    o.stdout.lines().map(str::to_string).collect()
}

/// `run show --json` without the import's clock (`last_seen_ms`, the claim
/// record's `at_ms`): two imports never share a millisecond.
fn show(state: &Path, run: &str) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| k != "last_seen_ms" && k != "at_ms");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let o = kc(state, &["run", "show", run, "--json"]);
    assert_eq!(o.code, 0, "run show: {}", o.stderr);
    let mut v = serde_json::from_str(&o.stdout).expect("JSON");
    strip(&mut v);
    v
}

/// A plan of one exec stage running `script` that ends with the shared artifact.
fn plan(fx: &Fx, name: &str, script: &str) -> std::path::PathBuf {
    let script = format!("{script}; mkdir -p artifacts; seq 1 40000 > artifacts/numbers.txt");
    fx.plan(
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\n[[stage]]\nname = \"stream\"\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", {script:?}]\n"
        ),
    )
}

#[test]
fn an_import_while_the_server_ingests_another_run_leaves_both_whole() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);

    // Run B, offline: its bundle.
    let b_plan = plan(&fx, "offline", "seq 1 2000 | sed 's/^/b /'");
    let b_ticket = fx.dir.join("b.kiln");
    let b = fx.issue(&b_plan, None, Some(&b_ticket));
    let bundle = fx.dir.join("b.kres");
    let mut agent = fx.spawn_agent(s(&b_ticket), &fx.dir.join("work-b"), &["--out", s(&bundle)]);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(120)), 0);
    // What one import into a quiet copy of the state folder gives.
    let quiet = fx.dir.join("quiet");
    copy_dir(&fx.state, &quiet);
    let o = kc(&quiet, &["import", s(&bundle)]);
    assert_eq!(o.code, 0, "{}", o.stderr);

    // Run A, online, paused after 300 lines.
    let (ready, go) = (fx.dir.join("ready"), fx.dir.join("go"));
    let a_plan = plan(
        &fx,
        "online",
        &format!(
            "seq 1 300 | sed 's/^/a /'; touch {ready}; while [ ! -e {go} ]; do sleep 0.05; done; \
             seq 301 6000 | sed 's/^/a /'",
            ready = ready.display(),
            go = go.display()
        ),
    );
    let a = fx.issue(&a_plan, Some(&server.url), None);
    let a_ticket = fx.state.join("runs").join(&a).join("ticket.kiln");
    let mut agent = fx.spawn_agent(s(&a_ticket), &fx.dir.join("work-a"), &[]);
    wait_until(Duration::from_secs(60), "run A to stream", || {
        ready.exists()
            && fx.stored_frames(&a).len() > 3
            && logs(&fx.state, &a, "stream").len() == 300
    });

    // The import stages B's blob and waits; A streams and uploads the same object.
    let pause = fx.dir.join("pause");
    let mut import = Command::new(bin("kiln-coordinator"))
        .arg("--state")
        .arg(&fx.state)
        .args(["import", s(&bundle)])
        .env("KILN_TEST_PAUSE_IMPORT", &pause)
        .spawn()
        .expect("starting import");
    let paused = fx.dir.join("pause.paused");
    wait_until(Duration::from_secs(60), "the import to pause", || {
        paused.exists() || import.try_wait().unwrap().is_some()
    });
    std::fs::write(&go, b"").unwrap();
    let a_code = wait_exit(&mut agent, Duration::from_secs(180));
    std::fs::write(&pause, b"").unwrap();
    let import_code = wait_exit(&mut import, Duration::from_secs(60));
    drop(server);
    assert!(paused.exists(), "the import never paused");
    assert_eq!(a_code, 0, "run A");
    assert_eq!(import_code, 0, "import of run B");

    let frames = fx.stored_frames(&a);
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>());
    let want: Vec<String> = (1..=6000).map(|i| format!("a {i}")).collect();
    assert_eq!(logs(&fx.state, &a, "stream"), want);
    assert_eq!(fx.show(&a)["outcome"], "passed");

    assert_eq!(show(&fx.state, &b), show(&quiet, &b), "run B differs");
    assert_eq!(logs(&fx.state, &b, "stream"), logs(&quiet, &b, "stream"));
    assert_eq!(fx.show(&b)["outcome"], "passed");
    let numbers: String = (1..=40000).map(|i| format!("{i}\n")).collect();
    let sha = Sha256::of(numbers.as_bytes()).to_string();
    assert_eq!(
        std::fs::read(fx.state.join("cas").join(&sha)).unwrap(),
        numbers.as_bytes()
    );
    for (dir, prefix) in [("runs", ".import-"), ("cas", ".in-")] {
        let left: Vec<_> = std::fs::read_dir(fx.state.join(dir))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
}
