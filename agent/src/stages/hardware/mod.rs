//! Hardware stages: inventory and spec diff, SMART, CPU stress, storage (wipe-probe
//! gated), network, GPU.
pub mod cpu;
pub mod gpu;
pub mod inventory;
pub mod network;
pub mod smart;
pub mod storage;
