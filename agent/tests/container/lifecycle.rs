//! Timeouts, aborts, missing images and image archives: no container is left behind.
use kiln_agent::stages::Stop;
use kiln_protocol::{ImageRef, Outcome, Sha256};
use smol::future::FutureExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn stopped_midway(name: &str, why: Stop) -> (kiln_agent::stages::StageResult, Duration) {
    let (c, sink, _d) = ctx(name, spec(&[IMAGE_A], "echo sleeping; sleep 300"));
    let stop = c.stop.clone();
    let t0 = Instant::now();
    let r = smol::block_on(run(&c).or(async {
        log_line(&sink, "sleeping").await;
        assert_eq!(containers_of(name).len(), 1, "the container runs");
        stop.fire(why);
        std::future::pending().await
    }));
    (r, t0.elapsed())
}

#[test]
fn timeout_kills_and_removes_the_container() {
    if !require_podman() {
        return;
    }
    let (r, took) = stopped_midway("life-timeout", Stop::Timeout);
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    assert_eq!(r.detail, "timed out after 60s");
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(
        containers_of("life-timeout").is_empty(),
        "{:?}",
        containers_of("life-timeout")
    );
}

#[test]
fn abort_kills_and_removes_the_container() {
    if !require_podman() {
        return;
    }
    let (r, _) = stopped_midway("life-abort", Stop::Abort("operator said so".into()));
    assert_eq!(r.outcome, Outcome::Aborted, "{r:?}");
    assert_eq!(r.detail, "aborted: operator said so");
    assert!(
        containers_of("life-abort").is_empty(),
        "{:?}",
        containers_of("life-abort")
    );
}

#[test]
fn an_image_that_cannot_be_pulled_is_an_error_not_a_failure() {
    if !require_podman() {
        return;
    }
    let (c, sink, _d) = ctx(
        "life-pull",
        spec(&["localhost:1/kiln-no-such-image:1"], "true"),
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
    assert!(containers_of("life-pull").is_empty());
}

/// Drops an image name when the test ends, however it ends.
struct Untag(&'static str);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", self.0]).output();
    }
}

#[test]
fn an_image_archive_from_the_cas_is_loaded_and_run() {
    if !require_podman() {
        return;
    }
    let podman = |args: &[&str]| {
        let o = Command::new("podman").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    // An archive of image a under a name nothing else has; the name is dropped locally
    // so only loading the archive brings it back.
    let tag = "localhost/kiln-test-archive:1";
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("image.tar");
    podman(&["tag", IMAGE_A, tag]);
    let _untag = Untag(tag);
    podman(&["save", "--quiet", "--output", &tar.to_string_lossy(), tag]);
    // `rmi` of one of an image's names drops just that name (`untag NAME` drops all).
    podman(&["rmi", tag]);
    let bytes = std::fs::read(&tar).unwrap();
    let sha = Sha256::of(&bytes);

    let mut s = spec(&[], ". /etc/os-release; echo \"archive runs $ID\"");
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
