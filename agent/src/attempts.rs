//! Stages in plan order: a fresh folder per attempt with the test bundle unpacked,
//! per-attempt and whole-run timeouts, retries, fail_fast, artifacts, progress lines.
use kiln_protocol::{Event, HostBinding, Outcome, Plan, RunId, Stage, TestBundle};
use smol::future::FutureExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::progress::Progress;
use crate::reporter::{Control, Reporter};
use crate::resume::{Resume, retryable};
use crate::stages::ctx::{Sink, StageCtx, StageResult, Stop, StopSignal};
use crate::stages::run_stage;

/// What the stage loop works with.
#[derive(Clone)]
pub struct Attempts<'a> {
    /// The run.
    pub run: RunId,
    /// The plan.
    pub plan: &'a Plan,
    /// The ticket's host binding.
    pub host: &'a HostBinding,
    /// The work folder.
    pub work: &'a Path,
    /// Where frames go.
    pub reporter: Arc<Reporter>,
    /// Abort and shutdown orders.
    pub control: &'a Control,
    /// Secrets by name (those the coordinator or `--secret` gave).
    pub secrets: &'a BTreeMap<String, Vec<u8>>,
    /// What a previous start already did.
    pub resume: &'a Resume,
    /// The whole run's deadline, if the plan has a timeout.
    pub deadline: Option<Instant>,
}

/// A folder name for a stage: its index and name with unsafe characters replaced.
pub fn stage_folder(index: usize, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{index}-{clean}")
}

impl Attempts<'_> {
    /// Runs the stages; returns the folded outcome of their final outcomes.
    pub async fn run(&self) -> Outcome {
        let n = self.plan.stages.len();
        let progress = Progress::new(n);
        let mut worst = Outcome::Passed;
        for (i, stage) in self.plan.stages.iter().enumerate() {
            let o = match self.resume.stages[i].final_outcome(stage.retries) {
                Some(o) => {
                    progress.resumed(i, &stage.name, o);
                    o
                }
                None => {
                    if self.control.aborted().is_some() || self.run_expired() {
                        break;
                    }
                    self.stage(i, stage, &progress).await
                }
            };
            worst = worst.worst(o);
            if o == Outcome::Aborted || self.control.aborted().is_some() {
                return Outcome::Aborted;
            }
            if self.run_expired() {
                return worst.worst(Outcome::TimedOut);
            }
            if !o.is_ok() && self.plan.fail_fast && !stage.continue_on_failure {
                break;
            }
        }
        if self.control.aborted().is_some() {
            return Outcome::Aborted;
        }
        if self.run_expired() && worst.is_ok() {
            return Outcome::TimedOut;
        }
        worst
    }

    fn run_expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// One more attempt of stage `i`, numbered `attempt`, for a held run (`retry`,
    /// `approve`: disks with a serial in `approved` pass the wipe gate); returns its
    /// outcome. Every earlier attempt stays as it was.
    pub async fn again(&self, i: usize, attempt: u32, approved: Vec<String>) -> Outcome {
        let Some(stage) = self.plan.stages.get(i) else {
            return Outcome::Error;
        };
        let progress = Progress::new(self.plan.stages.len());
        progress.start(i, &stage.name, stage.kind.name(), attempt);
        let t0 = Instant::now();
        let r = self.attempt_with(i, stage, attempt, approved).await;
        let took = t0.elapsed();
        self.reporter.emit(Event::StageFinished {
            stage: i as u16,
            attempt,
            outcome: r.outcome,
            exit_code: r.exit_code,
            duration_ms: took.as_millis() as u64,
            detail: r.detail.clone(),
        });
        progress.end(i, &stage.name, r.outcome, &r.detail, took, attempt);
        r.outcome
    }

    /// Every attempt of one stage; returns its final outcome.
    async fn stage(&self, i: usize, stage: &Stage, progress: &Progress) -> Outcome {
        let prior = &self.resume.stages[i];
        let mut attempt = prior.last_attempt + 1;
        let mut left = (stage.retries + 1).saturating_sub(prior.finished).max(1);
        let mut total = Duration::ZERO;
        loop {
            progress.start(i, &stage.name, stage.kind.name(), attempt);
            let t0 = Instant::now();
            let r = self.attempt(i, stage, attempt).await;
            let took = t0.elapsed();
            total += took;
            left -= 1;
            self.reporter.emit(Event::StageFinished {
                stage: i as u16,
                attempt,
                outcome: r.outcome,
                exit_code: r.exit_code,
                duration_ms: took.as_millis() as u64,
                detail: r.detail.clone(),
            });
            let again = retryable(r.outcome)
                && left > 0
                && self.control.aborted().is_none()
                && !self.run_expired();
            if !again {
                progress.end(i, &stage.name, r.outcome, &r.detail, total, attempt);
                return r.outcome;
            }
            progress.retry(i, &stage.name, r.outcome, &r.detail);
            attempt += 1;
        }
    }

    /// One attempt: folder, tests, secrets, the stage under its timeout, artifacts.
    async fn attempt(&self, i: usize, stage: &Stage, attempt: u32) -> StageResult {
        self.attempt_with(i, stage, attempt, Vec::new()).await
    }

    /// [`Attempts::attempt`] with disks approved past the wipe gate by serial.
    async fn attempt_with(
        &self,
        i: usize,
        stage: &Stage,
        attempt: u32,
        approved: Vec<String>,
    ) -> StageResult {
        let index = i as u16;
        self.reporter.emit(Event::StageStarted {
            stage: index,
            attempt,
        });
        let base = self.work.join("stages").join(stage_folder(i, &stage.name));
        let dir = base.join(attempt.to_string());
        let stop = StopSignal::default();
        self.control.arm(&stop);
        let mut ctx = StageCtx {
            run: self.run,
            index,
            stage: stage.clone(),
            host: self.host.clone(),
            attempt,
            dir: dir.clone(),
            tests_tar: None,
            secrets: BTreeMap::new(),
            sink: self.reporter.clone() as Arc<dyn Sink>,
            stop: stop.clone(),
            approved,
        };
        crate::stages::groups::kill_leftover_groups(&base);
        scrub_secrets(&base);
        if let Err(e) = fresh_dir(&dir) {
            return StageResult::error(format!("stage folder {}: {e}", dir.display()));
        }
        for name in &stage.secrets {
            match self.secrets.get(name) {
                Some(v) => {
                    ctx.secrets.insert(name.clone(), v.clone());
                }
                None => return StageResult::error(format!("secret {name:?} is not available")),
            }
        }
        if let Some(tests) = &stage.tests {
            match prepare_tests(&ctx, tests).await {
                Ok(tar) => ctx.tests_tar = Some(tar),
                Err(e) => return StageResult::error(e),
            }
        }
        let (limit, by_run) = self.limit(stage);
        let timer = async {
            match limit {
                Some(at) => {
                    smol::Timer::at(at).await;
                }
                None => std::future::pending::<()>().await,
            }
            stop.fire(Stop::Timeout);
            std::future::pending::<StageResult>().await
        };
        let mut r = run_stage(&ctx).or(timer).await;
        if r.outcome == Outcome::TimedOut && by_run && stop.reason() == Some(Stop::Timeout) {
            r.detail = format!("run timed out after {}s", self.plan.timeout_s);
        }
        if let Err(e) = ctx.artifacts_from_dir(&dir.join("artifacts")).await {
            ctx.note(&format!("storing artifacts failed: {e}"));
            if r.outcome.is_ok() {
                r = StageResult::error(format!("storing artifacts failed: {e}"));
            }
        }
        r
    }

    /// When this attempt must stop, and whether that is the run's deadline.
    fn limit(&self, stage: &Stage) -> (Option<Instant>, bool) {
        // A timeout too large for the clock is no limit (never a panic).
        let own = (stage.timeout_s > 0)
            .then(|| Instant::now().checked_add(Duration::from_secs(stage.timeout_s)))
            .flatten();
        match (own, self.deadline) {
            (Some(a), Some(d)) if d < a => (Some(d), true),
            (Some(a), _) => (Some(a), false),
            (None, Some(d)) => (Some(d), true),
            (None, None) => (None, false),
        }
    }
}

