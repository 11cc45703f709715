//! Golden bytes: every wire type encodes to exactly these bytes and decodes back equal.
//! A change here is a wire-format change: it needs a new format version (WIRE.md).
use kiln_protocol::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

fn golden<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T, hex_bytes: &str) {
    let bytes = postcard::to_allocvec(value).expect("encode");
    assert_eq!(hex(&bytes), hex_bytes, "encoding of {value:?} changed");
    let back: T = postcard::from_bytes(&bytes).expect("decode");
    assert_eq!(&back, value);
}

#[test]
fn ids() {
    golden(&RunId([0xab; 16]), &"ab".repeat(16));
    golden(&Mac([1, 2, 3, 4, 5, 6]), "010203040506");
    golden(&Sha256([7; 32]), &"07".repeat(32));
    golden(&KeyId([9; 8]), &"09".repeat(8));
    golden(&Sig([3; 64]), &"03".repeat(64));
}

#[test]
fn outcomes_and_streams() {
    let all: Vec<String> = Outcome::ALL
        .iter()
        .map(|o| hex(&postcard::to_allocvec(o).unwrap()))
        .collect();
    // Variant indexes are the wire tags: declaration order, not severity order.
    assert_eq!(all, ["00", "02", "01", "07", "03", "04", "05", "06"]);
    golden(&Stream::Stdout, "00");
    golden(&Stream::Stderr, "01");
    golden(&Stream::Agent, "02");
}

#[test]
fn events() {
    let key = crate::test_key(1).public();
    golden(
        &Frame {
            seq: 1,
            at_ms: 300,
            event: Event::Claim {
                agent_key: key,
                agent_version: "0.1.0".into(),
                boot_id: "b".into(),
            },
        },
        &format!("01ac0200{}05302e312e300162", hex(&key.0)),
    );
    golden(
        &Event::Hello {
            hostname: "h".into(),
            macs: vec![Mac([1, 2, 3, 4, 5, 6])],
            serial: None,
        },
        "0101680101020304050600",
    );
    golden(
        &Event::StageStarted {
            stage: 2,
            attempt: 1,
        },
        "020201",
    );
    golden(
        &Event::Log {
            stage: 0,
            stream: Stream::Stderr,
            text: "hi".into(),
        },
        "030001026869",
    );
    golden(
        &Event::Measure {
            stage: 1,
            name: "t".into(),
            value: 1.5,
            unit: "C".into(),
        },
        "04010174000000000000f83f0143",
    );
    golden(
        &Event::Artifact {
            stage: 0,
            name: "a".into(),
            sha256: Sha256([0; 32]),
            size: 128,
        },
        &format!("05000161{}8001", "00".repeat(32)),
    );
    golden(
        &Event::StageFinished {
            stage: 0,
            attempt: 2,
            outcome: Outcome::Warning,
            exit_code: Some(42),
            duration_ms: 1000,
            detail: "x".into(),
        },
        "060002010154e8070178",
    );
    golden(
        &Event::RunFinished {
            outcome: Outcome::Failed,
        },
        "0703",
    );
    golden(
        &Event::Part {
            stage: 0,
            name: "c".into(),
            outcome: Outcome::Held,
            detail: "".into(),
            tail: vec!["l".into()],
        },
        "0800016307000101 6c".replace(' ', "").as_str(),
    );
}

#[test]
fn batch_ack_command() {
    golden(
        &Batch {
            run: RunId([1; 16]),
            frames: vec![],
        },
        &format!("{}00", "01".repeat(16)),
    );
    golden(
        &Ack {
            upto: 5,
            command: Command::Continue,
        },
        "0500",
    );
    golden(
        &Ack {
            upto: 300,
            command: Command::Abort {
                reason: "no".into(),
            },
        },
        "ac0201026e6f",
    );
    golden(&Command::Shutdown, "02");
    golden(&Command::RetryStage { stage: 3 }, "0303");
    golden(
        &SecretsRequest {
            run: RunId([2; 16]),
            names: vec!["k".into()],
            at_ms: 1,
        },
        &format!("{}01016b01", "02".repeat(16)),
    );
}

