//! Matrix cells: outcomes, prefixes, tails, fail_fast, concurrency.
use kiln_protocol::{Mount, Outcome};
use std::time::{Duration, Instant};

use crate::support::*;

/// 250 lines naming the image, then pass on image a and fail on image b.
const TWO_DISTROS: &str = r#". /etc/os-release
i=0; while [ $i -lt 250 ]; do echo "line $i from $ID"; i=$((i+1)); done
[ "$ID" = kiln-a ] || { echo "$ID is not supported" >&2; exit 3; }"#;

fn two_images_one_passes_one_fails_with_prefixed_lines_and_tails(e: Eng) {
    let mut s = e.spec(&[IMAGE_A, IMAGE_B], TWO_DISTROS);
    s.fail_fast = false;
    let (c, sink, _d) = ctx("matrix-two", s);
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(
        r.detail.contains("2 cells: 1 passed, 1 failed"),
        "{}",
        r.detail
    );

    let a = part(&sink, IMAGE_A);
    assert_eq!((a.1, a.2.as_str()), (Outcome::Passed, "exit 0"));
    let b = part(&sink, IMAGE_B);
    assert_eq!((b.1, b.2.as_str()), (Outcome::Failed, "exit 3"));
    // The failing cell's last 200 lines, unprefixed, its error among them. stdout and
    // stderr are two pipes (relayed separately by docker's daemon, which was seen to
    // deliver the error ahead of 200 stdout lines printed before it), so their order
    // against each other is not promised; the tail keeps stderr's last lines whatever
    // the order, and stdout's last lines in order.
    assert_eq!(b.3.len(), 200);
    assert!(
        b.3.contains(&"kiln-b is not supported".to_string()),
        "{:?}",
        b.3
    );
    let out: Vec<&String> = b.3.iter().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(out.len(), 199, "{:?}", b.3);
    for (k, l) in out.iter().enumerate() {
        assert_eq!(**l, format!("line {} from kiln-b", 51 + k), "{:?}", b.3);
    }

    let lines = sink.lines();
    for (image, id) in [(IMAGE_A, "kiln-a"), (IMAGE_B, "kiln-b")] {
        let mine: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("[{image}] line ")))
            .collect();
        assert_eq!(mine.len(), 250, "{image}: {lines:?}");
        assert!(mine.iter().all(|l| l.ends_with(&format!("from {id}"))));
        assert_eq!(*mine[0], format!("[{image}] line 0 from {id}"));
    }
    assert!(lines.contains(&format!("[{IMAGE_B}] kiln-b is not supported")));
    assert!(e.containers_of("matrix-two").is_empty());
}

fn fail_fast_kills_running_siblings_and_removes_their_containers(e: Eng) {
    // Four cells: image × ROLE. The slow cells mark that they run (in a shared host
    // folder); the failing cell waits for both marks, so its failure hits running
    // containers. The passing quick cell ends at once.
    let sync = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        sync.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let script = r#". /etc/os-release
case "$ROLE" in
slow) echo "slow cell running"; touch /sync/$ID; sleep 300 ;;
quick) [ "$ID" = kiln-a ] && exit 0
       while [ ! -e /sync/kiln-a ] || [ ! -e /sync/kiln-b ]; do sleep 0.05; done
       exit 1 ;;
esac"#;
    let mut s = e.spec(&[IMAGE_A, IMAGE_B], script);
    s.axes = vec![("ROLE".into(), vec!["quick".into(), "slow".into()])];
    s.mounts = vec![Mount {
        host: sync.path().to_string_lossy().into(),
        container: "/sync".into(),
        read_only: false,
    }];
    let (c, sink, _d) = ctx("matrix-ff", s);
    let t0 = Instant::now();
    let r = smol::block_on(run(&c));
    let took = t0.elapsed();
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(took < Duration::from_secs(120), "fail_fast took {took:?}");

    // The passing quick cell exits at once, but on a loaded machine its container may
    // still be starting when the failure lands: then fail_fast rightly aborts it.
    let quick_a = part(&sink, &format!("{IMAGE_A} ROLE=quick")).1;
    assert!(
        matches!(quick_a, Outcome::Passed | Outcome::Aborted),
        "{quick_a:?}"
    );
    assert_eq!(
        part(&sink, &format!("{IMAGE_B} ROLE=quick")).1,
        Outcome::Failed
    );
    for image in [IMAGE_A, IMAGE_B] {
        let p = part(&sink, &format!("{image} ROLE=slow"));
        assert_eq!(p.1, Outcome::Aborted, "{p:?}");
        assert!(p.2.contains("fail_fast"), "{p:?}");
    }
    // Both slow cells were running when the failure stopped them. (Their output
    // may still be in the engine's pipes when they are killed, so the markers prove it.)
    for id in ["kiln-a", "kiln-b"] {
        assert!(sync.path().join(id).exists(), "slow cell {id} never ran");
    }
    assert!(
        e.containers_of("matrix-ff").is_empty(),
        "{:?}",
        e.containers_of("matrix-ff")
    );
}

fn fail_fast_keeps_waiting_cells_from_starting(e: Eng) {
    let mut s = e.spec(
        &[IMAGE_B, IMAGE_A],
        r#". /etc/os-release; echo "ran $ID"; [ "$ID" = kiln-a ]"#,
    );
    s.concurrency = 1;
    let (c, sink, _d) = ctx("matrix-wait", s);
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    let a = part(&sink, IMAGE_A);
    assert_eq!(a.1, Outcome::Aborted);
    assert!(a.2.starts_with("not started: aborted: fail_fast"), "{a:?}");
    assert!(!sink.lines().iter().any(|l| l.contains("ran kiln-a")));
    assert!(sink.lines().contains(&format!("[{IMAGE_B}] ran kiln-b")));
}

fn exit_codes_map_to_outcomes_and_engine_failures_are_errors(e: Eng) {
    let mut s = e.spec(&[IMAGE_A], "exit $CODE");
    s.axes = vec![(
        "CODE".into(),
        ["0", "42", "43", "1"].map(String::from).to_vec(),
    )];
    s.fail_fast = false;
    s.concurrency = 2;
    let (c, sink, _d) = ctx("matrix-codes", s);
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    for (code, want) in [
        ("0", Outcome::Passed),
        ("42", Outcome::Warning),
        ("43", Outcome::Skipped),
        ("1", Outcome::Failed),
    ] {
        assert_eq!(
            part(&sink, &format!("{IMAGE_A} CODE={code}")).1,
            want,
            "{code}"
        );
    }

    // A command the container cannot start (the engine exits 127): infrastructure.
    let mut s = e.spec(&[IMAGE_A], "");
    s.command = vec!["/no/such/program".into()];
    let (c, _sink, _d) = ctx("matrix-127", s);
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Error, "{r:?}");
    assert_eq!(r.exit_code, Some(127));
    assert!(e.containers_of("matrix-127").is_empty());
}

on_both_engines!(
    two_images_one_passes_one_fails_with_prefixed_lines_and_tails,
    fail_fast_kills_running_siblings_and_removes_their_containers,
    fail_fast_keeps_waiting_cells_from_starting,
    exit_codes_map_to_outcomes_and_engine_failures_are_errors,
);
