//! A minimal stderr logger for the `log` facade; `KILN_LOG=debug` raises the level.
//!
//! Lines read `<program> <level>: <text>`. Log lines quote text from machines under
//! test and from files, so control characters are shown as escapes
//! ([`crate::visible::visible`]), never sent to the terminal raw.
use log::{Level, LevelFilter, Metadata, Record};

struct Stderr {
    program: &'static str,
}

impl log::Log for Stderr {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            let tag = match r.level() {
                Level::Error => "error",
                Level::Warn => "warn",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            let text = r.args().to_string();
            eprintln!("{} {tag}: {}", self.program, crate::visible::visible(&text));
        }
    }
    fn flush(&self) {}
}

/// Installs the logger for `program` (its name at the head of each line); the level
/// comes from `KILN_LOG` (default `info`). A second call changes nothing.
pub fn init(program: &'static str) {
    let level = std::env::var("KILN_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(LevelFilter::Info);
    let logger = Box::leak(Box::new(Stderr { program }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
