//! Netboot: /boot.ipxe, per-MAC scripts, images, and the dnsmasq snippet.
use anyhow::{Result, bail};

use crate::cli::*;
use crate::state::State;

/// `image add`.
pub fn cmd_image_add(state: &State, c: &ImageAddCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}

/// `dnsmasq`: print the router snippet.
pub fn cmd_dnsmasq(c: &DnsmasqCmd) -> Result<i32> {
    let _ = c;
    bail!("not implemented yet")
}

/// `GET /boot.ipxe`: chains to the per-MAC script.
pub fn boot_script() -> String {
    "#!ipxe\nchain /ipxe/${mac}\n".into()
}

/// `GET /ipxe/{mac}`: kernel + initrd of the host's image with `kiln.url=` and
/// `kiln.run=` for its next pending run; `exit` for unknown MACs or nothing pending.
/// `base_url` is the coordinator as the booting machine reached it.
pub fn mac_script(state: &State, mac: &str, base_url: &str) -> String {
    let _ = (state, mac, base_url);
    "#!ipxe\nexit\n".into()
}
