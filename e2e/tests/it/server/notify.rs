//! Notifications to real receivers: a webhook receiver that checks the HMAC-SHA256
//! signature, an ntfy-shaped receiver, an SMTP server (Python's aiosmtpd, writing a
//! Maildir). Finished runs and a contested claim reach each receiver that wants them;
//! with the receivers down for 30 s and the coordinator SIGKILLed and restarted in
//! between, every one still arrives, none is lost, and keys deduplicate the rest.
use hmac::{Hmac, Mac};
use kiln_protocol::Outcome;
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::common::{Coordinator, kc, skip, wait_until};

const SECRET: &[u8] = b"hook-key-0123456789";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// An HTTP receiver on `port` (0: any) that answers 200 to every POST and keeps it.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    fn start(port: u16) -> Receiver {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        let port = l.local_addr().expect("addr").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                if let Some(g) = one_request(s) {
                    keep.lock().unwrap().push(g);
                }
            }
        });
        Receiver { port, got }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

fn one_request(mut s: std::net::TcpStream) -> Option<Got> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut headers = BTreeMap::new();
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    assert!(first.starts_with("POST "), "{first}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':')?;
        headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    assert!(len < 1 << 20);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    Some(Got { headers, body })
}

/// A port nothing listens on right now (bound, then let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An aiosmtpd server writing each mail into a Maildir.
struct Smtp {
    child: Child,
    maildir: PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A python3 that has aiosmtpd (pyenv's or Debian's), or None.
fn python() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl Smtp {
    /// No server: an empty Maildir (for tests without mail).
    fn none() -> Smtp {
        Smtp {
            child: Command::new("true").spawn().expect("true"),
            maildir: PathBuf::from("/nonexistent"),
        }
    }

    fn start(py: &str, port: u16, maildir: &Path) -> Smtp {
        let child = Command::new(py)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting aiosmtpd");
        // Listening: a connection gets the greeting.
        wait_until(Duration::from_secs(30), "aiosmtpd to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|s| {
                let mut l = String::new();
                BufReader::new(s).read_line(&mut l).is_ok() && l.starts_with("220")
            })
        });
        Smtp {
            child,
            maildir: maildir.to_path_buf(),
        }
    }

    /// Each mail's Message-ID key and its text.
    fn mails(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) else {
                continue;
            };
            for e in rd.map_while(Result::ok) {
                let text = std::fs::read_to_string(e.path()).expect("mail");
                let id = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Message-ID: <"))
                    .and_then(|l| l.strip_suffix("@kiln>"))
                    .expect("Message-ID")
                    .to_string();
                out.push((id, text));
            }
        }
        out
    }
}

fn add(state: &Path, args: &[&str]) {
    let o = kc(state, &[&["notify", "add"], args].concat());
    assert_eq!(o.code, 0, "notify add {args:?}: {}", o.stderr);
}

