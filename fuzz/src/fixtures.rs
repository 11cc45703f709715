//! Fixed keys, runs and a throwaway coordinator state folder ("lab") the targets
//! run against. Everything is deterministic, so a saved input replays the same way.
use kiln_coordinator::state::{Host, State};
use kiln_protocol::{
    Batch, Event, Frame, HostBinding, HostSpec, Mac, Outcome, Plan, RunId, SecretKey, Sha256,
    SignedTicket, Stage, StageKind, Stream, Ticket, VERSION,
};
use std::path::Path;

/// The clock the targets check tickets against (unix seconds).
pub const NOW: u64 = 1_700_000_000;
/// `not_after` of the fixture tickets: far in the future, also for the coordinator's
/// own clock (online ingest refuses claims of expired tickets).
pub const NOT_AFTER: u64 = 4_000_000_000;
/// A pending run (ticket issued, not claimed).
pub const RUN_PENDING: RunId = RunId([0x11; 16]);
/// A claimed run (its Claim batch stored).
pub const RUN_CLAIMED: RunId = RunId([0x22; 16]);
/// The host's MAC.
pub const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
/// The host's DMI serial.
pub const SERIAL: &str = "SN1";
/// The host's name.
pub const HOST: &str = "node1";

/// The coordinator's signing key in every target.
pub fn coordinator_key() -> SecretKey {
    SecretKey::from_seed([0xc0; 32])
}

/// The agent's claim key in every target.
pub fn agent_key() -> SecretKey {
    SecretKey::from_seed([0xa6; 32])
}

/// The host binding of the fixture tickets.
pub fn binding() -> HostBinding {
    HostBinding {
        name: HOST.into(),
        macs: vec![MAC],
        serial: Some(SERIAL.into()),
        spec: HostSpec::default(),
        agent_key: None,
    }
}

/// The address the fixture agent's requests come from (loopback: the neighbour-table
/// check lets it through).
pub fn source() -> kiln_coordinator::claims::Source {
    kiln_coordinator::claims::Source::Net("127.0.0.1:40000".parse().expect("address"))
}

/// The agent's view of the fixture host.
pub fn host_info() -> kiln_agent::hostinfo::HostInfo {
    kiln_agent::hostinfo::HostInfo {
        hostname: HOST.into(),
        macs: vec![MAC],
        serial: Some(SERIAL.into()),
    }
}

/// A two-stage plan (exec stages).
pub fn small_plan() -> Plan {
    Plan {
        name: "smoke".into(),
        stages: vec![
            Stage {
                timeout_s: 60,
                retries: 1,
                env: vec![("A".into(), "1".into())],
                ..Stage::new(
                    "hello",
                    StageKind::Exec {
                        command: vec!["true".into()],
                    },
                )
            },
            Stage::new(
                "second",
                StageKind::Exec {
                    command: vec!["sh".into(), "-c".into(), "echo hi".into()],
                },
            ),
        ],
        fail_fast: true,
        timeout_s: 0,
        hold: Default::default(),
    }
}

/// A ticket for `run` with `plan`, for the fixture host.
pub fn ticket(run: RunId, plan: Plan) -> Ticket {
    Ticket {
        version: VERSION,
        run,
        issued_at: NOW - 60,
        not_after: NOT_AFTER,
        host: binding(),
        coordinator: Some("http://127.0.0.1:7373".into()),
        plan,
    }
}

/// The signed ticket file of [`ticket`].
pub fn ticket_file(run: RunId, plan: Plan) -> Vec<u8> {
    SignedTicket::sign(&ticket(run, plan), &coordinator_key()).to_file()
}

/// The Claim frame (seq 1) of the agent key.
pub fn claim_frame() -> Frame {
    Frame {
        seq: 1,
        at_ms: NOW * 1000,
        event: Event::Claim {
            agent_key: agent_key().public(),
            agent_version: "0.1.0".into(),
            boot_id: "boot-1".into(),
        },
    }
}

