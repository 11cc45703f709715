//! `import` on a full disk: a small tmpfs is filled so that the import runs out of
//! space at every point in turn (staging the ticket, a blob, the new frames, the
//! claim, appending to events.log); each failure must leave the state folder exactly
//! as it was, and once there is room the import must give the same state as one
//! clean import. Needs root (mount); without it the test says SKIPPED, and fails
//! under `KILN_CI`.
use kiln_protocol::{BUNDLE_MAGIC, Event, Outcome, ResultRecord, Sha256, SignedTicket};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::common::kc;

/// A tmpfs of `size` mounted on a temp folder, unmounted when dropped.
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub(crate) fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                crate::common::skip(&format!("a full-disk test needs to mount a tmpfs: {why}"));
                None
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system of `filler` up, then frees `pages` 4 KiB pages.
pub(crate) fn leave_free(filler: &Path, pages: u64) {
    let mut f = std::fs::File::create(filler).expect("filler");
    let buf = vec![0x5a; 64 * 1024];
    while f.write(&buf).is_ok_and(|n| n > 0) {}
    let len = f.metadata().expect("filler size").len();
    assert!(
        len >= pages * 4096,
        "the tmpfs is too small to leave {pages} pages"
    );
    f.set_len(len - pages * 4096).expect("cut filler");
}

/// Every file and folder under `dir` (relative path, bytes; `None` for a folder),
/// sorted. Empty `lock` files aside: flock targets that every writer creates.
/// Every file and folder under `dir` with its bytes (folders `None`); empty `lock`
/// files left out, and the claim record's clock field (unix ms, the second word of
/// each `claims` line) blanked, as two imports never share a millisecond.
#[derive(PartialEq)]
pub(super) struct Snapshot(Vec<(PathBuf, Option<Vec<u8>>)>);

impl std::fmt::Debug for Snapshot {
    // Paths and sizes: the bytes of a blob would flood the test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(p, b)| {
                let sha = b.as_ref().map(|b| kiln_protocol::Sha256::of(b).to_string());
                (p, b.as_ref().map(Vec::len), sha)
            }))
            .finish()
    }
}

pub(super) fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            // The change journal is a best-effort hint to a running server (an append
            // that meets the full disk is logged and dropped), not part of the state.
            if rel.as_os_str() == "journal" {
                continue;
            }
            if p.is_dir() {
                out.push((rel, None));
                stack.push(p);
            } else {
                let mut bytes = std::fs::read(&p).expect("read");
                if p.file_name().is_some_and(|n| n == "claims") {
                    let text = String::from_utf8(bytes).expect("claims is text");
                    bytes = text
                        .lines()
                        .map(|l| {
                            let mut w: Vec<&str> = l.split(' ').collect();
                            if w.len() > 1 {
                                w[1] = "-";
                            }
                            format!("{}\n", w.join(" "))
                        })
                        .collect::<String>()
                        .into_bytes();
                }
                if !(p.file_name().is_some_and(|n| n == "lock") && bytes.is_empty()) {
                    out.push((rel, Some(bytes)));
                }
            }
        }
    }
    out.sort();
    Snapshot(out)
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(ok.success());
}

fn bundle(ticket: &SignedTicket, blobs: &[&[u8]], batches: &[Vec<u8>]) -> Vec<u8> {
    let mut out = BUNDLE_MAGIC.to_vec();
    out.extend(ResultRecord::Ticket(ticket.clone()).encode());
    for b in blobs {
        out.extend(ResultRecord::Blob(b.to_vec()).encode());
    }
    for b in batches {
        out.extend(ResultRecord::Batch(b.clone()).encode());
    }
    out
}

fn artifact(name: &str, bytes: &[u8]) -> Event {
    Event::Artifact {
        stage: 0,
        name: name.into(),
        sha256: Sha256::of(bytes),
        size: bytes.len() as u64,
    }
}

/// A run in two bundles: the first half (claim, a 40 KiB artifact, logs), and the
/// whole run (the first half again, 24 KiB of logs, another artifact, the end).
pub(super) struct Fixture {
    pub(super) run: RunId,
    pub(super) ticket: Ticket,
    pub(super) first: Vec<u8>,
    pub(super) whole: Vec<u8>,
}

