//! What leaves the container: artifacts with their digests, and secrets that never do.
use kiln_protocol::{Event, Outcome, Sha256};
use smol::future::FutureExt;

use crate::support::*;

fn artifacts(sink: &kiln_agent::stages::MemorySink) -> Vec<(String, Sha256, u64)> {
    sink.events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Artifact {
                name, sha256, size, ..
            } => Some((name.clone(), *sha256, *size)),
            _ => None,
        })
        .collect()
}

fn files_in_artifacts_are_uploaded_with_their_digests(e: Eng) {
    let script = "echo report > /artifacts/report.txt; mkdir /artifacts/sub; \
                  seq 1 5000 > /artifacts/sub/data.txt; ln -s /etc/passwd /artifacts/link; \
                  exit 1";
    let (c, sink, _d) = ctx("out-artifacts", e.spec(&[IMAGE_A], script));
    let r = smol::block_on(run(&c));
    // A failing test's artifacts still arrive.
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    let seq: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    let want = [
        ("report.txt", b"report\n".to_vec()),
        ("sub/data.txt", seq.into_bytes()),
    ];
    let got = artifacts(&sink);
    assert_eq!(got.len(), 2, "{got:?}");
    for ((name, bytes), (gname, gsha, gsize)) in want.iter().zip(&got) {
        assert_eq!(gname, name);
        assert_eq!(*gsha, Sha256::of(bytes));
        assert_eq!(*gsize, bytes.len() as u64);
        assert_eq!(sink.blobs.lock().unwrap()[gsha], *bytes);
    }
    assert!(
        sink.lines()
            .iter()
            .any(|l| l.contains("artifact link skipped"))
    );

    // In a matrix each cell's files sit under its own folder.
    let script = ". /etc/os-release; echo $ID > /artifacts/id";
    let (c, sink, _d) = ctx("out-artifacts-matrix", e.spec(&[IMAGE_A, IMAGE_B], script));
    assert_eq!(smol::block_on(run(&c)).outcome, Outcome::Passed);
    let names: Vec<(String, Sha256)> = artifacts(&sink).into_iter().map(|a| (a.0, a.1)).collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        [
            (
                "localhost_kiln-test-a_1/id".to_string(),
                Sha256::of(b"kiln-a\n")
            ),
            (
                "localhost_kiln-test-b_1/id".to_string(),
                Sha256::of(b"kiln-b\n")
            ),
        ]
    );
}

fn a_secret_reaches_the_container_but_never_the_events_the_command_line_or_inspect(e: Eng) {
    const VALUE: &str = "s3cr3t-token-4242";
    let script = r#"T=$(cat "$KILN_SECRETS_DIR/registry-token")
echo "token=$T"; echo "$T" >&2
echo "$T" > /artifacts/leak.txt
echo "waiting"; while [ ! -e /workspace/go ]; do sleep 0.05; done
echo "cell=$KILN_CELL stage=$KILN_STAGE attempt=$KILN_ATTEMPT artifacts=$KILN_ARTIFACTS"
# Never an environment value; the file is read-only.
env | grep -q s3cr3t && exit 7
echo x 2>/dev/null > "$KILN_SECRETS_DIR/registry-token" && exit 8
# The expected value, built so that it is not in this script.
[ "$KILN_SECRETS_DIR" = /run/secrets ] && [ "$T" = "s3cr3t-token-$((4000 + 242))" ]"#;
    let mut s = e.spec(&[IMAGE_A], script);
    s.fail_fast = false;
    let (mut c, sink, _d) = ctx("out-secret", s);
    c.secrets
        .insert("registry-token".into(), format!("{VALUE}\n").into_bytes());
    let go = c.dir.join("go");
    let r = smol::block_on(run(&c).or(async {
        log_line(&sink, "waiting").await;
        // While the container runs: no process's argv or environment holds the value…
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            for file in ["cmdline", "environ"] {
                if let Ok(bytes) = std::fs::read(entry.path().join(file)) {
                    let text = String::from_utf8_lossy(&bytes);
                    assert!(
                        !text.contains(VALUE),
                        "{file} of {:?}: {text}",
                        entry.path()
                    );
                }
            }
        }
        // …nor the engine's metadata of any running container (its Config.Env).
        let names = e.cmd(&["ps", "--format", "{{.Names}}"]).unwrap();
        let ours: Vec<&str> = names.lines().filter(|n| n.contains("out-secret")).collect();
        assert_eq!(ours.len(), 1, "{names}");
        let inspect = e.cmd(&["inspect", ours[0]]).unwrap();
        assert!(inspect.contains("/run/secrets"), "{inspect}");
        assert!(
            !inspect.contains(VALUE),
            "the secret is in `inspect`: {inspect}"
        );
        std::fs::write(&go, "").unwrap();
        std::future::pending().await
    }));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}: {:?}", sink.lines());
    assert!(
        sink.lines()
            .contains(&"token=[redacted:registry-token]".to_string())
    );
    let events = format!("{:?}", sink.events.lock().unwrap());
    assert!(!events.contains(VALUE), "secret in events");
    assert!(events.contains("[redacted:registry-token]"));
    // An artifact is the test's own output, uploaded as written (not an event).
    assert_eq!(artifacts(&sink).len(), 1);
    // The secret files are gone with the stage.
    let parent = c.dir.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("secrets"))
        .collect();
    assert!(left.is_empty(), "secret files left: {left:?}");
}

on_both_engines!(
    files_in_artifacts_are_uploaded_with_their_digests,
    a_secret_reaches_the_container_but_never_the_events_the_command_line_or_inspect,
);
