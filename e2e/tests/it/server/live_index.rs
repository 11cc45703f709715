//! The server's index follows the state folder: what the command line does to a
//! folder a server is serving (issue a ticket, add a host, abort a run) reaches the
//! boot scripts without a restart; listings come in pages.
use super::*;
use crate::common::{Coordinator, fresh_state, kc, write};
use std::time::{Duration, Instant};

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Polls `/ipxe/{mac}` until `want` holds; returns how long it took. Fails after 1 s.
fn within_a_second(url: &str, mac: &str, what: &str, want: impl Fn(&str) -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        let script = get(url, &format!("/ipxe/{mac}")).text();
        if want(&script) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{what}: not within a second; the script is still:\n{script}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn tickets_hosts_and_aborts_from_the_command_line_reach_a_running_server() {
    let (d, state) = fresh_state();
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
    let plan = write(
        d.path(),
        "plan.toml",
        "[[stage]]\nname = \"inv\"\nkind = \"inventory\"\n",
    );
    let c = Coordinator::start(&state);
    let dash = "52-54-00-12-34-56";
    assert!(
        get(&c.url, &format!("/ipxe/{dash}"))
            .text()
            .contains("unknown MAC")
    );

    // A host added while serving is known at once.
    let o = kc(
        &state,
        &["host", "add", "node1", "--mac", MAC, "--image", "burnin"],
    );
    assert_eq!(o.code, 0, "host add: {}", o.stderr);
    let t = within_a_second(&c.url, dash, "host add", |s| {
        s.contains("nothing pending for host node1")
    });
    eprintln!("host add → known to /ipxe: {t:?}");

    // A ticket issued while serving is booted.
    let issue = |host: &str| {
        let o = kc(
            &state,
            &["ticket", "issue", "--plan", p(&plan), "--host", host],
        );
        assert_eq!(o.code, 0, "ticket issue: {}", o.stderr);
        o.stdout
            .split_whitespace()
            .find_map(|w| w.parse::<RunId>().ok())
            .unwrap_or_else(|| panic!("no run id in {:?}", o.stdout))
    };
    let first = issue("node1");
    let t = within_a_second(&c.url, dash, "ticket issue", |s| {
        s.contains(&format!("kiln.run={first}"))
    });
    eprintln!("ticket issue → served by /ipxe: {t:?}");
    let a = get(&c.url, &format!("/v1/hosts/{MAC}/ticket"));
    assert_eq!(a.header("Kiln-Run"), Some(first.to_string().as_str()));

    // A second ticket waits behind the first; aborting the first serves the second
    // on the very next request.
    let second = issue("node1");
    let o = kc(
        &state,
        &["run", "abort", &first.to_string(), "--reason", "wrong plan"],
    );
    assert_eq!(o.code, 0, "run abort: {}", o.stderr);
    let script = get(&c.url, &format!("/ipxe/{dash}")).text();
    assert!(script.contains(&format!("kiln.run={second}")), "{script}");
    assert!(!script.contains(&first.to_string()), "{script}");
    let a = get(&c.url, &format!("/v1/hosts/{MAC}/ticket"));
    assert_eq!(a.header("Kiln-Run"), Some(second.to_string().as_str()));
    let o = kc(
        &state,
        &["run", "abort", &second.to_string(), "--reason", "done"],
    );
    assert_eq!(o.code, 0, "run abort: {}", o.stderr);
    assert!(
        get(&c.url, &format!("/ipxe/{dash}"))
            .text()
            .contains("nothing pending for host node1")
    );
    assert_eq!(get(&c.url, &format!("/v1/hosts/{MAC}/ticket")).status, 404);
}

#[test]
fn listings_come_in_pages_newest_first() {
    let (_d, state) = keyed_state();
    let now = now_s();
    let mut runs: Vec<RunId> = (0..7u64)
        .map(|i| {
            let t = ticket(new_run_id(), "p", vec![stage("a", &[])], now - 100 + i);
            write_ticket(&state, &t);
            t.run
        })
        .collect();
    let c = Coordinator::start(&state);
    // One more after the start: listed too.
    let t = ticket(new_run_id(), "p", vec![stage("a", &[])], now);
    write_ticket(&state, &t);
    runs.push(t.run);
    runs.reverse();

    let mut seen = Vec::new();
    let mut path = "/v1/runs?limit=3".to_string();
    loop {
        let a = get(&c.url, &path);
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("Kiln-Total-Runs"), Some("8"));
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let page: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run"].as_str().unwrap().to_string())
            .collect();
        assert!(page.len() <= 3);
        seen.extend(page);
        match a.header("Link") {
            Some(l) => {
                path = l
                    .strip_prefix('<')
                    .and_then(|l| l.split_once('>'))
                    .map(|(u, _)| u.to_string())
                    .unwrap_or_else(|| panic!("Link {l}"));
            }
            None => break,
        }
    }
    let want: Vec<String> = runs.iter().map(ToString::to_string).collect();
    assert_eq!(seen, want, "every run once, newest first");
    // Without a limit: the newest 100 (all 8 here).
    let v: serde_json::Value = serde_json::from_slice(&get(&c.url, "/v1/runs").body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 8);
    for bad in [
        "/v1/runs?limit=0",
        "/v1/runs?limit=1001",
        "/v1/runs?limit=x",
        "/v1/runs?cursor=zz",
        &format!("/v1/runs?cursor={}", new_run_id()),
        "/?before=nope",
        "/?hosts_from=-1",
    ] {
        assert_eq!(get(&c.url, bad).status, 400, "{bad}");
    }
    // The command line: the newest 3, printed oldest first, and where to go on.
    let o = kc(&state, &["runs", "--limit", "3", "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let listed: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap())
        .collect();
    let newest: Vec<&str> = want[..3].iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest);
    assert!(
        o.stderr.contains(&format!("--before {}", want[2])),
        "{}",
        o.stderr
    );
    let o = kc(&state, &["runs", "--limit", "3", "--before", &want[2]]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    for (i, r) in want.iter().enumerate() {
        assert_eq!(
            o.stdout.contains(r.as_str()),
            (3..6).contains(&i),
            "{i}: {}",
            o.stdout
        );
    }
    assert_ne!(kc(&state, &["runs", "--limit", "0"]).code, 0);
    // The page: at most 100 rows of each table, with the way on.
    let page = get(&c.url, "/").text();
    assert!(page.contains("8 of 8 runs"), "{page}");
}

/// What a server answers about the lab: every run's summary (newest first) and
/// each MAC's pending ticket.
fn answers(url: &str, macs: &[String]) -> (serde_json::Value, Vec<Option<String>>) {
    let a = get(url, "/v1/runs?limit=1000");
    assert_eq!(a.status, 200, "{}", a.text());
    let runs: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let pending = macs
        .iter()
        .map(|m| {
            let a = get(url, &format!("/v1/hosts/{m}/ticket"));
            match a.status {
                200 => a.header("Kiln-Run").map(str::to_string),
                404 => None,
                s => panic!("/v1/hosts/{m}/ticket: {s} {}", a.text()),
            }
        })
        .collect();
    (runs, pending)
}

#[test]
fn a_running_servers_answers_equal_a_fresh_read_of_the_folder_after_mixed_writes() {
    let (d, state) = fresh_state();
    let macs: Vec<String> = (0..4).map(|i| format!("52:54:00:00:10:0{i}")).collect();
    let host_add = |i: usize| {
        let o = kc(
            &state,
            &["host", "add", &format!("n{i}"), "--mac", &macs[i]],
        );
        assert_eq!(o.code, 0, "host add: {}", o.stderr);
    };
    host_add(0);
    host_add(1);
    let plan = write(
        d.path(),
        "plan.toml",
        "[[stage]]\nname = \"inv\"\nkind = \"inventory\"\n",
    );
    let c = Coordinator::start(&state);
    let mut runs: Vec<RunId> = Vec::new();
    let mut claimed: Vec<Reporter> = Vec::new();
    // A fixed, varied sequence: issue, claim over HTTP, finish over HTTP, abort,
    // a host added while serving.
    let script = "iiIcicaiFhicIfaicfiIca";
    for (step, op) in script.chars().enumerate() {
        match op {
            'i' | 'I' => {
                let host = if op == 'i' { "n0" } else { "n1" };
                let o = kc(
                    &state,
                    &["ticket", "issue", "--plan", p(&plan), "--host", host],
                );
                assert_eq!(o.code, 0, "ticket issue: {}", o.stderr);
                runs.push(o.stdout.trim().parse().expect("run id"));
            }
            'c' => {
                let m = &macs[step % 2];
                let a = get(&c.url, &format!("/v1/hosts/{m}/ticket"));
                if let Some(run) = a.header("Kiln-Run") {
                    let mut r = Reporter::new(run.parse().unwrap());
                    let claim = r.claim();
                    let f = r.frames(vec![claim]);
                    assert_eq!(post_batch(&c.url, &r.run.clone(), &r.seal(f)).status, 200);
                    claimed.push(r);
                }
            }
            'f' | 'F' => {
                if let Some(mut r) = claimed.pop() {
                    let outcome = if op == 'f' {
                        Outcome::Passed
                    } else {
                        Outcome::Failed
                    };
                    let f = r.frames(vec![Event::RunFinished { outcome }]);
                    let run = r.run;
                    assert_eq!(post_batch(&c.url, &run, &r.seal(f)).status, 200);
                }
            }
            'a' => {
                let run = runs[step % runs.len()].to_string();
                // Refused for a finished run: fine, that is a write that did not happen.
                let _ = kc(&state, &["run", "abort", &run, "--reason", "mix"]);
            }
            'h' => host_add(2),
            other => unreachable!("{other}"),
        }
    }
    let live = answers(&c.url, &macs);
    let fresh = Coordinator::start(&state);
    let from_disk = answers(&fresh.url, &macs);
    assert_eq!(
        live, from_disk,
        "a following index and one built from the folder"
    );
    assert!(live.1.iter().any(Option::is_some), "{:?}", live.1);
    let states: Vec<&str> = live
        .0
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    for want in ["pending", "claimed", "finished", "aborted"] {
        assert!(states.contains(&want), "{want} in {states:?}");
    }
    // And the command line, reading the folder itself.
    let o = kc(&state, &["runs", "--json"]);
    let mut cli: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    cli.as_array_mut().unwrap().reverse();
    assert_eq!(cli, live.0);
}
