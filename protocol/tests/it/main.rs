//! kiln-protocol's tests: golden bytes, ticket checks, record streams, tree bundles.
mod garbage;
mod golden;
mod limits;
mod records;
mod tickets;
mod tree;

use kiln_protocol::*;

/// A fixed test key (never used outside tests).
pub fn test_key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

/// A small ticket with one exec stage.
pub fn sample_ticket() -> Ticket {
    Ticket {
        version: VERSION,
        run: RunId([0x11; 16]),
        issued_at: 1_700_000_000,
        not_after: 1_700_086_400,
        host: HostBinding {
            name: "node1".into(),
            macs: vec![Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56])],
            serial: Some("SN1".into()),
            spec: HostSpec::default(),
            agent_key: None,
        },
        coordinator: Some("http://10.0.0.1:7373".into()),
        plan: Plan {
            name: "smoke".into(),
            stages: vec![Stage {
                timeout_s: 60,
                retries: 1,
                env: vec![("A".into(), "1".into())],
                ..Stage::new(
                    "hello",
                    StageKind::Exec {
                        command: vec!["true".into()],
                    },
                )
            }],
            fail_fast: true,
            timeout_s: 0,
            hold: Default::default(),
        },
    }
}
