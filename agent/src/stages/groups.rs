//! Process groups of running stages: kept in memory (a stopping agent kills them) and
//! recorded in the attempt's folder (the next attempt after a crash kills them).
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Name prefix of a group's record file in the attempt folder (`.kiln-pgid-<pgid>`).
pub const RECORD_PREFIX: &str = ".kiln-pgid-";

/// Groups of stage processes this agent runs now.
static RUNNING: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// A running stage process group: registered and recorded until dropped; dropped
/// before [`Group::ended`] (the stage's future was cancelled), it kills the group.
pub struct Group {
    pgid: i32,
    record: PathBuf,
    ended: bool,
}

impl Group {
    /// Registers `pgid` and records it in `dir` (best effort: a failed write only
    /// loses the crash cleanup).
    pub fn track(pgid: i32, dir: &Path) -> Group {
        RUNNING.lock().expect("groups lock").push(pgid);
        let record = dir.join(format!("{RECORD_PREFIX}{pgid}"));
        let line = format!("{pgid} {} {}\n", start_time(pgid).unwrap_or(0), boot_id());
        if let Err(e) = std::fs::write(&record, line) {
            log::warn!(
                "recording process group {pgid} in {}: {e}",
                record.display()
            );
        }
        Group {
            pgid,
            record,
            ended: false,
        }
    }

    /// The group was waited for and swept: dropping it kills nothing more.
    pub fn ended(mut self) {
        self.ended = true;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.ended {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        }
        RUNNING
            .lock()
            .expect("groups lock")
            .retain(|&p| p != self.pgid);
        let _ = std::fs::remove_file(&self.record);
    }
}

/// SIGKILLs every stage group this agent runs now (it is exiting at once).
pub fn kill_running() -> usize {
    let groups = RUNNING.lock().expect("groups lock").clone();
    for &g in &groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
    groups.len()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a record still names a group of ours: same boot, and the leader (if still
/// there) is the process that was recorded, not a later one with the same id.
fn still_ours(text: &str) -> Option<i32> {
    let mut f = text.split_whitespace();
    let pgid: i32 = f.next()?.parse().ok()?;
    let started: u64 = f.next()?.parse().ok()?;
    let boot = f.next()?;
    if pgid <= 1 || boot != boot_id() {
        return None;
    }
    match start_time(pgid) {
        Some(now) if now != started => None,
        // The leader may be gone while the rest of its group lives on: a group id
        // cannot be reused while any member is alive, so the group is still ours.
        _ => Some(pgid),
    }
}

/// Kills the process groups that earlier attempts of a stage recorded in their
/// folders under `stage_base` and never removed (the agent was killed or crashed
/// mid-stage), so a new attempt never runs beside an orphan. Returns how many groups
/// were signalled. Call at the start of an attempt, before the stage runs.
pub fn kill_leftover_groups(stage_base: &Path) -> usize {
    let mut records = Vec::new();
    let mut scan = |dir: &Path| {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(RECORD_PREFIX) {
                    records.push(e.path());
                }
            }
        }
    };
    scan(stage_base);
    if let Ok(entries) = std::fs::read_dir(stage_base) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                scan(&e.path());
            }
        }
    }
    let mut killed = 0;
    for r in records {
        let text = std::fs::read_to_string(&r).unwrap_or_default();
        if let Some(pgid) = still_ours(&text)
            && killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
        {
            log::warn!("killed process group {pgid} left by an earlier attempt");
            killed += 1;
        }
        let _ = std::fs::remove_file(&r);
    }
    killed
}

/// Whether process `pid` is gone (or a zombie) within 2 s: signal delivery and
/// reaping are asynchronous. For tests.
#[cfg(test)]
pub(crate) fn gone(pid: i32) -> bool {
    for _ in 0..200 {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z"))
            .unwrap_or(false);
        if !alive {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::time::Duration;

    fn spawn_group(pidfile: &Path) -> (std::process::Child, i32) {
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let child = std::process::Command::new("sh")
            .args(["-c", &script])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        while !pidfile.exists() || std::fs::read_to_string(pidfile).unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let bg = std::fs::read_to_string(pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (child, bg)
    }

    #[test]
    fn leftover_groups_of_a_dead_agent_are_killed_and_foreign_ones_spared() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        let attempt = base.join("1");
        std::fs::create_dir_all(&attempt).unwrap();
        // Ours: recorded, then the "agent" dies without cleaning up (no Drop).
        let (mut ours, ours_bg) = spawn_group(&base.join("a.pid"));
        std::mem::forget(Group::track(ours.id() as i32, &attempt));
        // Foreign: a record whose leader start time is not the live process's.
        let (mut other, other_bg) = spawn_group(&base.join("b.pid"));
        let fake = attempt.join(format!("{RECORD_PREFIX}{}", other.id()));
        std::fs::write(&fake, format!("{} 1 {}\n", other.id(), boot_id())).unwrap();

        assert_eq!(kill_leftover_groups(base), 1);
        assert!(ours.wait().unwrap().code().is_none(), "leader was killed");
        assert!(gone(ours_bg), "orphaned sleep {ours_bg} survived");
        assert!(!gone(other_bg), "a foreign group was killed");
        assert!(std::fs::read_dir(&attempt).unwrap().next().is_none());
        let ours_pgid = ours.id() as i32;
        RUNNING.lock().unwrap().retain(|&p| p != ours_pgid);

        let _ = killpg(Pid::from_raw(other.id() as i32), Signal::SIGKILL);
        let _ = other.wait();
        assert_eq!(kill_leftover_groups(&base.join("missing")), 0);
    }

    #[test]
    fn records_of_another_boot_or_garbage_are_ignored() {
        assert_eq!(still_ours("123 5 not-this-boot"), None);
        assert_eq!(still_ours("garbage"), None);
        assert_eq!(still_ours(&format!("1 0 {}", boot_id())), None);
    }
}
