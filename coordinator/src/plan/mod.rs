//! Plan files (TOML) to wire plans: durations, test folders into the CAS, policy checks.
//!
//! Every error is one line that names the plan file and the line:
//! `plans/nightly.toml:12: stage "smoke": tests folder tests/smoke does not exist`.
use anyhow::{Context, Result, anyhow};
use kiln_protocol::{Hold, HoldWhen, Plan, Sha256, Stage, StageKind, TestBundle, tree};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Value;

use crate::state::{Host, State, check_name};
use crate::units::{parse_duration, parse_size};
use raw::{COMMON_KEYS, KINDS, PlanToml, Spanned, StageToml, kind_keys};

mod container;
mod kinds;
mod raw;

/// A plan file resolved for a ticket: the wire plan and the CAS objects it names.
#[derive(Debug, Clone)]
pub struct LoadedPlan {
    /// The plan as it goes into the ticket.
    pub plan: Plan,
    /// Every CAS object the plan references (test bundles, image archives), sorted.
    pub cas: Vec<Sha256>,
    /// The plan's lights-out settings (kept by the coordinator, not in the ticket).
    pub lights: PlanLights,
}

/// A plan's lights-out settings (top-level `power_off`, `boot_timeout`,
/// `lost_after`); unset ones fall back to the host's, then the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanLights {
    /// `power_off = false` keeps the host on after the run.
    pub power_off: Option<bool>,
    /// Seconds from power-on to claim.
    pub boot_timeout_s: Option<u64>,
    /// Seconds of agent silence.
    pub lost_after_s: Option<u64>,
}

/// Reads a plan file, packs its test folders into the state's CAS, and checks it
/// against policy. `host` is the machine the plan is issued for.
pub fn load_plan(path: &Path, state: &State, host: &Host) -> Result<LoadedPlan> {
    let text = kiln_protocol::io::read_text_capped(
        path,
        kiln_protocol::MAX_PLAN_FILE_BYTES as u64,
        "a plan file",
    )
    .map_err(|e| anyhow::anyhow!("reading plan {e}"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let cx = Ctx {
        path,
        text: &text,
        dir,
        state,
        host,
        cas: RefCell::default(),
        bundles: RefCell::default(),
    };
    let mut raw: PlanToml = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| cx.line(s.start)).unwrap_or(1);
        let msg = e.message().replace('\n', " ");
        anyhow!("{}:{line}: {}", path.display(), msg.trim())
    })?;
    raw.locate(&text);
    let lights = PlanLights {
        power_off: raw.power_off.as_ref().map(|v| *v.get_ref()),
        boot_timeout_s: raw
            .boot_timeout
            .as_ref()
            .map(|t| cx.duration(t, "boot_timeout").map(|s| s.max(1)))
            .transpose()?,
        lost_after_s: raw
            .lost_after
            .as_ref()
            .map(|t| cx.duration(t, "lost_after").map(|s| s.max(1)))
            .transpose()?,
    };
    let plan = cx.plan(raw)?;
    let cas = cx.cas.into_inner().into_iter().collect();
    Ok(LoadedPlan { plan, cas, lights })
}

/// What the conversion needs: the file (for line numbers), its folder (for relative
/// paths), the state (CAS, secrets) and what it has stored so far.
pub(crate) struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    dir: PathBuf,
    state: &'a State,
    host: &'a Host,
    cas: RefCell<BTreeSet<Sha256>>,
    bundles: RefCell<HashMap<PathBuf, TestBundle>>,
}

