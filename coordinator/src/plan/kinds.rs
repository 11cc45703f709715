//! Kind-specific keys to the wire specs: exec, ssh and the hardware kinds
//! (container lives in `container.rs`).
use anyhow::Result;
use kiln_protocol::{
    CpuStressSpec, GpuSpec, NetworkSpec, Os, SmartSpec, SshSpec, StageKind, StorageSpec,
    StorageTool, TestBundle,
};
use std::path::PathBuf;
use toml::Value;

use super::raw::{Spanned, StageToml};
use super::{StageAt, command, val};

/// The stage's kind with its settings; `tests` is the packed test folder, if any.
pub(super) fn build(
    at: &StageAt,
    kind: &str,
    s: &StageToml,
    tests: Option<&(TestBundle, PathBuf)>,
) -> Result<StageKind> {
    Ok(match kind {
        "exec" => StageKind::Exec {
            command: command(at, at.need(&s.command, "command", kind)?)?,
        },
        "container" => StageKind::Container(super::container::build(at, s, tests)?),
        "ssh" => StageKind::Ssh(ssh(at, s, tests)?),
        "inventory" => StageKind::Inventory,
        "smart" => StageKind::Smart(SmartSpec {
            devices: devices(at, &s.devices)?,
            self_test: val(&s.self_test).unwrap_or(false),
            max_temperature_c: val(&s.max_temperature),
            max_reallocated: val(&s.max_reallocated),
            max_pending: val(&s.max_pending),
            max_media_errors: val(&s.max_media_errors),
        }),
        "cpu_stress" => StageKind::CpuStress(CpuStressSpec {
            duration_s: at.duration(at.need(&s.duration, "duration", kind)?, "duration")?,
            workers: val(&s.workers).unwrap_or(0),
            min_ops_per_s: positive(at, &s.min_ops_per_s, "min_ops_per_s")?,
            max_temperature_c: val(&s.max_temperature),
        }),
        "storage" => StageKind::Storage(storage(at, s)?),
        "network" => StageKind::Network(NetworkSpec {
            server: nonempty(at, at.need(&s.server, "server", kind)?, "server")?,
            port: port(at, &s.port, 5201)?,
            duration_s: opt_duration(at, &s.duration, 10)?,
            min_mbps: positive(at, &s.min_mbps, "min_mbps")?,
        }),
        "gpu" => StageKind::Gpu(GpuSpec {
            duration_s: opt_duration(at, &s.duration, 0)?,
            max_temperature_c: val(&s.max_temperature),
        }),
        other => unreachable!("kind {other} was checked against the kind table"),
    })
}

fn ssh(at: &StageAt, s: &StageToml, tests: Option<&(TestBundle, PathBuf)>) -> Result<SshSpec> {
    let os = match s.os.as_ref() {
        None => Os::Linux,
        Some(o) => match o.get_ref().as_str() {
            "linux" => Os::Linux,
            "windows" => Os::Windows,
            other => {
                return Err(at.err(o.span(), format!("`os` is {other:?}, not linux or windows")));
            }
        },
    };
    let entry = if os == Os::Windows {
        "run.ps1"
    } else {
        "run.sh"
    };
    let Some((_, folder)) = tests else {
        return Err(at.err(
            at.span.clone(),
            format!("`tests` is required for ssh stages (a folder with {entry})"),
        ));
    };
    if !folder.join(entry).is_file() {
        let (span, shown) = match &s.tests {
            Some(t) => (t.span(), t.get_ref().clone()),
            None => (at.span.clone(), folder.display().to_string()),
        };
        return Err(at.err(
            span,
            format!("tests folder {shown} has no {entry} (the {os:?} entrypoint)"),
        ));
    }
    let key = at.need(&s.key, "key", "ssh")?;
    at.secret(key.span(), key.get_ref())?;
    match (&s.host_key, &s.known_hosts) {
        (None, None) => {
            return Err(at.err(
                at.span.clone(),
                "ssh stages need `host_key` or `known_hosts` (hosts are never trusted on first use)",
            ));
        }
        (Some(h), Some(_)) => {
            return Err(at.err(h.span(), "give `host_key` or `known_hosts`, not both"));
        }
        (Some(h), None) if !is_host_key(h.get_ref()) => {
            return Err(at.err(
                h.span(),
                "`host_key` must be a public key line such as \"ssh-ed25519 AAAA…\"",
            ));
        }
        (None, Some(k)) => at.secret(k.span(), k.get_ref())?,
        _ => {}
    }
    Ok(SshSpec {
        host: nonempty(at, at.need(&s.host, "host", "ssh")?, "host")?,
        port: port(at, &s.port, 22)?,
        user: nonempty(at, at.need(&s.user, "user", "ssh")?, "user")?,
        os,
        key: key.get_ref().clone(),
        host_key: val(&s.host_key).map(|k| k.trim().to_string()),
        known_hosts: val(&s.known_hosts),
        keep: val(&s.keep).unwrap_or(false),
        base_dir: val(&s.base_dir),
    })
}