/// Frames `from..` of a whole run of [`small_plan`]: every event kind, ending in
/// RunFinished. `blob` is an artifact's bytes named by an Artifact frame.
pub fn run_frames(from: u64, blob: &[u8]) -> Vec<Frame> {
    let events = vec![
        Event::Hello {
            hostname: HOST.into(),
            macs: vec![MAC],
            serial: Some(SERIAL.into()),
        },
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
        Event::Log {
            stage: 0,
            stream: Stream::Stdout,
            text: "hello \u{1b}[31mworld".into(),
        },
        Event::Measure {
            stage: 0,
            name: "disk.nvme0n1.temperature".into(),
            value: 41.5,
            unit: "C".into(),
        },
        Event::Artifact {
            stage: 0,
            name: "out/report.txt".into(),
            sha256: Sha256::of(blob),
            size: blob.len() as u64,
        },
        Event::Part {
            stage: 0,
            name: "debian:12".into(),
            outcome: Outcome::Failed,
            detail: "exit 1".into(),
            tail: vec!["a".into(), "b".into()],
        },
        Event::StageFinished {
            stage: 0,
            attempt: 1,
            outcome: Outcome::Passed,
            exit_code: Some(0),
            duration_ms: 1234,
            detail: "".into(),
        },
        Event::RunFinished {
            outcome: Outcome::Passed,
        },
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Frame {
            seq: from + i as u64,
            at_ms: NOW * 1000 + i as u64,
            event,
        })
        .collect()
}

/// A sealed batch of `frames` for `run`, signed by the agent key.
pub fn sealed(run: RunId, frames: Vec<Frame>) -> Vec<u8> {
    Batch { run, frames }.seal(&agent_key())
}

/// A throwaway coordinator state folder on tmpfs where there is one (fsync is free
/// there): the fixture key, the fixture host, a pending and a claimed run.
pub struct Lab {
    /// Holds the folder.
    pub dir: tempfile::TempDir,
    /// The state folder (`<dir>/state`).
    pub state: State,
    /// The fixture host as hosts.toml has it.
    pub host: Host,
}

impl Lab {
    /// Creates the folder.
    pub fn new() -> Lab {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new().prefix("kiln-fuzz").tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("kiln-fuzz").tempdir()
        }
        .expect("creating a temporary folder");
        let root = dir.path().join("state");
        std::fs::create_dir_all(root.join("key")).expect("mkdir key");
        std::fs::write(
            root.join("key/coordinator.key"),
            format!("{}\n", coordinator_key().to_line()),
        )
        .expect("writing the key");
        let (state, _) = State::init(&root).expect("state init");
        let host = Host {
            name: HOST.into(),
            macs: vec![MAC.to_string()],
            serial: Some(SERIAL.into()),
            image: None,
            spec: None,
            agent_key: None,
            power: None,
        };
        state
            .save_hosts(&kiln_coordinator::state::Hosts {
                hosts: vec![host.clone()],
            })
            .expect("hosts.toml");
        for (name, value) in [("ssh-ci", &b"key"[..]), ("lab-known-hosts", b"hosts")] {
            state.set_secret(name, value).expect("secret");
        }
        let lab = Lab { dir, state, host };
        lab.reset_runs();
        lab
    }

    /// Puts both fixture runs back as they start: tickets, no frames; then stores
    /// the claimed run's Claim batch.
    pub fn reset_runs(&self) {
        for run in [RUN_PENDING, RUN_CLAIMED] {
            let d = self.state.run_dir(&run);
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("run folder");
            std::fs::write(d.join("ticket.kiln"), ticket_file(run, small_plan())).expect("ticket");
        }
        let ing = kiln_coordinator::ingest::Ingester::new(&self.state).expect("ingester");
        ing.ingest(
            &RUN_CLAIMED,
            &sealed(RUN_CLAIMED, vec![claim_frame()]),
            kiln_coordinator::ingest::Mode::Online,
            source(),
        )
        .expect("storing the claim");
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}
