//! Whole-path tests: real `kiln-coordinator` and `kiln-agent` processes on loopback,
//! with real podman, sshd and qemu where a test needs them.
//!
//! The binaries are taken from the workspace's target folder: run
//! `cargo build --workspace --bins` first (the README's test command does).
mod common;

mod artifacts;
mod bmc;
mod browser;
mod claims;
mod container;
mod crash;
mod expiry;
mod full_disk;
mod hardware;
mod hold;
mod image;
mod lights;
mod lights_netboot;
mod live_import;
mod netboot;
mod netboot_hold;
mod offline;
mod power;
mod qemu;
mod quickstart;
mod race;
mod runs;
mod server;
mod ssh;
mod tickets;
