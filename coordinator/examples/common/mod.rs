//! Pieces the coordinator's benchmark examples share: random ids, the clock, and a
//! one-stage ticket written straight into a state folder.
#![allow(dead_code)]
use kiln_coordinator::state::State;
use kiln_protocol::{
    HostBinding, HostSpec, Plan, RunId, SecretKey, SignedTicket, Stage, StageKind, Ticket, VERSION,
};

/// N random bytes.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("random bytes");
    b
}

/// Unix seconds.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Signs a ticket for host `bench` with one exec stage named `stage` and writes it
/// into `state` as `ticket issue` would; returns its run.
pub fn ticket(state: &State, key: &SecretKey, stage: &str) -> RunId {
    let run = RunId(random());
    let dir = state.run_dir(&run);
    std::fs::create_dir_all(&dir).expect("run folder");
    std::fs::write(dir.join("ticket.kiln"), signed(key, run, stage).to_file()).expect("ticket");
    run
}

/// A ticket for `run`, host `bench`, one exec stage named `stage`, signed by `key`.
pub fn signed(key: &SecretKey, run: RunId, stage: &str) -> SignedTicket {
    let now = now_s();
    let t = Ticket {
        version: VERSION,
        run,
        issued_at: now,
        not_after: now + 3600,
        host: HostBinding {
            name: "bench".into(),
            macs: vec!["52:54:00:00:00:01".parse().expect("mac")],
            serial: None,
            spec: HostSpec::default(),
            agent_key: None,
        },
        coordinator: None,
        plan: Plan {
            name: "bench".into(),
            stages: vec![Stage::new(
                stage,
                StageKind::Exec {
                    command: vec!["true".into()],
                },
            )],
            fail_fast: true,
            timeout_s: 0,
            hold: Default::default(),
        },
    };
    SignedTicket::sign(&t, key)
}
