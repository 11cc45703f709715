//! The `ssh` stage along the whole path: a plan file (`kind = "ssh"`), the client key
//! as a coordinator secret, `ticket issue`, `serve`, `kiln-agent run`, against a real
//! OpenSSH sshd on loopback (the remote host is this machine).
#[path = "../../../agent/tests/ssh/sshd.rs"]
pub(crate) mod sshd;

use crate::common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Fx {
    tmp: tempfile::TempDir,
    state: PathBuf,
    sshd: sshd::Sshd,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn fx() -> Option<Fx> {
    if !sshd::available() {
        return None;
    }
    let (tmp, state) = fresh_state();
    add_local_host(&state, "here");
    let sshd = sshd::Sshd::start();
    let key = write(
        tmp.path(),
        "client.key",
        &String::from_utf8_lossy(&sshd.client_key),
    );
    let o = kc(&state, &["secret", "set", "ssh-ci", "--file", s(&key)]);
    assert_eq!(o.code, 0, "secret set: {}", o.stderr);
    Some(Fx { tmp, state, sshd })
}

impl Fx {
    /// Writes a tests folder and a plan with one ssh stage; issues its ticket.
    fn issue(&self, run_sh: &str, host_key: &str) -> (String, PathBuf) {
        let d = self.tmp.path();
        write(d, "tests/remote/run.sh", run_sh);
        let plan = format!(
            "name = \"ssh-e2e\"\n\n[[stage]]\nname = \"remote\"\nkind = \"ssh\"\n\
             host = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\nos = \"linux\"\n\
             key = \"ssh-ci\"\nhost_key = \"{host_key}\"\ntests = \"tests/remote\"\n\
             timeout = \"2m\"\nbase_dir = \"{base}\"\n",
            port = self.sshd.port,
            user = self.sshd.user,
            base = d.join("remote base").display(),
        );
        let plan = write(d, "plan.toml", &plan);
        let ticket = d.join("ticket.kiln");
        let o = kc(
            &self.state,
            &[
                "ticket",
                "issue",
                "--plan",
                s(&plan),
                "--host",
                "here",
                "--out",
                s(&ticket),
            ],
        );
        assert_eq!(o.code, 0, "ticket issue: {}", o.stderr);
        (o.stdout.trim().to_string(), ticket)
    }

    fn run_agent(&self, ticket: &Path, url: &str) -> Out {
        let trust = self.state.join("key/coordinator.pub");
        let work = self.tmp.path().join("work");
        agent(&[
            "run",
            "--ticket",
            s(ticket),
            "--trust",
            s(&trust),
            "--url",
            url,
            "--work",
            s(&work),
        ])
    }
}

#[test]
fn plan_secret_ticket_serve_and_agent_run_over_loopback_sshd() {
    let Some(f) = fx() else { return };
    let (run, ticket) = f.issue(
        "echo remote-hello\nmkdir -p 'artifacts/sub dir'\necho payload > 'artifacts/sub dir/out file.txt'\n",
        &f.sshd.host_pub,
    );
    let c = Coordinator::start(&f.state);
    let o = f.run_agent(&ticket, &c.url);
    assert_eq!(o.code, 0, "agent run: {}\n{}", o.stdout, o.stderr);
    wait_until(Duration::from_secs(20), "the run to finish", || {
        kc(&f.state, &["run", "show", &run])
            .stdout
            .contains("passed")
    });
    let logs = kc(&f.state, &["run", "logs", &run]);
    assert!(
        logs.stdout.lines().any(|l| l.contains("remote-hello")),
        "{}",
        logs.stdout
    );
    let show = kc(&f.state, &["run", "show", &run, "--json"]);
    assert!(
        show.stdout.contains("sub dir/out file.txt"),
        "{}",
        show.stdout
    );
    let sha = kiln_protocol::Sha256::of(b"payload\n").to_string();
    assert!(
        f.state.join("cas").join(&sha).is_file(),
        "artifact {sha} in the CAS"
    );
    assert!(
        !f.tmp.path().join("remote base/lock").exists(),
        "lock released"
    );
}

#[test]
fn wrong_host_key_in_the_plan_is_an_infrastructure_error() {
    let Some(f) = fx() else { return };
    let (_, impostor) = sshd::keygen(f.tmp.path(), "impostor");
    let (run, ticket) = f.issue("echo never\n", &impostor);
    let c = Coordinator::start(&f.state);
    let o = f.run_agent(&ticket, &c.url);
    assert_eq!(
        o.code, 3,
        "infrastructure error exit: {}\n{}",
        o.stdout, o.stderr
    );
    let show = kc(&f.state, &["run", "show", &run]);
    assert!(show.stdout.contains("host key mismatch"), "{}", show.stdout);
    let logs = kc(&f.state, &["run", "logs", &run]);
    assert!(!logs.stdout.contains("never"), "{}", logs.stdout);
}
