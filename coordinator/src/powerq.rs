//! The lights-out loop that `serve` runs: the power queue, the boot watchdog, lost
//! agents and power-off after the run. Everything it knows is in the state folder
//! (each run's `power.log`, `power/queue.json`), so a coordinator restarted while a
//! host is booting picks up where it was: the watchdog's clock is the `booting`
//! record's time.
//!
//! Each tick (every [`TICK`]) looks at every run with a power.log:
//! - queued runs start, oldest first, while fewer than `concurrency` runs are
//!   `powering` or `booting` and their host is not busy with another run (two runs
//!   never power one host at once): a one-time network boot, then power on (or a
//!   cycle when the host is on); a refused boot override is a warning, the boot is
//!   still attempted;
//! - a booting run with no claim after `boot_timeout` gets one power cycle; after a
//!   second `boot_timeout` it ends `error: never booted`;
//! - a claimed run whose agent sent nothing for `lost_after` ends `error: agent lost`
//!   with the last lines it sent;
//! - a run that ended (any way) has its host powered off, unless the plan says
//!   `power_off = false`; a host already off is fine.
//!
//! Power actions run on their own threads, one per run at a time, so a slow BMC holds
//! up only its own host.
use anyhow::Result;
use kiln_protocol::{PublicKey, RunId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fsutil::now_ms;
use crate::lights::{self, Event, Progress, Record};
use crate::power::{Action, Console, PowerState, act_on_host, console_of_host};
use crate::state::{Host, State};
use crate::status::{RunState, RunStatus};
use crate::store::RunDir;

/// How often the loop looks at the runs.
pub const TICK: Duration = Duration::from_millis(500);

/// Default `--power-concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// The loop's settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Most runs `powering` or `booting` at once.
    pub concurrency: usize,
}

/// Writes the boot request of a freshly issued run: it waits in the power queue.
pub fn request_boot(state: &State, run: &RunId, settings: lights::Settings) -> Result<()> {
    // The loop looks at runs only once this folder exists (a lab without power
    // control costs it one stat a tick).
    std::fs::create_dir_all(state.root.join("power"))?;
    // The loop walks `power/active/` (one empty file per lights-out run until its
    // power handling is done), never every run folder: its cost stays that of the
    // runs it powers. The mark goes first, so no requested run goes unseen.
    let active = state.root.join("power").join("active");
    std::fs::create_dir_all(&active)?;
    std::fs::write(active.join(run.to_string()), b"")?;
    let rd = RunDir::new(state, *run);
    let mut r = Record::new(Event::Requested, "waiting in the power queue");
    r.settings = Some(settings);
    lights::append(&rd, &r)
}

/// Starts the loop on its own thread; it runs until the process ends.
pub fn spawn(state: State, key: PublicKey, opts: Options) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("power".into())
        .spawn(move || {
            let mut q = Queue {
                state,
                key,
                opts,
                busy: Arc::new(Mutex::new(HashSet::new())),
                consoles: Arc::new(Mutex::new(Consoles::default())),
                done: HashSet::new(),
                last_queue: Vec::new(),
            };
            loop {
                let t = Instant::now();
                if let Err(e) = q.tick() {
                    log::warn!("power loop: {e:#}");
                }
                std::thread::sleep(TICK.saturating_sub(t.elapsed()));
            }
        })
        .expect("spawning the power thread")
}

struct Queue {
    state: State,
    key: PublicKey,
    opts: Options,
    /// Runs with a power action in flight on a thread.
    busy: Arc<Mutex<HashSet<RunId>>>,
    /// Console readers of booting hosts.
    consoles: Arc<Mutex<Consoles>>,
    /// Runs released (nothing more to do) — skipped without reading.
    done: HashSet<RunId>,
    last_queue: Vec<String>,
}

/// The console readers (IPMI serial-over-LAN) of hosts between power-on and claim.
#[derive(Default)]
struct Consoles {
    live: HashMap<RunId, Box<dyn Console>>,
    starting: HashSet<RunId>,
    last_try: HashMap<RunId, Instant>,
    /// Runs whose host's driver has no console.
    none: HashSet<RunId>,
}

