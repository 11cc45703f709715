//! Valid inputs per target, made from the fixtures, the golden test values and the
//! example plans: `kiln-fuzz seed` writes them to `fuzz/corpus/<target>/seed-*`.
use kiln_protocol::{
    Ack, BUNDLE_MAGIC, Batch, Command, ResultRecord, RunId, SecretsRequest, Sha256, SignedTicket,
};
use std::path::Path;

use crate::fixtures::{
    self, MAC, NOW, RUN_CLAIMED, RUN_PENDING, agent_key, claim_frame, coordinator_key, run_frames,
    sealed, small_plan, ticket_file,
};
use crate::targets::http::BLOB;

/// The example plans (`examples/plans/*.toml`), by file stem.
pub fn example_plans() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plans");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("examples/plans")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "toml").then(|| {
                let stem = p.file_stem().expect("stem").to_string_lossy().into_owned();
                (stem, std::fs::read_to_string(&p).expect("example plan"))
            })
        })
        .collect();
    out.sort();
    out
}

/// Small plans for what the examples do not show: image archives, mounts, dotted
/// keys, every scalar spelling.
const EXTRA_PLANS: &[(&str, &str)] = &[
    (
        "archive-mounts",
        "name = \"x\"\n[[stage]]\nname = \"c\"\nkind = \"container\"\n\
         image = { archive = \"images/tools.tar\", name = \"localhost/tools:1\" }\n\
         command = \"true\"\ntests = \"../tests/smoke\"\nmemory = \"64M\"\ncpus = 0.5\n\
         secrets = [\"ssh-ci\"]\nenv = { A = 1, B = true, C = \"s\" }\n",
    ),
    (
        "dotted-matrix",
        "[[stage]]\nname = \"m\"\nkind = \"container\"\nmatrix.image = [\"a:1\", \"b:1\"]\n\
         matrix.LEVEL = [\"1\", \"2\"]\ncommand = [\"sh\", \"-c\", \"true\"]\n",
    ),
    (
        "exec-minimal",
        "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\n",
    ),
    (
        "two-stages-options",
        "name = 'opts'\nfail_fast = false\ntimeout = \"1h30m\"\n\
         [[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = [\"true\"]\nretries = 2\n\
         continue_on_failure = true\ndestructive = false\ntimeout = \"90s\"\n\
         [[stage]]\nname = \"b\"\nkind = \"inventory\"\n",
    ),
];

/// Every plan seed (examples first), by name.
pub fn plan_texts() -> Vec<(String, String)> {
    let mut out = example_plans();
    out.extend(
        EXTRA_PLANS
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string())),
    );
    out
}