/// An empty folder at `dir` (a leftover from an interrupted start is removed).
/// Removes the secret material earlier attempts of a stage may have left in `base`
/// (an agent killed mid-stage never cleans up): exec's `.secrets-*` folders and the
/// ssh stage's `.kiln-ssh-*` key folders inside attempt folders. Best effort.
/// What a killed start left in the stage folders of `plan` under `work`: its
/// stages' process groups killed, secret files removed. For a restart that starts
/// no attempt (an expired ticket's), which would otherwise leave them running.
pub fn settle_leftovers(work: &Path, plan: &kiln_protocol::Plan) {
    for (i, stage) in plan.stages.iter().enumerate() {
        let base = work.join("stages").join(stage_folder(i, &stage.name));
        crate::stages::groups::kill_leftover_groups(&base);
        scrub_secrets(&base);
    }
}

fn scrub_secrets(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".secrets-") {
            let _ = std::fs::remove_dir_all(e.path());
        } else if let Ok(inner) = std::fs::read_dir(e.path()) {
            for i in inner.flatten() {
                if i.file_name().to_string_lossy().starts_with(".kiln-ssh-") {
                    let _ = std::fs::remove_dir_all(i.path());
                }
            }
        }
    }
}

fn fresh_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)
}

/// Fetches the stage's test bundle (sha-checked), unpacks it into the stage folder
/// and checks the tree hash; returns the tar's path.
async fn prepare_tests(ctx: &StageCtx, tests: &TestBundle) -> Result<PathBuf, String> {
    let tar = ctx
        .fetch_cas(&tests.sha256)
        .await
        .map_err(|e| format!("test bundle: {e}"))?;
    let dir = ctx.dir.clone();
    let (t, want) = (tar.clone(), tests.tree);
    smol::unblock(move || {
        let f = std::fs::File::open(&t).map_err(|e| format!("test bundle: {e}"))?;
        kiln_protocol::tree::unpack(std::io::BufReader::new(f), &dir)
            .map_err(|e| format!("unpacking test bundle: {e}"))?;
        let got = kiln_protocol::tree::tree_hash(&dir).map_err(|e| format!("test bundle: {e}"))?;
        if got != want {
            return Err(format!(
                "test bundle tree hash is {got}, ticket says {want}"
            ));
        }
        Ok(())
    })
    .await?;
    Ok(tar)
}

#[cfg(test)]
mod tests {
    #[test]
    fn scrub_removes_secret_folders_of_earlier_attempts_only() {
        let d = tempfile::tempdir().expect("tempdir");
        let b = d.path();
        for p in [
            ".secrets-1/tok",
            "1/.kiln-ssh-ab/id",
            "1/artifacts/a",
            "1/run.sh",
        ] {
            let f = b.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, "x").unwrap();
        }
        super::scrub_secrets(b);
        assert!(!b.join(".secrets-1").exists());
        assert!(!b.join("1/.kiln-ssh-ab").exists());
        assert!(b.join("1/artifacts/a").exists() && b.join("1/run.sh").exists());
        super::scrub_secrets(&b.join("missing"));
    }
}
