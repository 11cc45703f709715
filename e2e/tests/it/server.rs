//! The coordinator's run path against a real `kiln-coordinator serve`: batches signed
//! with kiln_protocol, tickets written straight into the state folder, HTTP with ureq.
use kiln_protocol::{
    Event, Frame, HostBinding, HostSpec, Mac, Outcome, Plan, RunId, SecretKey, SignedTicket, Stage,
    StageKind, Stream, Ticket, VERSION,
};
use std::path::{Path, PathBuf};

mod abort;
mod cli;
mod corrupt;
mod fleet;
pub(crate) mod full_disk;
mod fuzz;
mod gc;
mod hostile;
mod import;
mod ingest;
mod interrupted;
mod limits;
mod live_index;
mod login;
mod lost;
mod notify;
mod pending;
mod routes;
mod stream;
mod terminal;
mod uploads;

/// A state folder with a coordinator key, made without `init` (another part's
/// command) so these tests only need what they exercise: `State::open` wants the key.
pub fn keyed_state() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("key")).expect("mkdir");
    std::fs::create_dir_all(state.join("runs")).expect("mkdir");
    let key = SecretKey::from_seed(seed());
    std::fs::write(
        state.join("key/coordinator.key"),
        format!("{}\n", key.to_line()),
    )
    .expect("write key");
    (dir, state)
}

/// 32 random bytes.
pub fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    getrandom::getrandom(&mut s).expect("random");
    s
}

/// A fresh random run id.
pub fn new_run_id() -> RunId {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("random");
    RunId(b)
}

/// The state's signing key.
pub fn state_key(state: &Path) -> SecretKey {
    let text = std::fs::read_to_string(state.join("key/coordinator.key")).expect("key");
    SecretKey::from_line(&text).expect("key line")
}

/// The MAC every test ticket is bound to.
pub const MAC: &str = "52:54:00:12:34:56";

/// An exec stage named `name` that needs `secrets`.
pub fn stage(name: &str, secrets: &[&str]) -> Stage {
    Stage {
        timeout_s: 60,
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        ..Stage::new(
            name,
            StageKind::Exec {
                command: vec!["true".into()],
            },
        )
    }
}

/// A ticket for plan `plan` with `stages`, issued `issued_at` (unix s).
pub fn ticket(run: RunId, plan: &str, stages: Vec<Stage>, issued_at: u64) -> Ticket {
    Ticket {
        version: VERSION,
        run,
        issued_at,
        not_after: issued_at + 3600,
        host: HostBinding {
            name: "node1".into(),
            macs: vec![MAC.parse::<Mac>().expect("mac")],
            serial: None,
            spec: HostSpec::default(),
            agent_key: None,
        },
        coordinator: None,
        plan: Plan {
            name: plan.into(),
            stages,
            fail_fast: true,
            timeout_s: 0,
            hold: Default::default(),
        },
    }
}

/// Signs `t` with the state key and writes `runs/<run>/ticket.kiln`, then tells a
/// running coordinator through the state folder's change journal, as `ticket issue`
/// does.
pub fn write_ticket(state: &Path, t: &Ticket) -> SignedTicket {
    let st = SignedTicket::sign(t, &state_key(state));
    let dir = state.join("runs").join(t.run.to_string());
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("ticket.kiln"), st.to_file()).expect("write ticket");
    note_journal(state, &t.run);
    st
}

/// Appends `run <id>` to the state folder's change journal (`journal.rs` in the
/// coordinator), as every writer of a run folder does.
pub fn note_journal(state: &Path, run: &RunId) {
    use std::io::Write;
    let mut j = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join("journal"))
        .expect("open journal");
    j.write_all(format!("run {run}\n").as_bytes())
        .expect("append to journal");
}

/// Issues a two-stage ticket (`build`, `test`) issued now; returns the run.
pub fn issue(state: &Path) -> RunId {
    let run = new_run_id();
    let t = ticket(
        run,
        "nightly",
        vec![stage("build", &[]), stage("test", &[])],
        now_s(),
    );
    write_ticket(state, &t);
    run
}

/// Unix seconds.
pub fn now_s() -> u64 {
    now_ms() / 1000
}

/// Unix ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// A fake agent's report side: its claim key and the next seq.
pub struct Reporter {
    /// The run.
    pub run: RunId,
    /// The claim key.
    pub key: SecretKey,
    /// Next seq to hand out.
    pub next: u64,
}

impl Reporter {
    /// A reporter with a fresh key.
    pub fn new(run: RunId) -> Self {
        Reporter {
            run,
            key: SecretKey::from_seed(seed()),
            next: 1,
        }
    }