/// The seeds of `target`, by name.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let s = |n: &str, b: Vec<u8>| (n.to_string(), b);
    match target {
        "ticket" => {
            let mut v = vec![
                s("small", ticket_file(RUN_PENDING, small_plan())),
                s("claimed-run", ticket_file(RUN_CLAIMED, small_plan())),
            ];
            // Tickets of every example plan, compiled by the coordinator.
            let plans = crate::targets::plan::Plan::new();
            for (name, text) in plan_texts() {
                if let Some(plan) = plans.compile(&text) {
                    v.push(s(&format!("plan-{name}"), ticket_file(RUN_PENDING, plan)));
                }
            }
            let mut other = fixtures::ticket(RUN_PENDING, small_plan());
            other.host.macs.clear();
            other.coordinator = None;
            v.push(s(
                "offline-serial-only",
                SignedTicket::sign(&other, &coordinator_key()).to_file(),
            ));
            v
        }
        "batch" => {
            let all = {
                let mut f = vec![claim_frame()];
                f.extend(run_frames(2, BLOB));
                f
            };
            vec![
                s("claim", sealed(RUN_PENDING, vec![claim_frame()])),
                s("whole-run", sealed(RUN_PENDING, all)),
                s("claimed-rest", sealed(RUN_CLAIMED, run_frames(2, BLOB))),
                s("claimed-resend", sealed(RUN_CLAIMED, vec![claim_frame()])),
                s("heartbeat", sealed(RUN_CLAIMED, vec![])),
                s(
                    "golden-empty",
                    Batch {
                        run: RunId([1; 16]),
                        frames: vec![],
                    }
                    .seal(&agent_key()),
                ),
                s(
                    "secrets-request",
                    SecretsRequest {
                        run: RUN_CLAIMED,
                        names: vec!["ssh-ci".into()],
                        at_ms: NOW * 1000,
                    }
                    .seal(&agent_key()),
                ),
            ]
        }
        "ack" => {
            let ack = |upto, command| {
                Ack {
                    run: RUN_CLAIMED,
                    upto,
                    command,
                }
                .seal(&coordinator_key(), &agent_key().public())
            };
            vec![
                s("continue", ack(5, Command::Continue)),
                s(
                    "abort",
                    ack(
                        300,
                        Command::Abort {
                            reason: "no".into(),
                        },
                    ),
                ),
                s("shutdown", ack(u64::MAX, Command::Shutdown)),
                s("retry", ack(1, Command::RetryStage { stage: 3 })),
                s(
                    "secrets-reply",
                    postcard::to_allocvec(&vec![("ssh-ci".to_string(), b"key".to_vec())])
                        .expect("reply"),
                ),
            ]
        }
        "bundle" => {
            let ticket = |run| {
                let file = ticket_file(run, small_plan());
                ResultRecord::Ticket(SignedTicket::from_file(&file).expect("fixture ticket"))
                    .encode()
            };
            let mut frames = vec![claim_frame()];
            frames.extend(run_frames(2, BLOB));
            let whole = |blob: bool| {
                let mut b = BUNDLE_MAGIC.to_vec();
                b.extend(ticket(RUN_PENDING));
                if blob {
                    b.extend(ResultRecord::Blob(BLOB.to_vec()).encode());
                }
                b.extend(ResultRecord::Batch(sealed(RUN_PENDING, frames[..3].to_vec())).encode());
                b.extend(ResultRecord::Batch(sealed(RUN_PENDING, frames[3..].to_vec())).encode());
                b
            };
            let mut ticket_only = BUNDLE_MAGIC.to_vec();
            ticket_only.extend(ticket(RUN_CLAIMED));
            vec![
                s("whole-run", whole(true)),
                s("blob-missing", whole(false)),
                s("ticket-only", ticket_only),
            ]
        }
        "plan" => plan_texts()
            .into_iter()
            .map(|(n, t)| (n, t.into_bytes()))
            .collect(),
        "http" => {
            let sha = Sha256::of(BLOB);
            let (a, b) = (RUN_PENDING, RUN_CLAIMED);
            let reqs = [
                ("index", "GET\n/".to_string()),
                ("boot", "GET\n/boot.ipxe".into()),
                (
                    "ipxe",
                    format!(
                        "GET\n/ipxe/{}\n\n\n10.0.0.1:7373",
                        MAC.to_string().replace(':', "-")
                    ),
                ),
                (
                    "ipxe-escaped",
                    format!("GET\n/ipxe/{}", MAC.to_string().replace(':', "%3A")),
                ),
                ("cas", format!("GET\n/cas/{sha}")),
                ("cas-range", format!("GET\n/cas/{sha}\nbytes=0-3")),
                (
                    "cas-suffix-etag",
                    format!("GET\n/cas/{sha}\nbytes=-5\n\"{sha}\""),
                ),
                (
                    "cas-open-weak",
                    format!("HEAD\n/cas/{sha}\nbytes=4-\nW/\"x\", *"),
                ),
                ("run-page", format!("GET\n/runs/{b}")),
                ("runs", "GET\n/v1/runs".into()),
                ("run-json", format!("GET\n/v1/runs/{a}?x=1#y")),
                ("run-ticket", format!("GET\n/v1/runs/{a}/ticket")),
                ("events", format!("POST\n/v1/runs/{b}/events")),
                ("secrets", format!("POST\n/v1/runs/{b}/secrets")),
                ("upload", format!("PUT\n/v1/runs/{b}/artifacts/{sha}")),
                ("host-ticket", format!("GET\n/v1/hosts/{MAC}/ticket")),
                ("wrong-method", "DELETE\n/v1/runs".into()),
            ];
            reqs.into_iter()
                .map(|(n, r)| (n.to_string(), r.into_bytes()))
                .collect()
        }
        _ => Vec::new(),
    }
}
