//! Setup commands: init, key, hosts, secrets.
use anyhow::{Result, bail};
use std::path::Path;

use crate::cli::*;
use crate::state::State;

/// `init`: create the state folder and key (idempotent), print the public key.
pub fn cmd_init(root: &Path) -> Result<i32> {
    let _ = root;
    bail!("not implemented yet")
}

/// `key`: print the public key line and fingerprint.
pub fn cmd_key(state: &State) -> Result<i32> {
    let _ = state;
    bail!("not implemented yet")
}

/// `host add`.
pub fn cmd_host_add(state: &State, c: &HostAddCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}

/// `host list`.
pub fn cmd_host_list(state: &State) -> Result<i32> {
    let _ = state;
    bail!("not implemented yet")
}

/// `secret set`.
pub fn cmd_secret_set(state: &State, c: &SecretSetCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}
