//! The plan file's raw TOML shape, every value with its span for line-numbered errors.
use serde::Deserialize;
use std::ops::Range;
use toml::{Spanned, Table, Value};

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlanToml {
    pub name: Option<Spanned<String>>,
    pub fail_fast: Option<Spanned<bool>>,
    pub timeout: Option<Spanned<Value>>,
    #[serde(default)]
    pub stage: Vec<Spanned<StageToml>>,
}

/// `mounts = [{ host, container, read_only }]` in a container stage.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct MountToml {
    pub host: String,
    pub container: String,
    pub read_only: Option<bool>,
}

/// Declares the `[[stage]]` table as the union of every kind's keys (each optional and
/// spanned) plus `present()`, which lists the keys a stage sets, for the per-kind check.
macro_rules! stage_toml {
    ($($key:ident : $ty:ty),* $(,)?) => {
        /// One `[[stage]]` table: common keys and every kind's keys.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct StageToml {
            $(pub $key: Option<Spanned<$ty>>,)*
        }

        impl StageToml {
            /// The keys this stage sets, with their spans.
            pub fn present(&self) -> Vec<(&'static str, Range<usize>)> {
                let mut out = Vec::new();
                $(if let Some(v) = &self.$key {
                    out.push((stringify!($key), v.span()));
                })*
                out
            }
        }
    };
}

stage_toml! {
    // common
    name: String,
    kind: String,
    tests: String,
    timeout: Value,
    retries: u32,
    continue_on_failure: bool,
    destructive: bool,
    env: Table,
    secrets: Vec<String>,
    // exec, container
    command: Value,
    // container
    runtime: String,
    image: Value,
    matrix: Table,
    workdir: String,
    concurrency: u32,
    fail_fast: bool,
    read_only: bool,
    network: bool,
    user: String,
    cap_add: Vec<String>,
    no_new_privileges: bool,
    memory: Value,
    cpus: f64,
    pids_limit: u32,
    tmpfs: Value,
    mounts: Vec<MountToml>,
    allow_host_mounts: bool,
    // ssh
    host: String,
    port: u16,
    os: String,
    key: String,
    host_key: String,
    known_hosts: String,
    keep: bool,
    base_dir: String,
    // hardware
    devices: Vec<String>,
    self_test: bool,
    max_temperature: u32,
    max_reallocated: u64,
    max_pending: u64,
    max_media_errors: u64,
    duration: Value,
    workers: u32,
    min_ops_per_s: f64,
    tool: String,
    size: Value,
    server: String,
    min_mbps: f64,
}

/// Keys every stage may set.
pub(super) const COMMON_KEYS: &[&str] = &[
    "name",
    "kind",
    "tests",
    "timeout",
    "retries",
    "continue_on_failure",
    "destructive",
    "env",
    "secrets",
];

/// Each kind's own keys, in the order the kinds are documented.
pub(super) const KINDS: &[(&str, &[&str])] = &[
    ("exec", &["command"]),
    (
        "container",
        &[
            "command",
            "runtime",
            "image",
            "matrix",
            "workdir",
            "concurrency",
            "fail_fast",
            "read_only",
            "network",
            "user",
            "cap_add",
            "no_new_privileges",
            "memory",
            "cpus",
            "pids_limit",
            "tmpfs",
            "mounts",
            "allow_host_mounts",
        ],
    ),
    (
        "ssh",
        &[
            "host",
            "port",
            "user",
            "os",
            "key",
            "host_key",
            "known_hosts",
            "keep",
            "base_dir",
        ],
    ),
    ("inventory", &[]),
    (
        "smart",
        &[
            "devices",
            "self_test",
            "max_temperature",
            "max_reallocated",
            "max_pending",
            "max_media_errors",
        ],
    ),
    (
        "cpu_stress",
        &["duration", "workers", "min_ops_per_s", "max_temperature"],
    ),
    ("storage", &["devices", "tool", "duration", "size"]),
    ("network", &["server", "port", "duration", "min_mbps"]),
    ("gpu", &["duration", "max_temperature"]),
];

/// The keys a kind allows beyond [`COMMON_KEYS`]; `None` for an unknown kind.
pub(super) fn kind_keys(kind: &str) -> Option<&'static [&'static str]> {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, keys)| *keys)
}
