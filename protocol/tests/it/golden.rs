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
    golden(
        &Event::Held {
            outcome: Outcome::Failed,
            until_ms: 1,
            addrs: vec!["a".into()],
            host_key: Some("f".into()),
        },
        "09 03 01 01 0161 01 0166".replace(' ', "").as_str(),
    );
    golden(
        &Event::Order {
            what: "r".into(),
            refused: None,
        },
        "0a017200",
    );
    golden(
        &Event::Order {
            what: "r".into(),
            refused: Some("n".into()),
        },
        "0a01720101 6e".replace(' ', "").as_str(),
    );
}

#[test]
fn hold() {
    golden(
        &Hold {
            when: HoldWhen::OnFailure,
            for_s: 3600,
            keys: vec!["k".into()],
        },
        "01 901c 01016b".replace(' ', "").as_str(),
    );
    golden(&HoldWhen::Never, "00");
    golden(&HoldWhen::Always, "02");
    let h = Hold {
        when: HoldWhen::OnFailure,
        ..Hold::default()
    };
    assert!(!h.applies(Outcome::Passed) && !h.applies(Outcome::Warning));
    assert!(h.applies(Outcome::Failed) && h.applies(Outcome::Held) && h.applies(Outcome::Aborted));
    assert!(!Hold::default().applies(Outcome::Error));
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
            run: RunId([3; 16]),
            upto: 5,
            command: Command::Continue,
        },
        &format!("{}0500", "03".repeat(16)),
    );
    golden(
        &Ack {
            run: RunId([3; 16]),
            upto: 300,
            command: Command::Abort {
                reason: "no".into(),
            },
        },
        &format!("{}ac0201026e6f", "03".repeat(16)),
    );
    golden(&Command::Shutdown, "02");
    golden(&Command::RetryStage { stage: 3 }, "0303");
    golden(&Command::Release { reboot: true }, "0401");
    golden(
        &Command::Approve(Approval {
            run: RunId([4; 16]),
            stage: 1,
            serial: "s".into(),
            sig: Sig([5; 64]),
        }),
        &format!("05{}010173{}", "04".repeat(16), "05".repeat(64)),
    );
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
            "03",                                           // version 3
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
            "000000",       // hold: Never, for_s 0, keys [] (new in version 3)
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
    // The ticket file's magic names format version 3.
    assert_eq!(&TICKET_MAGIC[..], b"KILNTKT\x03");
    assert_eq!(&BUNDLE_MAGIC[..], b"KILNRES\x03");
    assert_eq!(TICKET_DOMAIN, b"kiln-ticket-v3\0");
    assert_eq!(VERSION, 3);
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
            services: vec![ServiceSpec {
                name: "db".into(),
                image: ImageRef::Registry("pg:16".into()),
                command: vec![],
                env: vec![],
                secrets: vec![],
                health: None,
            }],
            keep_failed: true,
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

#[test]
fn container_services_and_keep_failed() {
    // New in version 3: ContainerSpec ends with `services` and `keep_failed`.
    let spec = ContainerSpec {
        runtime: Runtime::Podman,
        images: vec![ImageRef::Registry("a".into())],
        axes: vec![],
        command: vec![],
        workdir: None,
        concurrency: 1,
        fail_fast: false,
        read_only: true,
        network: false,
        user: None,
        cap_add: vec![],
        no_new_privileges: true,
        memory_bytes: 0,
        cpu_millis: 0,
        pids_limit: 0,
        tmpfs_bytes: 0,
        mounts: vec![],
        services: vec![ServiceSpec {
            name: "web".into(),
            image: ImageRef::Registry("b".into()),
            command: vec!["httpd".into()],
            env: vec![("K".into(), "v".into())],
            secrets: vec!["s".into()],
            health: Some(HealthSpec {
                command: vec!["true".into()],
                interval_ms: 500,
                timeout_ms: 1000,
                retries: 3,
                start_period_ms: 0,
            }),
        }],
        keep_failed: true,
    };
    golden(
        &spec,
        &concat!(
            "01 01 00 0161 00 00 00 01 00 01 00 00 00 01 00 00 00 00 00", // through mounts
            "01",                                                         // one service
            "03 776562",                                                  // name "web"
            "00 0162",                                                    // image Registry("b")
            "01 05 6874747064",                                           // command ["httpd"]
            "01 01 4b 01 76",                                             // env [("K","v")]
            "01 01 73",                                                   // secrets ["s"]
            "01 01 04 74727565 f403 e807 03 00",                          // health Some(...)
            "01",                                                         // keep_failed
        )
        .replace(' ', ""),
    );
}

#[test]
fn image_refs() {
    // Registry 0, Archive 1, Build 2 (appended): tags are wire format.
    golden(&ImageRef::Registry("a".into()), "000161");
    golden(
        &ImageRef::Build(BuildSpec {
            file: "Containerfile".into(),
            context: "".into(),
            args: vec![("BASE".into(), "${BASE}".into())],
            no_cache: true,
        }),
        &concat!(
            "02",
            "0d 436f6e7461696e657266696c65", // file "Containerfile"
            "00",                            // context ""
            "01 04 42415345 07 247b424153457d", // args [("BASE", "${BASE}")]
            "01",                            // no_cache
        )
        .replace(' ', ""),
    );
}

