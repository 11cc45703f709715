//! Plan files (TOML) to wire plans: durations, test folders into the CAS, policy checks.
