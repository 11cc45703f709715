//! A qemu guest for whole-path tests: TCG, serial console captured line by line,
//! netboot through Debian's iPXE ROM or a direct kernel boot, extra disks and SMBIOS.
//!
//! ```ignore
//! let mut vm = Qemu::builder("node1")
//!     .netboot(&format!("{}/boot.ipxe", qemu::guest_url(&server.url)))
//!     .mac("52:54:00:12:34:56")
//!     .disk(&img, Bus::Nvme { serial: "NVME0001" })
//!     .smbios_serial("SN-1")
//!     .memory_mib(1024)
//!     .spawn();
//! vm.wait_for_line("kiln: run finished", Duration::from_secs(300));
//! vm.wait_exit(Duration::from_secs(60));
//! ```
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How a disk is attached.
#[derive(Debug, Clone)]
pub enum Bus {
    /// virtio-blk (`/dev/vdX`).
    Virtio,
    /// An NVMe controller with this serial (`/dev/nvmeXn1`; smartctl works on it).
    Nvme {
        /// The controller's serial number.
        serial: &'static str,
    },
    /// ATA on the machine's PIIX IDE controller (`/dev/sdX`, ata_piix).
    Ide,
    /// virtio-blk with this serial (`/dev/vdX`; lsblk and the spec diff see it).
    VirtioSerial {
        /// The disk's serial number.
        serial: &'static str,
    },
    /// ATA on PIIX IDE with this serial and model (`/dev/sdX`; smartctl reports both).
    Ata {
        /// The disk's serial number.
        serial: &'static str,
        /// The disk's model string.
        model: &'static str,
    },
}

/// Builds a qemu command line.
#[derive(Debug, Clone)]
pub struct QemuBuilder {
    name: String,
    memory_mib: u32,
    cpus: u32,
    netboot: Option<String>,
    mac: Option<String>,
    kernel: Option<(PathBuf, PathBuf, String)>,
    disks: Vec<(PathBuf, Bus)>,
    serial: Option<String>,
    no_net: bool,
    hostfwd: Vec<(u16, u16)>,
    extra: Vec<String>,
}

/// The host's loopback URL as a guest on qemu user-net reaches it (10.0.2.2).
pub fn guest_url(host_url: &str) -> String {
    host_url
        .replace("127.0.0.1", "10.0.2.2")
        .replace("localhost", "10.0.2.2")
}

impl QemuBuilder {
    /// Memory in MiB (default 1024).
    pub fn memory_mib(mut self, m: u32) -> Self {
        self.memory_mib = m;
        self
    }

    /// Virtual CPUs (default 1).
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }

    /// Netboot: `-boot n`, user-net whose DHCP hands iPXE this `bootfile` URL.
    pub fn netboot(mut self, bootfile_url: &str) -> Self {
        self.netboot = Some(bootfile_url.to_string());
        self
    }

    /// The NIC's MAC (default qemu's 52:54:00:12:34:56).
    pub fn mac(mut self, mac: &str) -> Self {
        self.mac = Some(mac.to_string());
        self
    }

    /// Boots this kernel + initrd directly (no firmware netboot).
    pub fn kernel(mut self, kernel: &Path, initrd: &Path, append: &str) -> Self {
        self.kernel = Some((kernel.into(), initrd.into(), append.into()));
        self
    }

    /// Forwards the host's `127.0.0.1:host` to the guest's TCP port `guest` (user-net
    /// `hostfwd`: how a test reaches a held guest's SSH server).
    pub fn hostfwd(mut self, host: u16, guest: u16) -> Self {
        self.hostfwd.push((host, guest));
        self
    }

    /// No network card at all.
    pub fn no_network(mut self) -> Self {
        self.no_net = true;
        self
    }

    /// Attaches a raw disk image.
    pub fn disk(mut self, image: &Path, bus: Bus) -> Self {
        self.disks.push((image.into(), bus));
        self
    }

    /// SMBIOS type 1 serial (`/sys/class/dmi/id/product_serial`).
    pub fn smbios_serial(mut self, serial: &str) -> Self {
        self.serial = Some(serial.to_string());
        self
    }

    /// Any further qemu arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The full argument list.
    pub fn command_line(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-vga",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(["-m".into(), self.memory_mib.to_string()]);
        a.extend(["-smp".into(), self.cpus.to_string()]);
        if self.no_net {
            a.extend(["-nic".into(), "none".into()]);
        } else {
            let mut netdev = "user,id=n0".to_string();
            if let Some(b) = &self.netboot {
                netdev.push_str(&format!(",bootfile={b}"));
            }
            for (h, g) in &self.hostfwd {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
            }
            let mut nic = "virtio-net-pci,netdev=n0".to_string();
            if let Some(m) = &self.mac {
                nic.push_str(&format!(",mac={m}"));
            }
            a.extend(["-netdev".into(), netdev, "-device".into(), nic]);
        }
        if self.netboot.is_some() {
            a.extend(["-boot".into(), "order=n".into()]);
        }
        if let Some((k, i, append)) = &self.kernel {
            a.extend(["-kernel".into(), k.display().to_string()]);
            a.extend(["-initrd".into(), i.display().to_string()]);
            a.extend(["-append".into(), append.clone()]);
        }
        for (n, (img, bus)) in self.disks.iter().enumerate() {
            let id = format!("d{n}");
            a.extend([
                "-drive".into(),
                format!("file={},if=none,id={id},format=raw", img.display()),
            ]);
            let dev = match bus {
                Bus::Virtio => format!("virtio-blk-pci,drive={id}"),
                Bus::Nvme { serial } => format!("nvme,drive={id},serial={serial}"),
                Bus::Ide => format!("ide-hd,drive={id}"),
                Bus::VirtioSerial { serial } => {
                    format!("virtio-blk-pci,drive={id},serial={serial}")
                }
                Bus::Ata { serial, model } => {
                    format!("ide-hd,drive={id},serial={serial},model={model}")
                }
            };
            a.extend(["-device".into(), dev]);
        }
        if let Some(s) = &self.serial {
            a.extend(["-smbios".into(), format!("type=1,serial={s}")]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts the guest; its console is read on a thread.
    pub fn spawn(self) -> Qemu {
        let args = self.command_line();
        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting qemu-system-x86_64");
        let console: Console = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let console = console.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let mut buf = Vec::new();
                // Lines end in \n (or \r\n); firmware also redraws with bare \r.
                while r
                    .read_until(b'\n', &mut buf)
                    .map(|n| n > 0)
                    .unwrap_or(false)
                {
                    let line = clean(&String::from_utf8_lossy(&buf));
                    buf.clear();
                    let (lock, cv) = &*console;
                    lock.lock()
                        .expect("console lock")
                        .push((started.elapsed(), line));
                    cv.notify_all();
                }
            });
        }
        Qemu {
            name: self.name,
            child,
            console,
            started,
            exited: None,
        }
    }
}

