//! As PID 1 (the netboot image's init execs `kiln-agent boot`) the agent runs as a
//! child of a reaper, so orphans of stages (re-parented to PID 1) never stay zombies.
use nix::errno::Errno;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use std::time::Duration;

/// If this process is PID 1: starts the same executable with the same arguments as
/// a child (which runs the agent and powers the machine off itself) and reaps every
/// process that ends, forever; once the agent is gone it idles, as PID 1 must never
/// exit. Returns at once when not PID 1, or when the child cannot be started (then
/// the agent runs as PID 1 without a reaper, as it did before).
pub fn supervise_if_init() {
    if std::process::id() != 1 {
        return;
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let child = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .spawn();
    let agent = match child {
        Ok(c) => Pid::from_raw(c.id() as i32),
        Err(e) => {
            eprintln!(
                "kiln: cannot start the agent under a reaper ({}: {e}); running as PID 1",
                exe.display()
            );
            return;
        }
    };
    loop {
        // Other children (udhcpc, started by the image's init) may outlive the agent:
        // say it is idle when the agent ends, not when the last child does.
        reap_all(agent, |status| {
            eprintln!("kiln: idle; the machine stays on (the agent ended: {status})")
        });
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits for children (our own and those re-parented to us) until none is left;
/// calls `agent_ended` with how `agent` ended ("exit N" or "signal S") when it does.
pub fn reap_all(agent: Pid, mut agent_ended: impl FnMut(&str)) {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => {
                agent_ended(&format!("exit {code}"))
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == agent => {
                agent_ended(&format!("signal {}", sig.as_str()))
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}
