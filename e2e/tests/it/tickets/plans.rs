//! Issue-time checks: bad plans and escaping links refused naming the line, bundle
//! digests that follow contents and modes only, and every example plan.
use super::*;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

#[test]
fn issue_refuses_bad_plans_naming_the_line() {
    let f = fx();
    let refused = |plan: &Path, needles: &[&str]| {
        let o = kc(
            &f.state,
            &["ticket", "issue", "--plan", s(plan), "--host", "here"],
        );
        assert_ne!(o.code, 0, "issued: {}", o.stdout);
        assert!(o.stdout.is_empty(), "printed a run id: {}", o.stdout);
        for n in needles {
            assert!(o.stderr.contains(n), "{:?} does not name {n:?}", o.stderr);
        }
        assert_eq!(
            o.stderr.trim().lines().count(),
            1,
            "not one line: {}",
            o.stderr
        );
    };
    let kind = f.plan("kind.toml", "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\n\n[[stage]]\nname = \"b\"\nkind = \"quantum\"\n");
    refused(&kind, &["kind.toml:8:", "unknown kind \"quantum\""]);
    let missing = f.plan("missing.toml", "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\ntests = \"no/such/folder\"\n");
    refused(
        &missing,
        &[
            "missing.toml:5:",
            "tests folder no/such/folder does not exist",
        ],
    );
    let wrong_kind_key = f.plan(
        "key.toml",
        "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\nimage = \"debian:12\"\n",
    );
    refused(
        &wrong_kind_key,
        &["key.toml:5:", "`image` is not a setting of exec stages"],
    );

    let links = f.plan(
        "links.toml",
        "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\ntests = \"esc\"\n",
    );
    write(&f.dir, "esc/run.sh", "true\n");
    symlink("../kind.toml", f.dir.join("esc/up")).expect("symlink");
    refused(
        &links,
        &["links.toml:5:", "up -> ../kind.toml", "leaves the folder"],
    );
    std::fs::remove_file(f.dir.join("esc/up")).expect("rm");
    std::fs::create_dir_all(f.dir.join("esc/deep")).expect("mkdir");
    symlink("../../esc/run.sh", f.dir.join("esc/deep/sneaky")).expect("symlink");
    refused(
        &links,
        &["links.toml:5:", "deep/sneaky -> ../../esc/run.sh"],
    );
    std::fs::remove_file(f.dir.join("esc/deep/sneaky")).expect("rm");
    symlink("/etc/passwd", f.dir.join("esc/abs")).expect("symlink");
    refused(&links, &["links.toml:5:", "abs -> /etc/passwd"]);
    let runs = std::fs::read_dir(f.state.join("runs"))
        .expect("runs")
        .count();
    assert_eq!(runs, 0, "a refused plan left a run behind");
}

#[test]
fn bundle_digest_follows_contents_and_modes_only() {
    let f = fx();
    let script = write(&f.dir, "suite/run.sh", "#!/bin/sh\necho one\n");
    write(&f.dir, "suite/lib/data.txt", "data\n");
    let plan = f.plan(
        "p.toml",
        "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"sh run.sh\"\ntests = \"suite\"\n",
    );
    let bundle = || {
        let (_, ticket) = f.issue(&plan, "here");
        let j = f.show_json(&ticket);
        let b = &j["plan"]["stages"][0]["tests"];
        (
            b["sha256"].as_str().expect("sha").to_string(),
            b["tree"].as_str().expect("tree").to_string(),
        )
    };
    let first = bundle();
    assert_eq!(bundle(), first, "two issues of the same folder");
    let touched = Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(&script)
        .arg(f.dir.join("suite/lib/data.txt"))
        .arg(f.dir.join("suite/lib"))
        .status()
        .expect("touch");
    assert!(touched.success());
    assert_eq!(bundle(), first, "touch changed the bundle");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let exec = bundle();
    assert_ne!(exec.0, first.0, "the exec bit did not change the bundle");
    assert_eq!(exec.1, first.1, "the tree hash covers contents only");
    std::fs::write(&script, "#!/bin/sh\necho One\n").expect("write");
    let edited = bundle();
    assert_ne!(edited.0, exec.0, "a changed byte did not change the bundle");
    assert_ne!(
        edited.1, exec.1,
        "a changed byte did not change the tree hash"
    );
}

#[test]
fn example_plans_issue_and_verify() {
    let f = fx();
    let value = write(&f.dir, "secret", "not a real key");
    for name in ["ssh-ci", "lab-known-hosts"] {
        assert_eq!(
            kc(&f.state, &["secret", "set", name, "--file", s(&value)]).code,
            0
        );
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plans");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("examples/plans") {
        let plan = e.expect("entry").path();
        let (run, ticket) = f.issue(&plan, "here");
        let o = f.verify(&ticket);
        assert_eq!(o.code, 0, "{}: {}", plan.display(), o.stderr);
        assert!(o.stdout.contains(&run));
        n += 1;
    }
    assert!(n >= 4, "expected the four example plans, found {n}");
}
