//! SIGTERM, SIGINT and SIGHUP to the agent: the first aborts the running stage (its
//! process group is killed and the run ends `aborted`), a second exits at once.
use nix::sys::signal::{SigSet, Signal};

use crate::stages::ctx::{Stop, stop_all};
use crate::stages::groups;

/// Blocks SIGTERM, SIGINT and SIGHUP and starts a thread that takes them with
/// `sigwait`. The first fires every stage's stop as an abort ("agent stopped by
/// SIGTERM"), so the stage's group is killed and the run reports `aborted` as an
/// abort from the coordinator would; a second kills every known stage group and
/// exits with status 3 (infrastructure) at once.
///
/// Call first thing in `main`, before any other thread starts (threads inherit the
/// blocked set; a thread started earlier would die by the signal's default action).
/// Stage processes do not inherit the block: std resets the signal mask on spawn.
/// Does nothing as PID 1 (the boot reaper), where the kernel ignores these signals.
pub fn install_stop_signals() {
    if std::process::id() == 1 {
        return;
    }
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        log::warn!("cannot block stop signals: {e}");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("kiln-signals".into())
        .spawn(move || {
            let mut seen = 0;
            loop {
                let Ok(sig) = set.wait() else { continue };
                seen += 1;
                if seen == 1 {
                    log::warn!(
                        "{}: aborting the running stage (send it again to exit at once)",
                        sig.as_str()
                    );
                    stop_all(Stop::Abort(format!("agent stopped by {}", sig.as_str())));
                } else {
                    let n = groups::kill_running();
                    log::error!(
                        "{} again: killed {n} stage process group(s); exiting",
                        sig.as_str()
                    );
                    std::process::exit(crate::exit::EXIT_INFRA);
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread: {e}");
        let _ = set.thread_unblock();
    }
}
