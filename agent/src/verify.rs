//! Ticket checks before anything runs: signature, trusted key, expiry, host binding.
use kiln_protocol::{PublicKey, SignedTicket, Ticket};
use std::path::Path;

use crate::hostinfo::HostInfo;

/// Reads a trusted-keys file: one or more `kiln-ed25519 …` lines.
pub fn load_trust(path: &Path) -> Result<Vec<PublicKey>, String> {
    let text = kiln_protocol::io::read_text_capped(
        path,
        kiln_protocol::MAX_KEY_FILE_BYTES as u64,
        "a trusted-keys file",
    )
    .map_err(|e| format!("cannot read trusted key {e}"))?;
    let keys: Vec<PublicKey> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| PublicKey::from_line(l).map_err(|e| format!("{}: {e}", path.display())))
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(format!("{}: no keys", path.display()));
    }
    Ok(keys)
}

/// Reads a ticket file, at most [`kiln_protocol::MAX_TICKET_BYTES`] (checked while
/// reading: `/dev/zero` fails at once). The error is a one-line reason.
pub fn read_ticket_file(path: &Path) -> Result<Vec<u8>, String> {
    kiln_protocol::io::read_file_capped(path, kiln_protocol::MAX_TICKET_BYTES as u64, "a ticket")
        .map_err(|e| format!("cannot read ticket {e}"))
}

/// Every check, in order: format, trusted key, signature, version, size limits
/// ([`kiln_protocol::limits`]), expiry, host.
/// The error is a one-line reason.
pub fn check_ticket(
    bytes: &[u8],
    trusted: &[PublicKey],
    now: u64,
    host: &HostInfo,
) -> Result<(SignedTicket, Ticket), String> {
    if bytes.len() > kiln_protocol::MAX_TICKET_BYTES {
        return Err("ticket file is too large".into());
    }
    let signed = SignedTicket::from_file(bytes).map_err(|e| format!("ticket refused: {e}"))?;
    let ticket = signed
        .verify(trusted)
        .map_err(|e| format!("ticket refused: {e}"))?;
    ticket
        .check_limits()
        .map_err(|e| format!("ticket refused: {e}"))?;
    ticket
        .check_time(now)
        .map_err(|e| format!("ticket refused: {e}"))?;
    ticket
        .check_host(&host.macs, host.serial.as_deref())
        .map_err(|e| format!("ticket refused: {e}"))?;
    Ok((signed, ticket))
}

/// A ticket refused only for having expired: it passes every other check as of its
/// last valid second, and `now` is past it. Such a ticket may still deliver what a
/// previous start of its run spooled (see `runner::run_ticket`); nothing new runs.
pub fn check_expired_ticket(
    bytes: &[u8],
    trusted: &[PublicKey],
    now: u64,
    host: &HostInfo,
) -> Option<(SignedTicket, Ticket)> {
    let signed = SignedTicket::from_file(bytes).ok()?;
    let ticket = signed.verify(trusted).ok()?;
    if now <= ticket.not_after {
        return None;
    }
    check_ticket(bytes, trusted, ticket.not_after, host).ok()
}

/// Unix seconds now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{HostBinding, Mac, Plan, RunId, SecretKey};

    fn signed(not_after: u64, key: &SecretKey, mac: Mac) -> Vec<u8> {
        let t = Ticket {
            version: kiln_protocol::VERSION,
            run: RunId([7; 16]),
            issued_at: 100,
            not_after,
            host: HostBinding {
                name: "here".into(),
                macs: vec![mac],
                serial: None,
                spec: Default::default(),
                agent_key: None,
            },
            coordinator: None,
            plan: Plan {
                name: "p".into(),
                stages: vec![],
                fail_fast: false,
                timeout_s: 0,
                hold: Default::default(),
            },
        };
        SignedTicket::sign(&t, key).to_file()
    }

    #[test]
    fn only_a_ticket_refused_for_expiry_alone_counts_as_expired() {
        let key = SecretKey::from_seed([3; 32]);
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let host = HostInfo {
            hostname: "h".into(),
            macs: vec![mac],
            serial: None,
        };
        let trusted = [key.public()];
        let bytes = signed(200, &key, mac);
        // Valid: not expired.
        assert!(check_ticket(&bytes, &trusted, 150, &host).is_ok());
        assert!(check_expired_ticket(&bytes, &trusted, 150, &host).is_none());
        // Expired, and nothing else wrong.
        let e = check_ticket(&bytes, &trusted, 201, &host).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        assert!(check_expired_ticket(&bytes, &trusted, 201, &host).is_some());
        // Expired and signed by an untrusted key, or for another host: not merely expired.
        let other = [SecretKey::from_seed([4; 32]).public()];
        assert!(check_expired_ticket(&bytes, &other, 201, &host).is_none());
        let elsewhere = HostInfo {
            macs: vec!["52:54:00:00:00:02".parse().unwrap()],
            ..host.clone()
        };
        assert!(check_expired_ticket(&bytes, &trusted, 201, &elsewhere).is_none());
    }
}
