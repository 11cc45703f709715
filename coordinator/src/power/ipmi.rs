//! IPMI over LAN (RMCP+) through `ipmitool -I lanplus`. The password goes to
//! ipmitool in its environment (`-E`, `IPMI_PASSWORD`), never on its command line;
//! ipmitool's own retries are bounded (`-N`, `-R`) and the process is killed if it
//! outlives [`super::ACTION_TIMEOUT`]. The session asks for operator privilege, all
//! chassis control needs.
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    ACTION_TIMEOUT, Action, Answer, Bmc, Console, ConsoleSink, MAX_ANSWER_BYTES, PowerError,
    PowerState,
};

/// One BMC reached with ipmitool.
#[derive(Clone)]
pub struct Ipmi {
    user: String,
    host: String,
    port: u16,
    cipher: u8,
    password: String,
    tool: String,
}

impl Ipmi {
    /// A BMC at `host:port`, user and password, RMCP+ cipher suite `cipher`.
    /// The client is `ipmitool` on PATH, or `KILN_IPMITOOL` when set.
    pub fn new(user: String, host: String, port: u16, cipher: u8, password: String) -> Self {
        let tool = std::env::var("KILN_IPMITOOL").unwrap_or_else(|_| "ipmitool".into());
        Ipmi {
            user,
            host,
            port,
            cipher,
            password,
            tool,
        }
    }

    fn err(&self, reason: impl Into<String>) -> PowerError {
        PowerError {
            bmc: self.describe(),
            reason: reason.into(),
            unsupported: false,
        }
    }

    /// `ipmitool` with the session options (the password in its environment).
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.tool);
        cmd.args(["-I", "lanplus", "-C"])
            .arg(self.cipher.to_string())
            .args(["-H", &self.host, "-p"])
            .arg(self.port.to_string())
            .args([
                "-U", &self.user, "-E", "-L", "OPERATOR", "-N", "2", "-R", "2",
            ])
            .env("IPMI_PASSWORD", &self.password);
        cmd
    }

    /// Runs `ipmitool … ARGS`; stdout on success, else the error line.
    fn run(&self, args: &[&str]) -> Result<String, PowerError> {
        let mut cmd = self.command();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                self.err(format!(
                    "{} is not installed (Debian: apt-get install ipmitool)",
                    self.tool
                ))
            } else {
                self.err(format!("starting {}: {e}", self.tool))
            }
        })?;
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let read = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = (&mut r).take(MAX_ANSWER_BYTES as u64).read_to_end(&mut buf);
                // Drain the rest so the child never blocks on a full pipe.
                let _ = std::io::copy(&mut r, &mut std::io::sink());
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let (out_t, err_t) = (read(Box::new(out)), read(Box::new(err)));
        let deadline = Instant::now() + ACTION_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(self.err(format!("waiting for ipmitool: {e}"))),
            }
        };
        let stdout = out_t.join().unwrap_or_default();
        let stderr = err_t.join().unwrap_or_default();
        let Some(status) = status else {
            return Err(self.err(format!(
                "no answer within {} s (is the BMC reachable on UDP port {}?)",
                ACTION_TIMEOUT.as_secs(),
                self.port
            )));
        };
        // ipmitool prints probes a simple BMC does not support; they are noise.
        let stderr: String = stderr
            .lines()
            .filter(|l| !l.contains("HPM.x") && !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if status.success() {
            return Ok(super::one_line(&stdout));
        }
        let mut reason = super::one_line(&stderr);
        if reason.is_empty() {
            reason = format!("ipmitool failed ({status})");
        }
        if stderr.contains("Unable to establish IPMI v2") {
            reason += " (wrong user or password, the BMC unreachable, or cipher suite \
                       not supported: try ?cipher=17)";
        }
        Err(self.err(reason))
    }
}

/// A serial-over-LAN session: `ipmitool sol activate` on a pseudo-terminal (ipmitool
/// insists on one), read on a thread.
struct Sol {
    child: std::process::Child,
    bmc: Ipmi,
}

impl Console for Sol {
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(mut self: Box<Self>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Free the BMC's one SOL session for the next reader.
        let _ = self.bmc.run(&["sol", "deactivate"]);
    }
}

impl Drop for Sol {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bmc for Ipmi {
    fn console(&self, mut sink: ConsoleSink) -> Result<Option<Box<dyn Console>>, PowerError> {
        // A session a crashed reader left open would refuse this one.
        let _ = self.run(&["sol", "deactivate"]);
        let pty = nix::pty::openpty(None, None)
            .map_err(|e| self.err(format!("opening a pseudo-terminal for SOL: {e}")))?;
        let slave = |fd: &std::os::fd::OwnedFd| {
            fd.try_clone()
                .map(Stdio::from)
                .map_err(|e| self.err(format!("pseudo-terminal: {e}")))
        };
        let mut cmd = self.command();
        cmd.args(["sol", "activate"])
            .stdin(slave(&pty.slave)?)
            .stdout(slave(&pty.slave)?)
            .stderr(slave(&pty.slave)?);
        let child = cmd
            .spawn()
            .map_err(|e| self.err(format!("starting {} sol activate: {e}", self.tool)))?;
        drop(cmd);
        drop(pty.slave);
        let mut master = std::fs::File::from(pty.master);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the session's process is gone.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink(&buf[..n]);
            }
        });
        Ok(Some(Box::new(Sol {
            child,
            bmc: self.clone(),
        })))
    }

    fn describe(&self) -> String {
        if self.host.contains(':') {
            format!("ipmi://{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            format!("ipmi://{}@{}:{}", self.user, self.host, self.port)
        }
    }

    fn act(&self, action: Action) -> Result<Answer, PowerError> {
        let args: &[&str] = match action {
            Action::Status => &["chassis", "power", "status"],
            Action::On => &["chassis", "power", "on"],
            Action::Off => &["chassis", "power", "off"],
            Action::Cycle => {
                // A chassis that is off refuses a cycle on many BMCs: power it on.
                let now = self.act(Action::Status)?;
                if now.state == Some(PowerState::Off) {
                    let text = self.run(&["chassis", "power", "on"])?;
                    return Ok(Answer {
                        state: Some(PowerState::On),
                        text: format!("was off; {text}"),
                    });
                }
                &["chassis", "power", "cycle"]
            }
            Action::Pxe => &["chassis", "bootdev", "pxe"],
        };
        let text = self.run(args)?;
        let state =
            match action {
                Action::Status => Some(parse_status(&text).ok_or_else(|| {
                    self.err(format!("unexpected answer to power status: {text:?}"))
                })?),
                _ => None,
            };
        Ok(Answer { state, text })
    }
}

/// `Chassis Power is on|off` → the state.
fn parse_status(text: &str) -> Option<PowerState> {
    let t = text.to_ascii_lowercase();
    if t.contains("power is on") {
        Some(PowerState::On)
    } else if t.contains("power is off") {
        Some(PowerState::Off)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status("Chassis Power is on"), Some(PowerState::On));
        assert_eq!(parse_status("Chassis Power is off"), Some(PowerState::Off));
        assert_eq!(parse_status("what"), None);
    }

    #[test]
    fn a_missing_client_is_a_clear_error() {
        let mut i = Ipmi::new("u".into(), "127.0.0.1".into(), 1, 3, "pw".into());
        i.tool = "/nonexistent/ipmitool".into();
        let e = i.act(Action::Status).unwrap_err();
        assert!(e.to_string().contains("is not installed"), "{e}");
        assert!(e.to_string().starts_with("ipmi://u@127.0.0.1:1: "), "{e}");
    }
}
