//! The state folder: key, hosts.toml, images.toml, secrets/, cas/, runs/.
//! Everything the coordinator knows lives here; a restart rebuilds from it.
use anyhow::{Context, Result, bail};
use kiln_protocol::{DiskSpec, HostSpec, Mac, NicSpec, PublicKey, RunId, SecretKey};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

use crate::cas::Cas;
use crate::fsutil::write_atomic;
use crate::units::parse_size;

/// Default state folder when neither `--state` nor `KILN_STATE` is given.
pub const DEFAULT_STATE: &str = "./kiln-state";

/// An opened (initialized) state folder.
#[derive(Debug, Clone)]
pub struct State {
    /// The folder.
    pub root: PathBuf,
}

/// Largest hosts.toml or images.toml the coordinator reads, in bytes.
pub const MAX_TOML_BYTES: u64 = 4 << 20;

/// Largest secret `secret set` stores; secrets are keys and tokens, not files.
pub const MAX_SECRET_BYTES: u64 = kiln_protocol::MAX_SECRET_BYTES as u64;

/// `--state`, else `KILN_STATE`, else `./kiln-state`.
pub fn resolve_root(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("KILN_STATE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE))
}

impl State {
    /// Creates the folder and key if missing; returns the state and whether a key
    /// was created. Running it again changes nothing.
    pub fn init(root: &Path) -> Result<(State, bool)> {
        for sub in ["key", "secrets", "cas", "runs"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("secrets"), fs::Permissions::from_mode(0o700))?;
        fs::set_permissions(root.join("key"), fs::Permissions::from_mode(0o700))?;
        let state = State {
            root: root.to_path_buf(),
        };
        let key_path = state.key_path();
        let created = if key_path.exists() {
            state.signing_key()?;
            false
        } else {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).context("reading random bytes for the key")?;
            let key = SecretKey::from_seed(seed);
            write_atomic(&key_path, format!("{}\n", key.to_line()).as_bytes(), 0o600)?;
            let host = hostname();
            write_atomic(
                &root.join("key/coordinator.pub"),
                format!(
                    "{}\n",
                    key.public().to_line(&format!("kiln-coordinator@{host}"))
                )
                .as_bytes(),
                0o644,
            )?;
            true
        };
        if !state.hosts_path().exists() {
            write_atomic(&state.hosts_path(), HOSTS_HEADER.as_bytes(), 0o644)?;
        }
        Ok((state, created))
    }

    /// Opens an initialized folder, or says how to initialize it.
    pub fn open(root: &Path) -> Result<State> {
        let state = State {
            root: root.to_path_buf(),
        };
        if !state.key_path().is_file() {
            bail!(
                "{} is not a kiln state folder (run `kiln-coordinator --state {} init`)",
                root.display(),
                root.display()
            );
        }
        Ok(state)
    }

    fn key_path(&self) -> PathBuf {
        self.root.join("key/coordinator.key")
    }

    /// Path of the public key file.
    pub fn public_key_path(&self) -> PathBuf {
        self.root.join("key/coordinator.pub")
    }

    /// The coordinator's signing key.
    pub fn signing_key(&self) -> Result<SecretKey> {
        let text = kiln_protocol::io::read_text_capped(
            &self.key_path(),
            kiln_protocol::MAX_KEY_FILE_BYTES as u64,
            "a key file",
        )
        .context("reading the signing key")?;
        SecretKey::from_line(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.key_path().display()))
    }

    /// The coordinator's public key.
    pub fn public_key(&self) -> Result<PublicKey> {
        Ok(self.signing_key()?.public())
    }

    /// The content-addressed store.
    pub fn cas(&self) -> Cas {
        Cas::new(self.root.join("cas"))
    }

    /// Path of hosts.toml.
    pub fn hosts_path(&self) -> PathBuf {
        self.root.join("hosts.toml")
    }

    /// Reads hosts.toml.
    pub fn hosts(&self) -> Result<Hosts> {
        let path = self.hosts_path();
        let text = match kiln_protocol::io::read_text_capped(&path, MAX_TOML_BYTES, "hosts.toml") {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Hosts::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e)))
    }

    /// Writes hosts.toml atomically.
    pub fn save_hosts(&self, hosts: &Hosts) -> Result<()> {
        let body = toml::to_string_pretty(hosts).context("encoding hosts.toml")?;
        write_atomic(
            &self.hosts_path(),
            format!("{HOSTS_HEADER}{body}").as_bytes(),
            0o644,
        )
    }

    /// Path of a named secret (the name is checked).
    pub fn secret_path(&self, name: &str) -> Result<PathBuf> {
        check_name(name, "secret")?;
        Ok(self.root.join("secrets").join(name))
    }

    /// Reads a named secret.
    pub fn secret(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.secret_path(name)?;
        kiln_protocol::io::read_file_capped(&p, MAX_SECRET_BYTES, "a secret").with_context(|| {
            format!("secret {name:?} is not set (kiln-coordinator secret set {name} --file F)")
        })
    }

    /// Stores a named secret (0600).
    pub fn set_secret(&self, name: &str, value: &[u8]) -> Result<()> {
        write_atomic(&self.secret_path(name)?, value, 0o600)
    }

    /// Folder of one run.
    pub fn run_dir(&self, run: &RunId) -> PathBuf {
        self.root.join("runs").join(run.to_string())
    }

    /// Every run id with a folder, sorted.
    pub fn run_ids(&self) -> Result<Vec<RunId>> {
        let mut out = Vec::new();
        let dir = self.root.join("runs");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for e in rd {
            if let Some(id) = e?.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Resolves a full run id or a unique prefix of at least 8 hex digits.
    pub fn resolve_run(&self, arg: &str) -> Result<RunId> {
        let arg = arg.trim().to_ascii_lowercase();
        if let Ok(id) = arg.parse::<RunId>() {
            if self.run_dir(&id).is_dir() {
                return Ok(id);
            }
            bail!("no run {id}");
        }
        if arg.len() < 8 || !arg.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("run {arg:?}: give the run id or a unique prefix of at least 8 hex digits");
        }
        let hits: Vec<RunId> = self
            .run_ids()?
            .into_iter()
            .filter(|r| r.to_string().starts_with(&arg))
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => bail!("no run starts with {arg}"),
            _ => bail!("run prefix {arg} is ambiguous ({} runs match)", hits.len()),
        }
    }
}

