//! Online runs end to end: a real coordinator on loopback, a real agent process; every
//! stage outcome reaches `run show --json`, aborts reach the running stage with the
//! next ack, refused tickets run and report nothing.
use crate::common::*;
use kiln_protocol::{Frame, RecordReader};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A state folder with host `here` bound to this machine, and a scratch folder.
pub struct Fx {
    _tmp: tempfile::TempDir,
    /// Scratch folder (plans, tickets, work folders, markers).
    pub dir: PathBuf,
    /// The coordinator's state folder.
    pub state: PathBuf,
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 test path")
}

impl Fx {
    /// A fresh fixture.
    pub fn new() -> Fx {
        let (tmp, state) = fresh_state();
        add_local_host(&state, "here");
        Fx {
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            state,
        }
    }

    /// Writes a plan file.
    pub fn plan(&self, name: &str, text: &str) -> PathBuf {
        write(&self.dir, name, text)
    }

    /// `ticket issue`; returns the run id.
    pub fn issue(&self, plan: &Path, url: Option<&str>, out: Option<&Path>) -> String {
        let mut args = vec!["ticket", "issue", "--plan", s(plan), "--host", "here"];
        if let Some(u) = url {
            args.extend(["--url", u]);
        }
        if let Some(o) = out {
            args.extend(["--out", s(o)]);
        }
        let o = kc(&self.state, &args);
        assert_eq!(o.code, 0, "ticket issue failed: {}", o.stderr);
        o.stdout.trim().to_string()
    }

    /// The coordinator's public key file.
    pub fn trust(&self) -> PathBuf {
        self.state.join("key/coordinator.pub")
    }

    /// `run show RUN --json`.
    pub fn show(&self, run: &str) -> Value {
        let o = kc(&self.state, &["run", "show", run, "--json"]);
        assert_eq!(o.code, 0, "run show failed: {}", o.stderr);
        serde_json::from_str(&o.stdout).expect("run show --json is JSON")
    }

