//! The crate's one error type.
use alloc::string::String;
use core::fmt;

/// Everything that can go wrong decoding or verifying kiln's formats.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before the value did.
    Truncated,
    /// The bytes do not start with the expected magic.
    BadMagic(&'static str),
    /// A format version this build does not understand.
    UnsupportedVersion(u16),
    /// The bytes are not a valid encoding of the expected type.
    Malformed(&'static str),
    /// Bytes were left over after the value.
    TrailingBytes,
    /// The signature does not match the signed bytes.
    BadSignature,
    /// The signing key is not one of the trusted keys.
    UntrustedKey(String),
    /// The ticket's validity window has ended.
    Expired {
        /// The ticket's `not_after`, unix seconds.
        not_after: u64,
        /// The verifier's clock, unix seconds.
        now: u64,
    },
    /// The ticket is bound to a different machine.
    HostMismatch(String),
    /// A key file line is not `kiln-ed25519 <base64> [comment]`.
    BadKeyFile(&'static str),
    /// A record in a stream is damaged (not a torn tail).
    CorruptRecord(usize),
    /// A path in a test bundle leaves its folder.
    UnsafePath(String),
    /// A value breaks a cap of [`crate::limits`].
    TooLarge {
        /// The value and its size: `plan name is 3145728 bytes`.
        what: String,
        /// The cap.
        limit: usize,
        /// The cap's name in [`crate::limits`].
        rule: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated input"),
            Error::BadMagic(what) => write!(f, "not a kiln {what} (bad magic)"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            Error::Malformed(what) => write!(f, "malformed {what}"),
            Error::TrailingBytes => f.write_str("trailing bytes after the value"),
            Error::BadSignature => f.write_str("bad signature"),
            Error::UntrustedKey(id) => write!(f, "signed by an untrusted key ({id})"),
            Error::Expired { not_after, now } => {
                write!(f, "ticket expired {}s ago", now.saturating_sub(*not_after))
            }
            Error::HostMismatch(why) => write!(f, "ticket is bound to another host: {why}"),
            Error::BadKeyFile(why) => write!(f, "bad key file: {why}"),
            Error::CorruptRecord(n) => write!(f, "corrupt record #{n}"),
            Error::UnsafePath(p) => write!(f, "unsafe path in bundle: {p}"),
            Error::TooLarge { what, limit, rule } => {
                write!(f, "{what}, over the limit of {limit} (limits::{rule})")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        match e {
            postcard::Error::DeserializeUnexpectedEnd => Error::Truncated,
            _ => Error::Malformed("postcard value"),
        }
    }
}
