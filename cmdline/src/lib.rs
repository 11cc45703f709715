//! What both kiln binaries' command layers share: the stderr logger, argument
//! parsing with kiln's exit statuses, and text made safe to print on a terminal.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod args;
pub mod logger;
pub mod visible;
