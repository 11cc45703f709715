//! A minimal stderr logger for the `log` facade; `KILN_LOG=debug` raises the level.
use log::{Level, LevelFilter, Metadata, Record};

struct Stderr;

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
            // Log lines can quote agent text: controls are shown, never sent raw.
            let text = r.args().to_string();
            eprintln!("kiln-coordinator {tag}: {}", crate::visible::visible(&text));
        }
    }
    fn flush(&self) {}
}

/// Installs the logger; the level comes from `KILN_LOG` (default `info`).
pub fn init() {
    let level = std::env::var("KILN_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(LevelFilter::Info);
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(level);
    }
}
