//! The fold itself: frames in, one at a time, then the clock-dependent status.
use kiln_protocol::{Event, Frame, Outcome, STALE_AFTER_MS, Sha256, Ticket};

use super::*;

/// Folds ticket and frames into a status.
pub fn fold(i: Inputs<'_>) -> RunStatus {
    let mut f = Folder::new(i.ticket);
    i.frames.iter().for_each(|fr| f.push(fr));
    f.corrupt = i.corrupt.cloned();
    f.status(i.ticket, i.last_seen_ms, i.abort, i.now_ms)
}

/// The fold over frames, one frame at a time, so a cache can feed it only the frames
/// appended since it last looked; the clock-dependent part comes at the end.
#[derive(Debug, Clone)]
pub struct Folder {
    stages: Vec<StageStatus>,
    /// Per stage, the last [`super::LOG_TAIL`] log lines.
    tails: Vec<std::collections::VecDeque<String>>,
    claimed: Option<u64>,
    finished: Option<u64>,
    outcome: Option<Outcome>,
    started_any: bool,
    agent_version: Option<String>,
    hostname: Option<String>,
    last_seq: u64,
    /// The corrupt record the pushed frames stop before.
    corrupt: Option<Corruption>,
    /// The last `Held` frame's seq and what it said.
    held: Option<(u64, HoldStatus)>,
    /// The agent's `Order` frames.
    orders: Vec<OrderEvent>,
}

impl Folder {
    /// The fold of a run with no frames.
    pub fn new(t: &Ticket) -> Self {
        let stages: Vec<StageStatus> = t
            .plan
            .stages
            .iter()
            .enumerate()
            .map(|(n, s)| StageStatus {
                index: n as u16,
                name: s.name.clone(),
                kind: s.kind.name(),
                outcome: "not_run".into(),
                attempts: 0,
                exit_code: None,
                duration_ms: None,
                detail: String::new(),
                measurements: Vec::new(),
                artifacts: Vec::new(),
                parts: Vec::new(),
                log_lines: 0,
                started_at_ms: None,
            })
            .collect();
        Folder {
            tails: vec![Default::default(); stages.len()],
            stages,
            claimed: None,
            finished: None,
            outcome: None,
            started_any: false,
            agent_version: None,
            hostname: None,
            last_seq: 0,
            corrupt: None,
            held: None,
            orders: Vec::new(),
        }
    }

    /// Per stage, the last log lines (at most [`super::LOG_TAIL`]).
    pub fn tails(&self) -> Vec<Vec<String>> {
        self.tails
            .iter()
            .map(|t| t.iter().cloned().collect())
            .collect()
    }

    /// Marks the fold as stopped before a corrupt record: the run is `corrupt`.
    pub fn set_corrupt(&mut self, c: Option<Corruption>) {
        self.corrupt = c;
    }

    /// Folds in the next frame.
    pub fn push(&mut self, f: &Frame) {
        self.last_seq = f.seq;
        let idx = f.event.stage().map(usize::from);
        let stage = idx.and_then(|s| self.stages.get_mut(s));
        match (&f.event, stage) {
            (
                Event::Claim {
                    agent_version: v, ..
                },
                _,
            ) => {
                self.claimed.get_or_insert(f.at_ms);
                self.agent_version = Some(v.clone());
            }
            (Event::Hello { hostname: h, .. }, _) => self.hostname = Some(h.clone()),
            (
                Event::Held {
                    outcome,
                    until_ms,
                    addrs,
                    host_key,
                },
                _,
            ) => {
                let ssh = match host_key {
                    Some(_) => addrs.iter().map(|a| format!("ssh root@{a}")).collect(),
                    None => Vec::new(),
                };
                self.held = Some((
                    f.seq,
                    HoldStatus {
                        outcome: outcome.as_str(),
                        until_ms: *until_ms,
                        addrs: addrs.clone(),
                        host_key: host_key.clone(),
                        ssh,
                    },
                ));
            }
            (Event::Order { what, refused }, _) => self.orders.push(OrderEvent {
                at_ms: f.at_ms,
                by: "agent".into(),
                what: what.clone(),
                result: match refused {
                    Some(why) => format!("refused: {why}"),
                    None => "done".into(),
                },
            }),
            (Event::RunFinished { outcome: o }, _) => {
                self.outcome = Some(*o);
                self.finished = Some(f.at_ms);
            }
            (Event::StageStarted { .. }, Some(s)) => {
                self.started_any = true;
                s.outcome = "running".into();
                s.started_at_ms = Some(f.at_ms);
            }
            (Event::Log { text, .. }, Some(s)) => {
                s.log_lines += 1;
                if let Some(t) = idx.and_then(|i| self.tails.get_mut(i)) {
                    if t.len() == super::LOG_TAIL {
                        t.pop_front();
                    }
                    t.push_back(text.clone());
                }
            }
            (
                Event::Measure {
                    name, value, unit, ..
                },
                Some(s),
            ) => s.measurements.push(Measurement {
                name: name.clone(),
                value: *value,
                unit: unit.clone(),
            }),
            (
                Event::Artifact {
                    name, sha256, size, ..
                },
                Some(s),
            ) => s.artifacts.push(artifact(name, sha256, *size)),
            (
                Event::StageFinished {
                    outcome,
                    exit_code,
                    duration_ms,
                    detail,
                    ..
                },
                Some(s),
            ) => {
                s.attempts += 1;
                s.outcome = outcome.as_str().into();
                s.exit_code = *exit_code;
                s.duration_ms = Some(*duration_ms);
                s.detail = detail.clone();
            }
            (
                Event::Part {
                    name,
                    outcome,
                    detail,
                    tail,
                    ..
                },
                Some(s),
            ) => s.parts.push(Part {
                name: name.clone(),
                outcome: outcome.as_str(),
                detail: detail.clone(),
                tail: tail.clone(),
            }),
            _ => {}
        }
    }

