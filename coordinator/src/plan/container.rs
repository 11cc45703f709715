//! Container stages: images (registry refs or archives in the CAS), matrix axes, and
//! the hardened defaults each relaxation must name.
use anyhow::{Context, Result};
use kiln_protocol::{ContainerSpec, ImageRef, Mount, Runtime};
use std::ops::Range;
use toml::Value;

use super::raw::StageToml;
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

pub(super) fn build(at: &StageAt, s: &StageToml) -> Result<ContainerSpec> {
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
    if images.is_empty() {
        return Err(at.err(
            at.span.clone(),
            "container stages need `image` or `matrix.image`",
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
    })
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
