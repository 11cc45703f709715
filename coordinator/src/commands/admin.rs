//! Admin commands: init, key, hosts, secrets, netboot images, the dnsmasq snippet.
use anyhow::{Context, Result, bail};
use argh::FromArgs;
use kiln_protocol::{Mac, PublicKey};
use std::io::Read;
use std::path::Path;
use std::path::PathBuf;

use crate::exit;
use crate::power::{PowerToml, PowerUrl};
use crate::state::{Host, MAX_SECRET_BYTES, State, check_name};
use crate::units::parse_duration;
use crate::visible::visible;

/// `init`: create the state folder and key (idempotent), print the public key.
pub fn cmd_init(root: &Path) -> Result<i32> {
    let (state, created) = State::init(root)?;
    let line = public_line(&state)?;
    if created {
        eprintln!(
            "created state folder {} and a new signing key",
            root.display()
        );
    } else {
        eprintln!(
            "state folder {} already initialized; key unchanged",
            root.display()
        );
    }
    print_key(&line)?;
    Ok(exit::OK)
}

/// `key`: print the public key line and fingerprint.
pub fn cmd_key(state: &State) -> Result<i32> {
    print_key(&public_line(state)?)?;
    Ok(exit::OK)
}

fn print_key(line: &str) -> Result<()> {
    let key = PublicKey::from_line(line).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{line}");
    println!("{}", key.fingerprint());
    Ok(())
}

/// The public key file's line, rewritten from the signing key when it is missing or
/// does not match (the signing key is the authority).
fn public_line(state: &State) -> Result<String> {
    let key = state.public_key()?;
    let path = state.public_key_path();
    let text = kiln_protocol::io::read_text_capped(
        &path,
        kiln_protocol::MAX_KEY_FILE_BYTES as u64,
        "a key file",
    )
    .unwrap_or_default();
    if PublicKey::from_line(&text).ok() == Some(key)
        && let Some(line) = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("kiln-ed25519"))
    {
        return Ok(line.to_string());
    }
    let line = key.to_line("kiln-coordinator");
    crate::fsutil::write_atomic(&path, format!("{line}\n").as_bytes(), 0o644)?;
    eprintln!("rewrote {} from the signing key", path.display());
    Ok(line)
}

/// `host add`: add a host, or update the one with this name (given flags replace
/// its values; others are kept).
pub fn cmd_host_add(state: &State, c: &HostAddCmd) -> Result<i32> {
    check_name(&c.name, "host")?;
    let mut macs = Vec::new();
    for m in &c.mac {
        let mac: Mac = m
            .parse()
            .map_err(|_| anyhow::anyhow!("bad MAC {m:?} (use aa:bb:cc:dd:ee:ff)"))?;
        if mac.0 == [0; 6] || mac.0 == [0xff; 6] || mac.0[0] & 1 == 1 {
            bail!("MAC {mac} is not a unicast address");
        }
        let text = mac.to_string();
        if !macs.contains(&text) {
            macs.push(text);
        }
    }
    let serial = match &c.serial {
        Some(s) if s.trim().is_empty() || s.contains(['\n', '\r']) => {
            bail!("bad serial {s:?} (one non-empty line)")
        }
        Some(s) => Some(s.trim().to_string()),
        None => None,
    };
    if let Some(image) = &c.image {
        check_name(image, "image")?;
        // A host bound to an image that does not exist could never netboot.
        crate::images::require(state, image)?;
    }
    let agent_key = c.agent_key.as_deref().map(agent_key_arg).transpose()?;
    let mut hosts = state.hosts()?;
    for mac in &macs {
        let parsed: Mac = mac.parse().expect("normalized above");
        if let Some(other) = hosts.by_mac(&parsed).filter(|h| h.name != c.name) {
            bail!("MAC {mac} already belongs to host {}", other.name);
        }
    }
    let existing = hosts.hosts.iter().position(|h| h.name == c.name);
    let mut host = match existing {
        Some(i) => hosts.hosts[i].clone(),
        None => Host {
            name: c.name.clone(),
            macs: Vec::new(),
            serial: None,
            image: None,
            spec: None,
            agent_key: None,
            power: None,
        },
    };
    if !macs.is_empty() {
        host.macs = macs;
    }
    if serial.is_some() {
        host.serial = serial;
    }
    if c.image.is_some() {
        host.image = c.image.clone();
    }
    if let Some(k) = agent_key {
        host.agent_key = k;
    }
    host.power = power_settings(state, host.power.take(), c)?;
    if host.macs.is_empty() && host.serial.is_none() {
        bail!(
            "host {} needs at least one --mac or --serial (tickets are bound to them)",
            c.name
        );
    }
    let summary = describe(&host);
    match existing {
        Some(i) => hosts.hosts[i] = host,
        None => hosts.hosts.push(host),
    }
    state.save_hosts(&hosts)?;
    let verb = if existing.is_some() {
        "updated"
    } else {
        "added"
    };
    println!("{verb} host {summary}");
    Ok(exit::OK)
}

