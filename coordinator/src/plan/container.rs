//! Container stages: images (registry refs or archives in the CAS), matrix axes, and
//! the hardened defaults each relaxation must name.
use anyhow::{Context, Result};
use kiln_protocol::{BuildSpec, ContainerSpec, ImageRef, Mount, Runtime, TestBundle};
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

/// A relative path inside the test folder (no root, no `..`) that exists there.
fn in_tests(at: &StageAt, root: &Path, rel: &Spanned<String>, key: &str, dir: bool) -> Result<()> {
    let p = Path::new(rel.get_ref());
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(at.err(
            rel.span(),
            format!("`{key}` must be a relative path inside the test folder"),
        ));
    }
    let full = root.join(p);
    let ok = if dir { full.is_dir() } else { full.is_file() };
    if !ok {
        let what = if dir { "a folder" } else { "a file" };
        return Err(at.err(
            rel.span(),
            format!(
                "`{key}` {:?} is not {what} in the test folder ({})",
                rel.get_ref(),
                full.display()
            ),
        ));
    }
    Ok(())
}

/// `build = "Containerfile"`, `context`, `build_args`, `no_cache`: the Containerfile
/// and context must be in the stage's test folder; `${AXIS}` in an argument must
/// name a matrix axis.
fn build_spec(
    at: &StageAt,
    s: &StageToml,
    file: &Spanned<String>,
    tests: Option<&(TestBundle, PathBuf)>,
    axes: &[(String, Vec<String>)],
) -> Result<BuildSpec> {
    let Some((_, root)) = tests else {
        return Err(at.err(
            file.span(),
            "`build` needs `tests` (the Containerfile is in the test folder)",
        ));
    };
    in_tests(at, root, file, "build", false)?;
    let context = match &s.context {
        Some(c) => {
            in_tests(at, root, c, "context", true)?;
            c.get_ref().clone()
        }
        None => String::new(),
    };
    let mut args = Vec::new();
    if let Some(t) = &s.build_args {
        for (k, v) in t.get_ref() {
            let Some(value) = scalar(v).filter(|_| !v.is_array() && !v.is_table()) else {
                return Err(at.err(
                    t.span(),
                    format!("build_args.{k} must be a string or a number"),
                ));
            };
            if !is_env_name(k) {
                return Err(at.err(
                    t.span(),
                    format!("build argument {k:?} is not a variable name"),
                ));
            }
            let mut rest = value.as_str();
            while let Some(start) = rest.find("${") {
                let Some(end) = rest[start..].find('}') else {
                    break;
                };
                let var = &rest[start + 2..start + end];
                if !axes.iter().any(|(a, _)| a == var) {
                    return Err(at.err(
                        t.span(),
                        format!("build_args.{k} uses ${{{var}}}, which is not a matrix axis"),
                    ));
                }
                rest = &rest[start + end..];
            }
            args.push((k.clone(), value));
        }
    }
    Ok(BuildSpec {
        file: file.get_ref().clone(),
        context,
        args,
        no_cache: val(&s.no_cache).unwrap_or(false),
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
