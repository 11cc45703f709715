//! Orders from the coordinator (abort, shutdown, and a held run's release, retry and
//! approve) and the running stage's stop signal.
use kiln_protocol::Command;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::stages::ctx::{Stop, StopSignal};

/// Orders from the coordinator, shared by the sender and the runner.
#[derive(Debug, Default)]
pub struct Control {
    inner: Mutex<ControlState>,
    order_came: Condvar,
}

#[derive(Debug, Default)]
struct ControlState {
    current: Option<StopSignal>,
    abort: Option<String>,
    shutdown: bool,
    /// Seq of the `Held` frame the run waits at (0: not waiting for orders).
    held_seq: u64,
    /// An order for the held run, taken by [`Control::wait_order`].
    order: Option<Command>,
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

    /// Offers an order for a held run (`Release`, `RetryStage`, `Approve`) that came on
    /// an ack acking frames up to `upto`. Taken only while the run waits at a `Held`
    /// frame the coordinator had stored when it answered (`upto >= held_seq`), so an
    /// order repeated on acks sent before the agent's next frame is never obeyed twice.
    /// Returns whether it was taken.
    pub(super) fn offer_order(&self, cmd: Command, upto: u64) -> bool {
        let mut c = self.inner.lock().expect("control lock");
        if c.held_seq == 0 || upto < c.held_seq || c.order.is_some() {
            return false;
        }
        c.order = Some(cmd);
        self.order_came.notify_all();
        true
    }

    /// Waits at the `Held` frame `held_seq` for an order, until `until`; `None` when
    /// the hold ran out. Stops taking orders when it returns.
    pub fn wait_order(&self, held_seq: u64, until: Instant) -> Option<Command> {
        // A stop signal to the agent (SIGTERM) ends the hold as its end would.
        let stop = StopSignal::default();
        let mut c = self.inner.lock().expect("control lock");
        c.held_seq = held_seq;
        c.order = None;
        loop {
            if let Some(cmd) = c.order.take() {
                c.held_seq = 0;
                return Some(cmd);
            }
            let now = Instant::now();
            if now >= until || stop.reason().is_some() {
                c.held_seq = 0;
                return None;
            }
            let nap = (until - now).min(std::time::Duration::from_millis(500));
            c = self
                .order_came
                .wait_timeout(c, nap)
                .expect("control lock")
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An order is taken only while the run waits at a `Held` frame the ack covers,
    /// and once: repeats on later acks are dropped until the next hold.
    #[test]
    fn an_order_is_taken_once_per_hold_from_an_ack_that_covers_it() {
        let c = Control::default();
        let release = Command::Release { reboot: false };
        // Not holding: dropped.
        assert!(!c.offer_order(release.clone(), 9));
        let soon = || Instant::now() + Duration::from_millis(50);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| c.wait_order(7, Instant::now() + Duration::from_secs(60)));
            // An ack from before the Held frame was stored (upto 6 < 7): dropped.
            loop {
                if c.inner.lock().unwrap().held_seq == 7 {
                    break;
                }
                std::thread::yield_now();
            }
            assert!(!c.offer_order(release.clone(), 6));
            assert!(c.offer_order(release.clone(), 7));
            assert_eq!(waiter.join().unwrap(), Some(release.clone()));
        });
        // The hold it was for is over: the same order on the next ack is dropped.
        assert!(!c.offer_order(release.clone(), 8));
        // A hold that runs out returns None.
        assert_eq!(c.wait_order(9, soon()), None);
        assert!(!c.offer_order(release, 9));
    }
}
