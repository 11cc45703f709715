//! Secrets reach the remote test (environment and a 0600 file) and are gone when it
//! ends; the SSH key and the known_hosts secret never leave the agent.
use super::*;

#[test]
fn secrets_reach_the_remote_test_but_never_the_ssh_key_and_are_removed_after() {
    let Some(e) = env() else { return };
    const VALUE: &str = "s3cr3t-api-4242";
    let t = tests_folder(
        r#"echo "env=$KILN_SECRET_API_TOKEN"
[ "$KILN_SECRET_API_TOKEN" = "s3cr3t-api-$((4000 + 242))" ] && echo env-matches
[ "$(cat "$KILN_SECRETS_DIR/api-token")" = "$KILN_SECRET_API_TOKEN" ] && echo file-matches
echo "modes=$(stat -c %a "$KILN_SECRETS_DIR") $(stat -c %a "$KILN_SECRETS_DIR/api-token")"
echo "held=$(ls -A "$KILN_SECRETS_DIR" | tr '\n' ' ')"
echo "key=${KILN_SECRET_SSH_TEST:-none} kh=${KILN_SECRET_KH:-none}"
echo "here=$(ls -A | tr '\n' ' ')"
echo "$KILN_SECRETS_DIR" > where"#,
    );
    let mut sp = spec(&e.s, &e.base);
    sp.keep = true;
    sp.host_key = None;
    sp.known_hosts = Some("kh".into());
    let (mut c, sink) = ctx(&e.s, sp, t.path(), e.work.path());
    c.stage.secrets = vec!["ssh-test".into(), "kh".into(), "api-token".into()];
    c.secrets
        .insert("api-token".into(), format!("{VALUE}\n").into_bytes());
    let kh = format!("[127.0.0.1]:{} {}\n", e.s.port, e.s.host_pub);
    c.secrets.insert("kh".into(), kh.into_bytes());
    let r = run(&c);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());

    let lines = sink.lines();
    for want in [
        "env=[redacted:api-token]",
        "env-matches",
        "file-matches",
        "modes=700 600",
        "held=api-token ",
        "key=none kh=none",
        "here=data run.sh ",
    ] {
        assert!(lines.iter().any(|l| l == want), "no {want:?} in {lines:?}");
    }
    let events = format!("{:?}", sink.events.lock().expect("events"));
    assert!(!events.contains(VALUE), "a secret's value in the events");

    // The run folder is kept (keep = true); the secrets folder is not.
    let kept = e.base.join(format!("runs/{}-remote_smoke-1", c.run));
    let held = std::fs::read_to_string(kept.join("where")).expect("where");
    let held = Path::new(held.trim());
    assert!(
        held.starts_with(&e.base),
        "{} outside the base folder",
        held.display()
    );
    assert!(!held.exists(), "{} left behind", held.display());
    assert!(!kept.join(".kiln-secrets").exists());
}

#[test]
fn without_secrets_the_upload_is_the_bundle_itself() {
    let bundle = b"not even a tar".to_vec();
    assert_eq!(
        ssh::upload_stream(&[], bundle.clone()).expect("stream"),
        bundle
    );
    // With one: a tar whose first entries are the secrets, then the bundle's.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("run.sh"), "true\n").expect("run.sh");
    let (bundle, _) = kiln_protocol::tree::pack_to_vec(dir.path()).expect("pack");
    let stream = ssh::upload_stream(&[("a/b", b"v")], bundle).expect("stream");
    let out = tempfile::tempdir().expect("tempdir");
    let st = std::process::Command::new("tar")
        .args(["-xf", "-", "-C"])
        .arg(out.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().expect("stdin").write_all(&stream)?;
            ch.wait()
        })
        .expect("tar");
    assert!(st.success());
    assert_eq!(
        std::fs::read(out.path().join(".kiln-secrets/a_b")).expect("secret"),
        b"v"
    );
    assert!(out.path().join("run.sh").is_file());
}

#[test]
fn secrets_of_a_run_that_never_started_are_removed_even_when_kept() {
    let Some(e) = env() else { return };
    // A bundle without the entrypoint: the start fails after unpacking the secrets.
    let t = tests_folder("true");
    std::fs::rename(t.path().join("run.sh"), t.path().join("other.sh")).expect("rename");
    let mut sp = spec(&e.s, &e.base);
    sp.keep = true;
    let (mut c, sink) = ctx(&e.s, sp, t.path(), e.work.path());
    c.stage.secrets.push("api-token".into());
    c.secrets
        .insert("api-token".into(), b"s3cr3t-unused".to_vec());
    expect_error(&run(&c), &sink, "the bundle has no run.sh");
    let kept = e.base.join(format!("runs/{}-remote_smoke-1", c.run));
    assert!(
        kept.join("other.sh").is_file(),
        "keep = true keeps the folder"
    );
    assert!(!kept.join(".kiln-secrets").exists(), "secrets left behind");
}

#[test]
fn plan_env_named_like_the_remote_scripts_variables_reaches_only_the_test() {
    let Some(e) = env() else { return };
    let t = tests_folder(
        r#"echo "M=$M D=$D B=$B PATH=$PATH"
echo "secret=$(cat "$KILN_SECRETS_DIR/api-token")""#,
    );
    let decoy = e.work.path().join("decoy");
    let (mut c, sink) = ctx(&e.s, spec(&e.s, &e.base), t.path(), e.work.path());
    c.stage.env = vec![
        ("M".into(), decoy.display().to_string()),
        ("D".into(), decoy.display().to_string()),
        ("B".into(), "/nonexistent".into()),
        ("PATH".into(), "/usr/bin:/bin".into()),
    ];
    c.stage.secrets.push("api-token".into());
    c.secrets
        .insert("api-token".into(), b"s3cr3t-isolated".to_vec());
    let r = run(&c);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    let d = decoy.display();
    let want = format!("M={d} D={d} B=/nonexistent PATH=/usr/bin:/bin");
    assert!(sink.lines().contains(&want), "{:?}", sink.lines());
    assert!(
        sink.lines()
            .contains(&"secret=[redacted:api-token]".to_string())
    );
    // The scripts kept to their own folders: nothing under the decoy, nothing left.
    assert!(!decoy.exists(), "the plan's M/D bent the remote scripts");
    assert!(!e.base.join("lock").exists(), "lock left behind");
    assert_eq!(
        std::fs::read_dir(e.base.join("runs"))
            .expect("runs")
            .count(),
        0,
        "run folders left behind"
    );
}
