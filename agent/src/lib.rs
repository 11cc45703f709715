//! kiln's agent: verifies a run ticket, runs its stages, and reports signed frames to
//! the coordinator (or into an offline result bundle).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod boot;
pub mod cli;
pub mod hostinfo;
pub mod logger;
pub mod reporter;
pub mod runner;
pub mod stages;
pub mod verify;
