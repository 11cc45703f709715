//! Ticket files (`KILNTKT\x03` + postcard(SignedTicket)): the agent's whole check
//! (`kiln_agent::verify::check_ticket`: size, format, key, signature, version,
//! expiry, host binding) and the protocol's decode without a signature (what
//! `ticket show` and the coordinator's store use). Some inputs that still parse are
//! signed again with the trusted key, so the body decoder behind the signature gets
//! fuzzed through the real verify path too.
use kiln_protocol::{PublicKey, SecretKey, SignedTicket, TICKET_DOMAIN, TICKET_MAGIC};

use super::{class, pick};
use crate::fixtures::{self, NOW};

/// The target.
pub struct Ticket {
    trusted: Vec<PublicKey>,
    key: SecretKey,
    host: kiln_agent::hostinfo::HostInfo,
    accepted: u64,
}

impl Ticket {
    /// Sets the target up.
    pub fn new() -> Self {
        let key = fixtures::coordinator_key();
        Ticket {
            trusted: vec![key.public()],
            key,
            host: fixtures::host_info(),
            accepted: 0,
        }
    }

    /// What every decoded ticket must allow: the time and host checks, and a
    /// re-encoding that decodes to the same bytes.
    fn exercise(&self, t: &kiln_protocol::Ticket) -> u64 {
        let time = t.check_time(NOW).is_ok();
        let host = t
            .check_host(&self.host.macs, self.host.serial.as_deref())
            .is_ok();
        // The round trip goes through the same decoder as the signed path, without
        // the signature (fuzzed through `check_ticket` for the signed inputs).
        let bytes = postcard::to_allocvec(t).expect("re-encode ticket");
        let st = SignedTicket {
            key_id: self.key.public().key_id(),
            body: bytes.clone(),
            sig: kiln_protocol::Sig([0; 64]),
        };
        let back = SignedTicket::from_file(&st.to_file())
            .and_then(|s| s.decode_unverified())
            .expect("a re-encoded ticket decodes");
        assert_eq!(
            postcard::to_allocvec(&back).expect("re-encode"),
            bytes,
            "ticket does not round-trip"
        );
        crate::stable_hash((time, host, t.plan.stages.len().min(4)))
    }
}

impl Ticket {
    /// `body` signed with the trusted key into a ticket file, through the agent's check.
    fn resigned(&mut self, body: &[u8]) -> u64 {
        let st = SignedTicket {
            key_id: self.key.public().key_id(),
            sig: self.key.sign(TICKET_DOMAIN, body),
            body: body.to_vec(),
        };
        match kiln_agent::verify::check_ticket(&st.to_file(), &self.trusted, NOW, &self.host) {
            Ok((_, t)) => {
                self.accepted += 1;
                self.exercise(&t)
            }
            Err(e) => class("resigned", &e),
        }
    }
}

/// The body of a ticket file whatever its length prefix says: the bytes between the
/// magic, key id and length varint, and the 64-byte signature.
fn body_of(data: &[u8]) -> Option<&[u8]> {
    let rest = data.strip_prefix(&TICKET_MAGIC[..])?.get(8..)?;
    let varint = rest.iter().position(|b| b & 0x80 == 0)? + 1;
    rest.get(varint..rest.len().checked_sub(64)?)
}

impl Default for Ticket {
    fn default() -> Self {
        Ticket::new()
    }
}

impl crate::Target for Ticket {
    fn accepted(&self) -> u64 {
        self.accepted
    }

    fn run(&mut self, data: &[u8]) -> u64 {
        let agent = kiln_agent::verify::check_ticket(data, &self.trusted, NOW, &self.host);
        let mut c = match &agent {
            Ok((_, t)) => {
                self.accepted += 1;
                self.exercise(t)
            }
            Err(e) => class("agent", e),
        };
        match SignedTicket::from_file(data) {
            Err(e) => {
                c ^= class("file", &e);
                // A mutation that changed the body's length breaks the file's
                // framing, not the body: frame it again and sign it, so body
                // mutations of every kind reach the ticket decoder.
                if pick(data, 4)
                    && let Some(body) = body_of(data)
                {
                    c ^= self.resigned(body).rotate_left(3);
                }
            }
            Ok(st) => {
                let again = SignedTicket::from_file(&st.to_file()).expect("re-parse");
                assert_eq!(again, st, "signed ticket does not round-trip");
                match st.decode_unverified() {
                    Ok(t) => c ^= self.exercise(&t).rotate_left(1),
                    Err(e) => c ^= class("body", &e),
                }
                if pick(data, 4) {
                    c ^= self.resigned(&st.body).rotate_left(2);
                }
            }
        }
        c
    }
}
