//! Setup commands and tickets end to end: `kiln-coordinator` issues, `kiln-agent
//! verify` accepts a good ticket on this machine and refuses every damaged, foreign,
//! expired, misbound or unknown-version one with exit 2 and a reason.
use crate::common::*;
use kiln_agent::hostinfo::HostInfo;
use kiln_protocol::{SecretKey, SignedTicket, Ticket};
use std::path::{Path, PathBuf};

/// A state folder with host `here` bound to this machine's MAC, and a scratch folder.
struct Fx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
    mac: String,
}

fn fx() -> Fx {
    let (tmp, state) = fresh_state();
    let mac = add_local_host(&state, "here");
    Fx {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        state,
        mac,
    }
}

const SMALL_PLAN: &str =
    "name = \"small\"\n[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\n";

impl Fx {
    fn plan(&self, name: &str, text: &str) -> PathBuf {
        write(&self.dir, name, text)
    }

    /// `ticket issue --out`; returns the run id and the ticket file.
    fn issue(&self, plan: &Path, host: &str) -> (String, PathBuf) {
        let out = self.dir.join(format!(
            "tickets/{}.kiln",
            self.dir.join("tickets").read_dir().map_or(0, |d| d.count())
        ));
        let o = kc(
            &self.state,
            &[
                "ticket",
                "issue",
                "--plan",
                s(plan),
                "--host",
                host,
                "--out",
                s(&out),
            ],
        );
        assert_eq!(o.code, 0, "issue failed: {}", o.stderr);
        let run = o.stdout.trim_end_matches('\n');
        assert!(
            run.len() == 32
                && run
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "stdout is not only a run id: {:?}",
            o.stdout
        );
        (run.to_string(), out)
    }

    fn trust(&self) -> PathBuf {
        self.state.join("key/coordinator.pub")
    }

    fn verify(&self, ticket: &Path) -> Out {
        agent(&["verify", "--ticket", s(ticket), "--trust", s(&self.trust())])
    }

    /// Writes `bytes` as a ticket file and asserts the agent refuses it naming `why`.
    fn refused(&self, bytes: &[u8], why: &str) {
        let p = write_bytes(&self.dir, "bad.kiln", bytes);
        let o = self.verify(&p);
        assert_eq!(o.code, 2, "accepted ({why}): {}", o.stdout);
        assert!(
            o.stderr.contains(why),
            "reason {:?} does not name {why:?}",
            o.stderr
        );
        assert_eq!(
            o.stderr.trim().lines().count(),
            1,
            "not one line: {}",
            o.stderr
        );
        assert!(
            o.stdout.is_empty(),
            "a refused ticket printed a plan: {}",
            o.stdout
        );
    }

    /// Decodes a ticket, changes it, and signs it again with the state's own key.
    fn resign(&self, ticket: &Path, change: impl FnOnce(&mut Ticket)) -> Vec<u8> {
        let signed = SignedTicket::from_file(&std::fs::read(ticket).expect("read")).expect("parse");
        let mut t = signed.decode_unverified().expect("decode");
        change(&mut t);
        let key = std::fs::read_to_string(self.state.join("key/coordinator.key")).expect("key");
        SignedTicket::sign(&t, &SecretKey::from_line(&key).expect("key line")).to_file()
    }

    /// This machine as the agent sees it, bound by MAC only.
    fn here(&self) -> HostInfo {
        HostInfo {
            hostname: "test".into(),
            macs: vec![self.mac.parse().expect("mac")],
            serial: None,
        }
    }

    fn trusted(&self) -> Vec<kiln_protocol::PublicKey> {
        kiln_agent::verify::load_trust(&self.trust()).expect("trust")
    }

    /// `ticket show --json`.
    fn show_json(&self, ticket: &Path) -> serde_json::Value {
        let o = kc(&self.state, &["ticket", "show", "--json", s(ticket)]);
        assert_eq!(o.code, 0, "show failed: {}", o.stderr);
        serde_json::from_str(&o.stdout).expect("show --json prints JSON")
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

fn now() -> u64 {
    kiln_agent::verify::now_s()
}

mod file_caps;
mod limits;
mod plans;
mod refusals;
mod setup;

#[test]
fn issued_ticket_verifies_on_this_machine() {
    let f = fx();
    write(&f.dir, "t/run.sh", "#!/bin/sh\necho ok\n");
    let plan = f.plan(
        "plan.toml",
        "name = \"nightly\"\n[[stage]]\nname = \"smoke\"\nkind = \"exec\"\ncommand = [\"sh\", \"run.sh\"]\ntests = \"t\"\n[[stage]]\nname = \"hw\"\nkind = \"inventory\"\n",
    );
    let (run, ticket) = f.issue(&plan, "here");
    let o = f.verify(&ticket);
    assert_eq!(o.code, 0, "refused: {}", o.stderr);
    assert!(
        o.stdout.contains(&run) && o.stdout.contains("nightly"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("smoke (exec)") && o.stdout.contains("hw (inventory)"),
        "{}",
        o.stdout
    );
    // The run folder holds the same ticket; the CAS folder beside --out holds the bundle.
    let recorded =
        std::fs::read(f.state.join("runs").join(&run).join("ticket.kiln")).expect("run folder");
    assert_eq!(recorded, std::fs::read(&ticket).expect("ticket"));
    let json = f.show_json(&ticket);
    assert_eq!(json["run"], run.as_str());
    assert_eq!(json["host"]["macs"][0], f.mac.as_str());
    let sha = json["plan"]["stages"][0]["tests"]["sha256"]
        .as_str()
        .expect("bundle sha");
    let mut cas = ticket.as_os_str().to_owned();
    cas.push(".cas");
    let copy = std::fs::read(Path::new(&cas).join(sha)).expect("bundle beside the ticket");
    assert_eq!(kiln_protocol::Sha256::of(&copy).to_string(), sha);
    let human = kc(&f.state, &["ticket", "show", s(&ticket)]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(
        human.stdout.contains(&run) && human.stdout.contains("smoke (exec)"),
        "{}",
        human.stdout
    );
}
