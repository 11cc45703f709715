//! `ticket show`: a ticket file for people (or `--json` for scripts).
use crate::fmt::fmt_unix;
use anyhow::{Result, anyhow};
use kiln_protocol::{ImageRef, SignedTicket, StageKind, TestBundle, Ticket};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;

use crate::fsutil::now_s;
use crate::state::State;

/// Reads, verifies and prints a ticket; an invalid one is an error (exit 2).
pub fn show(state: &State, file: &Path, as_json: bool) -> Result<i32> {
    let bytes = kiln_protocol::io::read_file_capped(
        file,
        kiln_protocol::MAX_TICKET_BYTES as u64,
        "a ticket",
    )
    .map_err(|e| anyhow!("reading {e}"))?;
    let signed = SignedTicket::from_file(&bytes)
        .map_err(|e| anyhow!("{}: invalid ticket: {e}", file.display()))?;
    let ours = state.public_key()?;
    if signed.key_id != ours.key_id() {
        return Err(anyhow!(
            "{}: signed by key {}, not this coordinator's ({})",
            file.display(),
            signed.key_id,
            ours.key_id()
        ));
    }
    let t = signed
        .verify(&[ours])
        .map_err(|e| anyhow!("{}: invalid ticket: {e}", file.display()))?;
    let now = now_s();
    let text = if as_json {
        let mut v = to_json(&t, now);
        v["signed_by"] = json!(ours.fingerprint());
        format!(
            "{}\n",
            crate::visible::json_safe(serde_json::to_string_pretty(&v)?)
        )
    } else {
        human(&t, &ours.fingerprint(), now)
    };
    // A closed pipe (`| head`) is not an error worth a message.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

/// Appends a line to `out`, control characters shown as escapes
/// ([`crate::visible::visible`]): plan text is not trusted to be printable.
macro_rules! push_line {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&crate::visible::visible(&format!($($arg)*)));
        $out.push('\n');
    }};
}

fn human(t: &Ticket, fingerprint: &str, now: u64) -> String {
    let mut o = String::new();
    push_line!(o, "ticket ok: signed by this coordinator ({fingerprint})");
    push_line!(o, "run          {}", t.run);
    let mut bind = Vec::new();
    if !t.host.macs.is_empty() {
        let macs: Vec<String> = t.host.macs.iter().map(|m| m.to_string()).collect();
        bind.push(format!("mac {}", macs.join(",")));
    }
    if let Some(s) = &t.host.serial {
        bind.push(format!("serial {s:?}"));
    }
    if let Some(k) = &t.host.agent_key {
        bind.push(format!("enrolled agent key {}", k.fingerprint()));
    }
    push_line!(o, "host         {} ({})", t.host.name, bind.join(", "));
    push_line!(o, "issued       {}", fmt_unix(t.issued_at));
    let left = if now > t.not_after {
        format!("EXPIRED {} ago", span(now - t.not_after))
    } else {
        format!("in {}", span(t.not_after - now))
    };
    push_line!(o, "expires      {} ({left})", fmt_unix(t.not_after));
    push_line!(
        o,
        "coordinator  {}",
        t.coordinator.as_deref().unwrap_or("none (offline)")
    );
    let p = &t.plan;
    let timeout = if p.timeout_s == 0 {
        "none".into()
    } else {
        span(p.timeout_s)
    };
    push_line!(
        o,
        "plan         {:?}: {} stage(s), fail_fast {}, timeout {timeout}",
        p.name,
        p.stages.len(),
        p.fail_fast
    );
    if p.hold.when != kiln_protocol::HoldWhen::Never {
        push_line!(
            o,
            "hold         {} for {}, {} SSH key(s)",
            p.hold.when.as_str(),
            span(p.hold.for_s),
            p.hold.keys.len()
        );
        for k in &p.hold.keys {
            push_line!(o, "  key {k}");
        }
    }
    for (i, s) in p.stages.iter().enumerate() {
        let mut head = format!("  {}. {} ({})", i + 1, s.name, s.kind.name());
        if s.timeout_s > 0 {
            head += &format!(" timeout {}", span(s.timeout_s));
        }
        if s.retries > 0 {
            head += &format!(" retries {}", s.retries);
        }
        if s.destructive {
            head += " DESTRUCTIVE";
        }
        if s.continue_on_failure {
            head += " continue_on_failure";
        }
        push_line!(o, "{head}");
        if let Some(b) = &s.tests {
            push_line!(
                o,
                "       tests: bundle {} ({} bytes), tree {}",
                b.sha256,
                b.size,
                b.tree
            );
        }
        for (k, v) in &s.env {
            push_line!(o, "       env {k}={v}");
        }
        if !s.secrets.is_empty() {
            push_line!(o, "       secrets: {}", s.secrets.join(", "));
        }
        if let Value::Object(settings) = settings(&s.kind) {
            for (k, v) in settings {
                push_line!(o, "       {k} = {v}");
            }
        }
    }
    o
}