impl Ctx<'_> {
    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// An error at `span`: `FILE:LINE: msg`.
    fn err(&self, span: Range<usize>, msg: impl Display) -> anyhow::Error {
        anyhow!("{}:{}: {msg}", self.path.display(), self.line(span.start))
    }

    /// A path from the plan, relative to the plan file's folder.
    fn rel(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn plan(&self, raw: PlanToml) -> Result<Plan> {
        let name = match &raw.name {
            Some(n) if n.get_ref().trim().is_empty() => {
                return Err(self.err(n.span(), "`name` is empty"));
            }
            Some(n) => n.get_ref().clone(),
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plan".into()),
        };
        let timeout_s = match &raw.timeout {
            Some(t) => self.duration(t, "timeout")?,
            None => 0,
        };
        if raw.stage.is_empty() {
            return Err(self.err(0..0, "the plan has no [[stage]]"));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut stages = Vec::with_capacity(raw.stage.len());
        for (i, s) in raw.stage.iter().enumerate() {
            let stage = self.stage(i, s)?;
            let at = s.get_ref().name.as_ref().map_or(s.span(), |n| n.span());
            let line = self.line(at.start);
            if let Some(first) = seen.insert(stage.name.clone(), line) {
                return Err(self.err(
                    at,
                    format!(
                        "duplicate stage name {:?} (first at line {first})",
                        stage.name
                    ),
                ));
            }
            stages.push(stage);
        }
        let hold = self.hold(&raw)?;
        Ok(Plan {
            name,
            stages,
            fail_fast: raw.fail_fast.is_none_or(|f| f.into_inner()),
            timeout_s,
            hold,
        })
    }

    /// `hold`, `hold_for` (default 4h, at most 7 days) and `hold_keys` (a secret of
    /// OpenSSH public key lines, copied into the ticket: they are not secret).
    fn hold(&self, raw: &PlanToml) -> Result<Hold> {
        let when = match &raw.hold {
            None => HoldWhen::Never,
            Some(h) => match h.get_ref().as_str() {
                "never" => HoldWhen::Never,
                "on_failure" => HoldWhen::OnFailure,
                "always" => HoldWhen::Always,
                other => {
                    return Err(self.err(
                        h.span(),
                        format!("`hold`: {other:?} is not one of never, on_failure, always"),
                    ));
                }
            },
        };
        let for_s = match &raw.hold_for {
            Some(t) => {
                let s = self.duration(t, "hold_for")?;
                if s == 0 || s > kiln_protocol::MAX_HOLD_S {
                    return Err(self.err(
                        t.span(),
                        format!("`hold_for`: {s}s is not between 1s and 7 days"),
                    ));
                }
                s
            }
            None if when == HoldWhen::Never => 0,
            None => DEFAULT_HOLD_S,
        };
        let keys = match &raw.hold_keys {
            None => Vec::new(),
            Some(k) => {
                let bytes = self
                    .state
                    .secret(k.get_ref())
                    .map_err(|e| self.err(k.span(), format!("`hold_keys`: {e:#}")))?;
                parse_public_keys(&bytes).map_err(|e| {
                    self.err(k.span(), format!("`hold_keys` {:?}: {e}", k.get_ref()))
                })?
            }
        };
        if when == HoldWhen::Never && (raw.hold_for.is_some() || raw.hold_keys.is_some()) {
            let span = raw
                .hold_for
                .as_ref()
                .map(|v| v.span())
                .or(raw.hold_keys.as_ref().map(|v| v.span()))
                .unwrap_or(0..0);
            return Err(self.err(
                span,
                "`hold_for` and `hold_keys` need `hold = \"on_failure\"` or `\"always\"`",
            ));
        }
        Ok(Hold { when, for_s, keys })
    }

    fn stage(&self, index: usize, s: &Spanned<StageToml>) -> Result<Stage> {
        let st = s.get_ref();
        let name = st
            .name
            .as_ref()
            .ok_or_else(|| self.err(s.span(), format!("stage #{} has no `name`", index + 1)))?;
        check_name(name.get_ref(), "stage").map_err(|e| self.err(name.span(), e))?;
        let name = name.get_ref().as_str();
        let kind = st
            .kind
            .as_ref()
            .ok_or_else(|| self.err(s.span(), format!("stage {name:?} has no `kind`")))?;
        let keys = kind_keys(kind.get_ref()).ok_or_else(|| {
            let all: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
            self.err(
                kind.span(),
                format!(
                    "stage {name:?}: unknown kind {:?} (one of {})",
                    kind.get_ref(),
                    all.join(", ")
                ),
            )
        })?;
        let kind = kind.get_ref().as_str();
        for (key, span) in st.present() {
            if !COMMON_KEYS.contains(&key) && !keys.contains(&key) {
                return Err(self.err(
                    span,
                    format!("stage {name:?}: `{key}` is not a setting of {kind} stages"),
                ));
            }
        }
        let tests = match &st.tests {
            Some(t) => Some(self.bundle(name, t)?),
            None => None,
        };
        let at = StageAt {
            cx: self,
            name,
            span: s.span(),
        };
        let spec = kinds::build(&at, kind, st, tests.as_ref())?;
        let mut secrets = match &st.secrets {
            Some(list) => {
                for secret in list.get_ref() {
                    at.secret(list.span(), secret)?;
                }
                list.get_ref().clone()
            }
            None => Vec::new(),
        };
        // The SSH key and known_hosts are secrets the stage needs too: list them so
        // the agent fetches them with the rest (the kind's builder checked they exist).
        if let StageKind::Ssh(ssh) = &spec {
            for name in std::iter::once(&ssh.key).chain(ssh.known_hosts.as_ref()) {
                if !secrets.contains(name) {
                    secrets.push(name.clone());
                }
            }
        }
        let env = self.env(name, st)?;
        if let StageKind::Ssh(ssh) = &spec
            && ssh.os == kiln_protocol::Os::Windows
            && let (Some(span), Some((k, c))) = (
                st.env.as_ref().map(|e| e.span()),
                env.iter().find_map(|(k, v)| {
                    v.chars()
                        .find(|c| matches!(c, '"' | '%' | '\r' | '\n'))
                        .map(|c| (k, c))
                }),
            )
        {
            // The entrypoint on Windows is a cmd.exe line (see the agent's ssh stage).
            return Err(self.err(
                span,
                format!("stage {name:?}: env {k} contains {c:?}, which a Windows command line cannot carry"),
            ));
        }
        Ok(Stage {
            name: name.to_string(),
            kind: spec,
            timeout_s: match &st.timeout {
                Some(t) => at.duration(t, "timeout")?,
                None => 0,
            },
            retries: st.retries.as_ref().map_or(0, |r| *r.get_ref()),
            destructive: st.destructive.as_ref().is_some_and(|d| *d.get_ref()),
            continue_on_failure: st
                .continue_on_failure
                .as_ref()
                .is_some_and(|c| *c.get_ref()),
            tests: tests.map(|(b, _)| b),
            env,
            secrets,
        })
    }

    fn env(&self, stage: &str, st: &StageToml) -> Result<Vec<(String, String)>> {
        let Some(env) = &st.env else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (k, v) in env.get_ref() {
            if !is_env_name(k) {
                return Err(self.err(
                    env.span(),
                    format!("stage {stage:?}: {k:?} is not an environment variable name"),
                ));
            }
            let v = scalar(v).ok_or_else(|| {
                self.err(
                    env.span(),
                    format!("stage {stage:?}: env {k} must be a string, number or boolean"),
                )
            })?;
            out.push((k.clone(), v));
        }
        Ok(out)
    }

    /// Packs a test folder into the CAS (once per folder); returns the bundle and
    /// the folder.
    fn bundle(&self, stage: &str, tests: &Spanned<String>) -> Result<(TestBundle, PathBuf)> {
        let folder = self.rel(tests.get_ref());
        if let Some(b) = self.bundles.borrow().get(&folder) {
            return Ok((b.clone(), folder));
        }
        let fail = |what: String| self.err(tests.span(), format!("stage {stage:?}: {what}"));
        if !folder.is_dir() {
            return Err(fail(format!(
                "tests folder {} does not exist ({})",
                tests.get_ref(),
                folder.display()
            )));
        }
        let bad = |e: std::io::Error| fail(format!("tests folder {}: {e}", tests.get_ref()));
        let (bytes, sha256) = tree::pack_to_vec(&folder).map_err(bad)?;
        let tree = tree::tree_hash(&folder).map_err(bad)?;
        self.state
            .cas()
            .put(&bytes)
            .with_context(|| format!("storing the bundle of {}", folder.display()))?;
        self.cas.borrow_mut().insert(sha256);
        let b = TestBundle {
            sha256,
            size: bytes.len() as u64,
            tree,
        };
        self.bundles.borrow_mut().insert(folder.clone(), b.clone());
        Ok((b, folder))
    }

    /// A plan-level duration.
    fn duration(&self, v: &Spanned<Value>, key: &str) -> Result<u64> {
        duration(v.get_ref(), key).map_err(|e| self.err(v.span(), e))
    }
}

/// One stage being converted: errors name it.
pub(crate) struct StageAt<'a> {
    cx: &'a Ctx<'a>,
    name: &'a str,
    span: Range<usize>,
}

