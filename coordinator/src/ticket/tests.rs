//! Issuing: binding, expiry, signature, run folder, `--out` with its CAS folder.
use super::*;
use crate::state::{Host, Hosts};

fn setup() -> (tempfile::TempDir, State, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, _) = State::init(&tmp.path().join("state")).expect("init");
    let hosts = Hosts {
        hosts: vec![
            Host {
                name: "box".into(),
                macs: vec!["52:54:00:00:00:01".into()],
                serial: Some("S1".into()),
                image: None,
                spec: None,
                agent_key: None,
                power: None,
            },
            Host {
                name: "loose".into(),
                macs: vec![],
                serial: None,
                image: None,
                spec: None,
                agent_key: None,
                power: None,
            },
        ],
    };
    state.save_hosts(&hosts).expect("hosts");
    std::fs::create_dir_all(tmp.path().join("t")).expect("mkdir");
    std::fs::write(tmp.path().join("t/run.sh"), "true\n").expect("write");
    let plan = tmp.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"./run.sh\"\ntests = \"t\"\n",
    )
    .expect("write");
    (tmp, state, plan)
}

#[test]
fn issued_ticket_is_signed_bound_and_recorded() {
    let (tmp, state, plan) = setup();
    let issued = issue(&state, &plan, "box", 3600, Some("http://10.0.0.1:7373/")).expect("issue");
    let signed = SignedTicket::from_file(&issued.file).expect("parse");
    let t = signed
        .verify(&[state.public_key().expect("key")])
        .expect("verify");
    assert_eq!(t, issued.ticket);
    assert_eq!(t.not_after - t.issued_at, 3600);
    assert_eq!(t.host.name, "box");
    assert_eq!(t.host.macs[0].to_string(), "52:54:00:00:00:01");
    assert_eq!(t.host.serial.as_deref(), Some("S1"));
    assert_eq!(t.coordinator.as_deref(), Some("http://10.0.0.1:7373"));
    let recorded = std::fs::read(state.run_dir(&issued.run).join("ticket.kiln")).expect("run dir");
    assert_eq!(recorded, issued.file);

    let out = tmp.path().join("out/t.kiln");
    write_out(&state, &issued, &out).expect("out");
    assert_eq!(std::fs::read(&out).expect("ticket"), issued.file);
    let bundle = t.plan.stages[0].tests.as_ref().expect("bundle");
    assert_eq!(issued.cas, vec![bundle.sha256]);
    let copy = std::fs::read(
        tmp.path()
            .join("out/t.kiln.cas")
            .join(bundle.sha256.to_string()),
    )
    .expect("cas copy");
    assert_eq!(kiln_protocol::Sha256::of(&copy), bundle.sha256);
}

#[test]
fn refusals() {
    let (_tmp, state, plan) = setup();
    let e = |r: Result<Issued>| format!("{:#}", r.expect_err("refused"));
    assert!(e(issue(&state, &plan, "loose", 60, None)).contains("neither a MAC nor a serial"));
    assert!(e(issue(&state, &plan, "ghost", 60, None)).contains("no host named \"ghost\""));
    assert!(e(issue(&state, &plan, "box", 0, None)).contains("--ttl"));
    assert!(e(issue(&state, &plan, "box", MAX_TTL_S + 1, None)).contains("at most 365 days"));
    assert!(e(issue(&state, &plan, "box", u64::MAX, None)).contains("at most 365 days"));
    assert!(e(issue(&state, &plan, "box", 60, Some("ftp://x"))).contains("not an http"));
    assert!(
        state.run_ids().expect("runs").is_empty(),
        "nothing recorded on refusal"
    );
}

#[test]
fn run_ids_differ() {
    let (_tmp, state, plan) = setup();
    let a = issue(&state, &plan, "box", 60, None).expect("issue");
    let b = issue(&state, &plan, "box", 60, None).expect("issue");
    assert_ne!(a.run, b.run);
    assert_eq!(state.run_ids().expect("runs").len(), 2);
}

#[test]
fn cas_folder_sits_beside_the_ticket() {
    assert_eq!(
        cas_dir(Path::new("/x/t.kiln")),
        PathBuf::from("/x/t.kiln.cas")
    );
}

/// A plan the agent would refuse (a name far over the cap, as the 3 MB one of the
/// report, kept under any plan file cap) is never signed: the refusal names the
/// limit, and nothing is recorded.
#[test]
fn plans_over_the_size_rule_are_not_signed() {
    let (tmp, state, _) = setup();
    let plan = tmp.path().join("huge.toml");
    let name = "x".repeat(60_000);
    std::fs::write(
        &plan,
        format!(
            "name = \"{name}\"\n[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\n"
        ),
    )
    .expect("write");
    let e = format!(
        "{:#}",
        issue(&state, &plan, "box", 60, None).expect_err("refused")
    );
    assert!(
        e.contains("plan name is 60000 bytes") && e.contains("limit of 128 (limits::MAX_NAME_LEN)"),
        "{}",
        &e[..e.len().min(300)]
    );
    assert!(e.len() < 300 && !e.contains('\n'), "not one short line");
    let env = "v".repeat(kiln_protocol::limits::MAX_VALUE_LEN + 1);
    std::fs::write(
        &plan,
        format!("[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\nenv = {{ BIG = \"{env}\" }}\n"),
    )
    .expect("write");
    let e = format!(
        "{:#}",
        issue(&state, &plan, "box", 60, None).expect_err("refused")
    );
    assert!(
        e.contains("stage \"a\" env BIG") && e.contains("MAX_VALUE_LEN"),
        "{e}"
    );
    assert!(
        state.run_ids().expect("runs").is_empty(),
        "nothing recorded"
    );
}
