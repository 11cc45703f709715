//! Real BMCs for the power tests: OpenIPMI's simulator `ipmi_sim` (its `startcmd` is
//! the "machine" it powers) and OpenStack's Redfish emulator `sushy-emulator` behind
//! HTTPS with basic auth and a self-signed certificate.
#![allow(dead_code)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{require_tool, skip, wait_until};

/// The IPMI user and password the simulated BMC accepts.
pub const IPMI_USER: &str = "admin";
/// The password (long and unusual, so a search for it cannot match by chance).
pub const IPMI_PASSWORD: &str = "kiln-bmc-Pw-7f3a9c";

/// A free UDP port on loopback (bound and released; the caller binds it next).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("udp bind")
        .port()
}

/// A free TCP port on loopback.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("tcp bind")
        .port()
}

/// A running `ipmi_sim`; killed (with the machine it started) on drop.
pub struct IpmiSim {
    child: Child,
    /// UDP port of its LAN channel.
    pub port: u16,
    /// Its folder (lan.conf, state).
    pub dir: PathBuf,
}

impl IpmiSim {
    /// Starts a BMC whose `chassis power on` runs `startcmd` (a shell command line)
    /// and whose power off kills it. None (after [`skip`]) without ipmi_sim/ipmitool.
    pub fn start(dir: &Path, startcmd: &str) -> Option<IpmiSim> {
        Self::start_with_sol(dir, startcmd, None)
    }

