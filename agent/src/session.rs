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
    /// Whether (and how) a run whose plan asks for a hold is held.
    pub hold: &'a crate::hold::HoldMode,
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
        let outcome = smol::block_on(attempts.run());
        Ok(self.hold(outcome, &attempts))
    }

    /// Holds the machine for a person when the plan asks for it and the run ended so
    /// (`Plan::hold`): an SSH server with the ticket's keys (boot mode), a `Held`
    /// frame, then the coordinator's orders until the hold ends. Returns the run's
    /// outcome, recomputed after retries.
    fn hold(&self, mut outcome: Outcome, attempts: &Attempts) -> Outcome {
        use crate::hold::{HoldMode, addresses, start_ssh, words};
        use kiln_protocol::Command;
        let h = &self.ticket.plan.hold;
        if !h.applies(outcome) {
            return outcome;
        }
        let (client, coordinator) = match self.mode {
            Mode::Online {
                client,
                coordinator,
            } => (client, *coordinator),
            Mode::Offline { .. } => {
                log::warn!(
                    "the plan asks to hold this machine, but an offline run has nobody to release it: not held"
                );
                return outcome;
            }
        };
        let ssh = match self.hold {
            HoldMode::Off => {
                log::warn!(
                    "the plan asks to hold this machine ({}); kiln-agent run without --hold does not: the run ends",
                    h.when.as_str()
                );
                return outcome;
            }
            HoldMode::Wait => None,
            HoldMode::Ssh(c) => match start_ssh(c, &h.keys) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::error!("held without an SSH server: {e}");
                    self.reporter.emit_seq(Event::Order {
                        what: "start the SSH server".into(),
                        refused: Some(e),
                    });
                    None
                }
            },
        };
        crate::hold::note_held();
        let host_key = ssh.as_ref().map(|s| s.fingerprint.clone());
        let until = Instant::now() + Duration::from_secs(h.for_s);
        let until_ms = client.now_ms().saturating_add(h.for_s.saturating_mul(1000));
        let retry = Attempts {
            deadline: None,
            ..attempts.clone()
        };
        loop {
            let addrs = addresses();
            let seq = self.reporter.emit_seq(Event::Held {
                outcome,
                until_ms,
                addrs: addrs.clone(),
                host_key: host_key.clone(),
            });
            let left = until.saturating_duration_since(Instant::now()).as_secs();
            let login = match (&host_key, addrs.first()) {
                (Some(fp), Some(a)) => format!(": ssh root@{a} (host key {fp})"),
                _ => String::new(),
            };
            eprintln!("kiln: run {outcome}, held for {}{login}", words(left));
            let Some(order) = self.control.wait_order(seq, until) else {
                // The hold's end, or the agent was stopped (SIGTERM) while holding.
                let what = match crate::stages::ctx::StopSignal::default().reason() {
                    Some(crate::stages::ctx::Stop::Abort(why)) => format!("hold ended: {why}"),
                    _ => format!("hold ended after {}", words(h.for_s)),
                };
                self.reporter.emit_seq(Event::Order {
                    what: what.clone(),
                    refused: None,
                });
                eprintln!("kiln: {what}");
                return outcome;
            };
            match order {
                Command::Release { reboot } => {
                    let what = if reboot {
                        "release (reboot)"
                    } else {
                        "release"
                    };
                    self.reporter.emit_seq(Event::Order {
                        what: what.into(),
                        refused: None,
                    });
                    eprintln!("kiln: {what}: ordered by the coordinator");
                    crate::hold::ask_reboot(reboot);
                    return outcome;
                }
                Command::RetryStage { stage } => {
                    let i = stage as usize;
                    let what = match self.ticket.plan.stages.get(i) {
                        Some(s) => format!("retry stage {:?}", s.name),
                        None => format!("retry stage #{i}"),
                    };
                    let refused = if i >= self.ticket.plan.stages.len() {
                        Some(format!("the plan has no stage #{i}"))
                    } else {
                        self.control
                            .aborted()
                            .map(|r| format!("the run was aborted ({r})"))
                    };
                    let ok = refused.is_none();
                    self.reporter.emit_seq(Event::Order { what, refused });
                    if ok {
                        outcome = self.again(&retry, i, Vec::new());
                    }
                }
                Command::Approve(a) => {
                    let what = format!("approve disk {:?} for stage #{}", a.serial, a.stage);
                    let refused = self.check_approval(&a, &coordinator);
                    let ok = refused.is_none();
                    if let Some(why) = &refused {
                        log::warn!("{what} refused: {why}");
                    }
                    self.reporter.emit_seq(Event::Order { what, refused });
                    if ok {
                        outcome = self.again(&retry, a.stage as usize, vec![a.serial.clone()]);
                    }
                }
                Command::Continue | Command::Abort { .. } | Command::Shutdown => {}
            }
            if !h.applies(outcome) {
                return outcome;
            }
        }
    }

    /// One more attempt of stage `i` (disks with serials in `approved` allowed past
    /// the wipe gate); returns the run's outcome recomputed from the spool: the worst
    /// of every stage's last finished attempt.
    fn again(&self, attempts: &Attempts, i: usize, approved: Vec<String>) -> Outcome {
        let folded = self.folded();
        let attempt = folded.stages.get(i).map_or(0, |s| s.last_attempt) + 1;
        smol::block_on(attempts.again(i, attempt, approved));
        let folded = self.folded();
        folded
            .stages
            .iter()
            .filter_map(|s| s.last_outcome)
            .fold(Outcome::Passed, Outcome::worst)
    }

    /// The spool folded against the plan.
    fn folded(&self) -> Resume {
        let mut frames = Vec::new();
        let mut from = 1;
        while let Ok(more) = self.reporter.frames_from(from) {
            let Some(last) = more.last() else { break };
            from = last.seq + 1;
            frames.extend(more);
        }
        Resume::fold(&frames, &self.ticket.plan)
    }

    /// Why an approval is refused: not signed by the key that signed the ticket, for
    /// another run, or for a stage that is no storage stage or has no disk with that
    /// serial. `None`: it holds.
    fn check_approval(
        &self,
        a: &kiln_protocol::Approval,
        coordinator: &kiln_protocol::PublicKey,
    ) -> Option<String> {
        if a.verify(coordinator).is_err() {
            return Some("not signed by the coordinator key that signed this run's ticket".into());
        }
        if a.run != self.ticket.run {
            return Some(format!("it is for run {}, not {}", a.run, self.ticket.run));
        }
        let Some(stage) = self.ticket.plan.stages.get(a.stage as usize) else {
            return Some(format!("the plan has no stage #{}", a.stage));
        };
        let kiln_protocol::StageKind::Storage(spec) = &stage.kind else {
            return Some(format!("stage {:?} is no storage stage", stage.name));
        };
        let serials = crate::stages::hardware::storage::serials(&spec.devices);
        if !serials.iter().any(|(_, s)| s == a.serial.trim()) {
            let have: Vec<String> = serials.iter().map(|(d, s)| format!("{d} {s:?}")).collect();
            return Some(format!(
                "no disk of stage {:?} has serial {:?} (it has {})",
                stage.name,
                a.serial,
                have.join(", ")
            ));
        }
        if let Some(r) = self.control.aborted() {
            return Some(format!("the run was aborted ({r})"));
        }
        None
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
