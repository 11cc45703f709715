//! Terminal progress on stderr: one line as a stage starts, one as it ends.
use kiln_protocol::Outcome;
use std::time::Duration;

/// Prints `[i/n] name …` lines.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    n: usize,
}

/// `3.2s`, `1m05s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

impl Progress {
    /// Progress over `n` stages.
    pub fn new(n: usize) -> Self {
        Progress { n }
    }

    /// An attempt starts.
    pub fn start(&self, i: usize, name: &str, kind: &str, attempt: u32) {
        let again = if attempt > 1 {
            format!(", attempt {attempt}")
        } else {
            String::new()
        };
        eprintln!("[{}/{}] {name} ({kind}{again}) …", i + 1, self.n);
    }

    /// An attempt ended and another follows.
    pub fn retry(&self, i: usize, name: &str, outcome: Outcome, detail: &str) {
        eprintln!(
            "[{}/{}] {name} … {outcome} ({detail}), retrying",
            i + 1,
            self.n
        );
    }

    /// The stage ended.
    pub fn end(
        &self,
        i: usize,
        name: &str,
        outcome: Outcome,
        detail: &str,
        took: Duration,
        last_attempt: u32,
    ) {
        let attempts = if last_attempt > 1 {
            format!(", {last_attempt} attempts")
        } else {
            String::new()
        };
        let why = if outcome.is_ok() || detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        eprintln!(
            "[{}/{}] {name} … {outcome} ({}{attempts}){why}",
            i + 1,
            self.n,
            human(took)
        );
    }

    /// A stage a previous start already finished.
    pub fn resumed(&self, i: usize, name: &str, outcome: Outcome) {
        eprintln!("[{}/{}] {name} … {outcome} (before restart)", i + 1, self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(3200)), "3.2s");
        assert_eq!(human(Duration::from_secs(65)), "1m05s");
    }
}
