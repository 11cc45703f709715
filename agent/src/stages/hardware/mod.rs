//! Hardware stages: inventory and spec diff, SMART, CPU stress, storage (wipe-probe
//! gated), network, GPU.
pub mod collect;
pub mod cpu;
pub mod dmidecode;
pub mod gpu;
pub mod inventory;
pub mod model;
pub mod network;
pub mod nvsmi;
pub mod smart;
pub mod specdiff;
pub mod storage;
pub mod tools;

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod inventory_tests;