/// Drops ANSI escapes and carriage returns.
fn clean(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// Console lines with the time each arrived (since qemu started), and a signal.
type Console = Arc<(Mutex<Vec<(Duration, String)>>, Condvar)>;

/// A running guest; killed on drop.
pub struct Qemu {
    name: String,
    child: Child,
    console: Console,
    started: Instant,
    exited: Option<ExitStatus>,
}

impl Qemu {
    /// A builder with defaults: 1024 MiB, 1 CPU, user-net NIC, TCG.
    pub fn builder(name: &str) -> QemuBuilder {
        QemuBuilder {
            name: name.to_string(),
            memory_mib: 1024,
            cpus: 1,
            netboot: None,
            mac: None,
            kernel: None,
            disks: Vec::new(),
            serial: None,
            no_net: false,
            hostfwd: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Time since qemu started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for a console line containing `pattern`; returns it and when it came
    /// (since qemu started). Panics with the console so far on timeout or exit.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> (Duration, String) {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut seen = 0;
        let mut lines = lock.lock().expect("console lock");
        loop {
            if let Some(hit) = lines[seen..].iter().find(|(_, l)| l.contains(pattern)) {
                return hit.clone();
            }
            seen = lines.len();
            let now = Instant::now();
            let exited = self.exited.is_some() || matches!(self.child.try_wait(), Ok(Some(_)));
            if now >= deadline || exited {
                drop(lines);
                // Give the reader threads a moment to drain what qemu wrote last.
                std::thread::sleep(Duration::from_millis(200));
                let why = if exited { "qemu exited" } else { "timed out" };
                let lines = lock.lock().expect("console lock");
                if let Some(hit) = lines.iter().find(|(_, l)| l.contains(pattern)) {
                    return hit.clone();
                }
                panic!(
                    "{why} waiting for {pattern:?} on {}'s console:\n{}",
                    self.name,
                    render(&lines)
                );
            }
            let wait = (deadline - now).min(Duration::from_millis(250));
            lines = cv.wait_timeout(lines, wait).expect("console lock").0;
        }
    }

    /// Whether any console line so far contains `pattern`.
    pub fn saw(&self, pattern: &str) -> bool {
        let lines = self.console.0.lock().expect("console lock");
        lines.iter().any(|(_, l)| l.contains(pattern))
    }

    /// The console so far, one line per line with its time.
    pub fn console(&self) -> String {
        render(&self.console.0.lock().expect("console lock"))
    }

    /// Waits for qemu to exit by itself (the guest powered off); returns its status
    /// and when it exited (since start). Panics with the console on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait qemu") {
                self.exited = Some(st);
                return (st, self.started.elapsed());
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not power off within {timeout:?}; console:\n{}",
                    self.name,
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether qemu is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills qemu.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

fn render(lines: &[(Duration, String)]) -> String {
    lines
        .iter()
        .map(|(t, l)| format!("{:7.2} {l}\n", t.as_secs_f64()))
        .collect()
}
