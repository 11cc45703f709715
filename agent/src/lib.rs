//! kiln's agent: verifies a run ticket, runs its stages, and reports signed frames to
//! the coordinator (or into an offline result bundle).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attempts;
pub mod boot;
pub mod bundle;
pub mod cli;
pub mod client;
pub mod clock;
pub mod end;
pub mod exit;
pub mod hold;
pub mod hostinfo;
pub mod hostkey;
pub mod progress;
pub mod reaper;
pub mod reporter;
pub mod resume;
pub mod runner;
pub mod secrets;
pub mod session;
pub mod signals;
pub mod spool;
pub mod stages;
pub mod transfer;
pub mod verify;

#[cfg(test)]
mod runner_tests;
#[cfg(test)]
mod test_http;
