//! Netboot: /boot.ipxe, per-MAC scripts, and the dnsmasq snippet.
use anyhow::Result;
use kiln_protocol::{Mac, RunId};
use std::fmt::Write as _;

use crate::images::Image;
use crate::index::Index;

/// Console arguments added when an image's cmdline names no `console=`: the serial
/// port last, so it is `/dev/console` (IPMI serial-over-LAN and qemu tests read it).
pub const DEFAULT_CONSOLE: &str = "console=tty0 console=ttyS0,115200n8";

/// `GET /boot.ipxe`: chains to the per-MAC script. The MAC goes in its hyphenated form:
/// older iPXE builds (Debian's qemu ROMs among them) read any `:` in a URL as the end
/// of a scheme, so `/ipxe/52:54:…` would fail with "Operation not supported".
pub fn boot_script() -> String {
    "#!ipxe\nchain /ipxe/${mac:hexhyp}\n".into()
}

/// `GET /ipxe/{mac}`: kernel + initrd of the host's image with `kiln.url=` and
/// `kiln.run=` for its next pending run; `exit` for unknown MACs or nothing pending.
/// `base_url` is the coordinator as the booting machine reached it.
pub fn mac_script(index: &Index, mac: &str, base_url: &str) -> String {
    let Ok(mac) = mac.parse::<Mac>() else {
        return exit_script("not a MAC address");
    };
    if !safe_base_url(base_url) {
        return exit_script("the coordinator's address is not usable in a script");
    }
    match plan_boot(index, &mac) {
        Ok(Boot::Run { host, image, run }) => run_script(&host, &image, &run, &mac, base_url),
        Ok(Boot::Exit(why)) => exit_script(&why),
        Err(e) => {
            log::warn!("ipxe {mac}: {e:#}");
            exit_script("coordinator error (see its log)")
        }
    }
}

/// What a MAC should boot.
#[derive(Debug, Clone, PartialEq)]
pub enum Boot {
    /// Netboot the image for this run.
    Run {
        /// The host's name.
        host: String,
        /// The host's image.
        image: Image,
        /// The run to start.
        run: RunId,
    },
    /// Boot from disk, for this reason.
    Exit(String),
}

/// Decides what the machine with `mac` boots (from the index: no work that grows
/// with the number of hosts or runs).
pub fn plan_boot(index: &Index, mac: &Mac) -> Result<Boot> {
    let state = index.state();
    let hosts = index.hosts()?;
    let Some(host) = hosts.by_mac(mac) else {
        return Ok(Boot::Exit(format!("unknown MAC {mac}")));
    };
    let Some(image_name) = &host.image else {
        return Ok(Boot::Exit(format!("host {} has no image", host.name)));
    };
    let Some(run) = index.next_pending(mac)? else {
        return Ok(Boot::Exit(format!(
            "nothing pending for host {}",
            host.name
        )));
    };
    let Some(image) = index.images()?.get(image_name).cloned() else {
        return Ok(Boot::Exit(format!(
            "host {} names image {image_name}, which is not registered",
            host.name
        )));
    };
    for sha in [image.kernel_sha()?, image.initrd_sha()?] {
        if !state.cas().has(&sha) {
            return Ok(Boot::Exit(format!(
                "image {image_name}: {sha} is missing from cas/"
            )));
        }
    }
    Ok(Boot::Run {
        host: host.name.clone(),
        image,
        run,
    })
}

fn run_script(host: &str, image: &Image, run: &RunId, mac: &Mac, base: &str) -> String {
    let base = base.trim_end_matches('/');
    let bootif = mac.to_string().replace(':', "-");
    let mut cmdline = format!("initrd=initrd kiln.url={base} kiln.run={run} BOOTIF=01-{bootif}");
    if !image
        .cmdline
        .split_whitespace()
        .any(|a| a.starts_with("console="))
    {
        cmdline.push(' ');
        cmdline.push_str(DEFAULT_CONSOLE);
    }
    if !image.cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&image.cmdline);
    }
    let mut s = String::from("#!ipxe\n");
    let _ = writeln!(s, "echo kiln: host {host} run {run} image {}", image.name);
    let _ = writeln!(s, "kernel {base}/cas/{} {cmdline}", image.kernel);
    let _ = writeln!(s, "initrd --name initrd {base}/cas/{}", image.initrd);
    s.push_str("boot\n");
    s
}