/// The whole ticket as JSON: digests and MACs as strings.
pub fn to_json(t: &Ticket, now: u64) -> Value {
    let macs: Vec<String> = t.host.macs.iter().map(|m| m.to_string()).collect();
    let mut spec = serde_json::to_value(&t.host.spec).unwrap_or(Value::Null);
    if let Some(nics) = spec.get_mut("nics").and_then(Value::as_array_mut) {
        for (nic, want) in nics.iter_mut().zip(&t.host.spec.nics) {
            nic["mac"] = json!(want.mac.map(|m| m.to_string()));
        }
    }
    let stages: Vec<Value> = t
        .plan
        .stages
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "kind": s.kind.name(),
                "timeout_s": s.timeout_s,
                "retries": s.retries,
                "destructive": s.destructive,
                "continue_on_failure": s.continue_on_failure,
                "tests": s.tests.as_ref().map(bundle),
                "env": s.env.iter().map(|(k, v)| (k.clone(), json!(v)))
                    .collect::<serde_json::Map<String, Value>>(),
                "secrets": s.secrets,
                "settings": settings(&s.kind),
            })
        })
        .collect();
    json!({
        "version": t.version,
        "run": t.run.to_string(),
        "issued_at": t.issued_at,
        "not_after": t.not_after,
        "expired": now > t.not_after,
        "coordinator": t.coordinator,
        "host": {
            "name": t.host.name,
            "macs": macs,
            "serial": t.host.serial,
            "spec": spec,
            "agent_key": t.host.agent_key.map(|k| k.fingerprint()),
        },
        "plan": {
            "name": t.plan.name,
            "fail_fast": t.plan.fail_fast,
            "timeout_s": t.plan.timeout_s,
            "stages": stages,
        },
    })
}

fn bundle(b: &TestBundle) -> Value {
    json!({ "sha256": b.sha256.to_string(), "size": b.size, "tree": b.tree.to_string() })
}

/// A stage kind's settings as a JSON object.
fn settings(kind: &StageKind) -> Value {
    let mut v = match kind {
        StageKind::Exec { command } => json!({ "command": command }),
        StageKind::Inventory => json!({}),
        StageKind::Container(c) => serde_json::to_value(c).unwrap_or(Value::Null),
        StageKind::Ssh(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        StageKind::Smart(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        StageKind::CpuStress(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        StageKind::Storage(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        StageKind::Network(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        StageKind::Gpu(s) => serde_json::to_value(s).unwrap_or(Value::Null),
    };
    if let StageKind::Container(c) = kind {
        let images: Vec<Value> = c
            .images
            .iter()
            .map(|i| match i {
                ImageRef::Registry(r) => json!(r),
                ImageRef::Archive { name, sha256, size } => {
                    json!({ "name": name, "archive": sha256.to_string(), "size": size })
                }
                ImageRef::Build(b) => json!({
                    "build": b.file,
                    "context": b.context,
                    "build_args": b.args,
                    "no_cache": b.no_cache,
                }),
            })
            .collect();
        v["images"] = json!(images);
    }
    v
}

/// Seconds as `1d2h`, `3h20m`, `5m10s` or `42s`.
pub fn span(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m{sec}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(fmt_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_unix(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(fmt_unix(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn spans() {
        assert_eq!(span(42), "42s");
        assert_eq!(span(310), "5m10s");
        assert_eq!(span(86_399), "23h59m");
        assert_eq!(span(93_600), "1d2h");
        assert_eq!(span(7200), "2h");
        assert_eq!(span(86_400), "1d");
    }
}