pub(super) fn fixture(state: &Path) -> Fixture {
    let run = new_run_id();
    let t = ticket(
        run,
        "nightly",
        vec![stage("build", &[]), stage("test", &[])],
        now_s(),
    );
    let signed = SignedTicket::sign(&t, &state_key(state));
    let a: Vec<u8> = (0..40 * 1024).map(|i| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..24 * 1024).map(|i| (i % 241) as u8).collect();
    let mut r = Reporter::new(run);
    let claim = r.claim();
    let one = r.frames(vec![
        claim,
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    ]);
    let two = r.frames(vec![
        log(0, &"compiling ".repeat(600)),
        artifact("a.bin", &a),
    ]);
    let mut rest: Vec<Event> = (0..4)
        .map(|i| log(0, &format!("{i}").repeat(6000)))
        .collect();
    rest.push(artifact("b.bin", &b));
    rest.push(finished(0, Outcome::Passed, ""));
    rest.push(Event::RunFinished {
        outcome: Outcome::Passed,
    });
    let three = r.frames(rest);
    let (one, two, three) = (r.seal(one), r.seal(two), r.seal(three));
    Fixture {
        run,
        ticket: t,
        first: bundle(&signed, &[&a], &[one.clone(), two.clone()]),
        whole: bundle(&signed, &[&a, &b], &[one, two, three]),
    }
}

/// Imports `bundle` into `state` with less and less of the disk full, a page more
/// free each time, until it succeeds: every failure must leave `state` as it was.
/// The listing (`runs`) must not change either. Returns the failures' messages.
fn import_until_it_fits(state: &Path, filler: &Path, bundle: &Path) -> Vec<String> {
    let before = snapshot(state);
    let runs = kc(state, &["runs"]).stdout;
    let mut failures = Vec::new();
    for pages in 0..200 {
        leave_free(filler, pages);
        let o = kc(state, &["import", bundle.to_str().unwrap()]);
        if o.code == 0 {
            std::fs::remove_file(filler).unwrap();
            return failures;
        }
        std::fs::remove_file(filler).unwrap();
        assert_eq!(
            snapshot(state),
            before,
            "{pages} pages free: the failed import changed the state folder ({})",
            o.stderr.trim()
        );
        assert_eq!(o.code, 2, "{pages} pages free: {}{}", o.stdout, o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
        assert!(o.stderr.contains("nothing imported"), "{}", o.stderr);
        assert_eq!(kc(state, &["runs"]).stdout, runs, "{pages} pages free");
        failures.push(o.stderr.trim().to_string());
    }
    panic!("the import did not fit in 200 free pages");
}

/// What importing `bundles` in turn into a copy of `state` on an ordinary disk gives.
pub(super) fn clean_import(state: &Path, bundles: &[&Path]) -> Snapshot {
    let d = tempfile::tempdir().unwrap();
    let copy = d.path().join("state");
    copy_dir(state, &copy);
    for b in bundles {
        let o = kc(&copy, &["import", b.to_str().unwrap()]);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    snapshot(&copy)
}

#[derive(Clone, Copy, Debug)]
enum Start {
    /// The run is new to the state folder.
    NewRun,
    /// The ticket was issued here (its folder holds ticket.kiln).
    Issued,
    /// The first half of the run is stored: the rest is appended.
    HalfStored,
}

fn full_disk(start: Start) {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let (d, made) = keyed_state();
    std::fs::create_dir_all(made.join("cas")).unwrap();
    let state = fs.path().join("state");
    copy_dir(&made, &state);
    let fx = fixture(&state);
    let (first, whole) = (d.path().join("first.kres"), d.path().join("whole.kres"));
    std::fs::write(&first, &fx.first).unwrap();
    std::fs::write(&whole, &fx.whole).unwrap();
    match start {
        Start::NewRun => {}
        Start::Issued => {
            write_ticket(&state, &fx.ticket);
        }
        Start::HalfStored => {
            let o = kc(&state, &["import", first.to_str().unwrap()]);
            assert_eq!(o.code, 0, "{}", o.stderr);
        }
    }
    let want = clean_import(&state, &[&whole]);
    let filler = fs.path().join("filler");
    let failures = import_until_it_fits(&state, &filler, &whole);
    eprintln!("{start:?}: {failures:#?}");
    // Every page less fails somewhere else: at least the staged blob and frames.
    assert!(failures.len() >= 10, "{start:?}: {failures:#?}");
    assert_eq!(
        snapshot(&state),
        want,
        "{start:?}: differs from a clean import"
    );
    // With room to spare, importing again changes nothing.
    let o = kc(&state, &["import", whole.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        snapshot(&state),
        want,
        "{start:?}: a second import changed it"
    );
    let show = kc(&state, &["report", &fx.run.to_string(), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(v["state"], "finished", "{}", show.stdout);
}

#[test]
fn a_full_disk_fails_a_new_runs_import_whole() {
    full_disk(Start::NewRun);
}

#[test]
fn a_full_disk_fails_an_issued_runs_import_whole() {
    full_disk(Start::Issued);
}

#[test]
fn a_full_disk_fails_an_import_that_appends_whole() {
    full_disk(Start::HalfStored);
}
