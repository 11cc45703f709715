//! What a previous start of this run already did, folded from its spooled frames:
//! finished stages are not run again; an interrupted attempt is closed as `error`
//! and the stage runs again as a new attempt.
use kiln_protocol::{Event, Frame, Outcome, Plan};

/// Progress of one stage in the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageProgress {
    /// Highest attempt number started.
    pub last_attempt: u32,
    /// An attempt that started and never finished (the agent died during it).
    pub open: Option<u32>,
    /// Attempts that finished (they count against `retries`).
    pub finished: u32,
    /// Outcome of the last finished attempt.
    pub last_outcome: Option<Outcome>,
}

/// Outcomes after which a stage gets another attempt, while retries last.
pub fn retryable(o: Outcome) -> bool {
    matches!(o, Outcome::Failed | Outcome::TimedOut | Outcome::Error)
}

impl StageProgress {
    /// The stage's final outcome, if no attempt of it is left to run.
    pub fn final_outcome(&self, retries: u32) -> Option<Outcome> {
        if self.open.is_some() {
            return None;
        }
        let o = self.last_outcome?;
        (!retryable(o) || self.finished > retries).then_some(o)
    }
}

/// The fold of a spool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resume {
    /// Per stage of the plan.
    pub stages: Vec<StageProgress>,
    /// The run already ended so.
    pub run_finished: Option<Outcome>,
    /// Agent clock of the first frame (the run's start, for the plan's timeout).
    pub first_at_ms: Option<u64>,
}

impl Resume {
    /// Folds spooled frames against the plan (frames naming unknown stages are ignored).
    pub fn fold(frames: &[Frame], plan: &Plan) -> Resume {
        let mut r = Resume {
            stages: vec![StageProgress::default(); plan.stages.len()],
            run_finished: None,
            first_at_ms: frames.first().map(|f| f.at_ms),
        };
        for f in frames {
            match &f.event {
                Event::StageStarted { stage, attempt } => {
                    if let Some(s) = r.stages.get_mut(*stage as usize) {
                        s.last_attempt = s.last_attempt.max(*attempt);
                        s.open = Some(*attempt);
                    }
                }
                Event::StageFinished {
                    stage,
                    attempt,
                    outcome,
                    ..
                } => {
                    if let Some(s) = r.stages.get_mut(*stage as usize) {
                        s.last_attempt = s.last_attempt.max(*attempt);
                        if s.open == Some(*attempt) {
                            s.open = None;
                        }
                        s.finished += 1;
                        s.last_outcome = Some(*outcome);
                    }
                }
                Event::RunFinished { outcome } => r.run_finished = Some(*outcome),
                _ => {}
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{Stage, StageKind};

    fn plan(n: usize) -> Plan {
        Plan {
            name: "p".into(),
            stages: (0..n)
                .map(|i| Stage {
                    retries: 1,
                    ..Stage::new(format!("s{i}"), StageKind::Exec { command: vec![] })
                })
                .collect(),
            fail_fast: false,
            timeout_s: 0,
        }
    }

    fn f(seq: u64, event: Event) -> Frame {
        Frame {
            seq,
            at_ms: 100 + seq,
            event,
        }
    }

    fn fin(seq: u64, stage: u16, attempt: u32, outcome: Outcome) -> Frame {
        f(
            seq,
            Event::StageFinished {
                stage,
                attempt,
                outcome,
                exit_code: None,
                duration_ms: 1,
                detail: String::new(),
            },
        )
    }

    #[test]
    fn folds_finished_retrying_and_interrupted_stages() {
        let frames = vec![
            f(
                1,
                Event::StageStarted {
                    stage: 0,
                    attempt: 1,
                },
            ),
            fin(2, 0, 1, Outcome::Passed),
            f(
                3,
                Event::StageStarted {
                    stage: 1,
                    attempt: 1,
                },
            ),
            fin(4, 1, 1, Outcome::Failed),
            f(
                5,
                Event::StageStarted {
                    stage: 2,
                    attempt: 1,
                },
            ),
        ];
        let r = Resume::fold(&frames, &plan(4));
        assert_eq!(r.first_at_ms, Some(101));
        assert_eq!(r.stages[0].final_outcome(1), Some(Outcome::Passed));
        // Failed once with one retry left: not final.
        assert_eq!(r.stages[1].final_outcome(1), None);
        assert_eq!(r.stages[1].final_outcome(0), Some(Outcome::Failed));
        assert_eq!(r.stages[2].open, Some(1));
        assert_eq!(r.stages[2].final_outcome(1), None);
        assert_eq!(r.stages[3], StageProgress::default());
        assert_eq!(r.run_finished, None);
    }
}
