//! The plan file's raw TOML shape, every value with its span for line-numbered errors.
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use toml::{Table, Value};

/// A value and where it stands in the file.
///
/// Like `toml::Spanned`, which it replaces because toml 0.8 gives a table written
/// with dotted keys (`matrix.image = [...]`) no span, and `toml::Spanned` then fails
/// on the table's first key ("expected a borrowed string"). This one takes such a
/// table (or any value given without a span) as it is, and [`PlanToml::locate`]
/// finds its line after parsing; every TOML spelling of a table reads the same.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    span: Option<Range<usize>>,
    value: T,
}

impl<T> Spanned<T> {
    /// A value at a known span (a nested value its table's span stands for).
    pub fn new(span: Range<usize>, value: T) -> Self {
        Spanned {
            span: Some(span),
            value,
        }
    }

    /// Byte range in the file (the start of the file until located).
    pub fn span(&self) -> Range<usize> {
        self.span.clone().unwrap_or(0..0)
    }

    /// The value.
    pub fn get_ref(&self) -> &T {
        &self.value
    }

    /// The value, mutable.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.value
    }

    /// The value, owned.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// Gives a value read without a span the line of its key: the first line in
    /// `within` that starts with `key` followed by a `.` (a dotted key), else the
    /// start of `within`.
    fn locate(&mut self, text: &str, within: Range<usize>, key: &str) {
        if self.span.is_some() {
            return;
        }
        let within = within.start.min(text.len())..within.end.min(text.len());
        let mut at = within.start;
        let found = text.get(within.clone()).and_then(|part| {
            part.split_inclusive('\n').find_map(|line| {
                let here = at;
                at += line.len();
                let t = line.trim_start();
                let rest = [key, &format!("\"{key}\""), &format!("'{key}'")]
                    .into_iter()
                    .find_map(|k| t.strip_prefix(k))?;
                rest.trim_start()
                    .starts_with('.')
                    .then_some(here + (line.len() - t.len()))
            })
        });
        let start = found.unwrap_or(within.start);
        self.span = Some(start..start);
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_spanned::__unstable::{END_FIELD, NAME, START_FIELD, VALUE_FIELD};

        struct V<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Spanned<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Spanned<T>, E> {
                unspanned(Value::Boolean(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Spanned<T>, E> {
                unspanned(Value::Integer(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Spanned<T>, E> {
                let v = i64::try_from(v).map_err(|_| E::custom("integer out of range"))?;
                unspanned(Value::Integer(v))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Spanned<T>, E> {
                unspanned(Value::Float(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Spanned<T>, E> {
                unspanned(Value::String(v.to_string()))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Spanned<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element::<Value>()? {
                    items.push(v);
                }
                unspanned(Value::Array(items))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spanned<T>, A::Error> {
                let first: Option<String> = map.next_key()?;
                if first.as_deref() == Some(START_FIELD) {
                    // toml's spanned form: start, end, value.
                    let start: usize = map.next_value()?;
                    let mut end = None;
                    let mut value = None;
                    while let Some(k) = map.next_key::<String>()? {
                        match k.as_str() {
                            END_FIELD => end = Some(map.next_value::<usize>()?),
                            VALUE_FIELD => value = Some(map.next_value::<T>()?),
                            other => {
                                return Err(de::Error::unknown_field(
                                    other,
                                    &[END_FIELD, VALUE_FIELD],
                                ));
                            }
                        }
                    }
                    let end = end.ok_or_else(|| de::Error::missing_field(END_FIELD))?;
                    let value = value.ok_or_else(|| de::Error::missing_field(VALUE_FIELD))?;
                    return Ok(Spanned {
                        span: Some(start..end),
                        value,
                    });
                }
                // A table without a span (dotted keys): read it whole, then as T.
                let mut table = Table::new();
                if let Some(k) = first {
                    let v: Value = map.next_value()?;
                    table.insert(k, v);
                    while let Some((k, v)) = map.next_entry::<String, Value>()? {
                        table.insert(k, v);
                    }
                }
                unspanned(Value::Table(table))
            }
        }

        /// A value the parser gave no span: read as T, located after parsing.
        fn unspanned<'de, T: Deserialize<'de>, E: de::Error>(v: Value) -> Result<Spanned<T>, E> {
            let value = T::deserialize(v).map_err(|e| E::custom(e.message().trim()))?;
            Ok(Spanned { span: None, value })
        }

        d.deserialize_struct(NAME, &[START_FIELD, END_FIELD, VALUE_FIELD], V(PhantomData))
    }
}

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlanToml {
    pub name: Option<Spanned<String>>,
    pub fail_fast: Option<Spanned<bool>>,
    pub timeout: Option<Spanned<Value>>,
    pub hold: Option<Spanned<String>>,
    pub hold_for: Option<Spanned<Value>>,
    pub hold_keys: Option<Spanned<String>>,
    /// Lights-out (coordinator-side, not in the ticket): power the host off after
    /// the run (default true).
    pub power_off: Option<Spanned<bool>>,
    /// Lights-out: power-on to claim before the boot watchdog acts.
    pub boot_timeout: Option<Spanned<Value>>,
    /// Lights-out: silence of a claimed run's agent before it counts as lost.
    pub lost_after: Option<Spanned<Value>>,
    #[serde(default)]
    pub stage: Vec<Spanned<StageToml>>,
}

impl PlanToml {
    /// Gives every value read without a span (a dotted-key table) the line of its key.
    pub fn locate(&mut self, text: &str) {
        let all = 0..text.len();
        if let Some(v) = &mut self.name {
            v.locate(text, all.clone(), "name");
        }
        if let Some(v) = &mut self.fail_fast {
            v.locate(text, all.clone(), "fail_fast");
        }
        if let Some(v) = &mut self.timeout {
            v.locate(text, all.clone(), "timeout");
        }
        if let Some(v) = &mut self.hold {
            v.locate(text, all.clone(), "hold");
        }
        if let Some(v) = &mut self.hold_for {
            v.locate(text, all.clone(), "hold_for");
        }
        if let Some(v) = &mut self.hold_keys {
            v.locate(text, all.clone(), "hold_keys");
        }
        if let Some(v) = &mut self.power_off {
            v.locate(text, all.clone(), "power_off");
        }
        if let Some(v) = &mut self.boot_timeout {
            v.locate(text, all.clone(), "boot_timeout");
        }
        if let Some(v) = &mut self.lost_after {
            v.locate(text, all.clone(), "lost_after");
        }
        for s in &mut self.stage {
            s.locate(text, all.clone(), "stage");
            let within = s.span();
            s.get_mut().locate(text, within);
        }
    }
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
            /// Gives every key read without a span a line within the stage's `within`.
            fn locate(&mut self, text: &str, within: Range<usize>) {
                $(if let Some(v) = &mut self.$key {
                    v.locate(text, within.clone(), stringify!($key));
                })*
            }

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
    build: String,
    context: String,
    build_args: Table,
    no_cache: bool,
    service: Vec<Table>,
    keep_failed: bool,
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
            "build",
            "context",
            "build_args",
            "no_cache",
            "service",
            "keep_failed",
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
