//! Netboot mode: kernel command line, trusted key baked into the image, power off.
use crate::cli::BootCmd;

/// `boot`: returns the exit status (when it does not power off).
pub fn cmd_boot(c: &BootCmd) -> i32 {
    let _ = c;
    eprintln!("kiln-agent: boot is not implemented yet");
    crate::cli::EXIT_INFRA
}
