//! The run loop: claim, stages in order with timeouts and retries, fail_fast, outcome.
use kiln_protocol::{Outcome, PublicKey, RunId, SecretKey};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::client::Client;
use crate::hostinfo::HostInfo;
use crate::reporter::{Control, Mode, Reporter};
use crate::resume::Resume;
use crate::session::Session;
use crate::verify::{check_expired_ticket, check_ticket, now_s};

use crate::end::{ACK_LIMIT, RunEnd};

/// Everything a run needs; built by `run` from flags and by `boot` from the kernel
/// command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The ticket file's bytes.
    pub ticket_bytes: Vec<u8>,
    /// Where the ticket came from (a file's `<path>.cas` folder holds offline CAS objects).
    pub ticket_path: Option<PathBuf>,
    /// Keys the ticket must be signed by.
    pub trusted: Vec<PublicKey>,
    /// Coordinator URL (overrides the ticket's); `None` and no ticket URL: offline.
    pub url: Option<String>,
    /// Offline bundle to write.
    pub out: Option<PathBuf>,
    /// Work folder (spool, claim key, stage folders).
    pub work: Option<PathBuf>,
    /// Folder of CAS objects for offline runs.
    pub cas_dir: Option<PathBuf>,
    /// Offline secrets by name.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// The enrolled host key file, for tickets that name one (default
    /// [`crate::hostkey::DEFAULT_AGENT_KEY`]).
    pub agent_key: Option<PathBuf>,
    /// Boot mode set the clock forward before the ticket was checked: reported in the
    /// run as a log line and a measurement.
    pub clock: Option<crate::clock::Correction>,
    /// Whether a run whose plan asks for a hold is held (boot mode: with an SSH
    /// server; `run --hold`: waiting only).
    pub hold: crate::hold::HoldMode,
}

/// Loads the claim key kept in the work folder, or makes and keeps a new one (0600),
/// so a restarted agent resumes under the same key.
pub fn claim_key(work: &Path) -> Result<SecretKey, String> {
    let path = work.join("claim.key");
    match kiln_protocol::io::read_text_capped(
        &path,
        kiln_protocol::MAX_KEY_FILE_BYTES as u64,
        "a key file",
    ) {
        Ok(text) => {
            return SecretKey::from_line(&text).map_err(|e| format!("{}: {e}", path.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| format!("random key seed: {e}"))?;
    let key = SecretKey::from_seed(seed);
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = work.join("claim.key.tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{}\n", key.to_line()).as_bytes())?;
            f.sync_all()
        })
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

/// File name of the work folder's lock (holds the owner's pid).
pub const LOCK_FILE: &str = "lock";

/// An exclusive `flock` on the work folder's lock file, held for the whole run:
/// two agents on one folder would hand out the same seqs into one spool.
pub struct WorkLock {
    _lock: Flock<std::fs::File>,
}

/// Takes the work folder's lock, or says which process holds it.
pub fn lock_work(work: &Path) -> Result<WorkLock, String> {
    let p = work.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(|e| format!("work folder lock {}: {e}", p.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let written = lock
                .set_len(0)
                .and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()));
            written.map_err(|e| format!("work folder lock {}: {e}", p.display()))?;
            Ok(WorkLock { _lock: lock })
        }
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut file, &mut text);
            let pid = match text.trim() {
                "" => "pid unknown".to_string(),
                t => format!("pid {t}"),
            };
            Err(format!("work folder {} is in use ({pid})", work.display()))
        }
        Err((_, e)) => Err(format!("work folder lock {}: {e}", p.display())),
    }
}

/// Ties the work folder to one run, so a folder is never resumed by another ticket,
/// and locks it for this agent.
fn bind_work(work: &Path, run: &RunId) -> Result<WorkLock, String> {
    std::fs::create_dir_all(work).map_err(|e| format!("work folder {}: {e}", work.display()))?;
    let lock = lock_work(work)?;
    let p = work.join("run");
    match std::fs::read_to_string(&p) {
        Ok(s) if s.trim() == run.to_string() => Ok(lock),
        Ok(s) => Err(format!(
            "work folder {} belongs to run {}, not {run}",
            work.display(),
            s.trim()
        )),
        Err(_) => std::fs::write(&p, format!("{run}\n"))
            .map(|()| lock)
            .map_err(|e| format!("work folder {}: {e}", work.display())),
    }
}

