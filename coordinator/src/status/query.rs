//! Status queries over the state folder: every run's status, and the summaries of
//! `runs --json` and `GET /v1/runs`.
use anyhow::Result;
use kiln_protocol::PublicKey;
use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::{RunStatus, current};
use crate::state::State;
use crate::store::RunDir;

/// One line of `runs --json` and `GET /v1/runs`: a view of a [`RunStatus`] that
/// serializes only its headline fields (run, plan, host, state, outcome,
/// exit_status, frames, stages, stages_done, issued_at, expires_at, last_seen_ms,
/// corrupt, contested), stages as counts.
#[derive(Debug, Clone)]
pub struct Summary(pub RunStatus);

impl Summary {
    /// The run's status.
    pub fn status(&self) -> &RunStatus {
        &self.0
    }

    /// Stages with at least one finished attempt.
    pub fn stages_done(&self) -> usize {
        self.0.stages.iter().filter(|st| st.attempts > 0).count()
    }
}

impl From<RunStatus> for Summary {
    fn from(s: RunStatus) -> Self {
        Summary(s)
    }
}

impl Serialize for Summary {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let s = &self.0;
        let mut m = ser.serialize_struct("Summary", 14)?;
        m.serialize_field("run", &s.run)?;
        m.serialize_field("plan", &s.plan)?;
        m.serialize_field("host", &s.host)?;
        m.serialize_field("state", &s.state)?;
        m.serialize_field("outcome", &s.outcome)?;
        m.serialize_field("exit_status", &s.exit_status)?;
        m.serialize_field("frames", &s.frames)?;
        m.serialize_field("stages", &s.stages.len())?;
        m.serialize_field("stages_done", &self.stages_done())?;
        m.serialize_field("issued_at", &s.issued_at)?;
        m.serialize_field("expires_at", &s.expires_at)?;
        m.serialize_field("last_seen_ms", &s.last_seen_ms)?;
        m.serialize_field("corrupt", &s.corrupt)?;
        m.serialize_field("contested", &s.contested)?;
        m.end()
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
    let mut list: Vec<Summary> = statuses(state, key)?.into_iter().map(Summary).collect();
    list.sort_by(|a, b| (a.0.issued_at, &a.0.run).cmp(&(b.0.issued_at, &b.0.run)));
    Ok(list)
}
