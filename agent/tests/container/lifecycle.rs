//! Timeouts, aborts, missing images and image archives: no container is left behind.
use kiln_agent::stages::Stop;
use kiln_protocol::{ImageRef, Outcome, Sha256};
use smol::future::FutureExt;
use std::time::{Duration, Instant};

use crate::support::*;

fn stopped_midway(e: Eng, name: &str, why: Stop) -> (kiln_agent::stages::StageResult, Duration) {
    let (c, sink, _d) = ctx(name, e.spec(&[IMAGE_A], "echo sleeping; sleep 300"));
    let stop = c.stop.clone();
    let t0 = Instant::now();
    let r = smol::block_on(run(&c).or(async {
        log_line(&sink, "sleeping").await;
        assert_eq!(e.containers_of(name).len(), 1, "the container runs");
        stop.fire(why);
        std::future::pending().await
    }));
    (r, t0.elapsed())
}

fn timeout_kills_and_removes_the_container(e: Eng) {
    let (r, took) = stopped_midway(e, "life-timeout", Stop::Timeout);
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    assert_eq!(r.detail, "timed out after 60s");
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(
        e.containers_of("life-timeout").is_empty(),
        "{:?}",
        e.containers_of("life-timeout")
    );
}

fn abort_kills_and_removes_the_container(e: Eng) {
    let (r, _) = stopped_midway(e, "life-abort", Stop::Abort("operator said so".into()));
    assert_eq!(r.outcome, Outcome::Aborted, "{r:?}");
    assert_eq!(r.detail, "aborted: operator said so");
    assert!(
        e.containers_of("life-abort").is_empty(),
        "{:?}",
        e.containers_of("life-abort")
    );
}

fn an_image_that_cannot_be_pulled_is_an_error_not_a_failure(e: Eng) {
    let (c, sink, _d) = ctx(
        "life-pull",
        e.spec(&["localhost:1/kiln-no-such-image:1"], "true"),
    );
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Error, "{r:?}");
    assert!(
        r.detail
            .starts_with("pulling localhost:1/kiln-no-such-image:1 failed 3 times"),
        "{r:?}"
    );
    let retries = sink
        .lines()
        .iter()
        .filter(|l| l.contains("pull failed ("))
        .count();
    assert_eq!(retries, 2, "{:?}", sink.lines());
    assert!(e.containers_of("life-pull").is_empty());
}

/// Drops an image name when the test ends, however it ends.
struct Untag(Eng, &'static str);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = self.0.cmd(&["rmi", self.1]);
    }
}

fn an_image_archive_from_the_cas_is_loaded_and_run(e: Eng) {
    let engine = |args: &[&str]| {
        e.cmd(args).unwrap();
    };
    // An archive of image a under a name nothing else has (one per engine: the two
    // engines' tests run at once); the name is dropped locally so only loading the
    // archive brings it back.
    let tag = match e {
        Eng::Podman => "localhost/kiln-test-archive-podman:1",
        Eng::Docker => "localhost/kiln-test-archive-docker:1",
    };
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("image.tar");
    engine(&["tag", IMAGE_A, tag]);
    let _untag = Untag(e, tag);
    engine(&["save", "--output", &tar.to_string_lossy(), tag]);
    // `rmi` of one of an image's names drops just that name, on both engines.
    engine(&["rmi", tag]);
    let bytes = std::fs::read(&tar).unwrap();
    let sha = Sha256::of(&bytes);

    let mut s = e.spec(&[], ". /etc/os-release; echo \"archive runs $ID\"");
    s.images = vec![ImageRef::Archive {
        name: tag.into(),
        sha256: sha,
        size: bytes.len() as u64,
    }];
    let (c, sink, _d) = ctx("life-archive", s.clone());
    sink.cas.lock().unwrap().insert(sha, tar.clone());
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}: {:?}", sink.lines());
    assert!(sink.lines().contains(&"archive runs kiln-a".to_string()));

    // The same archive under a name it does not hold, and a digest not in the CAS.
    let mut wrong = s.clone();
    wrong.images = vec![ImageRef::Archive {
        name: "localhost/kiln-test-not-in-archive:1".into(),
        sha256: sha,
        size: bytes.len() as u64,
    }];
    let (c, sink, _d) = ctx("life-archive-name", wrong);
    sink.cas.lock().unwrap().insert(sha, tar);
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Error, "{r:?}");
    assert!(r.detail.contains("holds no image named"), "{r:?}");
    let (c, _sink, _d) = ctx("life-archive-missing", s);
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Error, "{r:?}");
    assert!(r.detail.starts_with("fetching image archive"), "{r:?}");
}

on_both_engines!(
    timeout_kills_and_removes_the_container,
    abort_kills_and_removes_the_container,
    an_image_that_cannot_be_pulled_is_an_error_not_a_failure,
    an_image_archive_from_the_cas_is_loaded_and_run,
);

fn a_later_attempt_removes_containers_a_dead_agent_left(e: Eng) {
    let name = "life-crash";
    for left in e.containers_of(name) {
        let _ = e.cmd(&["rm", "--force", &left]); // from an earlier, failed test run
    }
    let (c, sink, _d) = ctx(name, e.spec(&[IMAGE_A], "echo first; sleep 300"));
    // The agent "dies" with the container running: its stage future is dropped.
    let crashed = smol::block_on(async { Some(run(&c).await) }.or(async {
        log_line(&sink, "first").await;
        None
    }));
    assert!(crashed.is_none());
    let left = e.containers_of(name);
    assert_eq!(
        left.len(),
        1,
        "the dead agent's container still runs: {left:?}"
    );

    // The rerun is the stage's next attempt.
    let (mut c, sink, _d) = ctx(name, e.spec(&[IMAGE_A], "echo second"));
    c.attempt = 2;
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}: {:?}", sink.lines());
    assert!(sink.lines().contains(&"second".to_string()));
    assert!(
        e.containers_of(name).is_empty(),
        "{:?}",
        e.containers_of(name)
    );
}

on_both_engines!(a_later_attempt_removes_containers_a_dead_agent_left);