/// Whether `work` holds a spool of `run` (bound to it, frames spooled): what lets
/// an expired ticket deliver what a previous start claimed in time.
fn spooled_here(work: &Path, run: &RunId) -> bool {
    let bound =
        std::fs::read_to_string(work.join("run")).is_ok_and(|s| s.trim() == run.to_string());
    bound && std::fs::metadata(work.join(crate::spool::SPOOL_FILE)).is_ok_and(|m| m.len() > 0)
}

/// Verifies the ticket, claims the run, runs the stages, reports; blocking.
pub fn run_ticket(opts: RunOptions) -> RunEnd {
    let host = HostInfo::detect();
    let now = now_s();
    // An expired ticket is refused, unless its run was claimed here in time: then
    // the spool is delivered and the run ended, and nothing new starts (`expired`).
    let (signed, ticket, expired) =
        match check_ticket(&opts.ticket_bytes, &opts.trusted, now, &host) {
            Ok((s, t)) => (s, t, None),
            Err(reason) => {
                match check_expired_ticket(&opts.ticket_bytes, &opts.trusted, now, &host) {
                    Some((s, t)) => (s, t, Some(reason)),
                    None => return RunEnd::Refused(reason),
                }
            }
        };
    // An enrolled host's ticket is claimed with its host key, or not run at all.
    let host_key = match crate::hostkey::for_ticket(&ticket, opts.agent_key.as_deref()) {
        Ok(k) => k,
        Err(reason) => return RunEnd::Refused(reason),
    };
    let run = ticket.run;
    // The key that signed the ticket is the one acks must be signed by.
    let Some(&coordinator) = opts.trusted.iter().find(|k| k.key_id() == signed.key_id) else {
        return RunEnd::Refused("ticket refused: signed by no trusted key".into());
    };
    let url = opts.url.clone().or(ticket.coordinator.clone());
    let offline_out = match (&opts.out, &url) {
        (Some(out), _) => Some(out.clone()),
        (None, None) => Some(PathBuf::from(format!("kiln-result-{run}.kiln"))),
        (None, Some(_)) => None,
    };
    let work = opts
        .work
        .clone()
        .unwrap_or_else(|| Path::new("kiln-work").join(run.to_string()));
    if let Some(reason) = &expired
        && !spooled_here(&work, &run)
    {
        return RunEnd::Refused(reason.clone());
    }
    // Held until the run returns.
    let _lock = match bind_work(&work, &run) {
        Ok(l) => l,
        Err(e) => return RunEnd::Infra(e),
    };
    // Stages hand the folder to other programs (podman reads a relative path as a
    // volume name): absolute from here on.
    let work = match std::path::absolute(&work) {
        Ok(w) => w,
        Err(e) => return RunEnd::Infra(format!("work folder {}: {e}", work.display())),
    };
    let key = match host_key.map_or_else(|| claim_key(&work), Ok) {
        Ok(k) => k,
        Err(e) => return RunEnd::Infra(e),
    };
    let mode = match (&offline_out, &url) {
        (Some(_), _) => Mode::Offline {
            cas_dir: opts.cas_dir.clone().or_else(|| {
                opts.ticket_path.as_ref().map(|p| {
                    let mut s = p.clone().into_os_string();
                    s.push(".cas");
                    PathBuf::from(s)
                })
            }),
        },
        (None, Some(u)) => Mode::Online {
            client: Client::new(u),
            coordinator,
        },
        (None, None) => unreachable!("no url means offline"),
    };
    let control = Arc::new(Control::default());
    let (reporter, old) =
        match Reporter::open(run, key.clone(), &work, mode.clone(), control.clone()) {
            Ok(r) => r,
            Err(e) => {
                return RunEnd::Infra(format!("opening the spool in {}: {e}", work.display()));
            }
        };
    if let Some(reason) = &expired {
        if !old
            .iter()
            .any(|f| matches!(f.event, kiln_protocol::Event::Claim { .. }))
        {
            reporter.close();
            return RunEnd::Refused(reason.clone());
        }
        log::warn!(
            "run {run}: {reason}, but this work folder claimed the run in time: \
             delivering its {} spooled frames and ending the run without starting a stage",
            old.len()
        );
    }
    let resume = Resume::fold(&old, &ticket.plan);
    let session = Session {
        ticket: &ticket,
        signed: &signed,
        work: &work,
        reporter: reporter.clone(),
        control: &control,
        resume: &resume,
        mode: &mode,
        out: offline_out.as_deref(),
        hold: &opts.hold,
    };
    let claim_seq = session.announce(&key, &host, old.is_empty());
    let sender = reporter.start_sender();
    // Online, nothing of the plan runs until the coordinator acked this claim.
    let claimed = match &mode {
        Mode::Online { .. } => claim_acked(&reporter, run, claim_seq),
        Mode::Offline { .. } => Ok(()),
    };
    let end = match claimed {
        Err(end) => end,
        Ok(()) => {
            if old.is_empty() {
                log::info!(
                    "run {run}: plan {:?}, {} stage(s)",
                    ticket.plan.name,
                    ticket.plan.stages.len()
                );
            } else {
                log::info!(
                    "run {run}: resuming from the spool ({} frames, {} acked)",
                    old.len(),
                    reporter.acked()
                );
            }
            session.note_clock(opts.clock.as_ref());
            if expired.is_some() {
                // Past expiry nothing new starts: an attempt a previous start died in
                // is closed `interrupted` (announce), and the run ends `error`.
                crate::attempts::settle_leftovers(&work, &ticket.plan);
                session.finish(resume.run_finished.unwrap_or(Outcome::Error))
            } else {
                match session.body(&opts.secrets) {
                    Ok(outcome) => session.finish(outcome),
                    Err(e) => RunEnd::Infra(e),
                }
            }
        }
    };
    reporter.close();
    if let Some(h) = sender {
        let _ = h.join();
    }
    end
}

