//! Orders from the coordinator (abort, shutdown) and the running stage's stop signal.
use std::sync::Mutex;

use crate::stages::ctx::{Stop, StopSignal};

/// Orders from the coordinator, shared by the sender and the runner.
#[derive(Debug, Default)]
pub struct Control {
    inner: Mutex<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    current: Option<StopSignal>,
    abort: Option<String>,
    shutdown: bool,
}

impl Control {
    /// Makes `stop` the running stage's signal; fires it at once if the run is aborted.
    pub fn arm(&self, stop: &StopSignal) {
        let mut c = self.inner.lock().expect("control lock");
        if let Some(r) = &c.abort {
            stop.fire(Stop::Abort(r.clone()));
        }
        c.current = Some(stop.clone());
    }

    /// Aborts the run: fires the running stage's signal; no further stage starts.
    pub fn abort(&self, reason: &str) {
        let mut c = self.inner.lock().expect("control lock");
        if c.abort.is_none() {
            c.abort = Some(reason.to_string());
        }
        if let Some(s) = &c.current {
            s.fire(Stop::Abort(reason.to_string()));
        }
    }

    /// The abort reason, once aborted.
    pub fn aborted(&self) -> Option<String> {
        self.inner.lock().expect("control lock").abort.clone()
    }

    /// Whether a `Shutdown` command arrived.
    pub fn shutdown(&self) -> bool {
        self.inner.lock().expect("control lock").shutdown
    }

    pub(super) fn set_shutdown(&self) {
        self.inner.lock().expect("control lock").shutdown = true;
    }
}