fn storage(at: &StageAt, s: &StageToml) -> Result<StorageSpec> {
    let list = at.need(&s.devices, "devices", "storage")?;
    let devices = devices(at, &s.devices)?;
    if devices.is_empty() {
        return Err(at.err(list.span(), "`devices` is empty"));
    }
    let tool = match s.tool.as_ref() {
        None => StorageTool::Fio,
        Some(t) => match t.get_ref().as_str() {
            "fio" => StorageTool::Fio,
            "badblocks" => StorageTool::Badblocks,
            other => {
                return Err(at.err(
                    t.span(),
                    format!("`tool` is {other:?}, not fio or badblocks"),
                ));
            }
        },
    };
    // The agent holds a destructive stage on a disk the host spec does not expect;
    // say so now rather than after a netboot.
    let expected = at.cx.host.host_spec().map(|h| h.disks).unwrap_or_default();
    let destructive = s.destructive.as_ref().is_some_and(|d| *d.get_ref());
    for d in &devices {
        if destructive
            && !expected
                .iter()
                .any(|e| e.path.as_deref() == Some(d.as_str()))
        {
            log::warn!(
                "stage {:?}: {d} is not among host {}'s expected disks; the agent will hold the stage",
                at.name,
                at.cx.host.name
            );
        }
    }
    Ok(StorageSpec {
        devices,
        tool,
        duration_s: opt_duration(at, &s.duration, 30)?,
        size_bytes: match &s.size {
            Some(v) => at.size(v, "size")?,
            None => 0,
        },
    })
}

/// Device paths: absolute, under `/dev/`.
fn devices(at: &StageAt, v: &Option<Spanned<Vec<String>>>) -> Result<Vec<String>> {
    let Some(list) = v else {
        return Ok(Vec::new());
    };
    for d in list.get_ref() {
        if !d.starts_with("/dev/") || d.split('/').any(|p| p == "..") {
            return Err(at.err(
                list.span(),
                format!("device {d:?} is not a path under /dev/"),
            ));
        }
    }
    Ok(list.get_ref().clone())
}

fn opt_duration(at: &StageAt, v: &Option<Spanned<Value>>, default_s: u64) -> Result<u64> {
    match v {
        Some(v) => at.duration(v, "duration"),
        None => Ok(default_s),
    }
}

fn port(at: &StageAt, v: &Option<Spanned<u16>>, default: u16) -> Result<u16> {
    match v {
        Some(p) if *p.get_ref() == 0 => Err(at.err(p.span(), "`port` must not be 0")),
        Some(p) => Ok(*p.get_ref()),
        None => Ok(default),
    }
}

fn positive(at: &StageAt, v: &Option<Spanned<f64>>, key: &str) -> Result<Option<f64>> {
    match v {
        Some(f) if !(f.get_ref().is_finite() && *f.get_ref() >= 0.0) => {
            Err(at.err(f.span(), format!("`{key}` must be a non-negative number")))
        }
        _ => Ok(val(v)),
    }
}

fn nonempty(at: &StageAt, v: &Spanned<String>, key: &str) -> Result<String> {
    let s = v.get_ref().trim();
    if s.is_empty() {
        return Err(at.err(v.span(), format!("`{key}` is empty")));
    }
    Ok(s.to_string())
}

/// `TYPE BASE64 [comment]` with a known OpenSSH key type.
fn is_host_key(line: &str) -> bool {
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let mut parts = line.split_whitespace();
    let (Some(ty), Some(b64)) = (parts.next(), parts.next()) else {
        return false;
    };
    TYPES.contains(&ty)
        && b64.len() >= 16
        && b64
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=')
}