    /// Stage outcomes from `run show --json`, in plan order.
    pub fn outcomes(&self, run: &str) -> Vec<(String, String, u64)> {
        self.show(run)["stages"]
            .as_array()
            .expect("stages array")
            .iter()
            .map(|st| {
                (
                    st["name"].as_str().unwrap_or_default().to_string(),
                    st["outcome"].as_str().unwrap_or_default().to_string(),
                    st["attempts"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// The frames stored in `runs/<run>/events.log`, asserting each record decodes.
    pub fn stored_frames(&self, run: &str) -> Vec<Frame> {
        let bytes =
            std::fs::read(self.state.join("runs").join(run).join("events.log")).unwrap_or_default();
        RecordReader::new(&bytes)
            .map(|r| postcard::from_bytes(&r.expect("record")).expect("a frame"))
            .collect()
    }

    /// `kiln-agent run --ticket T --trust KEY --work DIR [extra…]` as a child.
    pub fn spawn_agent(&self, ticket: &str, work: &Path, extra: &[&str]) -> Child {
        Command::new(bin("kiln-agent"))
            .args(["run", "--ticket", ticket, "--trust", s(&self.trust())])
            .args(["--work", s(work)])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting kiln-agent")
    }
}

/// Waits for a child to exit; returns its exit code.
pub fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let mut code = None;
    wait_until(limit, "the agent to exit", || {
        code = child.try_wait().expect("try_wait");
        code.is_some()
    });
    code.and_then(|c| c.code()).unwrap_or(-1)
}

/// The plan with one stage of each outcome (fail_fast off). `marker` makes `flaky`
/// fail once, then pass.
pub fn outcomes_plan(marker: &Path) -> String {
    format!(
        r#"name = "outcomes"
fail_fast = false

[[stage]]
name = "pass"
kind = "exec"
command = ["sh", "-c", "echo hello; mkdir -p artifacts; echo report > artifacts/report.txt"]

[[stage]]
name = "fail"
kind = "exec"
command = ["sh", "-c", "echo failing >&2; exit 3"]

[[stage]]
name = "warn"
kind = "exec"
command = ["sh", "-c", "exit 42"]

[[stage]]
name = "skip"
kind = "exec"
command = ["sh", "-c", "exit 43"]

[[stage]]
name = "slow"
kind = "exec"
command = ["sleep", "60"]
timeout = "1s"

[[stage]]
name = "flaky"
kind = "exec"
command = ["sh", "-c", "test -e {m} && exit 0; touch {m}; exit 1"]
retries = 1
"#,
        m = marker.display()
    )
}

/// The outcomes `outcomes_plan` must end with: name, outcome, attempts.
pub fn expected_outcomes() -> Vec<(String, String, u64)> {
    [
        ("pass", "passed", 1),
        ("fail", "failed", 1),
        ("warn", "warning", 1),
        ("skip", "skipped", 1),
        ("slow", "timed_out", 1),
        ("flaky", "passed", 2),
    ]
    .iter()
    .map(|(n, o, a)| (n.to_string(), o.to_string(), *a))
    .collect()
}

#[test]
fn every_outcome_reaches_the_coordinator_and_the_agent_exits_1() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let plan = fx.plan(
        "outcomes.toml",
        &outcomes_plan(&fx.dir.join("flaky.marker")),
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    // The ticket comes from the coordinator's URL, as a netbooted agent fetches it.
    let ticket_url = format!("{}/v1/runs/{run}/ticket", server.url);
    let mut agent = fx.spawn_agent(&ticket_url, &fx.dir.join("work"), &[]);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(120)), 1);
    assert_eq!(fx.outcomes(&run), expected_outcomes());
    let show = fx.show(&run);
    assert_eq!(show["state"], "finished");
    assert_eq!(show["outcome"], "timed_out");
    let art = &show["stages"][0]["artifacts"][0];
    assert_eq!(art["name"], "report.txt");
    let cas = fx.state.join("cas").join(art["sha256"].as_str().unwrap());
    assert_eq!(std::fs::read(cas).unwrap(), b"report\n");
    let logs = kc(&fx.state, &["run", "logs", &run, "--stage", "fail"]);
    assert_eq!(logs.stdout, "failing\n");
    let seqs: Vec<u64> = fx.stored_frames(&run).iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn abort_ends_the_running_stage_with_the_next_ack() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let started = fx.dir.join("started");
    let plan = fx.plan(
        "long.toml",
        &format!(
            "name = \"long\"\n[[stage]]\nname = \"long\"\nkind = \"exec\"\n\
             command = [\"sh\", \"-c\", \"touch {}; exec sleep 300\"]\n\
             [[stage]]\nname = \"after\"\nkind = \"exec\"\ncommand = [\"true\"]\n",
            started.display()
        ),
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut agent = fx.spawn_agent(s(&ticket), &fx.dir.join("work"), &[]);
    wait_until(Duration::from_secs(30), "the stage to start", || {
        started.exists()
    });
    let o = kc(&fx.state, &["run", "abort", &run, "--reason", "enough"]);
    assert_eq!(o.code, 0, "abort failed: {}", o.stderr);
    let t0 = Instant::now();
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(30)), 1);
    // A figure, not an assert: the heartbeat is 2 s, the stage's kill is immediate.
    eprintln!("abort to agent exit: {:.2}s", t0.elapsed().as_secs_f64());
    let show = fx.show(&run);
    assert_eq!(show["state"], "aborted");
    assert_eq!(show["outcome"], "aborted");
    assert_eq!(show["stages"][0]["outcome"], "aborted");
    assert_eq!(show["stages"][0]["detail"], "aborted: enough");
    assert_eq!(show["stages"][1]["outcome"], "not_run");
}

#[test]
fn a_refused_ticket_runs_nothing_and_reports_nothing() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let marker = fx.dir.join("ran");
    let plan = fx.plan(
        "p.toml",
        &format!(
            "name = \"p\"\n[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = [\"touch\", \"{}\"]\n",
            marker.display()
        ),
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let other = fresh_state();
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let o = agent(&[
        "run",
        "--ticket",
        s(&ticket),
        "--trust",
        s(&other.1.join("key/coordinator.pub")),
        "--work",
        s(&fx.dir.join("work")),
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("refused"), "{}", o.stderr);
    assert!(!marker.exists());
    assert_eq!(fx.show(&run)["state"], "pending");
    assert!(fx.stored_frames(&run).is_empty());
}

#[test]
fn a_claimed_agent_gets_its_secrets_and_logs_them_redacted() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let secret = write(&fx.dir, "token.txt", "online-secret-value");
    let o = kc(
        &fx.state,
        &["secret", "set", "api-token", "--file", s(&secret)],
    );
    assert_eq!(o.code, 0, "secret set failed: {}", o.stderr);
    let plan = fx.plan(
        "sec.toml",
        "name = \"sec\"\n[[stage]]\nname = \"use\"\nkind = \"exec\"\n\
         command = [\"sh\", \"-c\", \"echo env=$KILN_SECRET_API_TOKEN; cat $KILN_SECRETS_DIR/api-token\"]\n\
         secrets = [\"api-token\"]\n\
         [[stage]]\nname = \"none\"\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", \"echo x$KILN_SECRET_API_TOKEN\"]\n",
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut a = fx.spawn_agent(s(&ticket), &fx.dir.join("work"), &[]);
    assert_eq!(wait_exit(&mut a, Duration::from_secs(60)), 0);
    let logs = kc(&fx.state, &["run", "logs", &run]);
    assert_eq!(
        logs.stdout,
        "[use] env=[redacted:api-token]\n[use] [redacted:api-token]\n[none] x\n"
    );
}

#[test]
fn a_replayed_ticket_runs_nothing_and_exits_2() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    let marker = fx.dir.join("ran");
    let plan = fx.plan(
        "p.toml",
        &format!(
            "name = \"p\"\n[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = [\"touch\", \"{}\"]\n",
            marker.display()
        ),
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let mut first = fx.spawn_agent(s(&ticket), &fx.dir.join("work1"), &[]);
    assert_eq!(wait_exit(&mut first, Duration::from_secs(60)), 0);
    assert!(marker.exists(), "the first run ran its stage");
    std::fs::remove_file(&marker).unwrap();
    let stored = fx.stored_frames(&run);
    // The same ticket again, from a fresh work folder: a new claim key, refused.
    let o = agent(&[
        "run",
        "--ticket",
        s(&ticket),
        "--trust",
        s(&fx.trust()),
        "--work",
        s(&fx.dir.join("work2")),
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("claim refused"), "{}", o.stderr);
    assert!(o.stderr.contains("409"), "{}", o.stderr);
    assert!(!marker.exists(), "a replayed ticket ran its stage again");
    assert_eq!(fx.stored_frames(&run), stored, "the finished run changed");
    assert_eq!(fx.show(&run)["outcome"], "passed");
}
