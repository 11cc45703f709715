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

/// Unix seconds now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
