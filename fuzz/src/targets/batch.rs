//! Sealed batches (`postcard(Batch) ++ sig[64]`): the protocol's decoder, the
//! secrets request decoder (same shape), and the coordinator's whole ingest
//! (`Ingester::ingest`, online) against a lab with a pending and a claimed run.
//! Some inputs whose body still decodes are sealed again with the agent's key, so
//! the checks behind the signature (claim, seqs, stages, caps) get fuzzed too.
//! Each input starts from the same lab state: an accepted batch resets it.
use kiln_coordinator::ingest::{Ingester, Mode};
use kiln_protocol::{
    BATCH_DOMAIN, Batch as WireBatch, PublicKey, SECRETS_DOMAIN, SecretKey, SecretsRequest,
};

use super::{class, pick};
use crate::fixtures::{self, Lab, RUN_CLAIMED, RUN_PENDING};

/// The target.
pub struct Batch {
    lab: Lab,
    ingester: Ingester,
    agent: SecretKey,
    agent_pub: PublicKey,
    accepted: u64,
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
            accepted: 0,
            agent,
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

impl Batch {
    /// What the coordinator makes of stored frames: the run page, its JSON, the
    /// index and the listing, the log lines. Each must work for whatever it stored.
    fn show(&self, run: kiln_protocol::RunId) {
        use kiln_coordinator::{html, report, status, store::RunDir};
        let (state, key) = (&self.lab.state, self.ingester.key());
        let rd = RunDir::new(state, run);
        let (s, tails) = status::current_with_tails(&rd, key).expect("status of a stored run");
        let _ = html::run_page(&s, &tails, &|_| true);
        let _ = status::to_json(&s);
        let runs = status::summaries(state, key).expect("summaries");
        let _ = html::index(&html::IndexPage {
            runs: &runs,
            total_runs: runs.len(),
            older: None,
            filter: Default::default(),
            hosts: &[],
            total_hosts: 0,
            hosts_from: 0,
            session: None,
            now: 0,
            plans: Vec::new(),
        });
        let frames = rd.frames().expect("stored frames");
        let _ = report::log_lines(&frames).count();
    }
}

/// `data`'s body (all but the last 64 bytes) signed again under `domain`.
fn resealed_with(key: &SecretKey, data: &[u8], domain: &[u8]) -> Vec<u8> {
    let body = &data[..data.len() - 64];
    let mut v = body.to_vec();
    v.extend_from_slice(&key.sign(domain, body).0);
    v
}

/// `data`'s body sealed again as a batch.
fn resealed(key: &SecretKey, data: &[u8]) -> Vec<u8> {
    resealed_with(key, data, BATCH_DOMAIN)
}

impl crate::Target for Batch {
    fn accepted(&self) -> u64 {
        self.accepted
    }

    fn run(&mut self, data: &[u8]) -> u64 {
        let mut c = 0;
        let decoded = WireBatch::open_unverified(data);
        let (run, body) = match &decoded {
            Ok((b, _)) => {
                // The signature is checked once, by the ingest below (as online).
                let _ = b.claim_key();
                let again = postcard::to_allocvec(b).expect("encode");
                let (back, rest) =
                    postcard::take_from_bytes::<WireBatch>(&again).expect("re-decode");
                assert!(rest.is_empty());
                assert_eq!(
                    postcard::to_allocvec(&back).expect("encode"),
                    again,
                    "batch does not round-trip"
                );
                c ^= crate::stable_hash(("batch", b.frames.len().min(3)));
                let run = if b.run == RUN_CLAIMED {
                    RUN_CLAIMED
                } else {
                    RUN_PENDING
                };
                let body = if !pick(data, 2) {
                    data.to_vec()
                } else if b.run == run {
                    resealed(&self.agent, data)
                } else {
                    // For a run the lab has, so the checks after the run id get it.
                    let b = WireBatch {
                        run,
                        frames: b.frames.clone(),
                    };
                    b.seal(&self.agent)
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
        // A secrets request has the same shape (body ++ sig); it is decoded only
        // once its signature checks, so only inputs signed again get that far.
        if data.len() >= 64 && pick(data, 4) {
            c ^= match SecretsRequest::open(
                &resealed_with(&self.agent, data, SECRETS_DOMAIN),
                &self.agent_pub,
            ) {
                Ok(r) => crate::stable_hash(("secrets", r.names.len().min(2))),
                Err(e) => class("secrets", &e),
            };
        }
        match self
            .ingester
            .ingest(&run, &body, Mode::Online, fixtures::source())
        {
            Ok(ack) => {
                self.accepted += 1;
                c ^= crate::stable_hash(("acked", run, ack.upto.min(3)));
                self.show(run);
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
