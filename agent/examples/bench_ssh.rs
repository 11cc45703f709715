//! Benchmark: the ssh stage's wall time against a raw `scp -r` + `ssh` + `scp -r` of
//! the same folder, over a real sshd on loopback. Prints both medians and the ratio
//! (target: at most 1.0×). Run: `cargo run -p kiln-agent --example bench_ssh`.
#[path = "../tests/ssh/sshd.rs"]
mod sshd;

use kiln_agent::stages::{StageCtx, ssh};
use kiln_protocol::{Os, Outcome, SshSpec, Stage, StageKind};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 7;

fn folder(root: &Path) {
    std::fs::write(
        root.join("run.sh"),
        "mkdir -p artifacts/sub\ncp -r data/a artifacts/sub/\necho done\n",
    )
    .expect("run.sh");
    for d in ["a", "b"] {
        let dir = root.join("data").join(d);
        std::fs::create_dir_all(&dir).expect("data");
        for i in 0..20 {
            std::fs::write(dir.join(format!("f{i}.bin")), vec![i as u8; 20_000]).expect("file");
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !sshd::available() {
        return;
    }
    let s = sshd::Sshd::start();
    let work = tempfile::tempdir().expect("tempdir");
    let tests = work.path().join("tests");
    std::fs::create_dir(&tests).expect("tests");
    folder(&tests);
    let (tar_bytes, _) = kiln_protocol::tree::pack_to_vec(&tests).expect("pack");
    let tar = work.path().join("tests.tar");
    std::fs::write(&tar, &tar_bytes).expect("tar");
    let remote = work.path().join("remote");
    let key = s.path("client");
    let kh = work.path().join("known_hosts");
    std::fs::write(&kh, format!("[127.0.0.1]:{} {}\n", s.port, s.host_pub)).expect("kh");

    let stage_round = |i: usize| -> Duration {
        let spec = SshSpec {
            host: "127.0.0.1".into(),
            port: s.port,
            user: s.user.clone(),
            os: Os::Linux,
            key: "k".into(),
            host_key: Some(s.host_pub.clone()),
            known_hosts: None,
            keep: false,
            base_dir: Some(remote.display().to_string()),
        };
        let stage = Stage {
            timeout_s: 60,
            ..Stage::new("bench", StageKind::Ssh(spec.clone()))
        };
        let dir = work.path().join(format!("stage{i}"));
        std::fs::create_dir(&dir).expect("stage dir");
        let (mut c, sink) = StageCtx::for_test(stage, dir);
        c.tests_tar = Some(tar.clone());
        c.secrets.insert("k".into(), s.client_key.clone());
        let t = Instant::now();
        let r = smol::block_on(ssh::run(&c, &spec));
        let took = t.elapsed();
        assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
        took
    };

    let opts: Vec<String> = [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "LogLevel=ERROR",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("-oUserKnownHostsFile={}", kh.display()),
        format!("-oIdentityFile={}", key.display()),
    ])
    .collect();
    let dest = |p: &Path| format!("{}@127.0.0.1:{}", s.user, p.display());
    let port = s.port.to_string();
    let raw_round = |i: usize| -> Duration {
        let rdir = remote.join(format!("raw{i}"));
        let local = work.path().join(format!("fetched{i}"));
        std::fs::create_dir(&local).expect("local");
        let t = Instant::now();
        let ok = Command::new("scp")
            .args(&opts)
            .args(["-q", "-r", "-P", &port])
            .arg(&tests)
            .arg(dest(&rdir))
            .status();
        assert!(ok.expect("scp").success(), "scp up");
        let ok = Command::new("ssh")
            .args(&opts)
            .args(["-p", &port, "-l", &s.user, "127.0.0.1"])
            .arg(format!("cd {} && sh ./run.sh", rdir.display()))
            .stdout(std::process::Stdio::null())
            .status();
        assert!(ok.expect("ssh").success(), "ssh run");
        let ok = Command::new("scp")
            .args(&opts)
            .args(["-q", "-r", "-P", &port])
            .arg(dest(&rdir.join("artifacts")))
            .arg(&local)
            .status();
        assert!(ok.expect("scp").success(), "scp down");
        t.elapsed()
    };
    // Interleaved, so that both see the same load on a shared machine.
    let (mut stage_times, mut raw_times) = (vec![], vec![]);
    for i in 0..ROUNDS {
        stage_times.push(stage_round(i));
        raw_times.push(raw_round(i));
    }
    let (a, b) = (median(stage_times), median(raw_times));
    println!(
        "ssh stage (lock, upload, run, stream, fetch, cleanup): median {:.1} ms",
        a.as_secs_f64() * 1e3
    );
    println!(
        "raw scp -r + ssh + scp -r:                            median {:.1} ms",
        b.as_secs_f64() * 1e3
    );
    println!(
        "ratio stage/raw: {:.2}x (target <= 1.0x), {ROUNDS} rounds each",
        a.as_secs_f64() / b.as_secs_f64()
    );
}
