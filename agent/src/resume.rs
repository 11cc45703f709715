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
    /// Attempts that finished (they count against `retries`); closes written by a
    /// restart are not counted.
    pub finished: u32,
    /// Outcome of the last finished attempt.
    pub last_outcome: Option<Outcome>,
}

/// The detail of the `error` close a restarted agent writes for the attempt it was
/// in when it died. Such a close ends the attempt but is no real finish: it neither
/// counts against `retries` nor decides the stage's outcome.
pub const INTERRUPTED: &str = "interrupted: the agent restarted";

/// Whether a `StageFinished` is the close a restart wrote (see [`INTERRUPTED`]).
pub fn is_restart_close(outcome: Outcome, exit_code: Option<i32>, detail: &str) -> bool {
    outcome == Outcome::Error && exit_code.is_none() && detail == INTERRUPTED
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
                    exit_code,
                    detail,
                    ..
                } => {
                    if let Some(s) = r.stages.get_mut(*stage as usize) {
                        s.last_attempt = s.last_attempt.max(*attempt);
                        if s.open == Some(*attempt) {
                            s.open = None;
                        }
                        if is_restart_close(*outcome, *exit_code, detail) {
                            continue;
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
            hold: Default::default(),
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

    fn started(seq: u64, stage: u16, attempt: u32) -> Frame {
        f(seq, Event::StageStarted { stage, attempt })
    }

    fn restart_close(seq: u64, stage: u16, attempt: u32) -> Frame {
        f(
            seq,
            Event::StageFinished {
                stage,
                attempt,
                outcome: Outcome::Error,
                exit_code: None,
                duration_ms: 0,
                detail: INTERRUPTED.into(),
            },
        )
    }

    #[test]
    fn a_restart_close_ends_the_attempt_but_is_no_finish() {
        // Killed in attempt 1; the restart closed it and died before attempt 2 began.
        let frames = vec![started(1, 0, 1), restart_close(2, 0, 1)];
        let r = Resume::fold(&frames, &plan(1));
        let s = &r.stages[0];
        assert_eq!((s.open, s.finished, s.last_outcome), (None, 0, None));
        assert_eq!(s.last_attempt, 1);
        assert_eq!(s.final_outcome(0), None, "the stage must run again");
    }

    #[test]
    fn restart_closes_consume_no_retry() {
        // Attempt 1 failed, attempt 2 was interrupted twice over: one retry is left.
        let frames = vec![
            started(1, 0, 1),
            fin(2, 0, 1, Outcome::Failed),
            started(3, 0, 2),
            restart_close(4, 0, 2),
            started(5, 0, 3),
            restart_close(6, 0, 3),
        ];
        let r = Resume::fold(&frames, &plan(1));
        let s = &r.stages[0];
        assert_eq!((s.finished, s.last_outcome), (1, Some(Outcome::Failed)));
        assert_eq!(s.last_attempt, 3);
        assert_eq!(s.final_outcome(1), None);
        assert_eq!(s.final_outcome(0), Some(Outcome::Failed));
        // A real `error` with the same detail but an exit code is a finish.
        let mut real = restart_close(7, 0, 4);
        if let Event::StageFinished { exit_code, .. } = &mut real.event {
            *exit_code = Some(1);
        }
        let r = Resume::fold(&[started(1, 0, 4), real], &plan(1));
        assert_eq!(r.stages[0].finished, 1);
    }
}
