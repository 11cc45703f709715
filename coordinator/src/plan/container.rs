//! Container stages: images (registry refs or archives in the CAS), matrix axes, and
//! the hardened defaults each relaxation must name.
use anyhow::{Context, Result};
use kiln_protocol::{
    BuildSpec, ContainerSpec, HealthSpec, ImageRef, Mount, Runtime, ServiceSpec, TestBundle,
};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use toml::Value;

use super::raw::{Spanned, StageToml};
use super::{StageAt, is_env_name, scalar, val};

/// Cells run at once unless the plan says otherwise.
const DEFAULT_CONCURRENCY: u32 = 4;
/// Memory cap unless the plan says otherwise.
const DEFAULT_MEMORY: &str = "2G";
/// CPU cap unless the plan says otherwise.
const DEFAULT_CPUS: f64 = 2.0;
/// Process cap unless the plan says otherwise.
const DEFAULT_PIDS: u32 = 1024;
/// Size of the tmpfs at /tmp unless the plan says otherwise.
const DEFAULT_TMPFS: &str = "64M";

pub(super) fn build(
    at: &StageAt,
    s: &StageToml,
    tests: Option<&(TestBundle, PathBuf)>,
) -> Result<ContainerSpec> {
    let runtime = match s.runtime.as_ref() {
        None => Runtime::Auto,
        Some(r) => match r.get_ref().as_str() {
            "auto" => Runtime::Auto,
            "podman" => Runtime::Podman,
            "docker" => Runtime::Docker,
            other => {
                return Err(at.err(
                    r.span(),
                    format!("`runtime` is {other:?}, not auto, podman or docker"),
                ));
            }
        },
    };
    let mut images = Vec::new();
    let mut axes = Vec::new();
    if let Some(m) = &s.matrix {
        for (k, v) in m.get_ref() {
            let Some(items) = v.as_array().filter(|a| !a.is_empty()) else {
                return Err(at.err(m.span(), format!("matrix.{k} must be a non-empty array")));
            };
            if k == "image" {
                if let Some(i) = &s.image {
                    return Err(at.err(i.span(), "give `image` or `matrix.image`, not both"));
                }
                for item in items {
                    images.push(image(at, item, m.span())?);
                }
            } else {
                if !is_env_name(k) {
                    return Err(at.err(
                        m.span(),
                        format!("matrix axis {k:?} is not an environment variable name"),
                    ));
                }
                let values = items
                    .iter()
                    .map(|i| scalar(i).filter(|_| !i.is_array() && !i.is_table()))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| {
                        at.err(
                            m.span(),
                            format!("matrix.{k} values must be strings or numbers"),
                        )
                    })?;
                axes.push((k.clone(), values));
            }
        }
    }
    if let Some(i) = &s.image {
        images.push(image(at, i.get_ref(), i.span())?);
    }
    if let Some(b) = &s.build {
        if !images.is_empty() {
            return Err(at.err(b.span(), "give `build` or `image`/`matrix.image`, not both"));
        }
        images.push(ImageRef::Build(build_spec(at, s, b, tests, &axes)?));
    } else if let Some((key, span)) = [
        ("context", s.context.as_ref().map(|v| v.span())),
        ("build_args", s.build_args.as_ref().map(|v| v.span())),
        ("no_cache", s.no_cache.as_ref().map(|v| v.span())),
    ]
    .into_iter()
    .find_map(|(k, sp)| sp.map(|sp| (k, sp)))
    {
        return Err(at.err(span, format!("`{key}` needs `build`")));
    }
    if images.is_empty() {
        return Err(at.err(
            at.span.clone(),
            "container stages need `image`, `matrix.image` or `build`",
        ));
    }
    let command = match &s.command {
        Some(c) => super::command(at, c)?,
        None => Vec::new(),
    };
    if let Some(w) = s.workdir.as_ref().filter(|w| !w.get_ref().starts_with('/')) {
        return Err(at.err(w.span(), "`workdir` must be an absolute path"));
    }
    let concurrency = val(&s.concurrency).unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 {
        let span = s.concurrency.as_ref().map_or(at.span.clone(), |c| c.span());
        return Err(at.err(span, "`concurrency` must be at least 1"));
    }
    for cap in val(&s.cap_add).unwrap_or_default() {
        if cap.is_empty() || !cap.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            let span = s.cap_add.as_ref().map_or(at.span.clone(), |c| c.span());
            return Err(at.err(span, format!("{cap:?} is not a capability name")));
        }
    }
    let cpus = val(&s.cpus).unwrap_or(DEFAULT_CPUS);
    if !(cpus.is_finite() && (0.0..=4096.0).contains(&cpus)) {
        let span = s.cpus.as_ref().map_or(at.span.clone(), |c| c.span());
        return Err(at.err(span, "`cpus` must be between 0 (no cap) and 4096"));
    }
    let services = services(at, s, tests, &axes)?;
    Ok(ContainerSpec {
        runtime,
        images,
        axes,
        command,
        workdir: val(&s.workdir),
        concurrency,
        fail_fast: val(&s.fail_fast).unwrap_or(true),
        read_only: val(&s.read_only).unwrap_or(true),
        network: val(&s.network).unwrap_or(false),
        user: val(&s.user),
        cap_add: val(&s.cap_add).unwrap_or_default(),
        no_new_privileges: val(&s.no_new_privileges).unwrap_or(true),
        memory_bytes: match &s.memory {
            Some(m) => at.size(m, "memory")?,
            None => crate::units::parse_size(DEFAULT_MEMORY).expect("default parses"),
        },
        cpu_millis: (cpus * 1000.0).round() as u32,
        pids_limit: val(&s.pids_limit).unwrap_or(DEFAULT_PIDS),
        tmpfs_bytes: match &s.tmpfs {
            Some(t) => at.size(t, "tmpfs")?,
            None => crate::units::parse_size(DEFAULT_TMPFS).expect("default parses"),
        },
        mounts: mounts(at, s)?,
        services,
        keep_failed: val(&s.keep_failed).unwrap_or(false),
    })
}