impl StageAt<'_> {
    /// An error at `span`, naming the stage.
    fn err(&self, span: Range<usize>, msg: impl Display) -> anyhow::Error {
        self.cx.err(span, format!("stage {:?}: {msg}", self.name))
    }

    /// A duration given as `"10m"` or a number of seconds.
    fn duration(&self, v: &Spanned<Value>, key: &str) -> Result<u64> {
        duration(v.get_ref(), key).map_err(|e| self.err(v.span(), e))
    }

    /// A size given as `"512M"` or a number of bytes.
    fn size(&self, v: &Spanned<Value>, key: &str) -> Result<u64> {
        let r = match v.get_ref() {
            Value::String(s) => parse_size(s),
            Value::Integer(n) if *n >= 0 => Ok(*n as u64),
            _ => Err("must be a size such as \"512M\" or \"2G\"".into()),
        };
        r.map_err(|e| self.err(v.span(), format!("`{key}`: {e}")))
    }

    /// A required key, or an error at the stage's header.
    fn need<'b, T>(
        &self,
        v: &'b Option<Spanned<T>>,
        key: &str,
        kind: &str,
    ) -> Result<&'b Spanned<T>> {
        v.as_ref().ok_or_else(|| {
            self.err(
                self.span.clone(),
                format!("`{key}` is required for {kind} stages"),
            )
        })
    }

    /// Checks that a secret the plan names is valid and set.
    fn secret(&self, span: Range<usize>, name: &str) -> Result<()> {
        let path = self
            .cx
            .state
            .secret_path(name)
            .map_err(|e| self.err(span.clone(), e))?;
        if !path.is_file() {
            return Err(self.err(
                span,
                format!("secret {name:?} is not set (kiln-coordinator secret set {name} --file F)"),
            ));
        }
        Ok(())
    }
}