/// Applies the `--power…` options to a host's power settings (checked, the CA read).
fn power_settings(
    state: &State,
    old: Option<PowerToml>,
    c: &HostAddCmd,
) -> Result<Option<PowerToml>> {
    let mut p = match c.power.as_deref() {
        Some("none") => return Ok(None),
        Some(url) => {
            url.parse::<PowerUrl>()?;
            PowerToml {
                url: url.trim().to_string(),
                ..old.unwrap_or_default()
            }
        }
        None => match old {
            Some(p) => p,
            None => {
                let any = c.power_secret.is_some()
                    || c.power_ca.is_some()
                    || c.power_insecure
                    || c.auto_boot.is_some()
                    || c.boot_timeout.is_some()
                    || c.lost_after.is_some();
                if any {
                    bail!("host {}: give --power URL first", c.name);
                }
                return Ok(None);
            }
        },
    };
    if let Some(name) = &c.power_secret {
        check_name(name, "secret")?;
        if !state.secret_path(name)?.is_file() {
            bail!("secret {name:?} is not set (kiln-coordinator secret set {name} --file F)");
        }
        p.secret = Some(name.clone());
    }
    if let Some(file) = &c.power_ca {
        let pem = kiln_protocol::io::read_text_capped(
            file,
            crate::power::tls::MAX_CA_BYTES,
            "a PEM file",
        )
        .map_err(|e| anyhow::anyhow!("--power-ca {}: {e}", file.display()))?;
        crate::power::tls::parse_pem(&pem)
            .with_context(|| format!("--power-ca {}", file.display()))?;
        p.ca_pem = Some(pem);
        p.insecure = false;
    }
    if c.power_insecure {
        p.insecure = true;
        p.ca_pem = None;
    }
    if let Some(v) = &c.auto_boot {
        p.boot = match v.as_str() {
            "yes" | "true" | "on" => true,
            "no" | "false" | "off" => false,
            _ => bail!("--auto-boot {v:?}: yes or no"),
        };
    }
    if let Some(d) = &c.boot_timeout {
        p.boot_timeout_s = Some(
            parse_duration(d)
                .map_err(|e| anyhow::anyhow!("--boot-timeout: {e}"))?
                .max(1),
        );
    }
    if let Some(d) = &c.lost_after {
        p.lost_after_s = Some(
            parse_duration(d)
                .map_err(|e| anyhow::anyhow!("--lost-after: {e}"))?
                .max(1),
        );
    }
    let url: PowerUrl = p.url.parse()?;
    if url.needs_secret() && p.secret.is_none() {
        bail!(
            "host {}: {} needs --power-secret NAME (the BMC password, stored with `secret set`)",
            c.name,
            p.url
        );
    }
    if matches!(url, PowerUrl::Redfish { .. }) && p.ca_pem.is_none() && !p.insecure {
        bail!(
            "host {}: redfish needs the BMC's certificate pinned (--power-ca FILE) \
             or an explicit --power-insecure",
            c.name
        );
    }
    Ok(Some(p))
}

