//! Logins: pages and JSON need one (unless `--public-read`), actions need an
//! operator and, from a browser session, the form's CSRF token; passwords are
//! stored hashed; wrong passwords from one address are rate-limited.
use super::*;
use crate::common::{Coordinator, kc};
use std::io::Write;
use std::process::{Command, Stdio};

const PASSWORD: &str = "tr0ub4dor&3-kiln";

fn user_add(state: &Path, name: &str, role: &str, password: &str) {
    let mut c = Command::new(crate::common::bin("kiln-coordinator"))
        .args([
            "--state",
            state.to_str().unwrap(),
            "user",
            "add",
            name,
            "--role",
            role,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

/// Sends a form; returns the answer and its Set-Cookie and Location headers.
fn post_form(
    url: &str,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> (u16, Option<String>, Option<String>) {
    let mut rq = agent()
        .post(url)
        .set("Content-Type", "application/x-www-form-urlencoded")
        .set("Accept", "text/html");
    if let Some(c) = cookie {
        rq = rq.set("Cookie", c);
    }
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let resp = match rq.send_string(&body) {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    (
        resp.status(),
        resp.header("Set-Cookie").map(str::to_string),
        resp.header("Location").map(str::to_string),
    )
}

fn get_with(url: &str, header: Option<(&str, &str)>) -> (u16, String, Option<String>) {
    let mut rq = agent().get(url);
    if let Some((k, v)) = header {
        rq = rq.set(k, v);
    }
    let resp = match rq.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    let loc = resp.header("Location").map(str::to_string);
    (status, resp.into_string().unwrap_or_default(), loc)
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

#[test]
fn pages_and_actions_need_a_login_and_a_csrf_token() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    user_add(&state, "ada", "operator", PASSWORD);
    user_add(&state, "vic", "viewer", PASSWORD);
    let c = Coordinator::start_private(&state, &[]);
    let url = &c.url;

    // Nothing readable without a login; the agent's routes are as before.
    let (s, _, loc) = get_with(&format!("{url}/"), None);
    assert_eq!((s, loc.as_deref()), (303, Some("/login?next=/")));
    assert_eq!(get_with(&format!("{url}/v1/runs"), None).0, 401);
    assert_eq!(get_with(&format!("{url}/v1/runs/{run}"), None).0, 401);
    assert_eq!(get_with(&format!("{url}/runs/{run}"), None).0, 303);
    assert_eq!(
        get_with(&format!("{url}/v1/runs/{run}/ticket"), None).0,
        200
    );
    assert_eq!(get_with(&format!("{url}/boot.ipxe"), None).0, 200);
    assert_eq!(get_with(&format!("{url}/login"), None).0, 200);
    // An action without a login.
    let abort = format!("{url}/v1/runs/{run}/abort");
    assert_eq!(post_form(&abort, None, &[("reason", "x")]).0, 403);

    // A wrong password, then the right one.
    let login = format!("{url}/login");
    let (s, cookie, _) = post_form(&login, None, &[("user", "ada"), ("password", "nope")]);
    assert_eq!((s, cookie), (401, None));
    let (s, cookie, loc) = post_form(
        &login,
        None,
        &[
            ("user", "ada"),
            ("password", PASSWORD),
            ("next", &format!("/runs/{run}")),
        ],
    );
    assert_eq!(s, 303);
    assert_eq!(loc.as_deref(), Some(format!("/runs/{run}").as_str()));
    let cookie = cookie.expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    // A next= naming another site goes home instead.
    let (_, _, loc) = post_form(
        &login,
        None,
        &[
            ("user", "ada"),
            ("password", PASSWORD),
            ("next", "//evil.example/"),
        ],
    );
    assert_eq!(loc.as_deref(), Some("/"));

    let (s, page, _) = get_with(&format!("{url}/runs/{run}"), Some(("Cookie", &session)));
    assert_eq!(s, 200);
    assert!(page.contains("ada"), "{page}");
    let csrf = csrf_of(&page);
    assert_eq!(
        get_with(&format!("{url}/v1/runs"), Some(("Cookie", &session))).0,
        200
    );
    // The form without its CSRF token, or with another, is refused; with it, done.
    assert_eq!(post_form(&abort, Some(&session), &[("reason", "x")]).0, 403);
    assert_eq!(
        post_form(&abort, Some(&session), &[("reason", "x"), ("csrf", "0123")]).0,
        403
    );
    assert!(
        kc(&state, &["run", "show", &run.to_string(), "--json"])
            .stdout
            .contains("\"abort_requested\": null")
    );
    let (s, _, loc) = post_form(
        &abort,
        Some(&session),
        &[("reason", "wrong plan"), ("csrf", &csrf)],
    );
    assert_eq!((s, loc), (303, Some(format!("/runs/{run}"))));
    let show = kc(&state, &["run", "show", &run.to_string(), "--json"]).stdout;
    assert!(show.contains("wrong plan (by ada)"), "{show}");

    // Tokens: a viewer reads but may not act; an operator's token acts (no CSRF).
    let viewer = kc(&state, &["token", "create", "dash", "--role", "viewer"]).stdout;
    let operator = kc(&state, &["token", "create", "bot", "--role", "operator"]).stdout;
    let bearer = |t: &str| format!("Bearer {}", t.trim());
    assert_eq!(
        get_with(
            &format!("{url}/v1/runs"),
            Some(("Authorization", &bearer(&viewer)))
        )
        .0,
        200
    );
    assert_eq!(
        get_with(
            &format!("{url}/v1/runs"),
            Some(("Authorization", "Bearer kiln_0000000000000000_x"))
        )
        .0,
        401
    );
    let other = issue(&state);
    let abort2 = format!("{url}/v1/runs/{other}/abort");
    let a = call(
        agent().post(&abort2).set("Authorization", &bearer(&viewer)),
        Some(b"reason=by+viewer"),
    );
    assert_eq!(a.status, 403, "{}", a.text());
    let a = call(
        agent()
            .post(&abort2)
            .set("Authorization", &bearer(&operator))
            .set("Content-Type", "application/x-www-form-urlencoded"),
        Some(b"reason=by+bot"),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    // A viewer session sees no abort form and may not use one.
    let (_, vcookie, _) = post_form(&login, None, &[("user", "vic"), ("password", PASSWORD)]);
    let vsession = vcookie.unwrap().split(';').next().unwrap().to_string();
    let (_, vpage, _) = get_with(&format!("{url}/runs/{other}"), Some(("Cookie", &vsession)));
    assert!(!vpage.contains("id=\"abort\""), "{vpage}");
    let vcsrf = csrf_of(&vpage);
    assert_eq!(
        post_form(
            &abort2,
            Some(&vsession),
            &[("reason", "v"), ("csrf", &vcsrf)]
        )
        .0,
        403
    );

    // No clear password anywhere in the state folder.
    let mut stack = vec![state.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes
                        .windows(PASSWORD.len())
                        .any(|w| w == PASSWORD.as_bytes()),
                    "{} holds the password",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn wrong_passwords_from_one_address_are_rate_limited() {
    let (_d, state) = keyed_state();
    user_add(&state, "ada", "operator", PASSWORD);
    let c = Coordinator::start_private(&state, &[]);
    let login = format!("{}/login", c.url);
    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(
            post_form(
                &login,
                None,
                &[("user", "ada"), ("password", &format!("guess {i}"))],
            )
            .0,
        );
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|&s| s == 429), "{statuses:?}");
    // Even the right password waits out the window from that address.
    assert_eq!(
        post_form(&login, None, &[("user", "ada"), ("password", PASSWORD)]).0,
        429
    );
}

#[test]
fn an_operator_issues_a_stored_plan_for_a_host_from_the_fleet_page() {
    let (_d, state) = keyed_state();
    user_add(&state, "ada", "operator", PASSWORD);
    let o = kc(
        &state,
        &["host", "add", "rack1-07", "--mac", "52:54:00:00:30:07"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    std::fs::create_dir_all(state.join("plans")).unwrap();
    std::fs::write(
        state.join("plans/burnin.toml"),
        "[[stage]]\nname = \"inv\"\nkind = \"inventory\"\n",
    )
    .unwrap();
    let c = Coordinator::start_private(&state, &[]);
    let (_, cookie, _) = post_form(
        &format!("{}/login", c.url),
        None,
        &[("user", "ada"), ("password", PASSWORD)],
    );
    let session = cookie.unwrap().split(';').next().unwrap().to_string();
    let (_, page, _) = get_with(&format!("{}/", c.url), Some(("Cookie", &session)));
    assert!(
        page.contains("action=\"/v1/hosts/rack1-07/tickets\""),
        "{page}"
    );
    assert!(page.contains("<option>burnin</option>"), "{page}");
    let csrf = csrf_of(&page);
    let issue = format!("{}/v1/hosts/rack1-07/tickets", c.url);
    assert_eq!(
        post_form(&issue, Some(&session), &[("plan", "burnin")]).0,
        403,
        "no csrf"
    );
    assert_eq!(
        post_form(&issue, Some(&session), &[("plan", "nope"), ("csrf", &csrf)]).0,
        404
    );
    let (s, _, loc) = post_form(
        &issue,
        Some(&session),
        &[("plan", "burnin"), ("csrf", &csrf)],
    );
    assert_eq!(s, 303);
    let run = loc.unwrap().trim_start_matches("/runs/").to_string();
    // The host boots it: the ticket reports to this coordinator.
    let a = get(&c.url, "/v1/hosts/52:54:00:00:30:07/ticket");
    assert_eq!(a.header("Kiln-Run"), Some(run.as_str()));
    let show = kc(
        &state,
        &[
            "ticket",
            "show",
            &format!("{}/runs/{run}/ticket.kiln", state.display()),
        ],
    );
    assert!(show.stdout.contains(&c.url), "{}", show.stdout);
}

#[test]
fn an_operator_powers_a_host_from_the_page_or_with_a_token() {
    let (_d, state) = keyed_state();
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let port = rx.local_addr().unwrap().port();
    let o = kc(
        &state,
        &[
            "host",
            "add",
            "w1",
            "--mac",
            "52:54:00:ab:cd:ef",
            "--power",
            &format!("wol://127.0.0.1:{port}"),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    user_add(&state, "ada", "operator", PASSWORD);
    let c = Coordinator::start_private(&state, &[]);
    let (_, cookie, _) = post_form(
        &format!("{}/login", c.url),
        None,
        &[("user", "ada"), ("password", PASSWORD)],
    );
    let session = cookie.unwrap().split(';').next().unwrap().to_string();
    let (_, page, _) = get_with(&format!("{}/", c.url), Some(("Cookie", &session)));
    assert!(page.contains("action=\"/v1/hosts/w1/power\""), "{page}");
    let csrf = csrf_of(&page);
    let power = format!("{}/v1/hosts/w1/power", c.url);
    assert_eq!(
        post_form(&power, None, &[("action", "on")]).0,
        403,
        "no login"
    );
    assert_eq!(
        post_form(&power, Some(&session), &[("action", "on")]).0,
        403,
        "no csrf"
    );
    let (s, _, loc) = post_form(&power, Some(&session), &[("action", "on"), ("csrf", &csrf)]);
    assert_eq!((s, loc.as_deref()), (303, Some("/")));
    // The magic packet reached the wire: 6 x 0xff, then the MAC 16 times.
    let mut buf = [0u8; 256];
    let (n, _) = rx.recv_from(&mut buf).expect("no magic packet");
    assert_eq!(n, 102);
    assert_eq!(&buf[..6], &[0xff; 6]);
    assert_eq!(&buf[6..12], &[0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    // A script with an operator token; Wake-on-LAN cannot power off: 502, said so.
    let token = kc(&state, &["token", "create", "bot", "--role", "operator"]).stdout;
    let a = call(
        agent()
            .post(&power)
            .set("Authorization", &format!("Bearer {}", token.trim()))
            .set("Content-Type", "application/x-www-form-urlencoded"),
        Some(b"action=off"),
    );
    assert_eq!(a.status, 502, "{}", a.text());
    assert!(a.text().contains("w1 off"), "{}", a.text());
    let a = call(
        agent()
            .post(&format!("{}/v1/hosts/nobody/power", c.url))
            .set("Authorization", &format!("Bearer {}", token.trim()))
            .set("Content-Type", "application/x-www-form-urlencoded"),
        Some(b"action=on"),
    );
    assert_eq!(a.status, 404, "{}", a.text());
}

#[test]
fn an_operator_orders_a_held_run_from_its_page() {
    let (_d, state) = keyed_state();
    let run = issue(&state);
    let other = issue(&state);
    user_add(&state, "ada", "operator", PASSWORD);
    let c = Coordinator::start_private(&state, &[]);
    // The run failed and its machine is held.
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![
        claim,
        kiln_protocol::Event::Held {
            outcome: kiln_protocol::Outcome::Failed,
            until_ms: now_ms() + 3_600_000,
            addrs: vec!["10.0.2.15".into()],
            host_key: Some("SHA256:abc".into()),
        },
    ]);
    ack(&c.url, &run, &r.seal(f));
    let (_, cookie, _) = post_form(
        &format!("{}/login", c.url),
        None,
        &[("user", "ada"), ("password", PASSWORD)],
    );
    let session = cookie.unwrap().split(';').next().unwrap().to_string();
    let (_, page, _) = get_with(&format!("{}/runs/{run}", c.url), Some(("Cookie", &session)));
    assert!(page.contains("id=\"release\""), "{page}");
    assert!(page.contains("id=\"retry\""), "{page}");
    let csrf = csrf_of(&page);
    let retry = format!("{}/v1/runs/{run}/retry", c.url);
    assert_eq!(
        post_form(&retry, Some(&session), &[("stage", "build")]).0,
        403,
        "no csrf"
    );
    let (s, _, loc) = post_form(
        &retry,
        Some(&session),
        &[("stage", "build"), ("csrf", &csrf)],
    );
    assert_eq!((s, loc), (303, Some(format!("/runs/{run}"))));
    // The agent gets the order with its next heartbeat; the run records who asked.
    let f = r.frames(vec![]);
    let a = ack(&c.url, &run, &r.seal(f));
    assert_eq!(a.command, kiln_protocol::Command::RetryStage { stage: 0 });
    let show = kc(&state, &["run", "show", &run.to_string(), "--json"]).stdout;
    assert!(show.contains("operator ada (web)"), "{show}");
    // A run that is not held takes no orders.
    let (s, _, _) = post_form(
        &format!("{}/v1/runs/{other}/release", c.url),
        Some(&session),
        &[("csrf", &csrf)],
    );
    assert_eq!(s, 409);
}
