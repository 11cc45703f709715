//! Prints tickets signed and verified per second (`cargo bench -p kiln-protocol`).
use kiln_protocol::*;
use std::time::Instant;

fn ticket() -> Ticket {
    Ticket {
        version: VERSION,
        run: RunId([0x11; 16]),
        issued_at: 1_700_000_000,
        not_after: u64::MAX,
        host: HostBinding {
            name: "node1".into(),
            macs: vec![Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56])],
            serial: Some("SN1".into()),
            spec: HostSpec::default(),
            agent_key: None,
        },
        coordinator: Some("http://10.0.0.1:7373".into()),
        plan: Plan {
            name: "bench".into(),
            stages: (0..8)
                .map(|i| Stage {
                    timeout_s: 600,
                    retries: 1,
                    env: vec![("LEVEL".into(), "2".into())],
                    ..Stage::new(
                        format!("stage-{i}"),
                        StageKind::Exec {
                            command: vec!["sh".into(), "-c".into(), "./run.sh".into()],
                        },
                    )
                })
                .collect(),
            fail_fast: true,
            timeout_s: 7200,
            hold: Default::default(),
        },
    }
}

fn rate(label: &str, n: u32, f: impl Fn()) {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label:<32} {:>10.0} /s  ({:.1} µs each)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
}

fn main() {
    let key = SecretKey::from_seed([1; 32]);
    let trusted = [key.public()];
    let t = ticket();
    let file = SignedTicket::sign(&t, &key).to_file();
    println!("ticket file: {} bytes, 8 stages", file.len());
    let n = 20_000;
    rate("sign + encode", n, || {
        std::hint::black_box(SignedTicket::sign(&t, &key).to_file());
    });
    rate("decode + verify + checks", n, || {
        let st = SignedTicket::from_file(&file).expect("valid");
        let t = st.verify(&trusted).expect("valid");
        t.check_time(1_700_000_100).expect("valid");
        t.check_host(&[Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56])], Some("SN1"))
            .expect("valid");
        std::hint::black_box(t);
    });
    let batch = Batch {
        run: RunId([1; 16]),
        frames: (1..=64)
            .map(|seq| Frame {
                seq,
                at_ms: 1_700_000_000_000 + seq,
                event: Event::Log {
                    stage: 0,
                    stream: Stream::Stdout,
                    text: "a typical line of test output, about sixty bytes long".into(),
                },
            })
            .collect(),
    };
    let sealed = batch.seal(&key);
    rate("seal batch (64 log frames)", n / 4, || {
        std::hint::black_box(batch.seal(&key));
    });
    rate("open + verify batch (64 frames)", n / 4, || {
        std::hint::black_box(Batch::open(&sealed, &key.public()).expect("valid"));
    });
}
