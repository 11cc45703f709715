//! kiln's coordinator: one binary and a state folder. Signs run tickets, serves iPXE
//! scripts and artifacts, ingests signed reports, and shows runs to people.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod cas;
pub mod claims;
pub mod cli;
pub mod commands;
pub mod exit;
pub mod fmt;
pub mod fsutil;
pub mod gc;
pub mod html;
pub mod http;
pub mod images;
pub mod index;
pub mod ingest;
pub mod ipxe;
pub mod journal;
pub mod lights;
pub mod limits;
pub mod lost;
pub mod neigh;
pub mod notify;
pub mod orders;
pub mod plan;
pub mod power;
pub mod powerq;
pub mod report;
pub mod state;
pub mod status;
pub mod store;
pub mod ticket;
pub mod units;
pub use kiln_cmdline::visible;
