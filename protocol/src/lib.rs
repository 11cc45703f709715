//! kiln's wire formats: run tickets, plans, frames, acks, key files, tree hashes
//! and COBS record streams.
//!
//! postcard is not self-describing: the Rust types in this crate *are* the schema.
//! `WIRE.md` beside this crate documents the bytes and the stability policy; golden
//! tests pin every type's encoding.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

mod bytes;
mod error;
mod frame;
mod ids;
#[cfg(feature = "std")]
pub mod io;
mod key;
pub mod limits;
mod plan;
mod records;
mod ticket;
#[cfg(feature = "std")]
pub mod tree;
mod upload;

pub use bytes::Sig;
pub use error::Error;
pub use frame::{
    Ack, Approval, Batch, Command, Event, Frame, Outcome, SealedCheck, SecretsRequest, Stream,
};
pub use ids::{Mac, RunId, Sha256, hex, parse_hex};
pub use key::{KeyId, PublicKey, SecretKey};
pub use plan::{
    BuildSpec, ContainerSpec, CpuStressSpec, DiskSpec, GpuSpec, HealthSpec, Hold, HoldWhen,
    HostSpec, ImageRef, Mount, NetworkSpec, NicSpec, Os, Plan, Runtime, ServiceSpec, SmartSpec,
    SshSpec, Stage, StageKind, StorageSpec, StorageTool, TestBundle,
};
pub use records::{RecordReader, ResultRecord, encode_record};
pub use ticket::{HostBinding, SignedTicket, Ticket};
pub use upload::{
    UPLOAD_AUTH_HEADER, UPLOAD_LENGTH_HEADER, UPLOAD_OFFSET_HEADER, UPLOAD_WINDOW_MS, UploadAuth,
};

/// Format version of tickets, batches and bundles; a changed encoding is a new version.
pub const VERSION: u16 = 3;
/// First bytes of a ticket file; the last byte is the format version.
pub const TICKET_MAGIC: &[u8; 8] = b"KILNTKT\x03";
/// First bytes of an offline result bundle; the last byte is the format version.
pub const BUNDLE_MAGIC: &[u8; 8] = b"KILNRES\x03";
/// Domain separator prefixed to a ticket body before signing.
pub const TICKET_DOMAIN: &[u8] = b"kiln-ticket-v3\0";
/// Domain separator prefixed to a batch body before signing.
pub const BATCH_DOMAIN: &[u8] = b"kiln-batch-v1\0";
/// Domain separator prefixed to a secrets request before signing.
pub const SECRETS_DOMAIN: &[u8] = b"kiln-secrets-v1\0";
/// Domain separator prefixed to an ack (claim key, then body) before signing.
pub const ACK_DOMAIN: &[u8] = b"kiln-ack-v1\0";
/// Domain separator prefixed to a disk [`Approval`] before signing.
pub const APPROVAL_DOMAIN: &[u8] = b"kiln-approve-v1\0";
/// Domain separator prefixed to an artifact upload's [`UploadAuth`] before signing.
pub const UPLOAD_DOMAIN: &[u8] = b"kiln-upload-v1\0";
/// Default coordinator listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7373";
/// Largest batch body the coordinator accepts, in bytes.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
pub use limits::MAX_TICKET_BYTES;
/// Largest key file (a public, secret or trusted-keys file) anyone reads, in bytes.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;
/// Largest plan file (TOML) the coordinator reads, in bytes.
pub const MAX_PLAN_FILE_BYTES: usize = 1 << 20;
/// Largest secret value (a file given to `secret set` or `--secret`), in bytes.
pub const MAX_SECRET_BYTES: usize = 1 << 20;
/// The longest hold a plan may ask for (`hold_for`), seconds: 7 days.
pub const MAX_HOLD_S: u64 = 7 * 24 * 3600;
/// The agent sends a batch at least this often (an empty one is the heartbeat).
pub const HEARTBEAT_MS: u64 = 2_000;
/// A run with no batch for this long shows `stale`.
pub const STALE_AFTER_MS: u64 = 60_000;
/// Target interval between batches while a stage produces output.
pub const BATCH_INTERVAL_MS: u64 = 250;
/// A batch is sent early once its frames reach this many bytes.
pub const BATCH_MAX_BYTES: usize = 64 * 1024;
/// Exit code of a test meaning "passed with a warning".
pub const EXIT_WARNING: i32 = 42;
/// Exit code of a test meaning "skipped".
pub const EXIT_SKIPPED: i32 = 43;
