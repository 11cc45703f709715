//! File inputs are bounded by their format's cap before they are read whole: an
//! endless file (`/dev/zero`) given as a ticket, plan, key, bundle or secret fails at
//! once with a one-line error naming the cap, never by eating memory. Each command
//! runs under a 1 GiB address-space limit, so a reader without a cap dies of it
//! (and fails the test) instead of taking the machine's memory.
use super::*;
use std::process::Command;

/// Runs `bin ARGS…` with at most 1 GiB of address space.
fn limited(bin: &str, args: &[&str]) -> Out {
    Command::new("sh")
        .args(["-c", "ulimit -v 1048576 && exec \"$@\"", "sh"])
        .arg(crate::common::bin(bin))
        .args(args)
        .output()
        .expect("running sh")
        .into()
}

/// A refusal: exit 2, one line on stderr naming every one of `needles`.
fn refused(o: &Out, needles: &[&str]) {
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    for n in needles {
        assert!(o.stderr.contains(n), "{:?} does not name {n:?}", o.stderr);
    }
}

const TICKET_CAP: &str = "1048576-byte cap";

#[test]
fn agent_verify_refuses_an_endless_ticket() {
    let f = fx();
    let trust = f.state.join("key/coordinator.pub");
    let o = limited(
        "kiln-agent",
        &["verify", "--ticket", "/dev/zero", "--trust", s(&trust)],
    );
    refused(&o, &["/dev/zero", TICKET_CAP]);
}

#[test]
fn agent_run_refuses_an_endless_ticket() {
    let f = fx();
    let trust = f.state.join("key/coordinator.pub");
    let work = f.dir.join("work");
    let o = limited(
        "kiln-agent",
        &[
            "run",
            "--ticket",
            "/dev/zero",
            "--trust",
            s(&trust),
            "--work",
            s(&work),
        ],
    );
    refused(&o, &["/dev/zero", TICKET_CAP]);
}

#[test]
fn agent_verify_refuses_an_endless_trusted_key_file() {
    let f = fx();
    let plan = f.plan("p.toml", SMALL_PLAN);
    let (_, ticket) = f.issue(&plan, "here");
    let o = limited(
        "kiln-agent",
        &["verify", "--ticket", s(&ticket), "--trust", "/dev/zero"],
    );
    refused(&o, &["/dev/zero", "65536-byte cap"]);
    let o = limited(
        "kiln-agent",
        &["run", "--ticket", s(&ticket), "--trust", "/dev/zero"],
    );
    refused(&o, &["/dev/zero", "65536-byte cap"]);
}

#[test]
fn agent_run_refuses_an_endless_secret_file() {
    let f = fx();
    let plan = f.plan("p.toml", SMALL_PLAN);
    let (_, ticket) = f.issue(&plan, "here");
    let trust = f.state.join("key/coordinator.pub");
    let o = limited(
        "kiln-agent",
        &[
            "run",
            "--ticket",
            s(&ticket),
            "--trust",
            s(&trust),
            "--out",
            s(&f.dir.join("r.kiln")),
            "--work",
            s(&f.dir.join("work")),
            "--secret",
            "token=/dev/zero",
        ],
    );
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(o.stderr.contains("1048576-byte cap"), "{}", o.stderr);
}

#[test]
fn ticket_show_refuses_an_endless_ticket() {
    let f = fx();
    let o = limited(
        "kiln-coordinator",
        &["--state", s(&f.state), "ticket", "show", "/dev/zero"],
    );
    refused(&o, &["/dev/zero", TICKET_CAP]);
}

#[test]
fn ticket_issue_refuses_an_endless_plan() {
    let f = fx();
    let o = limited(
        "kiln-coordinator",
        &[
            "--state",
            s(&f.state),
            "ticket",
            "issue",
            "--plan",
            "/dev/zero",
            "--host",
            "here",
        ],
    );
    refused(&o, &["/dev/zero", "plan", "1048576-byte cap"]);
}

#[test]
fn import_refuses_an_endless_bundle() {
    let f = fx();
    let o = limited(
        "kiln-coordinator",
        &["--state", s(&f.state), "import", "/dev/zero"],
    );
    refused(&o, &["nothing imported", "bad magic"]);
    assert!(
        !f.state.join("runs").read_dir().unwrap().any(|_| true),
        "the state folder changed"
    );
}
