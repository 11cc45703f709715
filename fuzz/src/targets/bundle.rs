//! Offline result bundles (`KILNRES\x03` + COBS records): the record stream reader
//! and record decoder of the protocol, and the coordinator's whole streamed `import`
//! (magic, records, ticket signature, every batch through the ingest check, blobs
//! against Artifact frames, staging and commit) into a lab state folder on tmpfs,
//! put back as it was after each import that went through.
//! Some inputs whose records still decode get their ticket signed again with the
//! trusted key, so the checks after the ticket get fuzzed too.
use kiln_protocol::{
    BUNDLE_MAGIC, Batch, PublicKey, RecordReader, ResultRecord, SecretKey, SignedTicket,
    TICKET_DOMAIN,
};

use super::{class, pick};
use crate::fixtures::{self, Lab};

/// The target.
pub struct Bundle {
    key: SecretKey,
    trusted: PublicKey,
    lab: Lab,
    limits: kiln_coordinator::http::Limits,
    accepted: u64,
}

impl Bundle {
    /// Sets the target up (a lab on tmpfs).
    pub fn new() -> Self {
        let key = fixtures::coordinator_key();
        let mut limits = kiln_coordinator::http::Limits::from_env().expect("limits");
        // Small caps keep a mutated length from asking for gigabytes of tmpfs.
        limits.artifact_cap = 1 << 20;
        limits.run_quota = 4 << 20;
        Bundle {
            trusted: key.public(),
            lab: Lab::new(),
            limits,
            accepted: 0,
            key,
        }
    }

    /// Imports `bundle` into the lab; on success puts the lab back as it was.
    fn import(&mut self, bundle: &[u8]) -> anyhow::Result<u64> {
        let state = &self.lab.state;
        let i = kiln_coordinator::ingest::import_bundle(state, bundle, &self.limits)?;
        self.accepted += 1;
        let _ = std::fs::remove_dir_all(state.run_dir(&i.run));
        let _ = std::fs::remove_dir_all(state.root.join("cas"));
        self.lab.reset_runs();
        Ok(i.frames)
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
        let mut c = match self.import(data) {
            Ok(frames) => crate::stable_hash(("ok", frames.min(3))),
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
            c ^= match self.import(&bundle) {
                Ok(frames) => crate::stable_hash(("resigned ok", frames.min(3))),
                Err(e) => class("resigned", &e),
            };
        }
        c
    }
}