    /// The status now: the folded frames plus last-seen, abort request and clock.
    pub fn status(
        &self,
        t: &Ticket,
        last_seen_ms: Option<u64>,
        abort: Option<&AbortRequest>,
        now_ms: u64,
    ) -> RunStatus {
        let mut stages = self.stages.clone();
        let (outcome, claimed) = (self.outcome, self.claimed);
        let state = match (outcome, claimed) {
            _ if self.corrupt.is_some() => RunState::Corrupt,
            (Some(Outcome::Aborted), _) => RunState::Aborted,
            (Some(_), _) => RunState::Finished,
            (None, None) if abort.is_some() => RunState::Aborted,
            (None, None) if now_ms / 1000 > t.not_after => RunState::Expired,
            (None, None) => RunState::Pending,
            (None, Some(_)) => {
                let quiet = last_seen_ms.is_some_and(|s| now_ms.saturating_sub(s) > STALE_AFTER_MS);
                // Aborted and the agent never came back for it: the abort stands.
                let abandoned = abort.is_some_and(|a| {
                    let since = a.at_ms.max(last_seen_ms.unwrap_or(0));
                    now_ms.saturating_sub(since) > ABORT_GRACE_MS
                });
                let held = self
                    .held
                    .as_ref()
                    .is_some_and(|(seq, _)| *seq == self.last_seq);
                match (quiet, self.started_any) {
                    _ if abandoned => RunState::Aborted,
                    (true, _) => RunState::Stale,
                    _ if held => RunState::Held,
                    (false, true) => RunState::Running,
                    (false, false) => RunState::Claimed,
                }
            }
        };
        if !state.is_live() {
            for s in stages.iter_mut().filter(|s| s.outcome == "running") {
                s.outcome = "lost".into();
            }
        }
        let exit_status = match state {
            RunState::Finished | RunState::Aborted => {
                Some(outcome.unwrap_or(Outcome::Aborted).exit_status())
            }
            RunState::Expired | RunState::Corrupt => Some(crate::exit::error()),
            _ => None,
        };
        RunStatus {
            run: t.run.to_string(),
            plan: t.plan.name.clone(),
            host: t.host.name.clone(),
            state,
            outcome: outcome.map(Outcome::as_str),
            exit_status,
            abort_requested: abort.map(|a| a.reason.clone()),
            agent_version: self.agent_version.clone(),
            hostname: self.hostname.clone(),
            frames: self.last_seq,
            issued_at: t.issued_at,
            expires_at: t.not_after,
            claimed_at_ms: claimed,
            finished_at_ms: self.finished,
            last_seen_ms,
            corrupt: self.corrupt.clone(),
            stages,
            claim: None,
            contested: false,
            claim_events: Vec::new(),
            enrolled_key: t.host.agent_key.map(|k| k.fingerprint()),
            hold: match (&self.held, state) {
                (Some((_, h)), RunState::Held) => Some(h.clone()),
                _ => None,
            },
            orders: self.orders.clone(),
            power: None,
        }
    }
}

fn artifact(name: &str, sha: &Sha256, size: u64) -> ArtifactRef {
    ArtifactRef {
        name: name.to_string(),
        sha256: sha.to_string(),
        size,
    }
}
