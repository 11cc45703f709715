//! The plan a ticket carries: stages and their kind-specific settings.
//!
//! These are the *wire* types, already resolved by the coordinator (durations in
//! seconds, test folders replaced by bundle digests, the host's expected spec
//! filled in). The TOML plan file is parsed by the coordinator.
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::{Mac, Sha256};

/// What a ticket asks the agent to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Shown in reports.
    pub name: String,
    /// Stages, run in this order.
    pub stages: Vec<Stage>,
    /// Stop at the first failed stage.
    pub fail_fast: bool,
    /// Limit for the whole run, seconds (0 = none).
    pub timeout_s: u64,
    /// Whether the machine is kept for a person at the end (new in version 3).
    pub hold: Hold,
}

/// When a run's machine is held for a person instead of powered off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldWhen {
    /// Never: power off (boot mode) or exit at the end.
    #[default]
    Never,
    /// When the run's outcome is not ok (failed, timed out, error, aborted, held).
    OnFailure,
    /// After every run.
    Always,
}

impl HoldWhen {
    /// The name used in plan files.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldWhen::Never => "never",
            HoldWhen::OnFailure => "on_failure",
            HoldWhen::Always => "always",
        }
    }
}

/// A plan's hold: when, for how long, and the operators' SSH public keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// When the hold applies.
    pub when: HoldWhen,
    /// How long the machine waits for a person, seconds (at most [`crate::MAX_HOLD_S`]).
    pub for_s: u64,
    /// OpenSSH public key lines (`ssh-ed25519 AAAA… comment`) admitted as root.
    pub keys: Vec<String>,
}

impl Hold {
    /// Whether a run that ended with `outcome` is held.
    pub fn applies(&self, outcome: crate::Outcome) -> bool {
        match self.when {
            HoldWhen::Never => false,
            HoldWhen::OnFailure => !outcome.is_ok(),
            HoldWhen::Always => true,
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Unique within the plan; shown in reports.
    pub name: String,
    /// What the stage does, with its kind-specific settings.
    pub kind: StageKind,
    /// Limit per attempt, seconds (0 = none).
    pub timeout_s: u64,
    /// Extra attempts after a failure.
    pub retries: u32,
    /// Allows writes to disks (still gated by the wipe probe).
    pub destructive: bool,
    /// A failure of this stage does not stop the run under `fail_fast`.
    pub continue_on_failure: bool,
    /// The stage's test folder, as a bundle in the coordinator's CAS.
    pub tests: Option<TestBundle>,
    /// Environment for the stage's processes.
    pub env: Vec<(String, String)>,
    /// Names of secrets the stage needs (fetched by a claimed agent).
    pub secrets: Vec<String>,
}

impl Stage {
    /// A stage with defaults: no timeout, no retries, not destructive, stops the run
    /// on failure, no tests, env or secrets.
    pub fn new(name: impl Into<String>, kind: StageKind) -> Self {
        Stage {
            name: name.into(),
            kind,
            timeout_s: 0,
            retries: 0,
            destructive: false,
            continue_on_failure: false,
            tests: None,
            env: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

/// A test folder shipped as a deterministic tar in the CAS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestBundle {
    /// sha256 of the tar bytes: its CAS name.
    pub sha256: Sha256,
    /// Size of the tar in bytes.
    pub size: u64,
    /// Tree hash of the folder's contents.
    pub tree: Sha256,
}

/// The stage kinds and their settings. New kinds are appended, never inserted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StageKind {
    /// A command on the agent's host, in the test folder.
    Exec {
        /// argv; the first element is looked up in PATH.
        command: Vec<String>,
    },
    /// A command in a container (or a matrix of them).
    Container(ContainerSpec),
    /// A test folder dispatched to another host over SSH.
    Ssh(SshSpec),
    /// Hardware inventory, diffed against the host's expected spec (in the ticket's
    /// host binding).
    Inventory,
    /// SMART health of disks.
    Smart(SmartSpec),
    /// CPU stress with stress-ng.
    CpuStress(CpuStressSpec),
    /// Disk read (or, gated, write) tests.
    Storage(StorageSpec),
    /// Throughput with iperf3.
    Network(NetworkSpec),
    /// NVIDIA GPU query and optional load.
    Gpu(GpuSpec),
}

impl StageKind {
    /// The kind's name as written in plan files.
    pub fn name(&self) -> &'static str {
        match self {
            StageKind::Exec { .. } => "exec",
            StageKind::Container(_) => "container",
            StageKind::Ssh(_) => "ssh",
            StageKind::Inventory => "inventory",
            StageKind::Smart(_) => "smart",
            StageKind::CpuStress(_) => "cpu_stress",
            StageKind::Storage(_) => "storage",
            StageKind::Network(_) => "network",
            StageKind::Gpu(_) => "gpu",
        }
    }
}

/// Which container engine to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Runtime {
    /// podman if present, else docker.
    Auto,
    /// podman.
    Podman,
    /// docker.
    Docker,
}

/// Where a container image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageRef {
    /// A registry reference such as `debian:12`.
    Registry(String),
    /// An image archive (`podman save` / `docker save`) in the coordinator's CAS.
    Archive {
        /// The name the archive's image is tagged with once loaded.
        name: String,
        /// CAS digest of the archive.
        sha256: Sha256,
        /// Archive size in bytes.
        size: u64,
    },
    /// Built on the agent from a Containerfile in the stage's test folder (appended
    /// variant: older agents refuse the ticket rather than misread it).
    Build(BuildSpec),
}

