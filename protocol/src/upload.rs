//! Artifact uploads signed by the run's claim key.
//!
//! `PUT /v1/runs/{run}/artifacts/{sha256}` carries the header
//! `Kiln-Upload-Auth: <at_ms>.<base64 sig>`: the signature by the run's bound claim key
//! over `UPLOAD_DOMAIN ++ postcard(UploadAuth { run, sha256, len, at_ms })`, `len`
//! being the whole object's length: the request's `Content-Length`, or `T` of its
//! `Content-Range: bytes N-M/T` when it resumes an upload from byte `N` (a `HEAD`
//! asking for the offset says `T` in [`UPLOAD_LENGTH_HEADER`]). The range itself is
//! not signed, as the body is not: what protects the content is that the whole object
//! must hash to `sha256` before it is stored. The coordinator checks the signature,
//! and that `at_ms` is within [`UPLOAD_WINDOW_MS`] of its clock, before it reads the
//! body or reserves quota.
use alloc::format;
use alloc::string::String;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::{Error, PublicKey, RunId, SecretKey, Sha256, Sig, UPLOAD_DOMAIN};

/// The request header that carries an upload's signature.
pub const UPLOAD_AUTH_HEADER: &str = "Kiln-Upload-Auth";
/// The request header of a `HEAD` on an upload URL that says the object's length.
pub const UPLOAD_LENGTH_HEADER: &str = "Kiln-Upload-Length";
/// The answer header that says how many bytes of an upload the coordinator holds.
pub const UPLOAD_OFFSET_HEADER: &str = "Kiln-Upload-Offset";
/// An upload signed further than this from the coordinator's clock is refused.
pub const UPLOAD_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Longest header value: a u64 in decimal, a dot, 64 bytes in padded base64.
const MAX_HEADER_LEN: usize = 20 + 1 + 88;

/// What an upload's signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAuth {
    /// The run the upload is for (the URL's).
    pub run: RunId,
    /// The digest the upload must hash to (the URL's).
    pub sha256: Sha256,
    /// The whole object's length in bytes (`Content-Length` of a whole upload, `T` of
    /// `Content-Range: bytes N-M/T` of a resumed one).
    pub len: u64,
    /// The agent's clock when it signed, unix milliseconds.
    pub at_ms: u64,
}

impl UploadAuth {
    /// The `Kiln-Upload-Auth` header value: `<at_ms>.<base64 sig>`.
    pub fn header(&self, key: &SecretKey) -> String {
        let body = postcard::to_allocvec(self).expect("upload auths always encode");
        let sig = key.sign(UPLOAD_DOMAIN, &body);
        format!("{}.{}", self.at_ms, STANDARD.encode(sig.0))
    }

    /// Checks a header value for an upload of an object of `len` bytes to `run` named `sha256`
    /// against the run's claim key. Returns the signed fields; the caller checks
    /// [`UploadAuth::fresh`] against its clock.
    pub fn verify(
        value: &str,
        run: RunId,
        sha256: Sha256,
        len: u64,
        key: &PublicKey,
    ) -> Result<UploadAuth, Error> {
        const WHAT: &str = "upload auth header (want <at_ms>.<base64 signature>)";
        if value.len() > MAX_HEADER_LEN {
            return Err(Error::Malformed(WHAT));
        }
        let (at, sig) = value.trim().split_once('.').ok_or(Error::Malformed(WHAT))?;
        if at.is_empty() || !at.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Malformed(WHAT));
        }
        let at_ms: u64 = at.parse().map_err(|_| Error::Malformed(WHAT))?;
        let raw = STANDARD.decode(sig).map_err(|_| Error::Malformed(WHAT))?;
        let sig: [u8; 64] = raw.try_into().map_err(|_| Error::Malformed(WHAT))?;
        let auth = UploadAuth {
            run,
            sha256,
            len,
            at_ms,
        };
        let body = postcard::to_allocvec(&auth).expect("upload auths always encode");
        key.verify(UPLOAD_DOMAIN, &body, &Sig(sig))?;
        Ok(auth)
    }

    /// Whether `at_ms` is within [`UPLOAD_WINDOW_MS`] of `now_ms`, either way.
    pub fn fresh(&self, now_ms: u64) -> bool {
        now_ms.abs_diff(self.at_ms) <= UPLOAD_WINDOW_MS
    }
}
