//! Hardware stages: inventory and spec diff, SMART, CPU stress, storage (wipe-probe
//! gated), network, GPU.
//!
//! Layout: one folder per stage that has more than one file — the stage in its
//! `mod.rs`, the parsers of its tools' output and its helpers beside it (`gpu/` with
//! `nvsmi`, `nvhealth`, `gpuburn`; `smart/` with `smartparse`; `inventory/` with
//! `dmidecode`, `specdiff`; `storage/` with `fio` and the write gate `gate`/`wipe`;
//! `cpu/` with `thermal`); a one-file stage is a file (`network.rs`). Shared
//! infrastructure sits at this level: [`tools`] (PATH lookup and tool errors; the
//! runs go through [`crate::stages::proc`]), [`collect`] (sysfs/procfs), [`model`]
//! (the inventory types), [`usage`] (which disks are in use), `testutil`.
//!
//! Tests, here and in the whole agent: a module's unit tests sit at its end in
//! `#[cfg(test)] mod tests`. When they outgrow it (roughly past 150 lines, or shared
//! by several files), they move to a sibling file declared `#[cfg(test)]` by the
//! parent: `tests.rs` inside a stage folder (`inventory/tests.rs`,
//! `storage/tests.rs`), `<module>_tests.rs` beside a file module (`storage/gate_tests.rs`,
//! `crate::runner_tests`). Tests of several stages on the real host are in
//! `host_tests.rs`; captured tool output is under `agent/tests/fixtures/hardware/`
//! (read through `testutil::fixture`); tests that need podman or sshd are the
//! integration tests in `agent/tests/`.
pub mod collect;
pub mod cpu;
pub mod gpu;
pub mod inventory;
pub mod model;
pub mod network;
pub mod smart;
pub mod storage;
pub mod tools;
pub mod usage;

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod host_tests;
