//! Which run a netbooting host gets: never an expired or aborted ticket, whatever its
//! age, through both the ticket lookup and the per-MAC iPXE script.
use super::*;
use crate::common::{Coordinator, kc, write};

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn expired_and_aborted_tickets_are_never_handed_out() {
    let (d, state) = keyed_state();
    let kernel = write(d.path(), "vmlinuz", "not really a kernel");
    let initrd = write(d.path(), "initrd", "not really an initrd");
    let o = kc(
        &state,
        &[
            "image",
            "add",
            "burnin",
            "--kernel",
            p(&kernel),
            "--initrd",
            p(&initrd),
        ],
    );
    assert_eq!(o.code, 0, "image add: {}", o.stderr);
    let o = kc(
        &state,
        &["host", "add", "node1", "--mac", MAC, "--image", "burnin"],
    );
    assert_eq!(o.code, 0, "host add: {}", o.stderr);

    // Oldest first: each of the two older tickets would win if its state were ignored.
    let now = now_s();
    let mut expired = ticket(new_run_id(), "p", vec![stage("a", &[])], now - 30);
    expired.not_after = now - 1;
    write_ticket(&state, &expired);
    let aborted = ticket(new_run_id(), "p", vec![stage("a", &[])], now - 20);
    write_ticket(&state, &aborted);
    let o = kc(&state, &["run", "abort", &aborted.run.to_string()]);
    assert_eq!(o.code, 0, "run abort: {}", o.stderr);
    let pending = ticket(new_run_id(), "p", vec![stage("a", &[])], now - 10);
    write_ticket(&state, &pending);

    let c = Coordinator::start(&state);
    let a = get(&c.url, &format!("/v1/hosts/{MAC}/ticket"));
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("Kiln-Run"), Some(pending.run.to_string().as_str()));
    let script = get(&c.url, "/ipxe/52-54-00-12-34-56").text();
    assert!(
        script.contains(&format!("kiln.run={}", pending.run)),
        "{script}"
    );
    for gone in [&expired, &aborted] {
        assert!(!script.contains(&gone.run.to_string()), "{script}");
    }

    // Once the pending run is claimed, nothing is left to hand out.
    let mut r = Reporter::new(pending.run);
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    assert_eq!(post_batch(&c.url, &pending.run, &r.seal(f)).status, 200);
    assert_eq!(get(&c.url, &format!("/v1/hosts/{MAC}/ticket")).status, 404);
    let script = get(&c.url, "/ipxe/52-54-00-12-34-56").text();
    assert!(!script.contains("kiln.run="), "{script}");
    assert!(script.contains("exit"), "{script}");
}