    /// Numbers `events` from the next seq on.
    pub fn frames(&mut self, events: Vec<Event>) -> Vec<Frame> {
        events
            .into_iter()
            .map(|event| {
                let f = Frame {
                    seq: self.next,
                    at_ms: 1_700_000_000_000 + self.next,
                    event,
                };
                self.next += 1;
                f
            })
            .collect()
    }

    /// Seals `frames` as one batch with this reporter's key.
    pub fn seal(&self, frames: Vec<Frame>) -> Vec<u8> {
        kiln_protocol::Batch {
            run: self.run,
            frames,
        }
        .seal(&self.key)
    }

    /// The Claim event for this reporter's key.
    pub fn claim(&self) -> Event {
        Event::Claim {
            agent_key: self.key.public(),
            agent_version: "test-0".into(),
            boot_id: "boot-1".into(),
        }
    }
}

/// A Log event.
pub fn log(stage: u16, text: &str) -> Event {
    Event::Log {
        stage,
        stream: Stream::Stdout,
        text: text.into(),
    }
}

/// A StageFinished event for attempt 1.
pub fn finished(stage: u16, outcome: Outcome, detail: &str) -> Event {
    Event::StageFinished {
        stage,
        attempt: 1,
        outcome,
        exit_code: Some(if outcome == Outcome::Passed { 0 } else { 1 }),
        duration_ms: 1500,
        detail: detail.into(),
    }
}

/// A whole run's events after the claim: both stages, logs, a measurement.
pub fn full_run(outcome: Outcome) -> Vec<Event> {
    vec![
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        log(0, "compiling"),
        log(0, "done"),
        Event::Measure {
            stage: 0,
            name: "build.seconds".into(),
            value: 1.5,
            unit: "s".into(),
        },
        finished(0, Outcome::Passed, ""),
        Event::StageStarted {
            stage: 1,
            attempt: 1,
        },
        log(1, "running tests"),
        finished(1, outcome, "1 test failed"),
        Event::RunFinished { outcome },
    ]
}

/// An HTTP answer: status, selected headers, body.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// `Kiln-Expected-Seq`, `Content-Range`, `ETag`, `Kiln-Run`.
    pub headers: Vec<(String, String)>,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends a request; 4xx/5xx are answers too.
pub fn call(req: ureq::Request, body: Option<&[u8]>) -> Answer {
    let r = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = resp.status();
    let headers = [
        "Kiln-Expected-Seq",
        "Content-Range",
        "ETag",
        "Kiln-Run",
        "Content-Type",
        "Kiln-Upload-Offset",
        "Kiln-Total-Runs",
        "Link",
    ]
    .iter()
    .filter_map(|h| resp.header(h).map(|v| (h.to_string(), v.to_string())))
    .collect();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).expect("body");
    Answer {
        status,
        body,
        headers,
    }
}

/// POSTs a sealed batch to the run's events route.
pub fn post_batch(url: &str, run: &RunId, body: &[u8]) -> Answer {
    call(
        ureq::post(&format!("{url}/v1/runs/{run}/events")),
        Some(body),
    )
}

/// POSTs and expects an ack for `run`; returns it (its signature is checked by
/// `ingest::acks_are_signed_for_the_run_and_its_claimant`, which has the keys).
pub fn ack(url: &str, run: &RunId, body: &[u8]) -> kiln_protocol::Ack {
    let a = post_batch(url, run, body);
    assert_eq!(a.status, 200, "batch refused: {}", a.text());
    let signed = a.body.len().checked_sub(64).expect("ack has a signature");
    let (ack, rest) =
        postcard::take_from_bytes::<kiln_protocol::Ack>(&a.body[..signed]).expect("ack decodes");
    assert!(rest.is_empty(), "trailing bytes before the ack's signature");
    assert_eq!(ack.run, *run, "ack for another run");
    ack
}

/// The `Kiln-Upload-Auth` header value for `body` as an artifact of `run`, signed
/// by `key` at `at_ms`.
pub fn upload_auth(key: &SecretKey, run: &RunId, body: &[u8], at_ms: u64) -> String {
    kiln_protocol::UploadAuth {
        run: *run,
        sha256: kiln_protocol::Sha256::of(body),
        len: body.len() as u64,
        at_ms,
    }
    .header(key)
}

/// GETs a path.
pub fn get(url: &str, path: &str) -> Answer {
    call(ureq::get(&format!("{url}{path}")), None)
}
