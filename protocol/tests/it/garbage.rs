//! Untrusted bytes never panic a decoder: random inputs and mutations of valid
//! encodings (flipped bytes, huge lengths, truncations) through every entry point.
use crate::{sample_ticket, test_key};
use kiln_protocol::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, so a failure reproduces.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn every_decoder(bytes: &[u8]) {
    let key = test_key(1).public();
    let _ = SignedTicket::from_file(bytes).map(|t| t.verify(&[key]));
    let _ = Batch::open_unverified(bytes).map(|(_, c)| c.verify(&key));
    let _ = Batch::open(bytes, &key);
    let _ = SecretsRequest::open(bytes, &key);
    let _ = ResultRecord::decode(bytes);
    let _ = postcard::from_bytes::<Frame>(bytes);
    let _ = postcard::from_bytes::<Ack>(bytes);
    let _ = Ack::open(bytes, &key, &key);
    let text = String::from_utf8_lossy(bytes);
    let _ = UploadAuth::verify(&text, RunId([1; 16]), Sha256([2; 32]), 3, &key);
    let _ = postcard::from_bytes::<Ticket>(bytes);
    for r in RecordReader::new(bytes) {
        let _ = r.map(|p| ResultRecord::decode(&p));
    }
    let _ = PublicKey::from_line(&String::from_utf8_lossy(bytes));
    let _ = SecretKey::from_line(&String::from_utf8_lossy(bytes));
}

fn valid_samples() -> Vec<Vec<u8>> {
    let key = test_key(1);
    let frame = Frame {
        seq: 7,
        at_ms: 1,
        event: Event::Part {
            stage: 0,
            name: "debian:12".into(),
            outcome: Outcome::Failed,
            detail: "exit 1".into(),
            tail: vec!["a".into(), "b".into()],
        },
    };
    let batch = Batch {
        run: RunId([1; 16]),
        frames: vec![frame.clone(), frame],
    };
    vec![
        SignedTicket::sign(&sample_ticket(), &key).to_file(),
        batch.seal(&key),
        ResultRecord::Batch(batch.seal(&key)).encode(),
        Ack {
            run: RunId([1; 16]),
            upto: 9,
            command: Command::Abort { reason: "x".into() },
        }
        .seal(&key, &key.public()),
        UploadAuth {
            run: RunId([1; 16]),
            sha256: Sha256([2; 32]),
            len: 3,
            at_ms: 4,
        }
        .header(&key)
        .into_bytes(),
    ]
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed);
    for _ in 0..20_000 {
        let len = rng.below(300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        every_decoder(&bytes);
    }
}

#[test]
fn mutated_valid_encodings_never_panic() {
    let mut rng = Rng(0xfeed);
    for sample in valid_samples() {
        for _ in 0..5_000 {
            let mut b = sample.clone();
            for _ in 0..=rng.below(4) {
                let i = rng.below(b.len());
                match rng.below(4) {
                    0 => b[i] ^= 1 << rng.below(8),
                    1 => b[i] = 0xff, // varint continuation: huge lengths
                    2 => b.truncate(i),
                    _ => b.insert(i, rng.next() as u8),
                }
                if b.is_empty() {
                    break;
                }
            }
            every_decoder(&b);
        }
    }
}

#[test]
fn huge_declared_lengths_are_refused_not_allocated() {
    // A batch claiming 2^63 frames, and a ticket body claiming 2^40 bytes.
    let mut b = vec![1u8; 16];
    b.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    b.extend([0u8; 64]);
    assert!(Batch::open_unverified(&b).is_err());
    let mut t = TICKET_MAGIC.to_vec();
    t.extend([0u8; 8]);
    t.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
    assert!(SignedTicket::from_file(&t).is_err());
}