/// Checks a name used as a file name (secrets, images, hosts).
pub fn check_name(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if !ok {
        bail!("invalid {what} name {name:?} (letters, digits, '-', '_', '.'; at most 64)");
    }
    Ok(())
}

/// A toml error on one line: "line N, column M: message".
pub fn one_line(e: &toml::de::Error) -> String {
    e.to_string()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('|') && !l.contains('^'))
        .collect::<Vec<_>>()
        .join(": ")
        .replace("TOML parse error at ", "")
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

const HOSTS_HEADER: &str = "# kiln hosts: one [[host]] per machine (kiln-coordinator host add)\n";

/// hosts.toml.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hosts {
    /// The machines.
    #[serde(default, rename = "host")]
    pub hosts: Vec<Host>,
}

impl Hosts {
    /// The host named `name`.
    pub fn get(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The host with MAC `mac`.
    pub fn by_mac(&self, mac: &Mac) -> Option<&Host> {
        self.hosts.iter().find(|h| {
            h.macs
                .iter()
                .any(|m| m.parse::<Mac>().ok().as_ref() == Some(mac))
        })
    }
}

/// One machine in hosts.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Unique name.
    pub name: String,
    /// MAC addresses (`aa:bb:cc:dd:ee:ff`).
    #[serde(default)]
    pub macs: Vec<String>,
    /// DMI product serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Netboot image name (images.toml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What the machine should have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SpecToml>,
    /// The enrolled agent key line (`kiln-ed25519 <base64> [comment]`, from
    /// `kiln-agent enroll`): tickets for this host name it and only it may claim them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_key: Option<String>,
    /// Lights-out power control (`power.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerToml>,
}