/// How long a hold lasts when the plan gives no `hold_for`: 4 hours.
pub const DEFAULT_HOLD_S: u64 = 4 * 3600;

/// The OpenSSH public key lines of a `hold_keys` secret: blank lines and `#` comments
/// skipped; a private key, or a line that is no `TYPE BASE64 [comment]` key, refused.
pub fn parse_public_keys(bytes: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    if text.contains("PRIVATE KEY") {
        return Err("holds a private key; give the public keys (.pub lines)".into());
    }
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (kind, blob) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let known =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
        let b64 = !blob.is_empty()
            && blob
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
        if !known || !b64 {
            return Err(format!(
                "line {} is not an OpenSSH public key (`ssh-ed25519 AAAA… comment`)",
                i + 1
            ));
        }
        keys.push(line.to_string());
    }
    if keys.is_empty() {
        return Err("holds no public key".into());
    }
    Ok(keys)
}

/// A duration given as `"10m"` or a number of seconds.
/// The longest duration a plan may give (a year): longer is a typo, and would
/// overflow the agent's clocks.
const MAX_DURATION_S: u64 = 365 * 86400;

fn duration(v: &Value, key: &str) -> Result<u64, String> {
    match v {
        Value::String(s) => parse_duration(s),
        Value::Integer(n) if *n >= 0 => Ok(*n as u64),
        _ => Err("must be a duration such as \"90s\", \"10m\", \"2h\"".into()),
    }
    .and_then(|d| {
        if d > MAX_DURATION_S {
            Err(format!("{d}s is longer than a year"))
        } else {
            Ok(d)
        }
    })
    .map_err(|e| format!("`{key}`: {e}"))
}

/// A copy of an optional key's value.
fn val<T: Clone>(v: &Option<Spanned<T>>) -> Option<T> {
    v.as_ref().map(|s| s.get_ref().clone())
}

/// A TOML scalar as an environment value.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Integer(n) => Some(n.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `command`: an argv array, or a string run with `sh -c`.
fn command(at: &StageAt, v: &Spanned<Value>) -> Result<Vec<String>> {
    let bad = || {
        at.err(
            v.span(),
            "`command` must be a string or a non-empty array of strings",
        )
    };
    match v.get_ref() {
        Value::String(s) if !s.trim().is_empty() => Ok(vec!["sh".into(), "-c".into(), s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests;
