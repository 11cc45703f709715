//! Plan files (TOML): the coordinator's plan compiler (`load_plan`: TOML, kinds,
//! durations, sizes, names, secrets, test folders packed into the CAS) in a lab.
//! A plan it accepts is signed into a ticket that the agent must accept.
//!
//! Sandbox: a plan's `tests` and `archive` paths are read from disk, so a mutated
//! path could pack any folder (`/`). Inputs naming a path outside the lab's
//! `tests/` and `plans/images/` are not compiled (counted as their own class).
use kiln_protocol::{SignedTicket, Ticket};
use std::path::{Component, Path, PathBuf};
use toml::Value;

use super::class;
use crate::fixtures::{self, Lab, NOW, RUN_PENDING};

/// The target.
pub struct Plan {
    lab: Lab,
    file: PathBuf,
    accepted: u64,
}

/// Copies the folder `from` to `to`, subfolders too (test folders have them).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read a test folder") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

impl Plan {
    /// Sets the target up: a lab with copies of `examples/tests/*` and an image
    /// archive beside the plan file.
    pub fn new() -> Self {
        let lab = Lab::new();
        let root = lab.dir.path();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tests");
        copy_tree(&examples, &root.join("tests"));
        std::fs::create_dir_all(root.join("plans/images")).expect("mkdir");
        std::fs::write(root.join("plans/images/tools.tar"), b"not really a tar\n")
            .expect("archive");
        Plan {
            file: root.join("plans/plan.toml"),
            accepted: 0,
            lab,
        }
    }

    /// Compiles `text` as the plan file (for seeds): the wire plan, if it compiles.
    pub fn compile(&self, text: &str) -> Option<kiln_protocol::Plan> {
        std::fs::write(&self.file, text).expect("writing the plan file");
        kiln_coordinator::plan::load_plan(&self.file, &self.lab.state, &self.lab.host)
            .ok()
            .map(|l| l.plan)
    }

    /// Whether every `tests`/`archive` string in the document stays in the lab's
    /// `tests/` or `plans/images/` (lexically; the lab has no symlinks).
    fn paths_stay_inside(text: &str) -> bool {
        fn inside(p: &str) -> bool {
            let mut at: Vec<&str> = vec!["plans"];
            for c in Path::new(p).components() {
                match c {
                    Component::Normal(n) => match n.to_str() {
                        Some(n) => at.push(n),
                        None => return false,
                    },
                    Component::CurDir => {}
                    Component::ParentDir => {
                        if at.pop().is_none() {
                            return false;
                        }
                    }
                    Component::RootDir | Component::Prefix(_) => return false,
                }
            }
            matches!(at.as_slice(), ["tests", ..] | ["plans", "images", ..])
        }
        fn walk(v: &Value, path_key: bool) -> bool {
            match v {
                Value::String(s) => !path_key || inside(s),
                Value::Array(a) => a.iter().all(|v| walk(v, path_key)),
                Value::Table(t) => t
                    .iter()
                    .all(|(k, v)| walk(v, path_key || k == "tests" || k == "archive")),
                _ => true,
            }
        }
        match text.parse::<toml::Table>() {
            Ok(t) => t
                .iter()
                .all(|(k, v)| walk(v, k == "tests" || k == "archive")),
            // Not TOML: the compiler stops at the same syntax error, reading nothing.
            Err(_) => true,
        }
    }
}

impl Default for Plan {
    fn default() -> Self {
        Plan::new()
    }
}

impl crate::Target for Plan {
    fn accepted(&self) -> u64 {
        self.accepted
    }

    fn run(&mut self, data: &[u8]) -> u64 {
        if let Ok(text) = std::str::from_utf8(data)
            && !Self::paths_stay_inside(text)
        {
            return crate::stable_hash("outside the sandbox");
        }
        std::fs::write(&self.file, data).expect("writing the plan file");
        let loaded =
            match kiln_coordinator::plan::load_plan(&self.file, &self.lab.state, &self.lab.host) {
                Ok(l) => l,
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(!e.contains('\n'), "plan error is not one line: {e}");
                    return class("plan", &e.split_once(": ").map_or(&*e, |(_, m)| m));
                }
            };
        for sha in &loaded.cas {
            assert!(
                self.lab.state.cas().has(sha),
                "plan names {sha}, not in the CAS"
            );
        }
        // What the coordinator compiles and signs, its agent must accept: `ticket
        // issue` signs only what passes the size rule, so what fails it is refused
        // there (one line, naming the limit) and never reaches an agent.
        let stages = loaded.plan.stages.len();
        let ticket: Ticket = fixtures::ticket(RUN_PENDING, loaded.plan);
        if let Err(e) = ticket.check_limits() {
            let e = e.to_string();
            assert!(!e.contains('\n'), "size-rule refusal is not one line: {e}");
            return class("limits", &e);
        }
        let file = SignedTicket::sign(&ticket, &fixtures::coordinator_key()).to_file();
        let trusted = [fixtures::coordinator_key().public()];
        if let Err(e) =
            kiln_agent::verify::check_ticket(&file, &trusted, NOW, &fixtures::host_info())
        {
            panic!("the agent refuses a ticket for a plan the coordinator compiled: {e}");
        }
        self.accepted += 1;
        crate::stable_hash(("ok", stages.min(8)))
    }
}
