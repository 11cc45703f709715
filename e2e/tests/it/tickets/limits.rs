//! One size rule on both sides: `ticket issue` refuses a plan its agent would
//! refuse, naming the limit; the agent refuses a ticket over the rule even when a
//! trusted key signed it.
use super::*;
use kiln_protocol::limits::MAX_NAME_LEN;

#[test]
fn issue_refuses_a_plan_name_over_the_limit() {
    let f = fx();
    // Far over the name cap (the defect was a 3 MB name), under any plan file cap.
    let name = "x".repeat(60_000);
    let plan = f.plan(
        "huge.toml",
        &format!(
            "name = \"{name}\"\n[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\n"
        ),
    );
    let o = kc(
        &f.state,
        &["ticket", "issue", "--plan", s(&plan), "--host", "here"],
    );
    assert_ne!(o.code, 0, "issued: {}", o.stdout);
    assert!(
        o.stderr.contains("plan name is 60000 bytes") && o.stderr.contains("limits::MAX_NAME_LEN"),
        "{}",
        &o.stderr[..o.stderr.len().min(400)]
    );
    assert_eq!(o.stderr.trim().lines().count(), 1, "not one line");
    assert!(o.stderr.len() < 400, "the refusal repeats the name");
    assert!(o.stdout.is_empty());
    let runs = std::fs::read_dir(f.state.join("runs")).map_or(0, |d| d.count());
    assert_eq!(runs, 0, "a refused ticket was recorded");
}

#[test]
fn the_agent_refuses_a_signed_ticket_over_the_limit() {
    let f = fx();
    let (_, ticket) = f.issue(&f.plan("small.toml", SMALL_PLAN), "here");
    let over = f.resign(&ticket, |t| t.plan.name = "x".repeat(MAX_NAME_LEN + 1));
    f.refused(
        &over,
        "plan name is 129 bytes, over the limit of 128 (limits::MAX_NAME_LEN)",
    );
    let over = f.resign(&ticket, |t| t.plan.stages[0].name = "s".repeat(100_000));
    f.refused(&over, "limits::MAX_NAME_LEN");
    // At the limit it verifies.
    let at = f.resign(&ticket, |t| t.plan.name = "x".repeat(MAX_NAME_LEN));
    let o = f.verify(&write_bytes(&f.dir, "at.kiln", &at));
    assert_eq!(o.code, 0, "{}", o.stderr);
}