    /// Like [`IpmiSim::start`], with serial-over-LAN: on `sol activate` the BMC
    /// connects to `127.0.0.1:sol_port` (the machine's serial port as a TCP server).
    pub fn start_with_sol(dir: &Path, startcmd: &str, sol_port: Option<u16>) -> Option<IpmiSim> {
        if !require_tool("ipmi_sim") || !require_tool("ipmitool") {
            return None;
        }
        std::fs::create_dir_all(dir.join("state")).expect("mkdir");
        let port = free_udp_port();
        let vm_port = free_tcp_port();
        let conf = format!(
            r#"name "kiln"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 {vm_port} codec VM
  startcmd "{startcmd}"
  startnow false
  poweroff_wait 1
  kill_wait 2
{sol}  user 1 true  ""       ""   user  10 none md2 md5 straight
  user 2 true  "{IPMI_USER}" "{IPMI_PASSWORD}" admin 10 none md2 md5 straight
"#,
            sol = sol_port
                .map(|p| format!("  sol \"tcp:127.0.0.1:{p}\" 115200\n"))
                .unwrap_or_default()
        );
        std::fs::write(dir.join("lan.conf"), conf).expect("write lan.conf");
        std::fs::write(
            dir.join("sim.emu"),
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 dynsens\n\
             mc_enable 0x20\n",
        )
        .expect("write sim.emu");
        let child = Command::new("ipmi_sim")
            .arg("-c")
            .arg(dir.join("lan.conf"))
            .arg("-f")
            .arg(dir.join("sim.emu"))
            .args(["-n", "-p", "-s"])
            .arg(dir.join("state"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ipmi_sim");
        let sim = IpmiSim {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        wait_until(Duration::from_secs(20), "ipmi_sim to answer", || {
            sim.ipmitool(&["chassis", "power", "status"]).0
        });
        Some(sim)
    }

    /// `ipmitool … ARGS` by hand (the password in its environment): success and
    /// stdout.
    pub fn ipmitool(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new("ipmitool")
            .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", IPMI_USER, "-E", "-N", "1", "-R", "1"])
            .args(args)
            .env("IPMI_PASSWORD", IPMI_PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("running ipmitool");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// The power URL of this BMC.
    pub fn url(&self) -> String {
        format!("ipmi://{IPMI_USER}@127.0.0.1:{}", self.port)
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.ipmitool(&["chassis", "power", "off"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The machine it started (every startcmd here writes `machine.pid`) would
        // outlive a simulator killed before its power-off wait is over.
        if let Some(pid) = std::fs::read_to_string(self.dir.join("machine.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|p| alive(*p))
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Whether process `pid` is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Every process's command line (NULs as spaces), `(pid, cmdline)`.
pub fn cmdlines() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
            let s = String::from_utf8_lossy(&b).replace('\0', " ");
            out.push((pid, s));
        }
    }
    out
}

/// The Redfish account and password.
pub const RF_USER: &str = "admin";
/// Its password.
pub const RF_PASSWORD: &str = "kiln-redfish-Pw-41c2e";
/// The emulated system's id.
pub const RF_SYSTEM: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";

/// A running `sushy-emulator` (fake driver) on HTTPS; killed on drop.
pub struct Sushy {
    child: Child,
    /// TCP port.
    pub port: u16,
    /// Its certificate (PEM).
    pub cert: PathBuf,
    /// Another self-signed certificate, not the emulator's.
    pub other_cert: PathBuf,
}

/// `sushy-emulator` on PATH, else the venv `target/sushy-venv` that a developer may
/// have made (`python3 -m venv target/sushy-venv && target/sushy-venv/bin/pip
/// install sushy-tools`).
fn sushy_bin() -> Option<PathBuf> {
    if crate::common::require_tool("openssl") && kiln_testkit::on_path("sushy-emulator") {
        let out = Command::new("sh")
            .args(["-c", "command -v sushy-emulator"])
            .output()
            .ok()?;
        return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let venv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sushy-venv/bin/sushy-emulator");
    venv.is_file().then_some(venv)
}

fn self_signed(dir: &Path, name: &str) -> PathBuf {
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=bmc", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.pem")))
        .stderr(Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl req failed");
    dir.join(format!("{name}.pem"))
}

impl Sushy {
    /// Starts the emulator with one fake system (powered off). None (after [`skip`])
    /// when sushy-tools is not installed.
    pub fn start(dir: &Path, mac: &str) -> Option<Sushy> {
        let Some(bin) = sushy_bin() else {
            skip("sushy-emulator is not installed (pip install sushy-tools)");
            return None;
        };
        std::fs::create_dir_all(dir).expect("mkdir");
        let cert = self_signed(dir, "bmc");
        let other_cert = self_signed(dir, "other");
        // The emulator's own Python has bcrypt (its basic-auth file is bcrypt hashes).
        let python = std::fs::canonicalize(&bin)
            .expect("sushy path")
            .with_file_name("python3");
        let hash = Command::new(&python)
            .args([
                "-c",
                "import bcrypt,sys;print(bcrypt.hashpw(sys.stdin.readline().strip().encode(),bcrypt.gensalt(4)).decode())",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                writeln!(c.stdin.take().unwrap(), "{RF_PASSWORD}")?;
                c.wait_with_output()
            })
            .expect("bcrypt");
        let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
        assert!(hash.starts_with("$2"), "no bcrypt hash: {hash:?}");
        std::fs::write(dir.join("htpasswd"), format!("{RF_USER}:{hash}\n")).unwrap();
        std::fs::write(
            dir.join("conf.py"),
            format!(
                "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
                 SUSHY_EMULATOR_AUTH_FILE = '{}'\n\
                 SUSHY_EMULATOR_STATE_DIR = '{}'\n\
                 SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{RF_SYSTEM}', 'name': 'node1', \
                 'power_state': 'Off', 'nics': [{{'mac': '{mac}', 'ip': '10.0.0.2'}}]}}]\n",
                dir.join("htpasswd").display(),
                dir.join("sstate").display()
            ),
        )
        .unwrap();
        let port = free_tcp_port();
        let child = Command::new(&bin)
            .arg("--config")
            .arg(dir.join("conf.py"))
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .arg("--ssl-certificate")
            .arg(&cert)
            .arg("--ssl-key")
            .arg(dir.join("bmc.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sushy-emulator");
        let s = Sushy {
            child,
            port,
            cert,
            other_cert,
        };
        wait_until(Duration::from_secs(60), "sushy-emulator to answer", || {
            s.system().is_some()
        });
        Some(s)
    }

    /// The emulator's system resource, read back directly (curl, the emulator's own
    /// certificate as CA).
    pub fn system(&self) -> Option<serde_json::Value> {
        let o = Command::new("curl")
            .args(["-s", "--fail", "--cacert"])
            .arg(&self.cert)
            .args(["-u", &format!("{RF_USER}:{RF_PASSWORD}")])
            .arg(format!(
                "https://127.0.0.1:{}/redfish/v1/Systems/{RF_SYSTEM}",
                self.port
            ))
            .stderr(Stdio::null())
            .output()
            .ok()?;
        serde_json::from_slice(&o.stdout).ok()
    }

    /// The power URL of this BMC.
    pub fn url(&self) -> String {
        format!("redfish://{RF_USER}@127.0.0.1:{}", self.port)
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
