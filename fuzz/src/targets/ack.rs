//! Acks and the other replies the agent decodes from the coordinator: the sealed ack
//! (`postcard(Ack) ++ sig[64]`, the answer to a batch, opened as the agent opens it:
//! the coordinator key's signature for this agent's claim key, then the body) and the
//! secrets reply (`Vec<(String, Vec<u8>)>`). Some inputs whose body decodes are
//! sealed again with the coordinator key, so a good signature must always open.
use kiln_protocol::{Ack as WireAck, PublicKey, SecretKey};

use super::{class, pick};
use crate::fixtures;

/// The ack decoder as the agent runs it.
pub fn decode_ack(
    data: &[u8],
    coordinator: &PublicKey,
    claim: &PublicKey,
) -> Result<WireAck, kiln_protocol::Error> {
    WireAck::open(data, coordinator, claim)
}

/// The target.
pub struct Ack {
    coordinator: SecretKey,
    claim: PublicKey,
    accepted: u64,
}

impl Ack {
    /// Sets the target up.
    pub fn new() -> Self {
        Ack {
            coordinator: fixtures::coordinator_key(),
            claim: fixtures::agent_key().public(),
            accepted: 0,
        }
    }
}

impl Default for Ack {
    fn default() -> Self {
        Ack::new()
    }
}

impl crate::Target for Ack {
    fn accepted(&self) -> u64 {
        self.accepted
    }

    fn run(&mut self, data: &[u8]) -> u64 {
        let secrets = postcard::from_bytes::<Vec<(String, Vec<u8>)>>(data);
        if let Ok(list) = &secrets {
            let again = postcard::to_allocvec(list).expect("re-encode secrets");
            assert_eq!(
                postcard::from_bytes::<Vec<(String, Vec<u8>)>>(&again).as_ref(),
                Ok(list),
                "secrets reply does not round-trip"
            );
        }
        let public = self.coordinator.public();
        let mut c = match decode_ack(data, &public, &self.claim) {
            Ok(ack) => {
                self.accepted += 1;
                let again = ack.seal(&self.coordinator, &self.claim);
                assert_eq!(
                    decode_ack(&again, &public, &self.claim).as_ref(),
                    Ok(&ack),
                    "ack does not round-trip"
                );
                crate::stable_hash(("ok", std::mem::discriminant(&ack.command), secrets.is_ok()))
            }
            Err(e) => class("ack", &e) ^ u64::from(secrets.is_ok()),
        };
        // The body of a sealed ack, sealed again by the coordinator: it must open for
        // this claimant and for no other (one input in 32: signing is slow).
        if pick(data, 32)
            && data.len() > 64
            && let Ok(ack) = postcard::from_bytes::<WireAck>(&data[..data.len() - 64])
        {
            let sealed = ack.seal(&self.coordinator, &self.claim);
            assert_eq!(
                decode_ack(&sealed, &public, &self.claim).as_ref(),
                Ok(&ack),
                "a resealed ack does not open"
            );
            let stranger = fixtures::coordinator_key().public();
            assert!(
                decode_ack(&sealed, &public, &stranger).is_err(),
                "an ack opened for another claimant"
            );
            self.accepted += 1;
            c ^= crate::stable_hash("resealed");
        }
        c
    }
}