/// A relative path inside the test folder (no root, no `..`) that exists there.
fn in_tests(
    at: &StageAt,
    root: &Path,
    (rel, span): (&str, Range<usize>),
    key: &str,
    dir: bool,
) -> Result<()> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(at.err(
            span,
            format!("`{key}` must be a relative path inside the test folder"),
        ));
    }
    let full = root.join(p);
    let ok = if dir { full.is_dir() } else { full.is_file() };
    if !ok {
        let what = if dir { "a folder" } else { "a file" };
        return Err(at.err(
            span,
            format!(
                "`{key}` {rel:?} is not {what} in the test folder ({})",
                full.display()
            ),
        ));
    }
    Ok(())
}

/// `build = "Containerfile"`, `context`, `build_args`, `no_cache` of a stage.
fn build_spec(
    at: &StageAt,
    s: &StageToml,
    file: &Spanned<String>,
    tests: Option<&(TestBundle, PathBuf)>,
    axes: &[(String, Vec<String>)],
) -> Result<BuildSpec> {
    build_from(
        at,
        tests,
        (file.get_ref(), file.span()),
        s.context.as_ref().map(|c| (c.get_ref().as_str(), c.span())),
        s.build_args.as_ref().map(|t| (t.get_ref(), t.span())),
        val(&s.no_cache).unwrap_or(false),
        axes,
    )
}

/// A build: the Containerfile and context must be in the stage's test folder;
/// `${AXIS}` in an argument must name a matrix axis.
fn build_from(
    at: &StageAt,
    tests: Option<&(TestBundle, PathBuf)>,
    file: (&str, Range<usize>),
    context: Option<(&str, Range<usize>)>,
    build_args: Option<(&toml::Table, Range<usize>)>,
    no_cache: bool,
    axes: &[(String, Vec<String>)],
) -> Result<BuildSpec> {
    let Some((_, root)) = tests else {
        return Err(at.err(
            file.1,
            "`build` needs `tests` (the Containerfile is in the test folder)",
        ));
    };
    in_tests(at, root, file.clone(), "build", false)?;
    let context = match context {
        Some(c) => {
            in_tests(at, root, c.clone(), "context", true)?;
            c.0.to_string()
        }
        None => String::new(),
    };
    let mut args = Vec::new();
    if let Some((t, span)) = build_args {
        for (k, v) in t {
            let Some(value) = scalar(v).filter(|_| !v.is_array() && !v.is_table()) else {
                return Err(at.err(span, format!("build_args.{k} must be a string or a number")));
            };
            if !is_env_name(k) {
                return Err(at.err(span, format!("build argument {k:?} is not a variable name")));
            }
            let mut rest = value.as_str();
            while let Some(start) = rest.find("${") {
                let Some(end) = rest[start..].find('}') else {
                    break;
                };
                let var = &rest[start + 2..start + end];
                if !axes.iter().any(|(a, _)| a == var) {
                    return Err(at.err(
                        span,
                        format!("build_args.{k} uses ${{{var}}}, which is not a matrix axis"),
                    ));
                }
                rest = &rest[start + end..];
            }
            args.push((k.clone(), value));
        }
    }
    Ok(BuildSpec {
        file: file.0.to_string(),
        context,
        args,
        no_cache,
    })
}

