//! One started run: announce (claim, hello, close an interrupted attempt), secrets,
//! the stages, and the end (acked online, or the bundle offline).
use kiln_protocol::{Event, Outcome, SecretKey, SignedTicket, Ticket};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attempts::Attempts;
use crate::end::{ACK_LIMIT, RunEnd};
use crate::hostinfo::{HostInfo, boot_id};
use crate::reporter::{Control, Mode, Reporter};
use crate::resume::Resume;
use crate::verify::now_s;

/// What a verified, claimed run works with.
pub struct Session<'a> {
    /// The verified ticket.
    pub ticket: &'a Ticket,
    /// The signed ticket (the bundle's first record).
    pub signed: &'a SignedTicket,
    /// The work folder.
    pub work: &'a Path,
    /// The run's sink.
    pub reporter: Arc<Reporter>,
    /// Abort and shutdown orders.
    pub control: &'a Control,
    /// What a previous start already did.
    pub resume: &'a Resume,
    /// Online or offline.
    pub mode: &'a Mode,
    /// The bundle to write (offline).
    pub out: Option<&'a Path>,
}

impl Session<'_> {
    /// The claim (again on a resume, same key), Hello on a fresh start, and an error
    /// end for an attempt a previous start died in; nothing once the run has
    /// finished. Returns the claim's seq.
    pub fn announce(&self, key: &SecretKey, host: &HostInfo, fresh: bool) -> u64 {
        if self.resume.run_finished.is_some() {
            return 1;
        }
        let r = &self.reporter;
        let claim_seq = r.emit_seq(Event::Claim {
            agent_key: key.public(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: boot_id(),
        });
        if fresh {
            r.emit_seq(Event::Hello {
                hostname: host.hostname.clone(),
                macs: host.macs.clone(),
                serial: host.serial.clone(),
            });
        }
        for (i, s) in self.resume.stages.iter().enumerate() {
            if let Some(attempt) = s.open {
                r.emit_seq(Event::StageFinished {
                    stage: i as u16,
                    attempt,
                    outcome: Outcome::Error,
                    exit_code: None,
                    duration_ms: 0,
                    detail: crate::resume::INTERRUPTED.into(),
                });
            }
        }
        claim_seq
    }

    /// Reports the clock: boot mode's correction, or (online) the skew the
    /// coordinator's `Date` showed, as a log line (console and run) and a measurement.
    /// Both go to the first stage: the wire format has no run-level measurement. The
    /// agent sets the clock only in boot mode; elsewhere it only reports.
    pub fn note_clock(&self, correction: Option<&crate::clock::Correction>) {
        if self.resume.run_finished.is_some() {
            return;
        }
        let (line, name, value) = if let Some(c) = correction {
            (
                c.line(),
                crate::clock::CORRECTION_MEASURE,
                c.seconds() as f64,
            )
        } else {
            let skew = match self.mode {
                Mode::Online { client, .. } => client.skew_ms(),
                Mode::Offline { .. } => 0,
            };
            if skew == 0 {
                return;
            }
            let secs = skew as f64 / 1000.0;
            let dir = if skew > 0 { "behind" } else { "ahead of" };
            let line = format!(
                "this machine's clock is {:.1} s {dir} the coordinator's (its Date header); \
                 left as it is, requests are time-stamped by the coordinator's clock",
                secs.abs()
            );
            (line, crate::clock::SKEW_MEASURE, secs)
        };
        log::warn!("{line}");
        if self.ticket.plan.stages.is_empty() {
            return;
        }
        self.reporter.emit_seq(Event::Log {
            stage: 0,
            stream: kiln_protocol::Stream::Agent,
            text: line,
        });
        self.reporter.emit_seq(Event::Measure {
            stage: 0,
            name: name.into(),
            value,
            unit: "s".into(),
        });
    }

    /// Secrets, then the stages (or the outcome a previous start already reported).
    /// Online, the runner calls it only once the claim is acked.
    pub fn body(&self, offline_secrets: &BTreeMap<String, Vec<u8>>) -> Result<Outcome, String> {
        if let Some(o) = self.resume.run_finished {
            return Ok(o);
        }
        let t = self.ticket;
        let names = crate::secrets::named(&t.plan);
        let secrets = match self.mode {
            Mode::Offline { .. } => offline_secrets.clone(),
            Mode::Online { .. } if names.is_empty() => BTreeMap::new(),
            Mode::Online { client, .. } => {
                let key = self.reporter.key();
                match crate::secrets::fetch(client, t.run, key, names, ACK_LIMIT) {
                    Ok(s) => s,
                    Err(e) => {
                        // Stages that need a missing secret end `error`; the rest run.
                        log::error!("{e}");
                        BTreeMap::new()
                    }
                }
            }
        };
        // A timeout too large for the clock is no deadline (never a panic).
        let deadline = (t.plan.timeout_s > 0)
            .then(|| {
                let since_start = self
                    .resume
                    .first_at_ms
                    .map(|at| {
                        Duration::from_millis(now_s().saturating_mul(1000).saturating_sub(at))
                    })
                    .unwrap_or_default();
                Instant::now()
                    .checked_add(Duration::from_secs(t.plan.timeout_s).saturating_sub(since_start))
            })
            .flatten();
        let attempts = Attempts {
            run: t.run,
            plan: &t.plan,
            host: &t.host,
            work: self.work,
            reporter: self.reporter.clone(),
            control: self.control,
            secrets: &secrets,
            resume: self.resume,
            deadline,
        };
        Ok(smol::block_on(attempts.run()))
    }

    /// Reports the end and waits for it to be acked (online) or writes the bundle.
    pub fn finish(&self, outcome: Outcome) -> RunEnd {
        let r = &self.reporter;
        if self.resume.run_finished.is_none() {
            r.emit_seq(Event::RunFinished { outcome });
        }
        // What was spooled (after a spool failure the last emits may be missing):
        // that much is delivered even when the run ends as an infrastructure error.
        let last = r.last_seq();
        if let Some(f) = r.refused() {
            return RunEnd::Infra(f);
        }
        match self.out {
            Some(out) => {
                let written = r.sync().and_then(|()| {
                    let (run, key) = (self.ticket.run, r.key());
                    let next = |from| r.frames_from(from);
                    crate::bundle::write_bundle(out, self.signed, run, key, self.work, next)
                });
                if let Err(e) = written {
                    return RunEnd::Infra(format!("writing bundle {}: {e}", out.display()));
                }
                eprintln!("result bundle: {}", out.display());
            }
            None => {
                if let Err(e) = r.wait_acked(last, ACK_LIMIT) {
                    return RunEnd::Infra(e);
                }
            }
        }
        if let Some(f) = r.failure() {
            return RunEnd::Infra(f);
        }
        eprintln!("run {outcome}");
        RunEnd::Finished {
            outcome,
            shutdown: self.control.shutdown(),
        }
    }
}