fn exit_script(why: &str) -> String {
    format!("#!ipxe\necho kiln: {why}; booting from disk\nexit\n")
}

/// Only plain `http(s)://host[:port][/path]` goes into a script: the Host header is
/// the client's to choose, and a script line must not be smuggled through it.
fn safe_base_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) => {
            !r.is_empty()
                && r.len() < 256
                && r.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'.' | b':' | b'-' | b'[' | b']' | b'/' | b'_')
                })
        }
        None => false,
    }
}

/// What the dnsmasq snippet is for (the `dnsmasq` command's flags).
#[derive(Debug, Clone)]
pub struct Dnsmasq {
    /// Coordinator base URL as seen by booting machines.
    pub url: String,
    /// Proxy-DHCP subnet, for a network whose router hands out addresses.
    pub proxy: Option<String>,
    /// DHCP range for full DHCP mode.
    pub range: Option<String>,
    /// Interface to serve on.
    pub interface: Option<String>,
    /// TFTP folder holding undionly.kpxe and ipxe.efi.
    pub tftp_root: std::path::PathBuf,
}

/// The dnsmasq configuration: plain PXE ROMs get iPXE over TFTP; iPXE (DHCP option
/// 175) gets `{url}/boot.ipxe`. Full DHCP with `--range`, proxy-DHCP with `--proxy`.
pub fn dnsmasq_snippet(c: &Dnsmasq) -> Result<String> {
    let url = c.url.trim_end_matches('/');
    anyhow::ensure!(safe_base_url(url), "--url must be http://HOST:PORT");
    let one_word = |v: &str, what: &str| -> Result<()> {
        anyhow::ensure!(
            !v.is_empty() && !v.contains(char::is_whitespace),
            "{what} must be one word"
        );
        Ok(())
    };
    let mut s = format!("# kiln netboot (kiln-coordinator dnsmasq --url {url})\n");
    if let Some(i) = &c.interface {
        one_word(i, "--interface")?;
        let _ = writeln!(s, "interface={i}\nbind-dynamic");
    }
    match (&c.range, &c.proxy) {
        (Some(_), Some(_)) => {
            anyhow::bail!("give --range (DHCP) or --proxy (proxy-DHCP), not both")
        }
        (None, None) => {
            anyhow::bail!("give --range FIRST,LAST,LEASE (DHCP) or --proxy SUBNET (proxy-DHCP)")
        }
        (Some(r), None) => {
            one_word(r, "--range")?;
            let _ = writeln!(s, "dhcp-range={r}");
        }
        (None, Some(p)) => {
            one_word(p, "--proxy")?;
            s.push_str("# proxy-DHCP: the router keeps handing out addresses; we add boot info\n");
            let _ = writeln!(s, "dhcp-range={p},proxy");
        }
    }
    let tftp = c.tftp_root.display().to_string();
    one_word(&tftp, "--tftp-root")?;
    s.push_str("log-dhcp\n");
    let _ = writeln!(
        s,
        "# plain PXE ROMs load iPXE by TFTP from here (undionly.kpxe, ipxe.efi)\nenable-tftp\ntftp-root={tftp}"
    );
    s.push_str("dhcp-match=set:ipxe,175\n");
    s.push_str("dhcp-match=set:efi64,option:client-arch,7\n");
    s.push_str("dhcp-match=set:efi64,option:client-arch,9\n");
    if c.proxy.is_some() {
        s.push_str("pxe-service=tag:!ipxe,x86PC,\"kiln: load iPXE\",undionly.kpxe\n");
        s.push_str("pxe-service=tag:!ipxe,X86-64_EFI,\"kiln: load iPXE\",ipxe.efi\n");
    } else {
        s.push_str("dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe\n");
        s.push_str("dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi\n");
    }
    let _ = writeln!(
        s,
        "# iPXE chains to the coordinator\ndhcp-boot=tag:ipxe,{url}/boot.ipxe"
    );
    Ok(s)
}

#[cfg(test)]
#[path = "ipxe_tests.rs"]
mod tests;
