//! Offline runs: `kiln-agent run --out BUNDLE` with no coordinator, then `import`;
//! the imported run reads as the online one, a second import changes nothing, and a
//! bundle with one tampered byte is refused whole.
use crate::common::*;
use crate::runs::{Fx, expected_outcomes, outcomes_plan, s, wait_exit};
use serde_json::Value;
use std::time::Duration;

/// `run show --json` without what differs between two runs of one plan: the run id,
/// clock values (`*_ms`, `*_at`), durations and the claim (its source and key).
fn comparable(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| {
                    !(k.ends_with("_ms")
                        || k.ends_with("_at")
                        || k == "run"
                        || k == "claim"
                        || k == "claim_events")
                });
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// A plan whose first stage runs a shipped test folder (a CAS bundle), then the
/// outcomes plan's stages.
fn plan_with_tests(fx: &Fx, marker: &str) -> String {
    write(
        &fx.dir,
        "tests/smoke/run.sh",
        "#!/bin/sh\necho \"smoke $(cat data.txt)\"\nmkdir -p artifacts\ncp data.txt artifacts/\n",
    );
    write(&fx.dir, "tests/smoke/data.txt", "42\n");
    let mut perm = std::fs::metadata(fx.dir.join("tests/smoke/run.sh"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(fx.dir.join("tests/smoke/run.sh"), perm).unwrap();
    let base = outcomes_plan(&fx.dir.join(marker));
    let (head, rest) = base.split_once("[[stage]]").unwrap();
    format!(
        "{head}[[stage]]\nname = \"smoke\"\nkind = \"exec\"\ncommand = [\"./run.sh\"]\n\
         tests = \"tests/smoke\"\n\n[[stage]]{rest}"
    )
}

#[test]
fn an_offline_bundle_imports_like_the_online_run() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);

    // Online.
    let online_plan = fx.plan("online.toml", &plan_with_tests(&fx, "online.marker"));
    let online = fx.issue(&online_plan, Some(&server.url), None);
    let t = fx.state.join("runs").join(&online).join("ticket.kiln");
    let mut a = fx.spawn_agent(s(&t), &fx.dir.join("work-online"), &[]);
    assert_eq!(wait_exit(&mut a, Duration::from_secs(120)), 1);

    // Offline: a ticket file with its CAS folder beside it, no coordinator URL.
    let offline_plan = fx.plan("offline.toml", &plan_with_tests(&fx, "offline.marker"));
    let ticket = fx.dir.join("offline.kiln");
    let offline = fx.issue(&offline_plan, None, Some(&ticket));
    assert!(fx.dir.join("offline.kiln.cas").is_dir());
    let bundle = fx.dir.join("result.kiln");
    let mut a = fx.spawn_agent(
        s(&ticket),
        &fx.dir.join("work-offline"),
        &["--out", s(&bundle)],
    );
    assert_eq!(wait_exit(&mut a, Duration::from_secs(120)), 1);
    assert_eq!(
        fx.show(&offline)["state"],
        "pending",
        "nothing reached the coordinator"
    );

    // A bundle with one byte changed is refused whole.
    let good = std::fs::read(&bundle).unwrap();
    let mut bad = good.clone();
    let at = (good.len() * 2 / 3..good.len())
        .find(|&i| good[i] > 1)
        .unwrap();
    bad[at] ^= 1;
    let bad_path = write_bytes(&fx, "tampered.kiln", &bad);
    let o = kc(&fx.state, &["import", s(&bad_path)]);
    assert_ne!(o.code, 0, "a tampered bundle was imported");
    assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    assert!(
        fx.stored_frames(&offline).is_empty(),
        "part of it was stored"
    );

    let o = kc(&fx.state, &["import", s(&bundle)]);
    assert_eq!(o.code, 0, "import failed: {}", o.stderr);
    let first = fx.show(&offline);
    let log_before =
        std::fs::read(fx.state.join("runs").join(&offline).join("events.log")).unwrap();
    assert_eq!(fx.outcomes(&offline)[1..], expected_outcomes()[..]);
    assert_eq!(comparable(first.clone()), comparable(fx.show(&online)));
    let art = &first["stages"][0]["artifacts"][0];
    assert_eq!(art["name"], "data.txt");
    let cas = fx.state.join("cas").join(art["sha256"].as_str().unwrap());
    assert_eq!(std::fs::read(cas).unwrap(), b"42\n");
    let logs = kc(&fx.state, &["run", "logs", &offline, "--stage", "smoke"]);
    assert_eq!(logs.stdout, "smoke 42\n");

    // The same bundle again changes nothing.
    let o = kc(&fx.state, &["import", s(&bundle)]);
    assert_eq!(o.code, 0, "second import failed: {}", o.stderr);
    let log_after = std::fs::read(fx.state.join("runs").join(&offline).join("events.log")).unwrap();
    assert_eq!(log_before, log_after);
    assert_eq!(comparable(first), comparable(fx.show(&offline)));
}

#[test]
fn offline_secrets_come_from_flags_and_never_reach_the_bundle_in_clear() {
    let fx = Fx::new();
    let plan = fx.plan(
        "sec.toml",
        "name = \"sec\"\n[[stage]]\nname = \"use\"\nkind = \"exec\"\n\
         command = [\"sh\", \"-c\", \"echo token=$KILN_SECRET_API_TOKEN\"]\n\
         secrets = [\"api-token\"]\n",
    );
    // The coordinator checks at issue time that the secret exists; the offline agent
    // gets its value from --secret.
    let secret = write(&fx.dir, "token.txt", "very-secret-value\n");
    let o = kc(
        &fx.state,
        &["secret", "set", "api-token", "--file", s(&secret)],
    );
    assert_eq!(o.code, 0, "secret set failed: {}", o.stderr);
    let ticket = fx.dir.join("sec.kiln");
    let run = fx.issue(&plan, None, Some(&ticket));
    let bundle = fx.dir.join("sec-result.kiln");
    let o = agent(&[
        "run",
        "--ticket",
        s(&ticket),
        "--trust",
        s(&fx.trust()),
        "--work",
        s(&fx.dir.join("work")),
        "--out",
        s(&bundle),
        "--secret",
        &format!("api-token={}", s(&secret)),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let bytes = std::fs::read(&bundle).unwrap();
    assert!(!bytes.windows(17).any(|w| w == b"very-secret-value"));
    let o = kc(&fx.state, &["import", s(&bundle)]);
    assert_eq!(o.code, 0, "import failed: {}", o.stderr);
    let logs = kc(&fx.state, &["run", "logs", &run]);
    assert_eq!(logs.stdout, "[use] token=[redacted:api-token]\n");
}

fn write_bytes(fx: &Fx, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = fx.dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