/// Keys of a `[[stage.service]]` table.
const SERVICE_KEYS: &[&str] = &[
    "name",
    "image",
    "build",
    "context",
    "build_args",
    "no_cache",
    "command",
    "env",
    "secrets",
    "health",
];

/// Longest health-check interval, timeout or start period: one hour.
const MAX_HEALTH_MS: u64 = 3_600_000;

/// `"500ms"`, `"2s"`, `"1m"`, or a number of seconds, in milliseconds.
fn millis(v: &Value) -> Result<u64, String> {
    let ms = match v {
        Value::String(s) if s.trim().ends_with("ms") => {
            let n = s.trim().trim_end_matches("ms").trim();
            n.parse::<u64>()
                .map_err(|_| format!("invalid duration {s:?} (use e.g. \"500ms\", \"2s\")"))?
        }
        Value::String(s) => crate::units::parse_duration(s)?.saturating_mul(1000),
        Value::Integer(n) if *n >= 0 => (*n as u64).saturating_mul(1000),
        _ => return Err("must be a duration such as \"500ms\" or \"2s\"".into()),
    };
    if ms > MAX_HEALTH_MS {
        return Err(format!("{ms} ms is over the limit of one hour"));
    }
    Ok(ms)
}

/// `[[stage.service]]` entries: name, image or build, command, env, secrets (a subset
/// of the stage's), health.
fn services(
    at: &StageAt,
    s: &StageToml,
    tests: Option<&(TestBundle, PathBuf)>,
    axes: &[(String, Vec<String>)],
) -> Result<Vec<ServiceSpec>> {
    let Some(list) = &s.service else {
        return Ok(Vec::new());
    };
    let span = list.span();
    let stage_secrets = val(&s.secrets).unwrap_or_default();
    let mut out: Vec<ServiceSpec> = Vec::new();
    for t in list.get_ref() {
        let err = |msg: String| at.err(span.clone(), msg);
        if let Some(k) = t.keys().find(|k| !SERVICE_KEYS.contains(&k.as_str())) {
            return Err(err(format!(
                "`{k}` is not a service setting (one of: {})",
                SERVICE_KEYS.join(", ")
            )));
        }
        let name = match t.get("name").and_then(Value::as_str) {
            Some(n) if is_host_name(n) => n.to_string(),
            Some(n) => {
                return Err(err(format!(
                    "service name {n:?} is not a host name (lowercase letters, digits, `-`)"
                )));
            }
            None => return Err(err("a service needs a `name`".into())),
        };
        if out.iter().any(|o| o.name == name) {
            return Err(err(format!("two services are named {name:?}")));
        }
        let str_of = |k: &str| -> Result<Option<&str>> {
            match t.get(k) {
                None => Ok(None),
                Some(Value::String(v)) => Ok(Some(v.as_str())),
                Some(_) => Err(err(format!("service {name}: `{k}` must be a string"))),
            }
        };
        let image = match (t.get("image"), str_of("build")?) {
            (Some(_), Some(_)) => {
                return Err(err(format!(
                    "service {name}: give `image` or `build`, not both"
                )));
            }
            (Some(v), None) => image(at, v, span.clone())?,
            (None, Some(file)) => ImageRef::Build(build_from(
                at,
                tests,
                (file, span.clone()),
                str_of("context")?.map(|c| (c, span.clone())),
                match t.get("build_args") {
                    Some(Value::Table(a)) => Some((a, span.clone())),
                    Some(_) => {
                        return Err(err(format!("service {name}: `build_args` must be a table")));
                    }
                    None => None,
                },
                matches!(t.get("no_cache"), Some(Value::Boolean(true))),
                axes,
            )?),
            (None, None) => {
                return Err(err(format!("service {name} needs `image` or `build`")));
            }
        };
        let command = match t.get("command") {
            None => Vec::new(),
            Some(v) => super::command(at, &Spanned::new(span.clone(), v.clone()))?,
        };
        let mut env = Vec::new();
        match t.get("env") {
            None => {}
            Some(Value::Table(e)) => {
                for (k, v) in e {
                    let Some(v) = scalar(v).filter(|_| !v.is_array() && !v.is_table()) else {
                        return Err(err(format!(
                            "service {name}: env.{k} must be a string or a number"
                        )));
                    };
                    if !is_env_name(k) {
                        return Err(err(format!("service {name}: {k:?} is not a variable name")));
                    }
                    env.push((k.clone(), v));
                }
            }
            Some(_) => return Err(err(format!("service {name}: `env` must be a table"))),
        }
        let mut secrets = Vec::new();
        match t.get("secrets") {
            None => {}
            Some(Value::Array(a)) => {
                for v in a {
                    let Some(n) = v.as_str() else {
                        return Err(err(format!("service {name}: `secrets` must be names")));
                    };
                    if !stage_secrets.iter().any(|s| s == n) {
                        return Err(err(format!(
                            "service {name}: secret {n:?} is not in the stage's `secrets`"
                        )));
                    }
                    secrets.push(n.to_string());
                }
            }
            Some(_) => return Err(err(format!("service {name}: `secrets` must be an array"))),
        }
        let health = match t.get("health") {
            None => None,
            Some(Value::Table(h)) => {
                const KEYS: &[&str] =
                    &["command", "interval", "timeout", "retries", "start_period"];
                if let Some(k) = h.keys().find(|k| !KEYS.contains(&k.as_str())) {
                    return Err(err(format!(
                        "service {name}: `{k}` is not a health setting (one of: {})",
                        KEYS.join(", ")
                    )));
                }
                let Some(c) = h.get("command") else {
                    return Err(err(format!("service {name}: `health` needs a `command`")));
                };
                let ms = |k: &str, default: u64| -> Result<u64> {
                    h.get(k).map_or(Ok(default), |v| {
                        millis(v).map_err(|e| err(format!("service {name}: health.{k}: {e}")))
                    })
                };
                let retries = match h.get("retries") {
                    None => 3,
                    Some(Value::Integer(n)) if (1..=1000).contains(n) => *n as u32,
                    Some(_) => {
                        return Err(err(format!(
                            "service {name}: health.retries must be 1 to 1000"
                        )));
                    }
                };
                let interval_ms = ms("interval", 1000)?.max(10);
                Some(HealthSpec {
                    command: super::command(at, &Spanned::new(span.clone(), c.clone()))?,
                    interval_ms,
                    timeout_ms: ms("timeout", 5000)?.max(10),
                    retries,
                    start_period_ms: ms("start_period", 0)?,
                })
            }
            Some(_) => return Err(err(format!("service {name}: `health` must be a table"))),
        };
        out.push(ServiceSpec {
            name,
            image,
            command,
            env,
            secrets,
            health,
        });
    }
    Ok(out)
}

