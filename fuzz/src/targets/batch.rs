//! Sealed batches (`postcard(Batch) ++ sig[64]`): the protocol's open/verify, the
//! secrets request decoder (same shape), and the coordinator's whole ingest
//! (`Ingester::ingest`, online) against a lab with a pending and a claimed run.
//! Some inputs whose body still decodes are sealed again with the agent's key, so
//! the checks behind the signature (claim, seqs, stages, caps) get fuzzed too.
//! Each input starts from the same lab state: an accepted batch resets it.
use kiln_coordinator::ingest::{Ingester, Mode};
use kiln_protocol::{BATCH_DOMAIN, Batch as WireBatch, PublicKey, SecretKey, SecretsRequest};

use super::{class, pick};
use crate::fixtures::{self, Lab, RUN_CLAIMED, RUN_PENDING};

/// The target.
pub struct Batch {
    lab: Lab,
    ingester: Ingester,
    agent: SecretKey,
    agent_pub: PublicKey,
}

impl Batch {
    /// Sets the target up (a lab on tmpfs).
    pub fn new() -> Self {
        let lab = Lab::new();
        let ingester = Ingester::new(&lab.state).expect("ingester");
        let agent = fixtures::agent_key();
        Batch {
            lab,
            ingester,
            agent_pub: agent.public(),
            agent,
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

impl crate::Target for Batch {
    fn run(&mut self, data: &[u8]) -> u64 {
        let mut c = match SecretsRequest::open(data, &self.agent_pub) {
            Ok(r) => crate::stable_hash(("secrets", r.names.len().min(2))),
            Err(e) => class("secrets", &e),
        };
        let decoded = WireBatch::open_unverified(data);
        let (run, body) = match &decoded {
            Ok((b, check)) => {
                let signed = check.verify(&self.agent_pub).is_ok();
                assert_eq!(WireBatch::open(data, &self.agent_pub).is_ok(), signed);
                let _ = b.claim_key();
                let again = b.seal(&self.agent);
                let (back, _) = WireBatch::open_unverified(&again).expect("re-open");
                assert_eq!(
                    postcard::to_allocvec(&back).expect("encode"),
                    postcard::to_allocvec(b).expect("encode"),
                    "batch does not round-trip"
                );
                c ^= crate::stable_hash(("batch", signed, b.frames.len().min(3)));
                let run = if b.run == RUN_CLAIMED {
                    RUN_CLAIMED
                } else {
                    RUN_PENDING
                };
                let body = if pick(data, 2) {
                    let body = &data[..data.len() - 64];
                    let mut v = body.to_vec();
                    v.extend_from_slice(&self.agent.sign(BATCH_DOMAIN, body).0);
                    v
                } else {
                    data.to_vec()
                };
                (run, body)
            }
            Err(e) => {
                c ^= class("open", &e);
                let run = if pick(data, 2) {
                    RUN_CLAIMED
                } else {
                    RUN_PENDING
                };
                (run, data.to_vec())
            }
        };
        match self.ingester.ingest(&run, &body, Mode::Online) {
            Ok(ack) => {
                c ^= crate::stable_hash(("acked", run, ack.upto.min(3)));
                // Stored frames (or a claim): back to the start for the next input.
                self.lab.reset_runs();
                self.ingester = Ingester::new(&self.lab.state).expect("ingester");
            }
            Err(r) => {
                assert!(r.status < 500, "ingest answered {}: {}", r.status, r.reason);
                c ^= class("refused", &r) ^ u64::from(r.status);
            }
        }
        c
    }
}