/// `host list`.
pub fn cmd_host_list(state: &State) -> Result<i32> {
    let hosts = state.hosts()?;
    if hosts.hosts.is_empty() {
        eprintln!("no hosts (kiln-coordinator host add NAME --mac M)");
        return Ok(exit::OK);
    }
    let width = hosts
        .hosts
        .iter()
        .map(|h| h.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<17}  {:<16}  {:<16}  IMAGE",
        "NAME", "MACS", "SERIAL", "POWER"
    );
    let now = crate::fsutil::now_ms();
    for h in &hosts.hosts {
        let macs = if h.macs.is_empty() {
            "-".into()
        } else {
            h.macs.join(",")
        };
        let enrolled = match h.agent_key() {
            Ok(Some(k)) => format!("  enrolled {}", k.fingerprint()),
            Ok(None) => String::new(),
            Err(e) => format!("  {e}"),
        };
        let power = match (&h.power, crate::power::reading(state, &h.name)) {
            (None, _) => "-".to_string(),
            (Some(_), None) => "not read".to_string(),
            (Some(_), Some(r)) => format!(
                "{} {} ago",
                r.state,
                crate::fmt::fmt_ms(now.saturating_sub(r.at_ms))
            ),
        };
        println!(
            "{:<width$}  {:<17}  {:<16}  {:<16}  {}{}",
            visible(&h.name),
            visible(&macs),
            visible(h.serial.as_deref().unwrap_or("-")),
            power,
            visible(h.image.as_deref().unwrap_or("-")),
            visible(&enrolled),
        );
    }
    Ok(exit::OK)
}

