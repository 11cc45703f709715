//! The one size rule both sides apply: every cap refuses one past it, names itself,
//! and a ticket within every cap fits the ticket file.
use crate::{sample_ticket, test_key};
use kiln_protocol::limits::*;
use kiln_protocol::*;

/// A change to the sample ticket that breaks one cap.
type Change<'a> = Box<dyn Fn(&mut Ticket) + 'a>;

fn refused(t: &Ticket, rule: &str) -> String {
    let e = t.check_limits().expect_err(rule);
    let msg = e.to_string();
    assert!(
        matches!(&e, Error::TooLarge { rule: r, .. } if *r == rule),
        "{rule}: {msg}"
    );
    assert!(msg.contains(&format!("limits::{rule}")), "{msg}");
    assert!(
        msg.len() < 200 && !msg.contains('\n'),
        "not one short line: {msg}"
    );
    msg
}

#[test]
fn the_sample_ticket_is_within_every_limit() {
    sample_ticket().check_limits().expect("within limits");
}

#[test]
fn a_three_megabyte_plan_name_is_refused_naming_the_limit() {
    let mut t = sample_ticket();
    t.plan.name = "x".repeat(3 << 20);
    let msg = refused(&t, "MAX_NAME_LEN");
    assert!(msg.starts_with("plan name is 3145728 bytes"), "{msg}");
    t.plan.name = "x".repeat(MAX_NAME_LEN);
    t.check_limits().expect("a name at the limit is fine");
    t.plan.name.push('x');
    refused(&t, "MAX_NAME_LEN");
}

#[test]
fn each_cap_refuses_one_past_it() {
    let over_name = "n".repeat(MAX_NAME_LEN + 1);
    let over_text = "t".repeat(MAX_TEXT_LEN + 1);
    let cases: Vec<(&str, Change<'_>)> = vec![
        (
            "MAX_NAME_LEN",
            Box::new(|t| t.host.name = over_name.clone()),
        ),
        (
            "MAX_NAME_LEN",
            Box::new(|t| t.plan.stages[0].name = over_name.clone()),
        ),
        (
            "MAX_NAME_LEN",
            Box::new(|t| t.plan.stages[0].secrets = vec![over_name.clone()]),
        ),
        (
            "MAX_NAME_LEN",
            Box::new(|t| t.plan.stages[0].env = vec![(over_name.clone(), "v".into())]),
        ),
        (
            "MAX_VALUE_LEN",
            Box::new(|t| t.plan.stages[0].env = vec![("A".into(), "v".repeat(MAX_VALUE_LEN + 1))]),
        ),
        (
            "MAX_TEXT_LEN",
            Box::new(|t| t.coordinator = Some(over_text.clone())),
        ),
        (
            "MAX_TEXT_LEN",
            Box::new(|t| t.host.serial = Some(over_text.clone())),
        ),
        (
            "MAX_TEXT_LEN",
            Box::new(|t| t.host.spec.gpus = vec![over_text.clone()]),
        ),
        (
            "MAX_TEXT_LEN",
            Box::new(|t| {
                t.plan.stages[0].kind = StageKind::Exec {
                    command: vec!["sh".into(), over_text.clone()],
                }
            }),
        ),
        (
            "MAX_LIST_LEN",
            Box::new(|t| {
                t.plan.stages[0].kind = StageKind::Exec {
                    command: vec![String::new(); MAX_LIST_LEN + 1],
                }
            }),
        ),
        (
            "MAX_LIST_LEN",
            Box::new(|t| t.host.macs = vec![Mac([0; 6]); MAX_LIST_LEN + 1]),
        ),
        (
            "MAX_STAGES",
            Box::new(|t| t.plan.stages = vec![t.plan.stages[0].clone(); MAX_STAGES + 1]),
        ),
        (
            "MAX_TEXT_LEN",
            Box::new(|t| {
                t.plan.stages[0].kind = StageKind::Network(NetworkSpec {
                    server: over_text.clone(),
                    port: 5201,
                    duration_s: 10,
                    min_mbps: None,
                })
            }),
        ),
        (
            "MAX_NAME_LEN",
            Box::new(|t| {
                t.plan.stages[0].kind = StageKind::Ssh(SshSpec {
                    host: "h".into(),
                    port: 22,
                    user: "u".into(),
                    os: Os::Linux,
                    key: over_name.clone(),
                    host_key: None,
                    known_hosts: None,
                    keep: false,
                    base_dir: None,
                })
            }),
        ),
    ];
    for (rule, change) in cases {
        let mut t = sample_ticket();
        change(&mut t);
        refused(&t, rule);
    }
}

/// Every value within its own cap can still add up past the file cap: the body's
/// encoded size is a cap too, and any body within it fits a ticket file.
#[test]
fn the_body_cap_keeps_the_file_within_max_ticket_bytes() {
    let mut t = sample_ticket();
    let value = "v".repeat(MAX_VALUE_LEN);
    t.plan.stages[0].env = (0..40).map(|i| (format!("V{i}"), value.clone())).collect();
    refused(&t, "MAX_TICKET_BODY_BYTES");
    // Grow the body to exactly the cap: it passes, and its file is within the file cap.
    let mut t = sample_ticket();
    let base = postcard::to_allocvec(&t).unwrap().len();
    let room = MAX_TICKET_BODY_BYTES - base;
    let n = room / (MAX_VALUE_LEN + 8);
    t.plan.stages[0].env = (0..n)
        .map(|i| (format!("V{i:04}"), value.clone()))
        .collect();
    let left = MAX_TICKET_BODY_BYTES - postcard::to_allocvec(&t).unwrap().len();
    t.plan.stages[0]
        .env
        .push(("LAST".into(), "w".repeat(left - 8)));
    let mut body = postcard::to_allocvec(&t).unwrap().len();
    while body < MAX_TICKET_BODY_BYTES {
        t.plan.stages[0].env.last_mut().unwrap().1.push('w');
        body = postcard::to_allocvec(&t).unwrap().len();
    }
    assert_eq!(body, MAX_TICKET_BODY_BYTES);
    t.check_limits().expect("a body at the cap");
    let file = SignedTicket::sign(&t, &test_key(1)).to_file();
    assert!(file.len() <= MAX_TICKET_BYTES, "{} bytes", file.len());
    t.plan.stages[0].env.last_mut().unwrap().1.push('w');
    refused(&t, "MAX_TICKET_BODY_BYTES");
}
