//! ed25519 key files and fingerprints.
//!
//! Public key file: one line `kiln-ed25519 <base64 of 32 bytes> <comment>`.
//! Secret key file: one line `kiln-ed25519-secret <base64 of the 32-byte seed>`.
//! Fingerprint: `SHA256:<unpadded base64 of sha256(public key)>`, as OpenSSH prints.
use alloc::format;
use alloc::string::String;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use core::fmt;
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

use crate::{Error, Sig};

const PUB_TAG: &str = "kiln-ed25519";
const SECRET_TAG: &str = "kiln-ed25519-secret";

/// The first 8 bytes of sha256(public key): names the key that signed a ticket.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex(&self.0))
    }
}
impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// This key's id: the first 8 bytes of sha256(key).
    pub fn key_id(&self) -> KeyId {
        let d = crate::Sha256::of(&self.0).0;
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        KeyId(id)
    }

    /// `SHA256:<base64>`, as OpenSSH prints fingerprints.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(crate::Sha256::of(&self.0).0)
        )
    }

    /// The key file line `kiln-ed25519 <base64> <comment>` (no newline).
    pub fn to_line(&self, comment: &str) -> String {
        let comment = comment.replace(['\n', '\r'], " ");
        format!("{PUB_TAG} {} {comment}", STANDARD.encode(self.0))
            .trim_end()
            .into()
    }

    /// Parses the first non-empty, non-`#` line of a public key file.
    pub fn from_line(text: &str) -> Result<Self, Error> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or(Error::BadKeyFile("empty"))?;
        let mut parts = line.split_whitespace();
        if parts.next() != Some(PUB_TAG) {
            return Err(Error::BadKeyFile(
                "expected `kiln-ed25519 <base64> [comment]`",
            ));
        }
        let b64 = parts.next().ok_or(Error::BadKeyFile("missing key"))?;
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| Error::BadKeyFile("key is not base64"))?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|_| Error::BadKeyFile("key is not 32 bytes"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::BadKeyFile("not a valid ed25519 point"))?;
        Ok(PublicKey(bytes))
    }

    /// Checks `sig` over `domain ++ msg`.
    pub fn verify(&self, domain: &[u8], msg: &[u8], sig: &Sig) -> Result<(), Error> {
        let vk =
            ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadSignature)?;
        let mut buf = alloc::vec::Vec::with_capacity(domain.len() + msg.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(msg);
        vk.verify_strict(&buf, &ed25519_dalek::Signature::from_bytes(&sig.0))
            .map_err(|_| Error::BadSignature)
    }
}

/// An ed25519 signing key (its 32-byte seed).
#[derive(Clone)]
pub struct SecretKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public().fingerprint())
    }
}

impl SecretKey {
    /// A key from a 32-byte seed (take it from the OS's random source).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `domain ++ msg`.
    pub fn sign(&self, domain: &[u8], msg: &[u8]) -> Sig {
        let mut buf = alloc::vec::Vec::with_capacity(domain.len() + msg.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(msg);
        Sig(self.0.sign(&buf).to_bytes())
    }

    /// The secret key file line (no newline).
    pub fn to_line(&self) -> String {
        format!("{SECRET_TAG} {}", STANDARD.encode(self.0.to_bytes()))
    }

    /// Parses a secret key file.
    pub fn from_line(text: &str) -> Result<Self, Error> {
        let mut parts = text.split_whitespace();
        if parts.next() != Some(SECRET_TAG) {
            return Err(Error::BadKeyFile("expected `kiln-ed25519-secret <base64>`"));
        }
        let raw = STANDARD
            .decode(parts.next().ok_or(Error::BadKeyFile("missing key"))?)
            .map_err(|_| Error::BadKeyFile("key is not base64"))?;
        let seed: [u8; 32] = raw
            .try_into()
            .map_err(|_| Error::BadKeyFile("key is not 32 bytes"))?;
        Ok(Self::from_seed(seed))
    }
}