/// `secret set`: store a file's bytes under a name (0600); the value is never printed.
pub fn cmd_secret_set(state: &State, c: &SecretSetCmd) -> Result<i32> {
    check_name(&c.name, "secret")?;
    let meta =
        std::fs::metadata(&c.file).with_context(|| format!("reading {}", c.file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", c.file.display());
    }
    if meta.len() > MAX_SECRET_BYTES {
        bail!(
            "{} is larger than {MAX_SECRET_BYTES} bytes",
            c.file.display()
        );
    }
    let value = kiln_protocol::io::read_file_capped(&c.file, MAX_SECRET_BYTES, "a secret")
        .map_err(|e| anyhow::anyhow!("reading {e}"))?;
    state.set_secret(&c.name, &value)?;
    println!("stored secret {} ({} bytes)", c.name, value.len());
    Ok(exit::OK)
}

/// Largest `--agent-key` file read: one key line.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// `--agent-key`: a public key line, a file holding one, or `none`; the stored line
/// (`None` to unenrol).
fn agent_key_arg(arg: &str) -> Result<Option<String>> {
    let arg = arg.trim();
    if arg == "none" {
        return Ok(None);
    }
    let text = if arg.starts_with("kiln-ed25519") {
        arg.to_string()
    } else {
        let mut text = String::new();
        std::fs::File::open(arg)
            .and_then(|f| f.take(MAX_KEY_FILE_BYTES + 1).read_to_string(&mut text))
            .with_context(|| format!("--agent-key: reading {arg}"))?;
        if text.len() as u64 > MAX_KEY_FILE_BYTES {
            bail!(
                "--agent-key: {arg} is larger than {MAX_KEY_FILE_BYTES} bytes (want one key line)"
            );
        }
        text
    };
    let key = PublicKey::from_line(&text).map_err(|e| {
        anyhow::anyhow!("--agent-key: {e} (give the line `kiln-agent enroll` printed, or its file)")
    })?;
    Ok(Some(key.to_line("kiln-agent")))
}

fn describe(h: &Host) -> String {
    let mut s = h.name.clone();
    if !h.macs.is_empty() {
        s += &format!(" mac {}", h.macs.join(","));
    }
    if let Some(serial) = &h.serial {
        s += &format!(" serial {serial:?}");
    }
    if let Some(image) = &h.image {
        s += &format!(" image {image}");
    }
    if let Ok(Some(k)) = h.agent_key() {
        s += &format!(" agent key {}", k.fingerprint());
    }
    if let Some(p) = &h.power {
        s += &format!(" power {}", p.url);
        if p.insecure {
            s += " (certificate not checked)";
        } else if p.ca_pem.is_some() {
            s += " (certificate pinned)";
        }
        if p.boot {
            s += " auto-boot";
        }
    }
    s
}

/// `image add`.
pub fn cmd_image_add(state: &State, c: &ImageAddCmd) -> Result<i32> {
    let (img, ksize, isize) = crate::images::add(state, &c.name, &c.kernel, &c.initrd, &c.cmdline)?;
    println!("image {}", img.name);
    println!("  kernel {} ({ksize} bytes)", img.kernel);
    println!("  initrd {} ({isize} bytes)", img.initrd);
    if !img.cmdline.is_empty() {
        println!("  cmdline {}", img.cmdline);
    }
    Ok(exit::OK)
}

/// `dnsmasq`: print the router snippet.
pub fn cmd_dnsmasq(c: &DnsmasqCmd) -> Result<i32> {
    let snippet = crate::ipxe::dnsmasq_snippet(&crate::ipxe::Dnsmasq {
        url: c.url.clone(),
        proxy: c.proxy.clone(),
        range: c.range.clone(),
        interface: c.interface.clone(),
        tftp_root: c.tftp_root.clone(),
    })?;
    print!("{snippet}");
    Ok(exit::OK)
}

/// Create the state folder and signing key (idempotent); print the public key.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "init")]
pub struct InitCmd {}

/// Print the public key and its fingerprint.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "key")]
pub struct KeyCmd {}

/// Add a host (or update it): name, MACs, serial, image.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct HostAddCmd {
    /// host name
    #[argh(positional)]
    pub name: String,
    /// MAC address (repeatable)
    #[argh(option)]
    pub mac: Vec<String>,
    /// DMI product serial
    #[argh(option)]
    pub serial: Option<String>,
    /// netboot image name
    #[argh(option)]
    pub image: Option<String>,
    /// enrol the host's agent key: the line `kiln-agent enroll` printed
    /// (`kiln-ed25519 <base64> [comment]`), a file holding it, or `none` to unenrol
    #[argh(option)]
    pub agent_key: Option<String>,
    /// power control: `ipmi://USER@BMC[:PORT]`,
    /// `redfish://USER@BMC[:PORT][/redfish/v1/Systems/ID]`, `wol[://BROADCAST[:PORT]]`,
    /// or `none` to remove it
    #[argh(option)]
    pub power: Option<String>,
    /// the secret holding the BMC password (`secret set NAME --file F`)
    #[argh(option)]
    pub power_secret: Option<String>,
    /// redfish: the BMC's certificate or its CA (PEM), pinned
    #[argh(option)]
    pub power_ca: Option<PathBuf>,
    /// redfish: accept any certificate the BMC presents
    #[argh(switch)]
    pub power_insecure: bool,
    /// yes: `ticket issue` powers the host on without --boot (no: only with it)
    #[argh(option)]
    pub auto_boot: Option<String>,
    /// power-on to claim before the boot watchdog acts, e.g. 10m
    #[argh(option)]
    pub boot_timeout: Option<String>,
    /// silence of a claimed run's agent before it counts as lost, e.g. 10m
    #[argh(option)]
    pub lost_after: Option<String>,
}

