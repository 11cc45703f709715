//! Images built from a Containerfile in the test folder: built once, reused by tag
//! while nothing changed, rebuilt on a changed byte, shared by the cells of one build,
//! a failing build failing its cells.
use kiln_protocol::{BuildSpec, ImageRef, Outcome};

use crate::support::*;

/// Removes every `localhost/kiln-build/<repo>` image when the test ends.
struct BuiltImages(Eng, String);

impl BuiltImages {
    fn tags(&self) -> Vec<String> {
        let repo = format!("localhost/kiln-build/{}", self.1);
        self.0
            .cmd(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{repo}:")))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for BuiltImages {
    fn drop(&mut self) {
        for t in self.tags() {
            let _ = self.0.cmd(&["rmi", "--force", &t]);
        }
    }
}

fn build_spec(
    e: Eng,
    args: &[(&str, &str)],
    no_cache: bool,
    script: &str,
) -> kiln_protocol::ContainerSpec {
    let mut s = e.spec(&[], script);
    s.images = vec![ImageRef::Build(BuildSpec {
        file: "Containerfile".into(),
        context: "".into(),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        no_cache,
    })];
    s
}

/// Runs the stage `name` with `spec` on a test folder holding `files`; the sink.
fn run_in(
    name: &str,
    spec: kiln_protocol::ContainerSpec,
    files: &[(&str, &str)],
) -> (
    kiln_agent::stages::StageResult,
    std::sync::Arc<kiln_agent::stages::MemorySink>,
) {
    let (c, sink, _d) = ctx(name, spec);
    for (f, body) in files {
        std::fs::write(c.dir.join(f), body).unwrap();
    }
    let r = smol::block_on(run(&c));
    (r, sink)
}

/// The image id and creation time of `tag`.
fn identity(e: Eng, tag: &str) -> String {
    e.cmd(&["image", "inspect", "--format", "{{.Id}} {{.Created}}", tag])
        .unwrap_or_else(|err| panic!("{tag}: {err}"))
}

fn tag_of(detail: &str) -> String {
    detail
        .split_whitespace()
        .find(|w| w.starts_with("localhost/kiln-build/"))
        .unwrap_or_else(|| panic!("no tag in {detail:?}"))
        .to_string()
}

const CONTAINERFILE: &str =
    "FROM localhost/kiln-test-a:1\nCOPY data /data\nRUN echo building-now\n";

fn built_once_reused_while_unchanged_rebuilt_on_one_byte(e: Eng) {
    let name = "build-reuse";
    let images = BuiltImages(e, name.into());
    let spec = build_spec(e, &[], false, "cat /data");
    let files = [("Containerfile", CONTAINERFILE), ("data", "payload-1\n")];

    let (r, sink) = run_in(name, spec.clone(), &files);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    let b = part(&sink, "build");
    assert_eq!(b.1, Outcome::Passed, "{b:?}");
    assert!(
        b.2.starts_with("built localhost/kiln-build/build-reuse:"),
        "{b:?}"
    );
    let tag = tag_of(&b.2);
    let lines = sink.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[build] ") && l.contains("building-now")),
        "the build's output streams under [build]: {lines:?}"
    );
    assert!(lines.contains(&"payload-1".to_string()), "{lines:?}");
    let first = identity(e, &tag);

    // The same folder again: the tag is there, the engine builds nothing.
    let (r, sink) = run_in(name, spec.clone(), &files);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
    let b = part(&sink, "build");
    assert_eq!(b.2, format!("reused {tag} (built nothing)"));
    let lines = sink.lines();
    assert!(
        !lines.iter().any(|l| l.contains("building-now")),
        "nothing was built: {lines:?}"
    );
    assert_eq!(identity(e, &tag), first);
    assert_eq!(images.tags(), vec![tag.clone()]);

    // One byte of the context changed: a new tag, built.
    let changed = [("Containerfile", CONTAINERFILE), ("data", "payload-2\n")];
    let (r, sink) = run_in(name, spec.clone(), &changed);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
    let b = part(&sink, "build");
    assert!(b.2.starts_with("built "), "{b:?}");
    let tag2 = tag_of(&b.2);
    assert_ne!(tag2, tag);
    assert!(sink.lines().contains(&"payload-2".to_string()));

    // One byte of the Containerfile changed: built again.
    let cf = CONTAINERFILE.replace("building-now", "building-now!");
    let (r, sink) = run_in(
        name,
        spec.clone(),
        &[("Containerfile", &cf), ("data", "payload-2\n")],
    );
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
    let b = part(&sink, "build");
    assert!(b.2.starts_with("built "), "{b:?}");
    assert_ne!(tag_of(&b.2), tag2);

    // no_cache builds although the tag is there.
    let (r, sink) = run_in(name, build_spec(e, &[], true, "cat /data"), &files);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
    let b = part(&sink, "build");
    assert_eq!(
        b.2.split(" in ").next(),
        Some(format!("built {tag}").as_str()),
        "{b:?}"
    );
    assert!(sink.lines().iter().any(|l| l.contains("building-now")));
    // The image the rebuild replaced under the tag is untagged now: not left behind.
    let old_id = first.split_whitespace().next().unwrap_or_default();
    if identity(e, &tag).split_whitespace().next() != Some(old_id) {
        let _ = e.cmd(&["rmi", old_id]);
    }
    assert!(e.containers_of(name).is_empty());
}

fn a_base_matrix_builds_one_image_per_base_shared_by_its_cells(e: Eng) {
    let name = "build-matrix";
    let images = BuiltImages(e, name.into());
    let mut spec = build_spec(
        e,
        &[("BASE", "${BASE}")],
        false,
        ". /etc/os-release; echo \"id $ID n $N\"; cat /from",
    );
    spec.axes = vec![
        ("BASE".into(), vec![IMAGE_A.into(), IMAGE_B.into()]),
        ("N".into(), vec!["1".into(), "2".into()]),
    ];
    spec.fail_fast = false;
    let cf = "ARG BASE\nFROM $BASE\nARG BASE\nRUN echo \"$BASE\" > /from\n";
    let (r, sink) = run_in(name, spec, &[("Containerfile", cf)]);
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    let builds: Vec<Part> = parts(&sink)
        .into_iter()
        .filter(|p| p.0.starts_with("build"))
        .collect();
    assert_eq!(builds.len(), 2, "one build per BASE: {builds:?}");
    let mut tags: Vec<String> = builds.iter().map(|b| tag_of(&b.2)).collect();
    tags.sort();
    let mut have = images.tags();
    have.sort();
    assert_eq!(have, tags, "two images");
    let lines = sink.lines();
    for (base, id) in [(IMAGE_A, "kiln-a"), (IMAGE_B, "kiln-b")] {
        part(&sink, &format!("build BASE={base}"));
        for n in ["1", "2"] {
            let cell = format!("Containerfile BASE={base} N={n}");
            assert_eq!(part(&sink, &cell).1, Outcome::Passed);
            assert!(
                lines.contains(&format!("[{cell}] id {id} n {n}")),
                "{cell}: {lines:?}"
            );
            assert!(lines.contains(&format!("[{cell}] {base}")), "{lines:?}");
        }
    }
    assert!(e.containers_of(name).is_empty());
}

fn a_failing_build_fails_its_cells_with_the_build_tail(e: Eng) {
    let name = "build-fails";
    let _images = BuiltImages(e, name.into());
    let mut spec = build_spec(e, &[], false, "echo never");
    spec.axes = vec![("N".into(), vec!["1".into(), "2".into()])];
    spec.fail_fast = false;
    let cf = "FROM localhost/kiln-test-a:1\nRUN echo broken-step-output && exit 7\n";
    let (r, sink) = run_in(name, spec, &[("Containerfile", cf)]);
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    let builds: Vec<Part> = parts(&sink)
        .into_iter()
        .filter(|p| p.0 == "build")
        .collect();
    assert_eq!(builds.len(), 1, "built once: {builds:?}");
    assert_eq!(builds[0].1, Outcome::Failed);
    assert!(builds[0].2.starts_with("build failed (exit"), "{builds:?}");
    for n in ["1", "2"] {
        let p = part(&sink, &format!("Containerfile N={n}"));
        assert_eq!(p.1, Outcome::Failed, "{p:?}");
        assert!(p.2.starts_with("build failed"), "{p:?}");
        assert!(
            p.3.iter().any(|l| l.contains("broken-step-output")),
            "the build's tail: {p:?}"
        );
    }
    assert!(!sink.lines().iter().any(|l| l.contains("never")));
    assert!(e.containers_of(name).is_empty());
    // Nor the failed step's container (docker keeps it without --force-rm).
    let mut ps = vec!["ps", "-a", "--no-trunc", "--format", "{{.Command}}"];
    if e == Eng::Podman {
        ps.push("--external");
    }
    let left = e.cmd(&ps).unwrap();
    assert!(!left.contains("broken-step-output"), "{left}");
}

on_both_engines!(
    built_once_reused_while_unchanged_rebuilt_on_one_byte,
    a_base_matrix_builds_one_image_per_base_shared_by_its_cells,
    a_failing_build_fails_its_cells_with_the_build_tail,
);
