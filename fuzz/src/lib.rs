//! kiln's fuzz targets: one per decoder of untrusted bytes, a seed corpus, and a
//! mutation runner that needs nothing but stable Rust.
//!
//! Each target is a `run(&[u8])` over the real code (the agent's ticket check, the
//! coordinator's batch ingest, bundle check, plan compiler and HTTP router, the
//! protocol decoders); a panic is a crash. The runner ([`run::fuzz`]) mutates the kept
//! corpus (`fuzz/corpus/<target>/`) with byte-level and dictionary mutations,
//! deterministically from a seed, and keeps inputs that reach an outcome no earlier
//! input reached in its live corpus (a coarse, coverage-free feedback). Structure-aware
//! steps live in the targets: tickets, bundles and batches that still decode are,
//! for some inputs, signed again with the trusted key, so the code behind the
//! signature checks gets fuzzed too. `fuzz/README.md` says how to run them.
#![warn(missing_docs)]
use std::hash::{Hash, Hasher};

pub mod fixtures;
pub mod mutate;
pub mod run;
pub mod seeds;
pub mod targets;

/// A fuzz target: one input in, a coarse outcome class out; any panic is a crash.
pub trait Target {
    /// Runs one input through the decoder(s). The returned class groups outcomes
    /// (accepted, refused and why, in a few words); an input that reaches a new
    /// class joins the runner's live corpus.
    fn run(&mut self, data: &[u8]) -> u64;

    /// How many inputs so far got all the way through: accepted by the deepest
    /// check the target drives (a ticket the agent accepts, a batch acked, a plan
    /// compiled, a request answered below 400).
    fn accepted(&self) -> u64;
}

/// Every target, by name (also the folder names under `fuzz/corpus/`).
pub const TARGETS: &[&str] = &["ticket", "batch", "ack", "bundle", "plan", "http"];

/// The target named `name`, set up (temporary state folders included).
pub fn target(name: &str) -> Option<Box<dyn Target>> {
    Some(match name {
        "ticket" => Box::new(targets::ticket::Ticket::new()),
        "batch" => Box::new(targets::batch::Batch::new()),
        "ack" => Box::new(targets::ack::Ack::default()),
        "bundle" => Box::new(targets::bundle::Bundle::new()),
        "plan" => Box::new(targets::plan::Plan::new()),
        "http" => Box::new(targets::http::Http::new()),
        _ => return None,
    })
}

/// Largest input the runner makes for a target (each format's own caps are larger
/// or checked by the target itself).
pub fn max_len(name: &str) -> usize {
    match name {
        "plan" | "http" => 16 << 10,
        _ => 64 << 10,
    }
}

/// Tokens the mutator inserts for a target: magics, keywords, separators.
pub fn dictionary(name: &str) -> &'static [&'static [u8]] {
    match name {
        "ticket" => &[
            b"KILNTKT\x01",
            b"\xff\xff\xff\xff\x0f",
            b"\x80\x80\x80\x80\x10",
        ],
        "bundle" => &[
            b"KILNRES\x01",
            b"\x00",
            b"\x01\x00",
            b"\xff\xff\xff\xff\x0f",
        ],
        "batch" | "ack" => &[
            b"\x00",
            b"\x01",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        ],
        "plan" => &[
            b"[[stage]]\n",
            b"name = \"x\"\n",
            b"kind = \"",
            b"exec",
            b"container",
            b"ssh",
            b"smart",
            b"cpu_stress",
            b"storage",
            b"network",
            b"gpu",
            b"inventory",
            b"matrix.image = [\"a:1\"]\n",
            b"image = { archive = \"images/tools.tar\", name = \"t:1\" }\n",
            b"tests = \"../tests/smoke\"\n",
            b"timeout = \"",
            b"1h",
            b"0s",
            b"99999999999999999999d",
            b"memory = \"",
            b"18446744073709551615G",
            b"env = { A = 1 }\n",
            b"secrets = [\"ssh-ci\"]\n",
            b"= ",
            b"\"",
            b"'''",
            b"[",
            b"]",
            b"{",
            b"}",
            b".",
            b",",
            b"\n",
            b"-1",
            b"1e999",
            b"nan",
            b"true",
            b"\\u0000",
        ],
        "http" => &[
            b"/",
            b"/v1/runs/",
            b"/cas/",
            b"/ipxe/",
            b"/v1/hosts/",
            b"/ticket",
            b"/events",
            b"/secrets",
            b"/artifacts/",
            b"%3A",
            b"%3a",
            b"?",
            b"#",
            b"\n",
            b"bytes=",
            b"-",
            b",",
            b"W/",
            b"*",
            b"18446744073709551615",
            b"18446744073709551616",
            b"0",
            b"11111111111111111111111111111111",
        ],
        _ => &[],
    }
}

/// A stable hash of anything hashable (the std SipHash with fixed keys), for
/// outcome classes and per-input choices that must not depend on the run.
pub fn stable_hash(v: impl Hash) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    v.hash(&mut h);
    h.finish()
}
