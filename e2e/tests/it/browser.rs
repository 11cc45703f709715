//! The pages in a real browser: headless Chromium driven through chromedriver
//! (W3C WebDriver over HTTP). Log in, open the fleet page and a live run's page, see
//! a log line the agent sends appear without a reload, press abort, and see the run
//! end `aborted`. Each page is saved as a PNG screenshot (under the test's temp
//! folder, or `KILN_SCREENSHOTS` when set) and checked to be a real image.
use base64::Engine as _;
use kiln_protocol::{Command, Event, Outcome};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Coordinator, bin};
use crate::server::{Reporter, ack, issue, keyed_state, log};

const PASSWORD: &str = "browser-test-password";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    url: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.url, self.session)).call();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wd(method: &str, url: &str, body: Option<Value>) -> Value {
    let rq = ureq::request(method, url).timeout(Duration::from_secs(60));
    let r = match body {
        Some(b) => rq.send_json(b),
        None => rq.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            panic!(
                "webdriver {method} {url}: {code} {}",
                r.into_string().unwrap_or_default()
            )
        }
        Err(e) => panic!("webdriver {method} {url}: {e}"),
    };
    let v: Value = resp.into_json().expect("webdriver JSON");
    v["value"].clone()
}

impl Driver {
    /// chromedriver on a free port, and a headless Chromium session; `None` (after a
    /// loud skip) when they are not installed here.
    fn start() -> Option<Driver> {
        let (chromium, driver) = (
            Path::new("/usr/bin/chromium"),
            Path::new("/usr/bin/chromedriver"),
        );
        if !chromium.exists() || !driver.exists() {
            kiln_testkit::skip("chromium and chromium-driver (Debian) are not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while ureq::get(&format!("{url}/status")).call().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1200,900"]
        }}}});
        let v = wd("POST", &format!("{url}/session"), Some(caps));
        let session = v["sessionId"].as_str().expect("a session id").to_string();
        Some(Driver {
            child,
            url,
            session,
        })
    }

    fn s(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.url, self.session)
    }

    fn go(&self, url: &str) {
        wd("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    fn here(&self) -> String {
        wd("GET", &self.s("/url"), None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn find(&self, css: &str) -> String {
        let v = wd(
            "POST",
            &self.s("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().expect("an element").to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        wd(
            "POST",
            &self.s(&format!("/element/{e}/value")),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        wd(
            "POST",
            &self.s(&format!("/element/{e}/click")),
            Some(json!({})),
        );
    }

    fn js(&self, script: &str) -> Value {
        wd(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Waits (up to 30 s) until the page's text holds `want`.
    fn wait_text(&self, want: &str) {
        let t0 = Instant::now();
        loop {
            let text = self.js("return document.body ? document.body.innerText : ''");
            if text.as_str().is_some_and(|t| t.contains(want)) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the page never showed {want:?}; it shows:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a screenshot as `dir/name.png`; checks it is a PNG of plausible size.
    fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let b64 = wd("GET", &self.s("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64"))
            .expect("a base64 screenshot");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        let (w, h) = (
            u32::from_be_bytes(png[16..20].try_into().unwrap()),
            u32::from_be_bytes(png[20..24].try_into().unwrap()),
        );
        assert!(w >= 800 && h >= 600, "{w}x{h}");
        assert!(png.len() > 10_000, "{} bytes: an empty page?", png.len());
        let p = dir.join(format!("{name}.png"));
        std::fs::write(&p, &png).unwrap();
        eprintln!("screenshot {} ({w}x{h}, {} bytes)", p.display(), png.len());
        p
    }
}

#[test]
fn log_in_watch_a_live_run_and_abort_it_in_a_browser() {
    let (d, state) = keyed_state();
    let shots = std::env::var_os("KILN_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| d.path().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let run = issue(&state);
    let mut add = std::process::Command::new(bin("kiln-coordinator"))
        .args(["--state", state.to_str().unwrap(), "user", "add", "ada"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(add.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(add.wait().unwrap().success());
    let c = Coordinator::start_private(&state, &[]);
    // The run is live: claimed, its first stage logging.
    let mut agent = Reporter::new(run);
    let claim = agent.claim();
    let f = agent.frames(vec![
        claim,
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        log(0, "first line from the agent"),
    ]);
    ack(&c.url, &run, &agent.seal(f));

    let Some(b) = Driver::start() else { return };
    // Not logged in: the page sends the browser to the login form.
    b.go(&format!("{}/", c.url));
    assert!(b.here().contains("/login"), "{}", b.here());
    b.type_into("input[name=user]", "ada");
    b.type_into("input[name=password]", PASSWORD);
    b.click("button[type=submit]");
    b.wait_text("Runs");
    assert!(!b.here().contains("/login"), "{}", b.here());
    b.wait_text("running");
    b.screenshot(&shots, "fleet");

    b.go(&format!("{}/runs/{run}", c.url));
    b.wait_text("first line from the agent");
    // A mark a reload would wipe.
    b.js("window.kilnMark = 42; return 1");
    let f = agent.frames(vec![log(0, "second line, live")]);
    ack(&c.url, &run, &agent.seal(f));
    b.wait_text("second line, live");
    assert_eq!(
        b.js("return window.kilnMark"),
        json!(42),
        "the page reloaded"
    );
    // Each line once, however the stream and the page's own fetches interleave.
    std::thread::sleep(Duration::from_millis(500));
    for line in ["first line from the agent", "second line, live"] {
        let n = b.js(&format!(
            "return document.body.innerText.split({line:?}).length - 1"
        ));
        assert_eq!(n, json!(1), "{line:?} shown {n} times");
    }
    b.screenshot(&shots, "run-live");

    // Abort from the page; the agent gets it with its next ack and ends the run.
    b.type_into("input[name=reason]", "stopped from the browser");
    b.click("#abort");
    let t0 = Instant::now();
    loop {
        let f = agent.frames(vec![log(0, "still here")]);
        let a = ack(&c.url, &run, &agent.seal(f));
        if a.command != Command::Continue {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no abort reached the agent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let f = agent.frames(vec![
        crate::server::finished(0, Outcome::Aborted, "aborted: stopped from the browser"),
        Event::RunFinished {
            outcome: Outcome::Aborted,
        },
    ]);
    ack(&c.url, &run, &agent.seal(f));
    b.wait_text("aborted");
    b.wait_text("stopped from the browser (by ada)");
    b.screenshot(&shots, "run-aborted");
}
