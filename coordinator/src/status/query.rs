//! Status queries over the state folder: every run's status, and the summaries of
//! `runs --json` and `GET /v1/runs`.
use anyhow::Result;
use kiln_protocol::PublicKey;
use serde::{Deserialize, Serialize};

use super::{RunState, RunStatus, current};
use crate::state::State;
use crate::store::{Corruption, RunDir};

/// A run's headline, as listed (`runs`, `GET /v1/runs`, the index page): the
/// fields of its [`RunStatus`] a listing shows, owned, so a finished run's summary
/// can be kept in its folder (`summary.json`) and listed without folding its log.
/// Serialized in this field order (the `GET /v1/runs` shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Run id (32 hex digits).
    pub run: String,
    /// Plan name.
    pub plan: String,
    /// Host name of the ticket's binding.
    pub host: String,
    /// Life-cycle state.
    pub state: RunState,
    /// The outcome once the run finished.
    pub outcome: Option<String>,
    /// The agent-like exit status once the run ended.
    pub exit_status: Option<i32>,
    /// Frames stored.
    pub frames: u64,
    /// Stages in the plan.
    pub stages: usize,
    /// Stages with at least one attempt.
    pub stages_done: usize,
    /// Ticket issue time, unix seconds.
    pub issued_at: u64,
    /// Ticket expiry, unix seconds.
    pub expires_at: u64,
    /// Coordinator clock of the last batch, unix ms.
    pub last_seen_ms: Option<u64>,
    /// The first corrupt record of events.log, when state is `corrupt`.
    pub corrupt: Option<Corruption>,
    /// A contested claim waits for an operator.
    pub contested: bool,
}

impl From<&RunStatus> for Summary {
    fn from(s: &RunStatus) -> Self {
        Summary {
            run: s.run.clone(),
            plan: s.plan.clone(),
            host: s.host.clone(),
            state: s.state,
            outcome: s.outcome.map(str::to_string),
            exit_status: s.exit_status,
            frames: s.frames,
            stages: s.stages.len(),
            stages_done: s.stages.iter().filter(|st| st.attempts > 0).count(),
            issued_at: s.issued_at,
            expires_at: s.expires_at,
            last_seen_ms: s.last_seen_ms,
            corrupt: s.corrupt.clone(),
            contested: s.contested,
        }
    }
}

impl From<RunStatus> for Summary {
    fn from(s: RunStatus) -> Self {
        Summary::from(&s)
    }
}

/// Every readable run's status, in run id order; broken run folders are logged and
/// left out.
pub fn statuses(state: &State, key: &PublicKey) -> Result<Vec<RunStatus>> {
    let mut out = Vec::new();
    for id in state.run_ids()? {
        let rd = RunDir::new(state, id);
        if !rd.exists() {
            continue;
        }
        match current(&rd, key) {
            Ok(s) => out.push(s),
            Err(e) => log::warn!("{e:#}"),
        }
    }
    Ok(out)
}

/// Every run's summary, oldest first.
pub fn summaries(state: &State, key: &PublicKey) -> Result<Vec<Summary>> {
    let mut list: Vec<Summary> = statuses(state, key)?.iter().map(Summary::from).collect();
    list.sort_by(|a, b| (a.issued_at, &a.run).cmp(&(b.issued_at, &b.run)));
    Ok(list)
}