/// Waits until the coordinator acked this start's claim: a refusal (409: the run is
/// claimed by another key or finished) is [`RunEnd::Refused`], no answer or a
/// protocol error an infrastructure error.
fn claim_acked(reporter: &Reporter, run: RunId, claim_seq: u64) -> Result<(), RunEnd> {
    reporter
        .wait_acked(claim_seq, ACK_LIMIT)
        .map_err(|e| match reporter.refused() {
            Some(why) => RunEnd::Refused(format!(
                "claim refused: run {run}: {}; nothing ran",
                why.trim_start_matches("coordinator refused reports: ")
            )),
            None => RunEnd::Infra(format!("claiming run {run}: {e}; nothing ran")),
        })
}

/// GETs a ticket from a URL, once. A 4xx is a bad argument (exit 2); no answer, a
/// 5xx or 429 is an infrastructure error (exit 3). One line naming the URL once.
pub fn fetch_ticket(url: &str) -> Result<Vec<u8>, (i32, String)> {
    use crate::exit::{EXIT_INFRA, EXIT_REFUSED};
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build();
    let infra = |why: String| (EXIT_INFRA, format!("fetching ticket {url}: {why}"));
    let r = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let line = r.into_string().unwrap_or_default();
            let line = line.lines().next().unwrap_or("").trim().to_string();
            let why = format!("{code} {line}").trim().to_string();
            return Err(if code >= 500 || code == 429 {
                infra(why)
            } else {
                (EXIT_REFUSED, format!("fetching ticket {url}: {why}"))
            });
        }
        Err(ureq::Error::Transport(t)) => {
            // The transport error's own text repeats the URL: kind and message only.
            let mut why = t.kind().to_string();
            if let Some(m) = t.message() {
                why = format!("{why}: {m}");
            }
            if let Some(src) = std::error::Error::source(&t) {
                why = format!("{why} ({src})");
            }
            return Err(infra(why));
        }
    };
    let mut out = Vec::new();
    r.into_reader()
        .take(kiln_protocol::MAX_TICKET_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| infra(e.to_string()))?;
    Ok(out)
}