/// A name a container can be reached by: `[a-z0-9]`, inner `-`, at most 63 bytes.
fn is_host_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && !n.starts_with('-')
        && !n.ends_with('-')
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Bind mounts, refused unless the plan sets `allow_host_mounts = true`.
fn mounts(at: &StageAt, s: &StageToml) -> Result<Vec<Mount>> {
    let Some(list) = &s.mounts else {
        return Ok(Vec::new());
    };
    if !list.get_ref().is_empty() && !val(&s.allow_host_mounts).unwrap_or(false) {
        return Err(at.err(
            list.span(),
            "bind mounts are refused unless the stage sets `allow_host_mounts = true` (they expose the agent's host)",
        ));
    }
    list.get_ref()
        .iter()
        .map(|m| {
            for p in [&m.host, &m.container] {
                if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                    return Err(at.err(
                        list.span(),
                        format!("mount path {p:?} must be absolute, without `..`"),
                    ));
                }
            }
            Ok(Mount {
                host: m.host.clone(),
                container: m.container.clone(),
                read_only: m.read_only.unwrap_or(true),
            })
        })
        .collect()
}

/// One image: `"debian:12"` or `{ archive = "img.tar", name = "localhost/x:1" }`.
fn image(at: &StageAt, v: &Value, span: Range<usize>) -> Result<ImageRef> {
    let shape = "an image is a registry reference (\"debian:12\") or { archive = \"img.tar\", name = \"localhost/x:1\" }";
    match v {
        Value::String(r) if !r.trim().is_empty() && !r.contains(char::is_whitespace) => {
            Ok(ImageRef::Registry(r.clone()))
        }
        Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| *k != "archive" && *k != "name") {
                return Err(at.err(span, format!("unknown image key `{k}` ({shape})")));
            }
            let (Some(archive), Some(name)) = (
                t.get("archive").and_then(Value::as_str),
                t.get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.trim().is_empty()),
            ) else {
                return Err(at.err(span, shape));
            };
            let path = at.cx.rel(archive);
            if !path.is_file() {
                return Err(at.err(
                    span,
                    format!(
                        "image archive {archive} does not exist ({})",
                        path.display()
                    ),
                ));
            }
            let (sha256, size) = at
                .cx
                .state
                .cas()
                .put_file(&path)
                .with_context(|| format!("storing image archive {}", path.display()))?;
            at.cx.cas.borrow_mut().insert(sha256);
            Ok(ImageRef::Archive {
                name: name.to_string(),
                sha256,
                size,
            })
        }
        _ => Err(at.err(span, shape)),
    }
}
