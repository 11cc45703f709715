//! The HTTP server (tiny_http, a small pool of threads) and its routes.
use crate::cli::*;
use crate::state::State;
use anyhow::{Result, bail};

/// Not yet implemented.
pub fn cmd_serve(state: &State, c: &ServeCmd) -> Result<i32> {
    let _ = (state, c);
    bail!("not implemented yet")
}
