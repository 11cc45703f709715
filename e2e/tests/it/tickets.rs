//! Setup commands and tickets end to end: `kiln-coordinator` issues, `kiln-agent
//! verify` accepts a good ticket on this machine and refuses every damaged, foreign,
//! expired, misbound or unknown-version one with exit 2 and a reason.
use crate::common::*;
use kiln_agent::hostinfo::HostInfo;
use kiln_agent::verify::check_ticket;
use kiln_protocol::{Mac, SecretKey, SignedTicket, TICKET_MAGIC, Ticket};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

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

#[test]
fn init_is_idempotent_and_the_key_is_private() {
    let (_tmp, state) = fresh_state();
    let key_file = state.join("key/coordinator.key");
    let before = std::fs::read(&key_file).expect("key");
    assert_eq!(
        std::fs::metadata(&key_file)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let again = kc(&state, &["init"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        std::fs::read(&key_file).expect("key"),
        before,
        "init changed the key"
    );
    let key = kc(&state, &["key"]);
    assert_eq!(key.code, 0);
    assert_eq!(again.stdout, key.stdout, "init and key print the same key");
    let lines: Vec<&str> = key.stdout.lines().collect();
    assert!(lines[0].starts_with("kiln-ed25519 "), "{}", key.stdout);
    assert!(lines[1].starts_with("SHA256:"), "{}", key.stdout);
    let pubkey = kiln_protocol::PublicKey::from_line(lines[0]).expect("key line parses");
    assert_eq!(pubkey.fingerprint(), lines[1]);
    let file = std::fs::read_to_string(state.join("key/coordinator.pub")).expect("pub");
    assert_eq!(file.trim(), lines[0]);
}

#[test]
fn host_add_validates_and_normalizes() {
    let (_tmp, state) = fresh_state();
    let o = kc(
        &state,
        &[
            "host",
            "add",
            "rack1",
            "--mac",
            "52-54-00-AB-CD-EF",
            "--mac",
            "525400abcd01",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let hosts = std::fs::read_to_string(state.join("hosts.toml")).expect("hosts");
    assert!(
        hosts.contains("\"52:54:00:ab:cd:ef\"") && hosts.contains("\"52:54:00:ab:cd:01\""),
        "{hosts}"
    );
    let o = kc(
        &state,
        &[
            "host", "add", "rack1", "--serial", "SN 1", "--image", "agent",
        ],
    );
    assert_eq!(o.code, 0, "update: {}", o.stderr);
    let list = kc(&state, &["host", "list"]);
    assert!(
        list.stdout.contains("rack1")
            && list.stdout.contains("52:54:00:ab:cd:ef")
            && list.stdout.contains("SN 1")
            && list.stdout.contains("agent"),
        "{}",
        list.stdout
    );
    for (args, why) in [
        (
            &["host", "add", "x", "--mac", "52:54:00:zz:00:01"][..],
            "bad MAC",
        ),
        (
            &["host", "add", "x", "--mac", "01:00:5e:00:00:01"][..],
            "not a unicast",
        ),
        (&["host", "add", "x"][..], "at least one --mac or --serial"),
        (
            &["host", "add", "x", "--mac", "52:54:00:ab:cd:ef"][..],
            "already belongs to host rack1",
        ),
        (
            &["host", "add", "../x", "--serial", "S"][..],
            "invalid host name",
        ),
    ] {
        let o = kc(&state, args);
        assert_eq!(o.code, 2, "{args:?} accepted");
        assert!(o.stderr.contains(why), "{args:?}: {}", o.stderr);
    }
}

#[test]
fn secrets_are_stored_private_and_never_printed() {
    let (tmp, state) = fresh_state();
    let f = write(tmp.path(), "value", "hunter2-very-secret");
    let o = kc(
        &state,
        &["secret", "set", "registry-token", "--file", s(&f)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(!o.stdout.contains("hunter2") && !o.stderr.contains("hunter2"));
    let stored = state.join("secrets/registry-token");
    assert_eq!(
        std::fs::read_to_string(&stored).expect("stored"),
        "hunter2-very-secret"
    );
    assert_eq!(
        std::fs::metadata(&stored)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let o = kc(&state, &["secret", "set", "../escape", "--file", s(&f)]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("invalid secret name"), "{}", o.stderr);
}

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

#[test]
fn every_flipped_byte_is_refused() {
    let f = fx();
    let (_, ticket) = f.issue(&f.plan("small.toml", SMALL_PLAN), "here");
    let bytes = std::fs::read(&ticket).expect("ticket");
    let (trusted, here) = (f.trusted(), f.here());
    assert!(
        check_ticket(&bytes, &trusted, now(), &here).is_ok(),
        "the original must verify"
    );
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            let err = check_ticket(&b, &trusted, now(), &here)
                .err()
                .unwrap_or_else(|| {
                    panic!(
                        "flipping {bit:#x} at byte {i} of {} was accepted",
                        bytes.len()
                    )
                });
            assert!(err.starts_with("ticket refused: "), "{err}");
        }
    }
    // A few positions through the real binary: magic, format version, body, signature.
    let flip = |i: usize| {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        b
    };
    f.refused(&flip(0), "bad magic");
    f.refused(&flip(7), "unsupported format version");
    f.refused(&flip(bytes.len() / 2), "ticket refused");
    f.refused(&flip(bytes.len() - 1), "bad signature");
    f.refused(&flip(9), "untrusted key");
}

#[test]
fn truncated_and_random_files_are_refused() {
    let f = fx();
    let (_, ticket) = f.issue(&f.plan("small.toml", SMALL_PLAN), "here");
    let bytes = std::fs::read(&ticket).expect("ticket");
    let (trusted, here) = (f.trusted(), f.here());
    for n in 0..bytes.len() {
        assert!(
            check_ticket(&bytes[..n], &trusted, now(), &here).is_err(),
            "truncated to {n} accepted"
        );
    }
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(
        check_ticket(&extra, &trusted, now(), &here)
            .unwrap_err()
            .contains("trailing")
    );
    for round in 0..2000usize {
        let mut len = [0u8; 2];
        getrandom::getrandom(&mut len).expect("random");
        let mut junk = vec![0u8; u16::from_le_bytes(len) as usize % 600];
        getrandom::getrandom(&mut junk).expect("random");
        if round % 2 == 1 {
            // Past the magic, so the decoder and verifier see the noise.
            junk.splice(0..0, TICKET_MAGIC.iter().copied());
        }
        assert!(
            check_ticket(&junk, &trusted, now(), &here).is_err(),
            "random bytes accepted: {junk:?}"
        );
    }
    f.refused(&bytes[..bytes.len() / 2], "truncated");
    f.refused(b"", "bad magic");
    let mut junk = vec![0u8; 300];
    getrandom::getrandom(&mut junk).expect("random");
    junk[0] = b'X';
    f.refused(&junk, "bad magic");
}

#[test]
fn foreign_expired_and_misbound_tickets_are_refused() {
    let f = fx();
    let plan = f.plan("small.toml", SMALL_PLAN);
    let (_, ticket) = f.issue(&plan, "here");

    // A valid ticket from another coordinator (its own key, same host binding).
    let (_other_tmp, other) = fresh_state();
    add_local_host(&other, "here");
    let o = kc(
        &other,
        &[
            "ticket",
            "issue",
            "--plan",
            s(&plan),
            "--host",
            "here",
            "--out",
            s(&f.dir.join("other.kiln")),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        agent(&[
            "verify",
            "--ticket",
            s(&f.dir.join("other.kiln")),
            "--trust",
            s(&other.join("key/coordinator.pub"))
        ])
        .code,
        0
    );
    f.refused(
        &std::fs::read(f.dir.join("other.kiln")).expect("other"),
        "signed by an untrusted key",
    );
    let show = kc(&f.state, &["ticket", "show", s(&f.dir.join("other.kiln"))]);
    assert_eq!(show.code, 2);
    assert!(
        show.stderr.contains("not this coordinator's"),
        "{}",
        show.stderr
    );

    f.refused(
        &f.resign(&ticket, |t| {
            t.issued_at = now() - 7200;
            t.not_after = now() - 3600;
        }),
        "ticket expired",
    );
    f.refused(
        &f.resign(&ticket, |t| {
            t.host.macs = vec![Mac([0x02, 0, 0, 0, 0, 0x01])]
        }),
        "no local MAC matches 02:00:00:00:00:01",
    );
    f.refused(
        &f.resign(&ticket, |t| t.version = 2),
        "unsupported format version 2",
    );
    let mut magic = std::fs::read(&ticket).expect("ticket");
    magic[7] = 2;
    f.refused(&magic, "unsupported format version 2");

    // Bound by the coordinator to another serial: alone, and next to this MAC.
    let o = kc(
        &f.state,
        &[
            "host",
            "add",
            "elsewhere",
            "--serial",
            "NOT-THIS-MACHINE-42",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (_, t) = f.issue(&plan, "elsewhere");
    f.refused(&std::fs::read(&t).expect("ticket"), "NOT-THIS-MACHINE-42");
    let o = kc(
        &f.state,
        &["host", "add", "here", "--serial", "NOT-THIS-MACHINE-43"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (_, t) = f.issue(&plan, "here");
    f.refused(&std::fs::read(&t).expect("ticket"), "NOT-THIS-MACHINE-43");
}

#[test]
fn issue_refuses_bad_plans_naming_the_line() {
    let f = fx();
    let refused = |plan: &Path, needles: &[&str]| {
        let o = kc(
            &f.state,
            &["ticket", "issue", "--plan", s(plan), "--host", "here"],
        );
        assert_ne!(o.code, 0, "issued: {}", o.stdout);
        assert!(o.stdout.is_empty(), "printed a run id: {}", o.stdout);
        for n in needles {
            assert!(o.stderr.contains(n), "{:?} does not name {n:?}", o.stderr);
        }
        assert_eq!(
            o.stderr.trim().lines().count(),
            1,
            "not one line: {}",
            o.stderr
        );
    };
    let kind = f.plan("kind.toml", "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\n\n[[stage]]\nname = \"b\"\nkind = \"quantum\"\n");
    refused(&kind, &["kind.toml:8:", "unknown kind \"quantum\""]);
    let missing = f.plan("missing.toml", "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\ntests = \"no/such/folder\"\n");
    refused(
        &missing,
        &[
            "missing.toml:5:",
            "tests folder no/such/folder does not exist",
        ],
    );
    let wrong_kind_key = f.plan(
        "key.toml",
        "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\nimage = \"debian:12\"\n",
    );
    refused(
        &wrong_kind_key,
        &["key.toml:5:", "`image` is not a setting of exec stages"],
    );

    let links = f.plan(
        "links.toml",
        "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\ntests = \"esc\"\n",
    );
    write(&f.dir, "esc/run.sh", "true\n");
    symlink("../kind.toml", f.dir.join("esc/up")).expect("symlink");
    refused(
        &links,
        &["links.toml:5:", "up -> ../kind.toml", "leaves the folder"],
    );
    std::fs::remove_file(f.dir.join("esc/up")).expect("rm");
    std::fs::create_dir_all(f.dir.join("esc/deep")).expect("mkdir");
    symlink("../../esc/run.sh", f.dir.join("esc/deep/sneaky")).expect("symlink");
    refused(
        &links,
        &["links.toml:5:", "deep/sneaky -> ../../esc/run.sh"],
    );
    std::fs::remove_file(f.dir.join("esc/deep/sneaky")).expect("rm");
    symlink("/etc/passwd", f.dir.join("esc/abs")).expect("symlink");
    refused(&links, &["links.toml:5:", "abs -> /etc/passwd"]);
    let runs = std::fs::read_dir(f.state.join("runs"))
        .expect("runs")
        .count();
    assert_eq!(runs, 0, "a refused plan left a run behind");
}

#[test]
fn bundle_digest_follows_contents_and_modes_only() {
    let f = fx();
    let script = write(&f.dir, "suite/run.sh", "#!/bin/sh\necho one\n");
    write(&f.dir, "suite/lib/data.txt", "data\n");
    let plan = f.plan(
        "p.toml",
        "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"sh run.sh\"\ntests = \"suite\"\n",
    );
    let bundle = || {
        let (_, ticket) = f.issue(&plan, "here");
        let j = f.show_json(&ticket);
        let b = &j["plan"]["stages"][0]["tests"];
        (
            b["sha256"].as_str().expect("sha").to_string(),
            b["tree"].as_str().expect("tree").to_string(),
        )
    };
    let first = bundle();
    assert_eq!(bundle(), first, "two issues of the same folder");
    let touched = Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(&script)
        .arg(f.dir.join("suite/lib/data.txt"))
        .arg(f.dir.join("suite/lib"))
        .status()
        .expect("touch");
    assert!(touched.success());
    assert_eq!(bundle(), first, "touch changed the bundle");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let exec = bundle();
    assert_ne!(exec.0, first.0, "the exec bit did not change the bundle");
    assert_eq!(exec.1, first.1, "the tree hash covers contents only");
    std::fs::write(&script, "#!/bin/sh\necho One\n").expect("write");
    let edited = bundle();
    assert_ne!(edited.0, exec.0, "a changed byte did not change the bundle");
    assert_ne!(
        edited.1, exec.1,
        "a changed byte did not change the tree hash"
    );
}

#[test]
fn example_plans_issue_and_verify() {
    let f = fx();
    let value = write(&f.dir, "secret", "not a real key");
    for name in ["ssh-ci", "lab-known-hosts"] {
        assert_eq!(
            kc(&f.state, &["secret", "set", name, "--file", s(&value)]).code,
            0
        );
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plans");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("examples/plans") {
        let plan = e.expect("entry").path();
        let (run, ticket) = f.issue(&plan, "here");
        let o = f.verify(&ticket);
        assert_eq!(o.code, 0, "{}: {}", plan.display(), o.stderr);
        assert!(o.stdout.contains(&run));
        n += 1;
    }
    assert!(n >= 4, "expected the four example plans, found {n}");
}