/// `[host.power]` in hosts.toml.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PowerToml {
    /// `ipmi://USER@BMC[:PORT]`, `redfish://USER@BMC[:PORT][/redfish/v1/Systems/ID]`
    /// or `wol[://BROADCAST[:PORT]]`.
    pub url: String,
    /// The secret holding the BMC password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Redfish: the BMC's certificate (or its CA), PEM, pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Redfish: accept any certificate (explicit, shown in `host list`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// `ticket issue` powers this host on without `--boot`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot: bool,
    /// Seconds from power-on to the agent's claim before the watchdog acts
    /// (default [`DEFAULT_BOOT_TIMEOUT_S`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_timeout_s: Option<u64>,
    /// Seconds of silence after which a claimed run's agent counts as lost
    /// (default [`DEFAULT_LOST_AFTER_S`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after_s: Option<u64>,
}

/// Default boot watchdog: ten minutes from power-on to claim.
pub const DEFAULT_BOOT_TIMEOUT_S: u64 = 600;
/// Default silence before a claimed run's agent counts as lost: ten minutes.
pub const DEFAULT_LOST_AFTER_S: u64 = 600;

impl Host {
    /// The enrolled agent key, parsed.
    pub fn agent_key(&self) -> Result<Option<PublicKey>> {
        self.agent_key
            .as_deref()
            .map(|line| {
                PublicKey::from_line(line)
                    .map_err(|e| anyhow::anyhow!("host {}: agent_key: {e}", self.name))
            })
            .transpose()
    }

    /// Parsed MACs.
    pub fn mac_list(&self) -> Result<Vec<Mac>> {
        self.macs
            .iter()
            .map(|m| {
                m.parse()
                    .map_err(|_| anyhow::anyhow!("host {}: bad MAC {m:?}", self.name))
            })
            .collect()
    }

    /// The wire form of the expected spec.
    pub fn host_spec(&self) -> Result<HostSpec> {
        match &self.spec {
            None => Ok(HostSpec::default()),
            Some(s) => s
                .to_wire()
                .map_err(|e| anyhow::anyhow!("host {}: {e}", self.name)),
        }
    }
}

/// `[host.spec]`: the expected hardware.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecToml {
    /// CPU model substring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// Logical CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory size such as `"16G"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Allowed memory deviation, percent (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_tolerance_pct: Option<u32>,
    /// Expected disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "disk")]
    pub disks: Vec<DiskToml>,
    /// Expected NICs.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "nic")]
    pub nics: Vec<NicToml>,
    /// Expected GPU model substrings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
}

/// `[[host.spec.disk]]`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskToml {
    /// Device path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Model substring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Size such as `"1T"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Allowed size deviation, percent (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_tolerance_pct: Option<u32>,
}

/// `[[host.spec.nic]]`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicToml {
    /// MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Minimum link speed, Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
}

impl SpecToml {
    /// Converts to the wire form, parsing sizes.
    pub fn to_wire(&self) -> Result<HostSpec, String> {
        let memory_mib = self
            .memory
            .as_deref()
            .map(parse_size)
            .transpose()?
            .map(|b| b >> 20);
        let disks = self
            .disks
            .iter()
            .map(|d| {
                Ok(DiskSpec {
                    path: d.path.clone(),
                    serial: d.serial.clone(),
                    model: d.model.clone(),
                    size_bytes: d.size.as_deref().map(parse_size).transpose()?,
                    size_tolerance_pct: d.size_tolerance_pct.unwrap_or(2),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let nics = self
            .nics
            .iter()
            .map(|n| {
                Ok(NicSpec {
                    mac: n
                        .mac
                        .as_deref()
                        .map(|m| m.parse().map_err(|_| format!("bad MAC {m:?}")))
                        .transpose()?,
                    speed_mbps: n.speed_mbps,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(HostSpec {
            cpu_model: self.cpu_model.clone(),
            cpus: self.cpus,
            memory_mib,
            memory_tolerance_pct: self.memory_tolerance_pct.unwrap_or(5),
            disks,
            nics,
            gpus: self.gpus.clone(),
        })
    }
}