/// How long after a failed (or ended) console session the next is tried.
const CONSOLE_RETRY: Duration = Duration::from_secs(2);

/// After a run, how long the power-off waits for the host's console to be read
/// (its last lines: the OS shutting down, a hang) before it goes ahead regardless.
const CONSOLE_AFTER_RUN: Duration = Duration::from_secs(5);

/// One lights-out run as the tick sees it.
struct Seen {
    id: RunId,
    rd: RunDir,
    p: Progress,
    s: RunStatus,
}

impl Seen {
    fn claimed(&self) -> bool {
        self.s.claim.is_some()
            || matches!(
                self.s.state,
                RunState::Claimed | RunState::Running | RunState::Stale
            )
    }

    fn over(&self) -> bool {
        self.p.ended.is_some() || !self.s.state.is_live()
    }

    /// Holds one of the `concurrency` slots: powering or booting, or over and its
    /// power-off not yet done (so the BMCs never see more than N hosts between
    /// boot override and power-off without a claim).
    fn holds_slot(&self) -> bool {
        self.p.powering && (!self.claimed() || self.over())
    }
}

impl Queue {
    fn tick(&mut self) -> Result<()> {
        if !self.state.root.join("power").is_dir() {
            return Ok(());
        }
        let hosts = self.state.hosts()?;
        let mut seen = Vec::new();
        let active = self.state.root.join("power").join("active");
        let mut ids: Vec<RunId> = std::fs::read_dir(&active)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort();
        for id in ids {
            if self.done.contains(&id) {
                continue;
            }
            let rd = RunDir::new(&self.state, id);
            let mark = active.join(id.to_string());
            if !rd.exists() {
                // Removed (gc) or never written: nothing to power.
                let _ = std::fs::remove_file(&mark);
                continue;
            }
            if !rd.path(lights::POWER_LOG).exists() {
                continue;
            }
            let p = lights::progress(&lights::records(&rd));
            if p.settings.is_none() {
                continue;
            }
            if p.released {
                self.done.insert(id);
                let _ = std::fs::remove_file(&mark);
                // Its console was read until the power-off: that is over too.
                let con = self
                    .consoles
                    .lock()
                    .expect("consoles lock")
                    .live
                    .remove(&id);
                if let Some(con) = con {
                    std::thread::spawn(move || con.stop());
                }
                continue;
            }
            let s = match crate::status::current(&rd, &self.key) {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("power loop: run {id}: {e:#}");
                    continue;
                }
            };
            seen.push(Seen { id, rd, p, s });
        }
        let busy_now: HashSet<RunId> = self.busy.lock().expect("busy lock").clone();
        let mut active = 0usize;
        // Hosts another run is using: starting, claimed, or over but not yet off.
        let mut host_busy: HashSet<String> = HashSet::new();
        for r in &seen {
            if r.p.powering {
                host_busy.insert(r.s.host.clone());
            }
            if r.holds_slot() {
                active += 1;
            }
        }
        for r in &seen {
            // From power-on to the claim, and from the run's end until the power-off.
            let wants = (r.p.booting_since_ms.is_some() && !r.claimed() && !r.over())
                || (r.over() && r.p.powering && !r.p.released);
            self.console(r, hosts.get(&r.s.host), wants);
        }
        let mut queued: Vec<&Seen> = Vec::new();
        for r in &seen {
            if busy_now.contains(&r.id) {
                continue;
            }
            let settings = r.p.settings.expect("checked above");
            let host = hosts.get(&r.s.host);
            if r.over() {
                self.release(r, host, settings);
            } else if r.claimed() {
                self.check_lost(r, settings);
            } else if let Some(since) = r.p.booting_since_ms {
                self.check_boot(r, host, settings, since);
            } else if r.p.powering {
                // Taken from the queue, then the coordinator stopped before the
                // power-on was recorded: send it again.
                self.start(r, host);
            } else {
                queued.push(r);
            }
        }
        queued.sort_by_key(|r| (r.s.issued_at, r.id));
        let order: Vec<String> = queued.iter().map(|r| r.id.to_string()).collect();
        if order != self.last_queue {
            lights::save_queue(&self.state, &order)?;
            self.last_queue = order;
        }
        for r in queued {
            if active >= self.opts.concurrency {
                break;
            }
            if host_busy.contains(&r.s.host) {
                continue;
            }
            host_busy.insert(r.s.host.clone());
            lights::append(&r.rd, &Record::new(Event::Powering, "taken from the queue"))?;
            active += 1;
            self.start(r, hosts.get(&r.s.host));
        }
        Ok(())
    }

    /// Keeps a console reader on a booting host (restarted when its session ends),
    /// and stops it once the agent claimed or the run is over.
    fn console(&self, r: &Seen, host: Option<&Host>, wants: bool) {
        let mut c = self.consoles.lock().expect("consoles lock");
        if !wants {
            if let Some(con) = c.live.remove(&r.id) {
                std::thread::spawn(move || con.stop());
            }
            return;
        }
        if let Some(con) = c.live.get_mut(&r.id) {
            if con.alive() {
                return;
            }
            c.live.remove(&r.id);
        }
        let recent = c
            .last_try
            .get(&r.id)
            .is_some_and(|t| t.elapsed() < CONSOLE_RETRY);
        if recent || c.none.contains(&r.id) || c.starting.contains(&r.id) {
            return;
        }
        let Some(host) = host.cloned() else {
            return;
        };
        c.starting.insert(r.id);
        c.last_try.insert(r.id, Instant::now());
        drop(c);
        let (state, rd, id) = (self.state.clone(), r.rd.clone(), r.id);
        let consoles = self.consoles.clone();
        std::thread::spawn(move || {
            let mut writer = lights::ConsoleWriter::new(&rd);
            let res = console_of_host(&state, &host, Box::new(move |b| writer.push(b)));
            let mut c = consoles.lock().expect("consoles lock");
            c.starting.remove(&id);
            match res {
                Ok(Some(con)) => {
                    c.live.insert(id, con);
                }
                Ok(None) => {
                    c.none.insert(id);
                }
                Err(e) => log::debug!("run {id}: console: {e}"),
            }
        });
    }

    /// Runs `f` on a thread, the run marked busy until it returns.
    fn on_thread(&self, id: RunId, f: impl FnOnce() + Send + 'static) {
        let busy = self.busy.clone();
        busy.lock().expect("busy lock").insert(id);
        std::thread::spawn(move || {
            f();
            busy.lock().expect("busy lock").remove(&id);
        });
    }

    /// Boot override, then power on (or cycle when on); `booting` when it worked,
    /// the run ended when the host cannot be powered on.
    fn start(&self, r: &Seen, host: Option<&Host>) {
        let Some(host) = host.cloned() else {
            let _ = lights::append(
                &r.rd,
                &Record::new(
                    Event::Ended,
                    format!("host {} is not in hosts.toml", r.s.host),
                ),
            );
            return;
        };
        let (state, rd) = (self.state.clone(), r.rd.clone());
        self.on_thread(r.id, move || {
            let res = (|| -> Result<()> {
                match act(&state, &rd, &host, Action::Pxe) {
                    Ok(_) => {}
                    Err(e) => lights::append(
                        &rd,
                        &Record::new(
                            Event::Warning,
                            format!("the boot override was refused ({e}); booting anyway"),
                        ),
                    )?,
                }
                let on = match act(&state, &rd, &host, Action::Status) {
                    Ok(a) => a.state == Some(PowerState::On),
                    Err(_) => false,
                };
                let action = if on { Action::Cycle } else { Action::On };
                match act(&state, &rd, &host, action) {
                    Ok(_) => lights::append(&rd, &Record::new(Event::Booting, "powered on")),
                    Err(e) => lights::append(
                        &rd,
                        &Record::new(Event::Ended, format!("power on failed: {e}")),
                    ),
                }
            })();
            if let Err(e) = res {
                log::warn!("power loop: run {}: {e:#}", rd.id);
            }
        });
    }

    /// The boot watchdog: one power cycle after `boot_timeout` without a claim, then
    /// the run ends `never booted`.
    fn check_boot(&self, r: &Seen, host: Option<&Host>, settings: lights::Settings, since: u64) {
        let limit = settings.boot_timeout_s.saturating_mul(1000);
        if now_ms().saturating_sub(since) < limit {
            return;
        }
        let after = crate::fmt::fmt_ms(limit);
        if r.p.watchdog_cycles >= 1 || host.is_none() {
            let mut detail = format!(
                "never booted: no claim within {after} of power-on, twice (one power cycle between)"
            );
            let console = lights::console_tail(&r.rd, 5);
            if !console.is_empty() {
                detail += &format!("; the console's last lines: {}", console.join(" | "));
            }
            let _ = lights::append(&r.rd, &Record::new(Event::Ended, detail));
            return;
        }
        let host = host.cloned().expect("checked");
        let (state, rd) = (self.state.clone(), r.rd.clone());
        self.on_thread(r.id, move || {
            let _ = lights::append(
                &rd,
                &Record::new(
                    Event::Warning,
                    format!("no claim within {after} of power-on: one power cycle"),
                ),
            );
            let _ = act(&state, &rd, &host, Action::Pxe);
            let rec = match act(&state, &rd, &host, Action::Cycle) {
                Ok(_) => Record::new(Event::Booting, "power cycled by the boot watchdog"),
                Err(e) => Record::new(
                    Event::Ended,
                    format!("never booted: power cycle failed: {e}"),
                ),
            };
            let _ = lights::append(&rd, &rec);
        });
    }

    /// A claimed run whose agent has been silent for `lost_after` ends `agent lost`.
    fn check_lost(&self, r: &Seen, settings: lights::Settings) {
        let limit = settings.lost_after_s.saturating_mul(1000);
        let last =
            r.s.last_seen_ms
                .or(r.s.claim.as_ref().map(|c| c.at_ms))
                .or(r.p.booting_since_ms)
                .unwrap_or(0);
        let silent = now_ms().saturating_sub(last);
        if silent < limit {
            return;
        }
        let tail = crate::status::current_with_tails(&r.rd, &self.key)
            .map(|(_, tails)| {
                tails
                    .into_iter()
                    .flatten()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .unwrap_or_default();
        let mut detail = format!(
            "agent lost: nothing from it for {} (lost_after {})",
            crate::fmt::fmt_ms(silent),
            crate::fmt::fmt_ms(limit)
        );
        if !tail.is_empty() {
            detail += &format!("; its last lines: {tail}");
        }
        let console = lights::console_tail(&r.rd, 3);
        if !console.is_empty() {
            detail += &format!("; the console's last lines: {}", console.join(" | "));
        }
        let _ = lights::append(&r.rd, &Record::new(Event::Ended, detail));
    }

    /// After the run: power off (or not), then nothing more to do.
    fn release(&self, r: &Seen, host: Option<&Host>, settings: lights::Settings) {
        let rd = r.rd.clone();
        if !r.p.powering {
            let _ = lights::append(&rd, &Record::new(Event::Released, "never powered on"));
            return;
        }
        if !settings.power_off {
            let _ = lights::append(
                &rd,
                &Record::new(Event::Released, "kept on (plan power_off = false)"),
            );
            return;
        }
        let Some(host) = host.cloned() else {
            let _ = lights::append(
                &rd,
                &Record::new(Event::Released, "host gone from hosts.toml"),
            );
            return;
        };
        let state = self.state.clone();
        let (consoles, id) = (self.consoles.clone(), r.id);
        self.on_thread(r.id, move || {
            // Give the console its window: wait until it has been read for a moment
            // (or its host has none, or the grace ends).
            let t0 = Instant::now();
            let mut up_since: Option<Instant> = None;
            while t0.elapsed() < CONSOLE_AFTER_RUN {
                let (live, none) = {
                    let c = consoles.lock().expect("consoles lock");
                    (c.live.contains_key(&id), c.none.contains(&id))
                };
                if none {
                    break;
                }
                if live {
                    let since = *up_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(2) {
                        break;
                    }
                } else if up_since.is_some() {
                    break; // it was read, and it ended
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let read = up_since.map_or_else(String::new, |t| {
                format!(
                    " (its console read for {} after the run)",
                    crate::fmt::fmt_ms(t.elapsed().as_millis() as u64)
                )
            });
            let rec = match act(&state, &rd, &host, Action::Status) {
                Ok(a) if a.state == Some(PowerState::Off) => {
                    Record::new(Event::Released, format!("already off{read}"))
                }
                _ => match act(&state, &rd, &host, Action::Off) {
                    Ok(_) => Record::new(Event::Released, format!("powered off{read}")),
                    Err(e) if e.unsupported => {
                        Record::new(Event::Released, format!("left to the agent: {}", e.reason))
                    }
                    Err(e) => Record::new(Event::Released, format!("power off failed: {e}")),
                },
            };
            let _ = lights::append(&rd, &rec);
        });
    }
}

/// One power action on a run's host, recorded in its power.log.
fn act(
    state: &State,
    rd: &RunDir,
    host: &Host,
    action: Action,
) -> Result<crate::power::Answer, crate::power::PowerError> {
    let t = Instant::now();
    let res = act_on_host(state, host, action);
    let took = t.elapsed().as_millis() as u64;
    let rec = match &res {
        Ok((a, _)) => {
            let text = match (action, a.state) {
                (Action::Status, Some(s)) => format!("{s}: {}", a.text),
                _ => a.text.clone(),
            };
            Record::action(action, true, took, text)
        }
        Err(e) => Record::action(action, false, took, e.to_string()),
    };
    if let Err(e) = lights::append(rd, &rec) {
        log::warn!("run {}: {e:#}", rd.id);
    }
    res.map(|(a, _)| a)
}

/// Settings for a run from the host's `[host.power]` and the plan's lights-out keys.
pub fn settings(host: &Host, plan: &crate::plan::PlanLights) -> lights::Settings {
    let hp = host.power.as_ref();
    lights::Settings {
        boot_timeout_s: plan
            .boot_timeout_s
            .or(hp.and_then(|p| p.boot_timeout_s))
            .unwrap_or(crate::power::DEFAULT_BOOT_TIMEOUT_S),
        lost_after_s: plan
            .lost_after_s
            .or(hp.and_then(|p| p.lost_after_s))
            .unwrap_or(crate::power::DEFAULT_LOST_AFTER_S),
        power_off: plan.power_off.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanLights;
    use crate::state::PowerToml;

    #[test]
    fn the_plan_wins_over_the_host_over_the_defaults() {
        let mut host = Host {
            name: "h".into(),
            macs: vec![],
            serial: None,
            image: None,
            spec: None,
            agent_key: None,
            power: None,
        };
        let none = PlanLights::default();
        let d = settings(&host, &none);
        assert_eq!(
            (d.boot_timeout_s, d.lost_after_s, d.power_off),
            (600, 600, true)
        );
        host.power = Some(PowerToml {
            url: "wol".into(),
            boot_timeout_s: Some(60),
            lost_after_s: Some(120),
            ..PowerToml::default()
        });
        let h = settings(&host, &none);
        assert_eq!((h.boot_timeout_s, h.lost_after_s), (60, 120));
        let plan = PlanLights {
            power_off: Some(false),
            boot_timeout_s: Some(5),
            lost_after_s: None,
        };
        let p = settings(&host, &plan);
        assert_eq!(
            (p.boot_timeout_s, p.lost_after_s, p.power_off),
            (5, 120, false)
        );
    }
}
