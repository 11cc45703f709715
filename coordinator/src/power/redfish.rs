//! Redfish over HTTPS (DMTF DSP0266): the system's `PowerState`,
//! `ComputerSystem.Reset` (On, ForceOff, ForceRestart) and a one-time boot override
//! (`Boot.BootSourceOverrideTarget = Pxe`, `BootSourceOverrideEnabled = Once`). Basic
//! authentication; the certificate is trusted as [`super::tls::Trust`] says. Answers
//! are read capped at [`super::MAX_ANSWER_BYTES`].
use anyhow::Result;
use base64::Engine;
use serde_json::{Value, json};
use std::io::Read;
use std::time::Duration;

use super::tls::{Trust, client_config};
use super::{ACTION_TIMEOUT, Action, Answer, Bmc, MAX_ANSWER_BYTES, PowerError, PowerState};

/// One Redfish service.
pub struct Redfish {
    user: String,
    base: String,
    system: Option<String>,
    auth: String,
    agent: ureq::Agent,
}

impl Redfish {
    /// The service at `https://host:port`, the system at `system` (or the only one).
    pub fn new(
        user: String,
        host: String,
        port: u16,
        system: Option<String>,
        password: String,
        trust: &Trust,
    ) -> Result<Self> {
        let tls = client_config(trust)?;
        let agent = ureq::AgentBuilder::new()
            .tls_config(tls)
            .timeout_connect(Duration::from_secs(10))
            .timeout(ACTION_TIMEOUT)
            .redirects(0)
            .build();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        Ok(Redfish {
            user,
            base: format!("https://{host}:{port}"),
            system,
            auth,
            agent,
        })
    }

    fn err(&self, reason: impl Into<String>) -> PowerError {
        PowerError {
            bmc: self.describe(),
            reason: reason.into(),
            unsupported: false,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, PowerError> {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &self.auth)
            .set("Accept", "application/json");
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let (code, resp) = match res {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(code, r)) => (code, r),
            Err(ureq::Error::Transport(t)) => {
                return Err(self.err(format!("{method} {path}: {}", transport_reason(&t))));
            }
        };
        let mut buf = Vec::new();
        resp.into_reader()
            .take(MAX_ANSWER_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.err(format!("{method} {path}: reading the answer: {e}")))?;
        if buf.len() > MAX_ANSWER_BYTES {
            return Err(self.err(format!(
                "{method} {path}: answer larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        let value: Value = if buf.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&buf).unwrap_or(Value::Null)
        };
        if !(200..300).contains(&code) {
            let msg = value
                .pointer("/error/@Message.ExtendedInfo/0/Message")
                .or_else(|| value.pointer("/error/message"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&buf).into_owned());
            let hint = match code {
                401 | 403 => " (wrong account or password?)",
                404 => " (wrong system path?)",
                _ => "",
            };
            return Err(self.err(format!(
                "{method} {path}: HTTP {code}{hint}: {}",
                super::one_line(&msg)
            )));
        }
        Ok(value)
    }

    /// The system's resource path: the configured one, or the only member of
    /// `/redfish/v1/Systems`.
    fn system_path(&self) -> Result<String, PowerError> {
        if let Some(s) = &self.system {
            return Ok(s.clone());
        }
        let v = self.call("GET", "/redfish/v1/Systems", None)?;
        let members: Vec<&str> = v
            .get("Members")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(|x| x.get("@odata.id").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        match members.as_slice() {
            [one] if one.starts_with("/redfish/v1/Systems/") => Ok(one.to_string()),
            [] => Err(self.err("the service lists no system")),
            _ => Err(self.err(format!(
                "the service has {} systems: name one, redfish://USER@BMC/redfish/v1/Systems/ID",
                members.len()
            ))),
        }
    }

    fn reset(&self, system: &str, sys: &Value, kind: &str) -> Result<String, PowerError> {
        let target = sys
            .pointer("/Actions/#ComputerSystem.Reset/target")
            .and_then(Value::as_str)
            .filter(|t| t.starts_with("/redfish/v1/"))
            .map(str::to_string)
            .unwrap_or_else(|| format!("{system}/Actions/ComputerSystem.Reset"));
        self.call("POST", &target, Some(json!({ "ResetType": kind })))?;
        Ok(format!("ComputerSystem.Reset {kind} accepted"))
    }
}

fn transport_reason(t: &ureq::Transport) -> String {
    let mut s = t.to_string();
    let mut src = std::error::Error::source(t);
    while let Some(e) = src {
        let m = e.to_string();
        if !s.contains(&m) {
            s += &format!(": {m}");
        }
        src = e.source();
    }
    super::one_line(&s)
}

fn power_state(sys: &Value) -> Option<PowerState> {
    match sys.get("PowerState").and_then(Value::as_str)? {
        "On" | "PoweringOff" => Some(PowerState::On),
        "Off" | "PoweringOn" => Some(PowerState::Off),
        _ => Some(PowerState::Unknown),
    }
}

impl Bmc for Redfish {
    fn describe(&self) -> String {
        let rest = self.base.trim_start_matches("https://");
        format!(
            "redfish://{}@{rest}{}",
            self.user,
            self.system.as_deref().unwrap_or("")
        )
    }

    fn act(&self, action: Action) -> Result<Answer, PowerError> {
        let system = self.system_path()?;
        let sys = self.call("GET", &system, None)?;
        let now = power_state(&sys);
        let (state, text) = match action {
            Action::Status => {
                let s = now.ok_or_else(|| self.err("the system has no PowerState"))?;
                (Some(s), format!("PowerState {s}"))
            }
            Action::On => (Some(PowerState::On), self.reset(&system, &sys, "On")?),
            Action::Off => (
                Some(PowerState::Off),
                self.reset(&system, &sys, "ForceOff")?,
            ),
            Action::Cycle if now == Some(PowerState::Off) => (
                Some(PowerState::On),
                format!("was off; {}", self.reset(&system, &sys, "On")?),
            ),
            Action::Cycle => (
                Some(PowerState::On),
                self.reset(&system, &sys, "ForceRestart")?,
            ),
            Action::Pxe => {
                self.call(
                    "PATCH",
                    &system,
                    Some(json!({ "Boot": {
                        "BootSourceOverrideTarget": "Pxe",
                        "BootSourceOverrideEnabled": "Once"
                    }})),
                )?;
                (None, "BootSourceOverrideTarget Pxe, Once".into())
            }
        };
        Ok(Answer { state, text })
    }
}
