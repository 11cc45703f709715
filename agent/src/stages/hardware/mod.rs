//! Hardware stages: inventory and spec diff, SMART, CPU stress, storage (wipe-probe
//! gated), network, GPU.
pub mod collect;
pub mod cpu;
pub mod dmidecode;
pub mod fio;
pub mod gate;
pub mod gpu;
pub mod gpuburn;
pub mod inventory;
pub mod model;
pub mod network;
pub mod nvhealth;
pub mod nvsmi;
pub mod smart;
pub mod smartparse;
pub mod specdiff;
pub mod storage;
pub mod thermal;
pub mod tools;
pub mod usage;
pub mod wipe;

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod inventory_tests;

#[cfg(test)]
mod wipe_tests;

#[cfg(test)]
mod storage_tests;

#[cfg(test)]
mod gate_tests;

#[cfg(test)]
mod host_tests;
