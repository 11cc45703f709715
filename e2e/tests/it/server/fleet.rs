//! The fleet page: each host's state from its newest run and pending tickets, and
//! runs filtered by host, plan, outcome and age.
use kiln_protocol::{Event, Outcome};

use super::*;
use crate::common::{Coordinator, kc};

/// The `<tr>` of host `name` on the page.
fn row<'p>(page: &'p str, name: &str) -> &'p str {
    let at = page
        .find(&format!("<a href=\"/?host={name}\">{name}</a>"))
        .unwrap_or_else(|| panic!("no row for {name}:\n{page}"));
    let end = page[at..].find("</tr>").unwrap() + at;
    &page[at..end]
}

fn runs_listed(page: &str) -> usize {
    let at = page.find("<h2>Runs</h2>").unwrap();
    page[at..].matches("<tr><td><a href=\"/runs/").count()
}

#[test]
fn hosts_show_what_they_do_and_runs_filter() {
    let (_d, state) = keyed_state();
    for (i, name) in ["busy", "broken", "waiting", "quiet", "holding"]
        .iter()
        .enumerate()
    {
        let o = kc(
            &state,
            &[
                "host",
                "add",
                name,
                "--mac",
                &format!("52:54:00:00:20:0{i}"),
            ],
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    let now = now_s();
    let for_host = |host: &str, plan: &str, at: u64| {
        let mut t = ticket(
            new_run_id(),
            plan,
            vec![stage("build", &[]), stage("test", &[])],
            at,
        );
        t.host.name = host.into();
        t.host.macs.clear();
        write_ticket(&state, &t);
        t.run
    };
    let busy = for_host("busy", "burnin", now - 50);
    let broken = for_host("broken", "smoke", now - 400);
    let waiting = for_host("waiting", "burnin", now - 30);
    let holding = for_host("holding", "smoke", now - 600);
    let c = Coordinator::start(&state);
    let mut r = Reporter::new(busy);
    let claim = r.claim();
    let f = r.frames(vec![
        claim,
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    ]);
    ack(&c.url, &busy, &r.seal(f));
    let mut r = Reporter::new(broken);
    let claim = r.claim();
    let mut events = vec![claim];
    events.extend(full_run(Outcome::Failed));
    let f = r.frames(events);
    ack(&c.url, &broken, &r.seal(f));

    let mut r = Reporter::new(holding);
    let claim = r.claim();
    let f = r.frames(vec![
        claim,
        Event::Held {
            outcome: Outcome::Failed,
            until_ms: now_ms() + 3_600_000,
            addrs: vec!["10.0.2.15".into()],
            host_key: Some("SHA256:hostkey".into()),
        },
    ]);
    ack(&c.url, &holding, &r.seal(f));

    let page = get(&c.url, "/").text();
    let held_row = row(&page, "holding");
    assert!(
        held_row.contains(">held</span> ssh root@10.0.2.15"),
        "{held_row}"
    );
    assert!(held_row.contains("SHA256:hostkey"), "{held_row}");
    let busy_row = row(&page, "busy");
    assert!(
        busy_row.contains(">running</span> stage 1/2: build"),
        "{busy_row}"
    );
    assert!(busy_row.contains(&busy.to_string()[..8]), "{busy_row}");
    let broken_row = row(&page, "broken");
    assert!(broken_row.contains(">last failed</span>"), "{broken_row}");
    assert!(broken_row.contains("failed"), "{broken_row}");
    let waiting_row = row(&page, "waiting");
    assert!(waiting_row.contains(">pending</span>"), "{waiting_row}");
    assert!(
        waiting_row.contains("<td>1</td>"),
        "one pending ticket: {waiting_row}"
    );
    assert!(row(&page, "quiet").contains(">idle</span>"), "{page}");
    assert_eq!(runs_listed(&page), 4);
    let _ = waiting;

    // Filters, alone and together; an older-runs link keeps them.
    let page = get(&c.url, "/?host=broken").text();
    assert_eq!(runs_listed(&page), 1, "{page}");
    assert!(page.contains(&format!("/runs/{broken}")));
    assert_eq!(runs_listed(&get(&c.url, "/?outcome=failed").text()), 1);
    assert_eq!(runs_listed(&get(&c.url, "/?outcome=passed").text()), 0);
    assert_eq!(runs_listed(&get(&c.url, "/?plan=burnin").text()), 2);
    assert_eq!(
        runs_listed(&get(&c.url, "/?plan=burnin&host=busy").text()),
        1
    );
    assert_eq!(
        runs_listed(&get(&c.url, "/?since=2m").text()),
        2,
        "the 400 s old run is out"
    );
    assert_eq!(get(&c.url, "/?since=soon").status, 400);
}
