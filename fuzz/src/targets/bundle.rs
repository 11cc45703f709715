//! Offline result bundles (`KILNRES\x01` + COBS records): the record stream reader
//! and record decoder of the protocol, and the coordinator's bundle check of
//! `import` (magic, records, ticket signature, blobs against Artifact frames).
//! Some inputs whose records still decode get their ticket signed again with the
//! trusted key, so the checks after the ticket get fuzzed too.
use kiln_protocol::{
    BUNDLE_MAGIC, Batch, PublicKey, RecordReader, ResultRecord, SecretKey, SignedTicket,
    TICKET_DOMAIN,
};

use super::{class, pick};
use crate::fixtures;

/// The target.
pub struct Bundle {
    key: SecretKey,
    trusted: PublicKey,
    accepted: u64,
}

impl Bundle {
    /// Sets the target up.
    pub fn new() -> Self {
        let key = fixtures::coordinator_key();
        Bundle {
            trusted: key.public(),
            accepted: 0,
            key,
        }
    }
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle::new()
    }
}

/// The records of a stream, with the reader's invariants checked.
fn records(stream: &[u8]) -> (Vec<Result<ResultRecord, kiln_protocol::Error>>, usize) {
    let mut reader = RecordReader::new(stream);
    let mut out = Vec::new();
    for r in reader.by_ref() {
        out.push(r.and_then(|p| ResultRecord::decode(&p)));
    }
    assert_eq!(
        reader.consumed() + reader.torn_tail(),
        stream.len(),
        "record reader lost bytes"
    );
    (out, reader.torn_tail())
}

impl crate::Target for Bundle {
    fn accepted(&self) -> u64 {
        self.accepted
    }

    fn run(&mut self, data: &[u8]) -> u64 {
        let mut c = match kiln_coordinator::ingest::check_bundle_for_fuzzing(data, &self.trusted) {
            Ok(frames) => {
                self.accepted += 1;
                crate::stable_hash(("ok", frames.min(3)))
            }
            Err(e) => class("check", &e),
        };
        let stream = data.get(BUNDLE_MAGIC.len()..).unwrap_or_default();
        let (recs, torn) = records(stream);
        let mut ok = Vec::with_capacity(recs.len());
        for r in recs {
            match r {
                Ok(rec) => {
                    match &rec {
                        // The check above verified the ticket; here only its body.
                        ResultRecord::Ticket(t) => {
                            let _ = t.decode_unverified();
                        }
                        ResultRecord::Batch(b) => {
                            let _ = Batch::open_unverified(b);
                        }
                        ResultRecord::Blob(_) => {}
                    }
                    let again = rec.encode();
                    let (back, _) = records(&again);
                    assert_eq!(back.len(), 1, "one record re-encodes to one");
                    ok.push(rec);
                }
                Err(e) => c ^= class("record", &e),
            }
        }
        c ^= crate::stable_hash(("records", ok.len().min(4), torn > 0));
        if pick(data, 4)
            && let Some(ResultRecord::Ticket(t)) = ok.first()
        {
            // Sign the ticket again, keep everything else, and check once more.
            let resigned = SignedTicket {
                key_id: self.trusted.key_id(),
                sig: self.key.sign(TICKET_DOMAIN, &t.body),
                body: t.body.clone(),
            };
            let mut bundle = data[..BUNDLE_MAGIC.len()].to_vec();
            bundle.extend(ResultRecord::Ticket(resigned).encode());
            for r in &ok[1..] {
                bundle.extend(r.encode());
            }
            c ^= match kiln_coordinator::ingest::check_bundle_for_fuzzing(&bundle, &self.trusted) {
                Ok(frames) => {
                    self.accepted += 1;
                    crate::stable_hash(("resigned ok", frames.min(3)))
                }
                Err(e) => class("resigned", &e),
            };
        }
        c
    }
}