/// The receivers of these tests: `hook` (webhook, signed, any event), `push`
/// (ntfy, failed and contested), `mail` (smtp, failed).
fn configure(state: &Path, hook: u16, push: u16, mail: u16) {
    let secret = state.with_file_name("hook.key");
    std::fs::write(&secret, SECRET).expect("write secret");
    let o = kc(
        state,
        &["secret", "set", "hook", "--file", secret.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    add(
        state,
        &[
            "hook",
            "--webhook",
            &format!("http://127.0.0.1:{hook}/kiln/T0KEN"),
            "--secret",
            "hook",
            "--on",
            "any",
        ],
    );
    add(
        state,
        &[
            "push",
            "--ntfy",
            &format!("http://127.0.0.1:{push}/lab-alerts"),
            "--on",
            "failed,contested",
        ],
    );
    add(
        state,
        &[
            "mail",
            "--smtp",
            &format!("smtp://127.0.0.1:{mail}"),
            "--from",
            "kiln@lab.example",
            "--to",
            "ops@lab.example",
            "--on",
            "failed",
        ],
    );
    let o = kc(state, &["notify", "list"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        !o.stdout.contains("T0KEN"),
        "a URL's path is not listed: {}",
        o.stdout
    );
    assert_eq!(o.stdout.lines().count(), 3, "{}", o.stdout);
}

/// Claims and finishes `run` with `outcome` in two batches; returns the reporter
/// and the sealed last batch (to resend).
fn finish(url: &str, run: RunId, outcome: Outcome) -> (Reporter, Vec<u8>) {
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    ack(url, &run, &r.seal(f));
    let f = r.frames(full_run(outcome));
    let last = r.seal(f);
    ack(url, &run, &last);
    (r, last)
}

/// A second claimant for `run`: refused, recorded as contested.
fn contest(url: &str, run: RunId) {
    let mut other = Reporter::new(run);
    let claim = other.claim();
    let f = other.frames(vec![claim]);
    let a = post_batch(url, &run, &other.seal(f));
    assert_eq!(a.status, 409, "{}", a.text());
}

fn status(state: &Path) -> serde_json::Value {
    let o = kc(state, &["notify", "status", "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    serde_json::from_str(&o.stdout).expect("status json")
}

fn hmac_hex(body: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(SECRET).expect("key");
    m.update(body);
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the receivers got, deduplicated by key: (receiver, run, event) per key.
/// Checks each webhook's signature and that one key always carries one event.
fn arrived(
    hook: &Receiver,
    push: &Receiver,
    smtp: &Smtp,
) -> BTreeMap<String, (String, String, String)> {
    let mut out: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    let mut put = |key: String, v: (String, String, String)| {
        if let Some(old) = out.insert(key.clone(), v.clone()) {
            assert_eq!(old, v, "key {key} carried two different notifications");
        }
    };
    for g in hook.got() {
        let sig = g.header("Kiln-Signature").expect("signed");
        assert_eq!(
            sig,
            format!("sha256={}", hmac_hex(&g.body)),
            "bad signature"
        );
        let n: serde_json::Value = serde_json::from_slice(&g.body).expect("json body");
        let key = n["key"].as_str().expect("key").to_string();
        assert_eq!(g.header("Kiln-Delivery"), Some(key.as_str()));
        assert_eq!(g.header("Content-Type"), Some("application/json"));
        assert_eq!(g.header("Kiln-Event"), n["event"].as_str());
        assert_eq!(n["host"], "node1");
        assert_eq!(n["plan"], "nightly");
        put(
            key,
            (
                "hook".into(),
                n["run"].as_str().unwrap().into(),
                n["event"].as_str().unwrap().into(),
            ),
        );
    }
    for g in push.got() {
        let key = g.header("Kiln-Delivery").expect("key").to_string();
        let title = g.header("Title").expect("Title");
        let tags = g.header("Tags").expect("Tags");
        let text = String::from_utf8(g.body.clone()).expect("text body");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .expect("field")
                .to_string()
        };
        let event = field("event");
        assert!(
            title.starts_with(&format!("kiln: {event} on node1")),
            "{title}"
        );
        assert_eq!(tags, if event == "failed" { "x" } else { "warning" });
        assert_eq!(field("key"), key);
        put(key, ("push".into(), field("run"), event));
    }
    for (key, text) in smtp.mails() {
        assert!(text.contains("To: <ops@lab.example>"), "{text}");
        assert!(text.contains("Subject: kiln: failed on node1"), "{text}");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .expect("field")
                .to_string()
        };
        assert_eq!(field("key"), key);
        put(key, ("mail".into(), field("run"), field("event")));
    }
    out
}

fn expected(
    passed: &[RunId],
    failed: &[RunId],
    contested: &[RunId],
) -> BTreeSet<(String, String, String)> {
    let mut want = BTreeSet::new();
    let t = |r: &str, run: &RunId, e: &str| (r.to_string(), run.to_string(), e.to_string());
    for run in passed {
        want.insert(t("hook", run, "passed"));
    }
    for run in failed {
        for r in ["hook", "push", "mail"] {
            want.insert(t(r, run, "failed"));
        }
    }
    for run in contested {
        for r in ["hook", "push"] {
            want.insert(t(r, run, "contested"));
        }
    }
    want
}

/// Waits (bounded) until the receivers hold `want`; returns what arrived.
fn wait_for_all(
    hook: &Receiver,
    push: &Receiver,
    smtp: &Smtp,
    want: &BTreeSet<(String, String, String)>,
) -> BTreeMap<String, (String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let got = arrived(hook, push, smtp);
        let have: BTreeSet<_> = got.values().cloned().collect();
        if want.is_subset(&have) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check(
    got: &BTreeMap<String, (String, String, String)>,
    want: &BTreeSet<(String, String, String)>,
) {
    let have: BTreeSet<_> = got.values().cloned().collect();
    assert_eq!(
        &have, want,
        "what arrived (after dedup by key) vs what should"
    );
    assert_eq!(got.len(), want.len(), "one key per notification: {got:?}");
}

#[test]
fn finished_runs_and_a_contested_claim_reach_real_receivers() {
    let Some(py) = python() else {
        skip("python3 with aiosmtpd is not installed (python3-aiosmtpd)");
        return;
    };
    let (dir, state) = keyed_state();
    let (hook, push) = (Receiver::start(0), Receiver::start(0));
    let mail_port = free_port();
    let smtp = Smtp::start(py, mail_port, &dir.path().join("maildir"));
    configure(&state, hook.port, push.port, mail_port);
    let c = Coordinator::start(&state);
    let (pass, fail, aborted) = (issue(&state), issue(&state), issue(&state));
    finish(&c.url, pass, Outcome::Passed);
    finish(&c.url, fail, Outcome::Failed);
    finish(&c.url, aborted, Outcome::Aborted);
    contest(&c.url, fail);
    let want = expected(&[pass], &[fail], &[fail]);
    let got = wait_for_all(&hook, &push, &smtp, &want);
    check(&got, &want);
    wait_until(Duration::from_secs(30), "an empty outbox", || {
        status(&state)["queued"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    // Each went once: nothing failed, nothing was resent.
    assert_eq!(
        hook.got().len() + push.got().len() + smtp.mails().len(),
        want.len()
    );
    // The run stays contested: a claimant's further attempts queue nothing more.
    contest(&c.url, fail);
    let s = status(&state);
    assert!(s["queued"].as_array().is_some_and(Vec::is_empty), "{s}");
}

#[test]
fn receivers_down_30s_and_a_sigkill_lose_no_notification() {
    let Some(py) = python() else {
        skip("python3 with aiosmtpd is not installed (python3-aiosmtpd)");
        return;
    };
    let down_since = Instant::now();
    let (dir, state) = keyed_state();
    let (hook_port, push_port, mail_port) = (free_port(), free_port(), free_port());
    configure(&state, hook_port, push_port, mail_port);
    let mut c = Coordinator::start(&state);
    let (pass, fail) = (issue(&state), issue(&state));
    finish(&c.url, pass, Outcome::Passed);
    let (_, last) = finish(&c.url, fail, Outcome::Failed);
    contest(&c.url, pass);
    // Every receiver has been tried and failed at least once.
    wait_until(
        Duration::from_secs(60),
        "failed attempts to every receiver",
        || {
            let s = status(&state);
            let failing: BTreeSet<String> = s["queued"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|q| q["attempts"].as_u64() > Some(0))
                .map(|q| q["receiver"].as_str().unwrap().to_string())
                .collect();
            failing.len() == 3
        },
    );
    let s = status(&state);
    assert_eq!(
        s["pending"].as_u64().unwrap() + s["failing"].as_u64().unwrap(),
        6,
        "{s}"
    );
    c.kill();
    // A crash between storing the last batch and queueing its notification: the
    // agent, with no ack, resends that batch, which queues it again.
    let fail_hook = s["queued"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["run"] == fail.to_string() && q["receiver"] == "hook")
        .expect("queued")["key"]
        .as_str()
        .unwrap()
        .to_string();
    let file = state.join(format!("notify/outbox/{fail_hook}.json"));
    std::fs::remove_file(&file).expect("remove an outbox file");
    let mut c = Coordinator::start(&state);
    ack(&c.url, &fail, &last);
    assert!(
        file.exists(),
        "the resent RunFinished queued its notification again"
    );
    // A run that finishes after the restart, while the receivers are still down.
    let late = issue(&state);
    finish(&c.url, late, Outcome::Failed);
    c.kill();
    let mut c = Coordinator::start(&state);
    // The receivers come back after 30 s down.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down_since.elapsed()));
    let hook = Receiver::start(hook_port);
    let push = Receiver::start(push_port);
    let smtp = Smtp::start(py, mail_port, &dir.path().join("maildir"));
    let want = expected(&[pass], &[fail, late], &[pass]);
    let got = wait_for_all(&hook, &push, &smtp, &want);
    check(&got, &want);
    wait_until(Duration::from_secs(60), "an empty outbox", || {
        status(&state)["queued"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    c.kill();
}

#[test]
fn a_claimed_run_gone_quiet_is_notified_stale_once() {
    let (_dir, state) = keyed_state();
    let hook = Receiver::start(0);
    let secret = state.with_file_name("hook.key");
    std::fs::write(&secret, SECRET).expect("write secret");
    let o = kc(
        &state,
        &["secret", "set", "hook", "--file", secret.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let url = format!("http://127.0.0.1:{}/stale", hook.port);
    add(
        &state,
        &[
            "hook",
            "--webhook",
            &url,
            "--secret",
            "hook",
            "--on",
            "stale",
        ],
    );
    let c = Coordinator::start(&state);
    let (quiet, busy) = (issue(&state), issue(&state));
    for run in [quiet, busy] {
        let mut r = Reporter::new(run);
        let claim = r.claim();
        let f = r.frames(vec![claim]);
        ack(&c.url, &run, &r.seal(f));
    }
    // The quiet run's last report was two minutes ago (the stale threshold is one).
    let seen = state.join(format!("runs/{quiet}/seen"));
    std::fs::write(&seen, (now_ms() - 120_000).to_string()).expect("write seen");
    wait_until(Duration::from_secs(60), "a stale notification", || {
        !hook.got().is_empty()
    });
    let got = arrived(&hook, &Receiver::start(0), &Smtp::none());
    let want: BTreeSet<_> = [("hook".to_string(), quiet.to_string(), "stale".to_string())]
        .into_iter()
        .collect();
    check(&got, &want);
    // Notified once: its marker says so.
    assert!(state.join(format!("notify/live/{quiet}.notified")).exists());
    assert!(state.join(format!("notify/live/{busy}")).exists());
    drop(c);
}

#[test]
fn notify_add_refuses_what_it_cannot_send_to() {
    let (_dir, state) = keyed_state();
    for (args, why) in [
        (
            vec![
                "a",
                "--webhook",
                "http://hooks.example/x",
                "--ca",
                "/etc/hostname",
            ],
            "--ca is for an https:// receiver",
        ),
        (
            vec![
                "a",
                "--webhook",
                "https://hooks.example/x",
                "--ca",
                "/etc/hostname",
            ],
            "--ca /etc/hostname",
        ),
        (vec!["a", "--ntfy", "ftp://x/y"], "http://"),
        (vec!["a"], "exactly one of"),
        (
            vec!["a", "--webhook", "http://h/", "--ntfy", "http://h/"],
            "exactly one of",
        ),
        (
            vec!["a", "--smtp", "smtp://m:25", "--to", "ops@lab"],
            "--from",
        ),
        (
            vec![
                "a",
                "--smtp",
                "smtp://m",
                "--from",
                "k@lab",
                "--to",
                "x\r\nDATA",
            ],
            "bad mail address",
        ),
        (
            vec!["a", "--webhook", "http://h/", "--on", "failed,boom"],
            "unknown event",
        ),
        (
            vec!["../a", "--webhook", "http://h/"],
            "invalid receiver name",
        ),
    ] {
        let o = kc(&state, &[&["notify", "add"], args.as_slice()].concat());
        assert_eq!(o.code, 2, "{args:?}: {}", o.stdout);
        assert!(o.stderr.contains(why), "{args:?}: {}", o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    }
    add(&state, &["a", "--webhook", "http://h/"]);
    let o = kc(&state, &["notify", "add", "a", "--ntfy", "http://h/t"]);
    assert!(o.stderr.contains("exists"), "{}", o.stderr);
    let o = kc(&state, &["notify", "list"]);
    assert!(
        o.stdout
            .contains("on failed,held,never_booted,stale,contested"),
        "{}",
        o.stdout
    );
    let o = kc(&state, &["notify", "rm", "a"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = kc(&state, &["notify", "rm", "a"]);
    assert_ne!(o.code, 0);
    let o = kc(&state, &["notify", "status"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("0 pending, 0 failing"), "{}", o.stdout);
}

#[test]
fn a_last_batch_whose_notification_cannot_be_queued_is_refused_until_it_can() {
    let (_dir, state) = keyed_state();
    add(
        &state,
        &["ops", "--webhook", "http://127.0.0.1:9/", "--on", "failed"],
    );
    let c = Coordinator::start(&state);
    let run = issue(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    ack(&c.url, &run, &r.seal(f));
    // The outbox cannot be written: a file stands where its folder goes.
    let outbox = state.join("notify/outbox");
    let _ = std::fs::remove_dir(&outbox);
    std::fs::write(&outbox, "in the way").expect("block the outbox");
    let f = r.frames(full_run(Outcome::Failed));
    let last = r.seal(f);
    let a = post_batch(&c.url, &run, &last);
    assert_eq!(a.status, 500, "{}", a.text());
    // The agent sends it again once the outbox is back: acked, and queued.
    std::fs::remove_file(&outbox).expect("unblock");
    ack(&c.url, &run, &last);
    let s = status(&state);
    let q = s["queued"].as_array().expect("queued");
    assert_eq!(q.len(), 1, "{s}");
    assert_eq!(
        (q[0]["run"].as_str(), q[0]["event"].as_str()),
        (Some(run.to_string().as_str()), Some("failed"))
    );
}

#[test]
fn a_held_machine_queues_its_notification() {
    let (_d, state) = keyed_state();
    // A receiver nobody answers: the notification waits in the outbox, where it shows.
    let o = kc(
        &state,
        &[
            "notify",
            "add",
            "ops",
            "--webhook",
            "http://127.0.0.1:9/hook",
            "--on",
            "held",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = issue(&state);
    let c = crate::common::Coordinator::start(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let f = r.frames(vec![claim]);
    ack(&c.url, &run, &r.seal(f));
    let status = || kc(&state, &["notify", "status", "--json"]).stdout;
    assert!(!status().contains("\"held\""), "{}", status());
    let f = r.frames(vec![kiln_protocol::Event::Held {
        outcome: kiln_protocol::Outcome::Failed,
        until_ms: now_ms() + 3_600_000,
        addrs: vec!["10.0.2.15".into()],
        host_key: Some("SHA256:abc".into()),
    }]);
    ack(&c.url, &run, &r.seal(f));
    let s = status();
    assert!(s.contains("\"event\":\"held\""), "{s}");
    assert!(s.contains(&run.to_string()), "{s}");
}

/// An https webhook with a self-signed certificate: delivered (signed) when that
/// certificate is pinned with `--ca`; refused by the public roots without it.
#[test]
fn an_https_webhook_gets_its_notification_through_a_pinned_certificate() {
    let (d, state) = keyed_state();
    let dir = d.path();
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let got = dir.join("got.jsonl");
    let script = format!(
        r#"
import http.server, ssl, json
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        with open({got:?}, 'a') as f:
            f.write(json.dumps({{'sig': self.headers.get('Kiln-Signature'), 'body': body.decode()}}) + '\n')
        self.send_response(200)
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(('127.0.0.1', 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain({cert:?}, {key:?})
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#,
        got = got.display().to_string(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    );
    let mut rx = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    BufReader::new(rx.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let url = format!("https://127.0.0.1:{}/hook", port.trim());
    let sf = dir.join("hook.key");
    std::fs::write(&sf, SECRET).unwrap();
    assert_eq!(
        kc(
            &state,
            &["secret", "set", "hookkey", "--file", sf.to_str().unwrap()]
        )
        .code,
        0
    );
    let o = kc(
        &state,
        &[
            "notify",
            "add",
            "pinned",
            "--webhook",
            &url,
            "--secret",
            "hookkey",
            "--on",
            "failed",
            "--ca",
            cert.to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = kc(
        &state,
        &[
            "notify",
            "add",
            "public",
            "--webhook",
            &url,
            "--on",
            "failed",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = issue(&state);
    let c = crate::common::Coordinator::start(&state);
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let mut events = vec![claim];
    events.extend(full_run(Outcome::Failed));
    let f = r.frames(events);
    ack(&c.url, &run, &r.seal(f));
    let t0 = std::time::Instant::now();
    let line = loop {
        if let Ok(t) = std::fs::read_to_string(&got)
            && let Some(l) = t.lines().next()
        {
            break l.to_string();
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "nothing arrived over https"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let body = v["body"].as_str().unwrap();
    assert!(body.contains(&run.to_string()), "{body}");
    assert_eq!(v["sig"], format!("sha256={}", hmac_hex(body.as_bytes())));
    // The receiver without the pin: its certificate is nobody's, so it fails and waits.
    let t0 = std::time::Instant::now();
    loop {
        let s = status(&state);
        let failing = s["queued"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["receiver"] == "public");
        if let Some(q) = failing
            && q["attempts"].as_u64().unwrap_or(0) > 0
        {
            let err = q["last_error"].as_str().unwrap_or("");
            assert!(!err.is_empty(), "{s}");
            break;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "{s}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(std::fs::read_to_string(&got).unwrap().lines().count(), 1);
    let _ = rx.kill();
    let _ = rx.wait();
}