/// Change a host: the same options as `host add`; the host must exist.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "set")]
pub struct HostSetCmd {
    /// host name
    #[argh(positional)]
    pub name: String,
    /// MAC address (repeatable)
    #[argh(option)]
    pub mac: Vec<String>,
    /// DMI product serial
    #[argh(option)]
    pub serial: Option<String>,
    /// netboot image name
    #[argh(option)]
    pub image: Option<String>,
    /// enrol the host's agent key (see `host add`), or `none`
    #[argh(option)]
    pub agent_key: Option<String>,
    /// power control URL (see `host add`), or `none`
    #[argh(option)]
    pub power: Option<String>,
    /// the secret holding the BMC password
    #[argh(option)]
    pub power_secret: Option<String>,
    /// redfish: the BMC's certificate or its CA (PEM), pinned
    #[argh(option)]
    pub power_ca: Option<PathBuf>,
    /// redfish: accept any certificate the BMC presents
    #[argh(switch)]
    pub power_insecure: bool,
    /// yes: `ticket issue` powers the host on without --boot (no: only with it)
    #[argh(option)]
    pub auto_boot: Option<String>,
    /// power-on to claim before the boot watchdog acts, e.g. 10m
    #[argh(option)]
    pub boot_timeout: Option<String>,
    /// silence of a claimed run's agent before it counts as lost, e.g. 10m
    #[argh(option)]
    pub lost_after: Option<String>,
}

impl From<&HostSetCmd> for HostAddCmd {
    fn from(c: &HostSetCmd) -> Self {
        HostAddCmd {
            name: c.name.clone(),
            mac: c.mac.clone(),
            serial: c.serial.clone(),
            image: c.image.clone(),
            agent_key: c.agent_key.clone(),
            power: c.power.clone(),
            power_secret: c.power_secret.clone(),
            power_ca: c.power_ca.clone(),
            power_insecure: c.power_insecure,
            auto_boot: c.auto_boot.clone(),
            boot_timeout: c.boot_timeout.clone(),
            lost_after: c.lost_after.clone(),
        }
    }
}

/// `host set`: like `host add` for a host that exists.
pub fn cmd_host_set(state: &State, c: &HostSetCmd) -> Result<i32> {
    if state.hosts()?.get(&c.name).is_none() {
        bail!("no host {:?} (host add {} --mac M)", c.name, c.name);
    }
    cmd_host_add(state, &HostAddCmd::from(c))
}

/// List hosts.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct HostListCmd {}

/// Store a secret a plan can name.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "set")]
pub struct SecretSetCmd {
    /// secret name
    #[argh(positional)]
    pub name: String,
    /// file holding the value
    #[argh(option)]
    pub file: PathBuf,
}

/// Store a kernel + initrd pair in the CAS under a name.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct ImageAddCmd {
    /// image name
    #[argh(positional)]
    pub name: String,
    /// kernel file
    #[argh(option)]
    pub kernel: PathBuf,
    /// initrd file
    #[argh(option)]
    pub initrd: PathBuf,
    /// extra kernel command line
    #[argh(option, default = "String::new()")]
    pub cmdline: String,
}

/// Print a dnsmasq snippet that chains PXE ROMs to iPXE and iPXE to /boot.ipxe.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "dnsmasq")]
pub struct DnsmasqCmd {
    /// coordinator base URL as seen by booting machines, e.g. http://10.0.0.1:7373
    #[argh(option)]
    pub url: String,
    /// proxy-DHCP mode for a network whose router already hands out addresses,
    /// given as the subnet, e.g. 10.0.0.0
    #[argh(option)]
    pub proxy: Option<String>,
    /// DHCP range for full DHCP mode, e.g. 10.0.0.100,10.0.0.200,12h
    #[argh(option)]
    pub range: Option<String>,
    /// interface to serve on
    #[argh(option)]
    pub interface: Option<String>,
    /// TFTP folder holding undionly.kpxe and ipxe.efi for plain PXE ROMs
    /// (default /usr/lib/ipxe, Debian's `ipxe` package)
    #[argh(option, default = "PathBuf::from(\"/usr/lib/ipxe\")")]
    pub tftp_root: PathBuf,
}