/// An image the agent builds from a Containerfile in the stage's test folder, tagged
/// `localhost/kiln-build/<stage>:<hash of context, Containerfile and args>` and
/// reused while an image with that tag exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    /// The Containerfile, relative to the stage's test folder.
    pub file: String,
    /// The build context, relative to the stage's test folder (`""`: the folder).
    pub context: String,
    /// Build arguments (`--build-arg`); a value `${AXIS}` is the cell's value of that
    /// matrix axis.
    pub args: Vec<(String, String)>,
    /// Build afresh without the engine's layer cache, even when the tag exists.
    pub no_cache: bool,
}

impl ImageRef {
    /// The name shown in log prefixes and reports.
    pub fn label(&self) -> &str {
        match self {
            ImageRef::Registry(r) => r,
            ImageRef::Archive { name, .. } => name,
            ImageRef::Build(b) => &b.file,
        }
    }
}

/// A bind mount into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Path on the agent's host.
    pub host: String,
    /// Path inside the container.
    pub container: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Settings of a container stage. Defaults are hardened; each relaxation is explicit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Engine choice.
    pub runtime: Runtime,
    /// One image, or the image axis of a matrix.
    pub images: Vec<ImageRef>,
    /// Extra matrix axes: environment variable name and its values.
    pub axes: Vec<(String, Vec<String>)>,
    /// argv inside the container (empty: the image's default).
    pub command: Vec<String>,
    /// Working directory inside the container (default `/workspace`).
    pub workdir: Option<String>,
    /// Cells run at once.
    pub concurrency: u32,
    /// The first failing cell stops its siblings.
    pub fail_fast: bool,
    /// Read-only root filesystem (default true).
    pub read_only: bool,
    /// Network access (default false).
    pub network: bool,
    /// User to run as (default `65534:65534`, never root unless asked).
    pub user: Option<String>,
    /// Capabilities added back after `--cap-drop ALL`.
    pub cap_add: Vec<String>,
    /// `no-new-privileges` (default true).
    pub no_new_privileges: bool,
    /// Memory limit in bytes (0 = none).
    pub memory_bytes: u64,
    /// CPU limit in thousandths of a CPU (0 = none).
    pub cpu_millis: u32,
    /// Process limit (0 = none).
    pub pids_limit: u32,
    /// Size of the tmpfs at /tmp in bytes.
    pub tmpfs_bytes: u64,
    /// Extra bind mounts (checked against `allow_host_mounts` at issue time).
    pub mounts: Vec<Mount>,
    /// Containers started beside each cell, on a private network of the cell's own,
    /// healthy before the test starts (new in format version 3).
    pub services: Vec<ServiceSpec>,
    /// A failed cell's container and its services are kept (stopped) for inspection,
    /// until `kiln-agent gc` or the next run of the stage on the host (version 3).
    pub keep_failed: bool,
}

/// A service container beside each cell of a container stage (a database, a web
/// server), reached from the test by its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Host name the test reaches it by; unique within the stage.
    pub name: String,
    /// Its image (a registry reference, an archive or a build).
    pub image: ImageRef,
    /// argv (empty: the image's default).
    pub command: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Names of the stage's secrets it gets as files in `/run/secrets`.
    pub secrets: Vec<String>,
    /// Its health check; none: started counts as healthy.
    pub health: Option<HealthSpec>,
}