#[test]
fn sealed_ack() {
    // The coordinator key signs "kiln-ack-v1\0" ++ claim key ++ postcard(Ack);
    // ed25519 is deterministic, so the whole wire is pinned.
    let (coordinator, claim) = (crate::test_key(1), crate::test_key(2).public());
    let ack = Ack {
        run: RunId([3; 16]),
        upto: 5,
        command: Command::Continue,
    };
    let wire = ack.seal(&coordinator, &claim);
    let body = format!("{}0500", "03".repeat(16));
    assert_eq!(hex(&wire[..wire.len() - 64]), body);
    assert_eq!(hex(&wire[wire.len() - 64..]), SEALED_ACK_SIG);
    let mut signed = ACK_DOMAIN.to_vec();
    signed.extend(claim.0);
    signed.extend(&wire[..wire.len() - 64]);
    let sig = Sig(wire[wire.len() - 64..].try_into().unwrap());
    coordinator.public().verify(b"", &signed, &sig).unwrap();
    assert_eq!(
        Ack::open(&wire, &coordinator.public(), &claim).unwrap(),
        ack
    );
    // Another claimant, another signer, or a changed byte: refused.
    let other = crate::test_key(3);
    assert!(Ack::open(&wire, &coordinator.public(), &other.public()).is_err());
    assert!(Ack::open(&ack.seal(&other, &claim), &coordinator.public(), &claim).is_err());
    let mut flipped = wire.clone();
    flipped[17] ^= 1;
    assert!(Ack::open(&flipped, &coordinator.public(), &claim).is_err());
    assert!(Ack::open(&wire[..40], &coordinator.public(), &claim).is_err());
}

const SEALED_ACK_SIG: &str = "4489542c9ca801829531ccfec5ede02f96f26ae8f9f6af102da0ef0f356dca2f20a2731a034f4e51163f4966246574cabb3c91be560cf27f225a2c90686c160d";

#[test]
fn upload_auth() {
    let auth = UploadAuth {
        run: RunId([4; 16]),
        sha256: Sha256([5; 32]),
        len: 300,
        at_ms: 1,
    };
    golden(
        &auth,
        &format!("{}{}ac0201", "04".repeat(16), "05".repeat(32)),
    );
    // The header: at_ms, a dot, the claim key's signature over
    // "kiln-upload-v1\0" ++ postcard(UploadAuth), padded base64.
    let key = crate::test_key(2);
    assert_eq!(auth.header(&key), UPLOAD_HEADER);
    let (run, sha) = (auth.run, auth.sha256);
    let ok = UploadAuth::verify(UPLOAD_HEADER, run, sha, 300, &key.public());
    assert_eq!(ok, Ok(auth));
    // Any other length, digest, run, time or key does not verify.
    let bad = |v: &str, run, sha, len, k: &PublicKey| UploadAuth::verify(v, run, sha, len, k);
    let other = crate::test_key(3).public();
    assert!(bad(UPLOAD_HEADER, run, sha, 301, &key.public()).is_err());
    assert!(bad(UPLOAD_HEADER, run, Sha256([6; 32]), 300, &key.public()).is_err());
    assert!(bad(UPLOAD_HEADER, RunId([5; 16]), sha, 300, &key.public()).is_err());
    assert!(bad(UPLOAD_HEADER, run, sha, 300, &other).is_err());
    let later = UPLOAD_HEADER.replacen("1.", "2.", 1);
    assert!(bad(&later, run, sha, 300, &key.public()).is_err());
    for junk in ["", ".", "1", "x.AAAA", "-1.AAAA", "1.!!", &"9".repeat(200)] {
        assert!(bad(junk, run, sha, 300, &key.public()).is_err(), "{junk}");
    }
    assert!(auth.fresh(1 + UPLOAD_WINDOW_MS) && !auth.fresh(2 + UPLOAD_WINDOW_MS));
}

const UPLOAD_HEADER: &str =
    "1.8erA1ftRdBncxHMwoxSXu3FeZOGWtwMjyZu+27b6bM1m53OJ5HIhPUo1kTUuJJWa4jk5RrR2AWbv6EVKmt0rCw==";

/// An approval verifies only against the key that signed it and only for the run,
/// stage and serial it names.
#[test]
fn approvals_are_bound_to_run_stage_and_serial() {
    let key = crate::test_key(1);
    let a = Approval::sign(RunId([4; 16]), 1, "SN1", &key);
    assert_eq!(a.verify(&key.public()), Ok(()));
    assert!(a.verify(&crate::test_key(2).public()).is_err());
    for changed in [
        Approval {
            run: RunId([5; 16]),
            ..a.clone()
        },
        Approval {
            stage: 2,
            ..a.clone()
        },
        Approval {
            serial: "SN2".into(),
            ..a.clone()
        },
    ] {
        assert!(changed.verify(&key.public()).is_err(), "{changed:?}");
    }
}
