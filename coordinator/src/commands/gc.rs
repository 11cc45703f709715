//! `gc`: retention of finished runs and unreferenced CAS objects.
use anyhow::Result;
use argh::FromArgs;

use crate::exit;
use crate::gc::{Policy, Report, collect};
use crate::state::State;
use crate::units::parse_duration;

/// Remove old finished runs and the CAS objects nothing refers to any more.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "gc")]
pub struct GcCmd {
    /// keep runs that passed this long after they ended (default 30d)
    #[argh(option, default = "String::from(\"30d\")")]
    pub keep: String,
    /// keep runs that did not pass (failed, error, aborted, expired) this long
    /// (default 90d)
    #[argh(option, default = "String::from(\"90d\")")]
    pub keep_failed: String,
    /// keep every CAS object younger than this, referenced or not (default 1h)
    #[argh(option, default = "String::from(\"1h\")")]
    pub cas_min_age: String,
    /// print what would go; change nothing
    #[argh(switch)]
    pub dry_run: bool,
}

impl GcCmd {
    /// The policy its flags name.
    pub fn policy(&self) -> Result<Policy> {
        let d =
            |v: &str, flag: &str| parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"));
        Ok(Policy {
            keep_s: d(&self.keep, "keep")?,
            keep_failed_s: d(&self.keep_failed, "keep-failed")?,
            cas_min_age_s: d(&self.cas_min_age, "cas-min-age")?,
        })
    }
}

/// One line per removed run, then the totals.
pub fn summary(r: &Report, dry: bool) -> String {
    let verb = if dry { "would remove" } else { "removed" };
    let mut out = String::new();
    for id in &r.runs {
        out.push_str(&format!("{verb} run {id}\n"));
    }
    out.push_str(&format!(
        "{verb} {} runs ({}) and {} CAS objects ({}); {} live runs kept\n",
        r.runs.len(),
        mib(r.run_bytes),
        r.objects,
        mib(r.object_bytes),
        r.live
    ));
    out
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// `gc`.
pub fn cmd_gc(state: &State, c: &GcCmd) -> Result<i32> {
    let r = collect(state, &c.policy()?, c.dry_run)?;
    print!("{}", summary(&r, c.dry_run));
    Ok(exit::OK)
}
