//! Run tickets: what to run, where, until when, signed by the coordinator.
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::{
    Error, HostSpec, KeyId, Mac, Plan, PublicKey, RunId, SecretKey, Sig, TICKET_DOMAIN,
    TICKET_MAGIC, VERSION,
};

/// The signed content of a ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    /// Format version; always the first field so it can be read before the rest.
    pub version: u16,
    /// The run this ticket starts.
    pub run: RunId,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds after which the agent refuses the ticket.
    pub not_after: u64,
    /// The machine the ticket is for.
    pub host: HostBinding,
    /// Base URL of the coordinator to report to (none: offline).
    pub coordinator: Option<String>,
    /// What to run.
    pub plan: Plan,
}

/// The host a ticket is bound to: its name plus MACs and/or DMI serial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostBinding {
    /// Name in the coordinator's hosts.toml.
    pub name: String,
    /// The machine must have at least one of these (if any are given).
    pub macs: Vec<Mac>,
    /// The machine's DMI product serial must equal this (if given).
    pub serial: Option<String>,
    /// What the machine should have, for inventory diffs and storage gates.
    pub spec: HostSpec,
    /// The enrolled host's agent key (`kiln-agent enroll`): when set, the agent claims
    /// the run with this key and the coordinator accepts no other (format version 2).
    pub agent_key: Option<PublicKey>,
}

/// A ticket body as signed bytes, with the signing key's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedTicket {
    /// Id of the key that signed `body`.
    pub key_id: KeyId,
    /// postcard(Ticket): the exact signed bytes (after [`TICKET_DOMAIN`]).
    pub body: Vec<u8>,
    /// ed25519 over `TICKET_DOMAIN ++ body`.
    pub sig: Sig,
}

impl SignedTicket {
    /// Encodes and signs `ticket`.
    pub fn sign(ticket: &Ticket, key: &SecretKey) -> Self {
        let body = postcard::to_allocvec(ticket).expect("tickets always encode");
        SignedTicket {
            key_id: key.public().key_id(),
            sig: key.sign(TICKET_DOMAIN, &body),
            body,
        }
    }

    /// The ticket file: magic, then postcard(SignedTicket).
    pub fn to_file(&self) -> Vec<u8> {
        let mut out = Vec::from(&TICKET_MAGIC[..]);
        out.extend(postcard::to_allocvec(self).expect("signed tickets always encode"));
        out
    }

    /// Parses a ticket file (no signature check yet).
    pub fn from_file(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < TICKET_MAGIC.len() {
            return if TICKET_MAGIC.starts_with(bytes) && !bytes.is_empty() {
                Err(Error::Truncated)
            } else {
                Err(Error::BadMagic("ticket"))
            };
        }
        if bytes[..7] != TICKET_MAGIC[..7] {
            return Err(Error::BadMagic("ticket"));
        }
        if bytes[7] != TICKET_MAGIC[7] {
            return Err(Error::UnsupportedVersion(bytes[7] as u16));
        }
        let (st, rest) = postcard::take_from_bytes::<SignedTicket>(&bytes[8..])?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes);
        }
        Ok(st)
    }

    /// Checks the signature against the trusted keys and decodes the ticket.
    /// Time and host binding are checked separately ([`Ticket::check_time`], [`Ticket::check_host`]).
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<Ticket, Error> {
        let key = trusted
            .iter()
            .find(|k| k.key_id() == self.key_id)
            .ok_or_else(|| Error::UntrustedKey(alloc::format!("key id {}", self.key_id)))?;
        key.verify(TICKET_DOMAIN, &self.body, &self.sig)?;
        Ticket::decode(&self.body)
    }

    /// Decodes the body without checking the signature (for display of bad tickets).
    pub fn decode_unverified(&self) -> Result<Ticket, Error> {
        Ticket::decode(&self.body)
    }
}

impl Ticket {
    fn decode(body: &[u8]) -> Result<Ticket, Error> {
        // The version leads the body, so an unknown version is named, not misparsed.
        let (version, _) = postcard::take_from_bytes::<u16>(body)?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let (t, rest) = postcard::take_from_bytes::<Ticket>(body)?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes);
        }
        Ok(t)
    }

    /// Refuses a ticket that has expired at `now` (unix seconds).
    pub fn check_time(&self, now: u64) -> Result<(), Error> {
        if now > self.not_after {
            return Err(Error::Expired {
                not_after: self.not_after,
                now,
            });
        }
        Ok(())
    }

    /// Refuses a ticket bound to another machine. Every constraint the binding
    /// states must hold: one of its MACs present, and its serial equal.
    pub fn check_host(&self, macs: &[Mac], serial: Option<&str>) -> Result<(), Error> {
        let b = &self.host;
        if b.macs.is_empty() && b.serial.is_none() {
            return Err(Error::HostMismatch(
                "binding names neither MAC nor serial".into(),
            ));
        }
        if !b.macs.is_empty() && !b.macs.iter().any(|m| macs.contains(m)) {
            let want: Vec<String> = b.macs.iter().map(|m| alloc::format!("{m}")).collect();
            return Err(Error::HostMismatch(alloc::format!(
                "no local MAC matches {} (host {})",
                want.join(","),
                b.name
            )));
        }
        if let Some(want) = &b.serial {
            match serial {
                Some(have) if have.trim() == want.trim() => {}
                Some(have) => {
                    return Err(Error::HostMismatch(alloc::format!(
                        "serial is {have:?}, ticket wants {want:?} (host {})",
                        b.name
                    )));
                }
                None => {
                    return Err(Error::HostMismatch(alloc::format!(
                        "no DMI serial readable, ticket wants {want:?} (host {})",
                        b.name
                    )));
                }
            }
        }
        Ok(())
    }
}