/// A service's health check, run inside it with `exec` until it exits 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// argv run in the service container.
    pub command: Vec<String>,
    /// Wait between checks, milliseconds.
    pub interval_ms: u64,
    /// Longest one check may take, milliseconds.
    pub timeout_ms: u64,
    /// Failed checks after `start_period_ms` before the service counts as unhealthy.
    pub retries: u32,
    /// Failures in this first stretch do not count, milliseconds.
    pub start_period_ms: u64,
}

/// Remote operating system of an SSH stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Os {
    /// Runs `run.sh` with sh.
    Linux,
    /// Runs `run.ps1` with PowerShell.
    Windows,
}

/// Settings of an SSH stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSpec {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Remote OS: picks the entrypoint.
    pub os: Os,
    /// Name of the secret holding the private key.
    pub key: String,
    /// Pinned host key line (`ssh-ed25519 AAAA…`), if not a known_hosts secret.
    pub host_key: Option<String>,
    /// Name of a secret holding known_hosts lines.
    pub known_hosts: Option<String>,
    /// Keep the remote run folder after fetching artifacts.
    pub keep: bool,
    /// Remote base folder for run folders and the busy lock.
    pub base_dir: Option<String>,
}

/// What a host should have; differences are reported with severities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSpec {
    /// CPU model substring.
    pub cpu_model: Option<String>,
    /// Logical CPU count.
    pub cpus: Option<u32>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// Allowed memory deviation, percent.
    pub memory_tolerance_pct: u32,
    /// Expected disks.
    pub disks: Vec<DiskSpec>,
    /// Expected NICs.
    pub nics: Vec<NicSpec>,
    /// Expected GPU model substrings, one per GPU.
    pub gpus: Vec<String>,
}

/// An expected disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Device path such as `/dev/nvme0n1`.
    pub path: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Model substring.
    pub model: Option<String>,
    /// Size in bytes.
    pub size_bytes: Option<u64>,
    /// Allowed size deviation, percent.
    pub size_tolerance_pct: u32,
}

/// An expected network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// MAC address.
    pub mac: Option<Mac>,
    /// Minimum link speed, Mbit/s.
    pub speed_mbps: Option<u32>,
}

/// Settings of a SMART stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmartSpec {
    /// Devices to check (empty: every disk found).
    pub devices: Vec<String>,
    /// Run a short self-test and poll it.
    pub self_test: bool,
    /// Highest acceptable temperature, °C.
    pub max_temperature_c: Option<u32>,
    /// Highest acceptable reallocated sector count.
    pub max_reallocated: Option<u64>,
    /// Highest acceptable pending sector count.
    pub max_pending: Option<u64>,
    /// Highest acceptable NVMe media error count.
    pub max_media_errors: Option<u64>,
}

/// Settings of a CPU stress stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuStressSpec {
    /// How long to stress, seconds.
    pub duration_s: u64,
    /// Worker count (0 = one per CPU).
    pub workers: u32,
    /// Fail below this many bogo ops/s.
    pub min_ops_per_s: Option<f64>,
    /// Fail above this temperature, °C.
    pub max_temperature_c: Option<u32>,
}

/// The tool a storage stage drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageTool {
    /// fio.
    Fio,
    /// badblocks.
    Badblocks,
}

/// Settings of a storage stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageSpec {
    /// Devices to test.
    pub devices: Vec<String>,
    /// Tool to use.
    pub tool: StorageTool,
    /// Run time per device, seconds.
    pub duration_s: u64,
    /// Bytes per device to touch (0 = tool default).
    pub size_bytes: u64,
}

/// Settings of a network stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// iperf3 server address.
    pub server: String,
    /// iperf3 server port.
    pub port: u16,
    /// Seconds per direction.
    pub duration_s: u64,
    /// Fail below this throughput, Mbit/s.
    pub min_mbps: Option<f64>,
}

/// Settings of a GPU stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSpec {
    /// Load test length, seconds (0 = query only).
    pub duration_s: u64,
    /// Fail above this temperature, °C.
    pub max_temperature_c: Option<u32>,
}