#[test]
fn ticket_payload() {
    golden(
        &crate::sample_ticket(),
        concat!(
            "02",                                           // version 2
            "11111111111111111111111111111111",             // run id
            "80e2cfaa06",                                   // issued_at varint
            "8085d5aa06",                                   // not_after varint
            "056e6f646531",                                 // host.name "node1"
            "01525400123456",                               // one MAC
            "0103534e31",                                   // serial Some("SN1")
            "00000000000000",                               // spec: defaults
            "00",                                           // agent_key None
            "0114687474703a2f2f31302e302e302e313a37333733", // coordinator Some(url)
            "05736d6f6b65",                                 // plan.name
            "01",                                           // one stage
            "0568656c6c6f",                                 // stage.name
            "00010474727565",                               // Exec { command: ["true"] }
            "3c01000000",   // timeout 60, retries 1, flags, tests None
            "010141013100", // env [("A","1")], secrets []
            "0100",         // fail_fast, timeout_s 0
        ),
    );
}

#[test]
fn enrolled_host_binding() {
    let mut t = crate::sample_ticket();
    t.host.agent_key = Some(PublicKey([0x42; 32]));
    let bytes = postcard::to_allocvec(&t.host).expect("encode");
    assert_eq!(
        hex(&bytes),
        format!(
            "056e6f646531015254001234560103534e3100000000000000{}{}",
            "01",
            "42".repeat(32)
        ),
        "an enrolled host's key follows the spec as Some(32 bytes)"
    );
    golden(&t.host, &hex(&bytes));
    // The ticket file's magic names format version 2.
    assert_eq!(&TICKET_MAGIC[..], b"KILNTKT\x02");
    assert_eq!(VERSION, 2);
}

#[test]
fn stage_kinds_round_trip() {
    let kinds = vec![
        StageKind::Container(ContainerSpec {
            runtime: Runtime::Auto,
            images: vec![
                ImageRef::Registry("debian:12".into()),
                ImageRef::Archive {
                    name: "x".into(),
                    sha256: Sha256([1; 32]),
                    size: 9,
                },
            ],
            axes: vec![("PY".into(), vec!["3.11".into()])],
            command: vec!["./run.sh".into()],
            workdir: None,
            concurrency: 4,
            fail_fast: true,
            read_only: true,
            network: false,
            user: None,
            cap_add: vec![],
            no_new_privileges: true,
            memory_bytes: 1 << 31,
            cpu_millis: 2000,
            pids_limit: 1024,
            tmpfs_bytes: 64 << 20,
            mounts: vec![Mount {
                host: "/a".into(),
                container: "/b".into(),
                read_only: true,
            }],
        }),
        StageKind::Ssh(SshSpec {
            host: "h".into(),
            port: 22,
            user: "u".into(),
            os: Os::Windows,
            key: "k".into(),
            host_key: Some("ssh-ed25519 AAAA".into()),
            known_hosts: None,
            keep: false,
            base_dir: None,
        }),
        StageKind::Inventory,
        StageKind::Smart(SmartSpec::default()),
        StageKind::CpuStress(CpuStressSpec {
            duration_s: 60,
            workers: 0,
            min_ops_per_s: Some(10.0),
            max_temperature_c: None,
        }),
        StageKind::Storage(StorageSpec {
            devices: vec!["/dev/sda".into()],
            tool: StorageTool::Fio,
            duration_s: 30,
            size_bytes: 0,
        }),
        StageKind::Network(NetworkSpec {
            server: "10.0.0.1".into(),
            port: 5201,
            duration_s: 10,
            min_mbps: Some(900.0),
        }),
        StageKind::Gpu(GpuSpec {
            duration_s: 0,
            max_temperature_c: Some(85),
        }),
    ];
    let tags: Vec<u8> = kinds
        .iter()
        .map(|k| postcard::to_allocvec(k).unwrap()[0])
        .collect();
    assert_eq!(
        tags,
        [1, 2, 3, 4, 5, 6, 7, 8],
        "stage kind tags are wire format"
    );
    for k in kinds {
        let bytes = postcard::to_allocvec(&k).unwrap();
        assert_eq!(postcard::from_bytes::<StageKind>(&bytes).unwrap(), k);
    }
    // Exec is tag 0.
    golden(&StageKind::Exec { command: vec![] }, "0000");
}
