//! Upload limits and the claim check: what `serve` and `import` enforce, read from
//! the environment and flags.
use anyhow::Result;

/// Default cap on one artifact upload (`KILN_ARTIFACT_CAP` overrides, e.g. `64M`).
pub const DEFAULT_ARTIFACT_CAP: u64 = 1 << 30;
/// Default cap on all uploads of one run (`KILN_RUN_ARTIFACT_QUOTA` overrides).
pub const DEFAULT_RUN_QUOTA: u64 = 4 << 30;

/// Upload limits and the claim check.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest single upload, bytes.
    pub artifact_cap: u64,
    /// Most bytes all uploads of one run may take.
    pub run_quota: u64,
    /// The neighbour-table check of claims (`serve --claim-check`).
    pub claim_check: crate::neigh::ClaimCheck,
    /// Pages and the JSON API readable without a login (`serve --public-read`).
    pub public_read: bool,
}

impl Limits {
    /// `KILN_ARTIFACT_CAP` and `KILN_RUN_ARTIFACT_QUOTA`, else the defaults.
    pub fn from_env() -> Result<Limits> {
        Ok(Limits {
            artifact_cap: size_env("KILN_ARTIFACT_CAP", DEFAULT_ARTIFACT_CAP)?,
            run_quota: size_env("KILN_RUN_ARTIFACT_QUOTA", DEFAULT_RUN_QUOTA)?,
            claim_check: Default::default(),
            public_read: false,
        })
    }
}

/// A size from the environment variable `name` (`64M`, `4G`), else `default`.
fn size_env(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => crate::units::parse_size(&v).map_err(|e| anyhow::anyhow!("{name}: {e}")),
        Err(_) => Ok(default),
    }
}
