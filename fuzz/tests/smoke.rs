//! The CI smoke run: every target over its kept corpus and its generated seeds,
//! then a few thousand mutations, with no crash. Long runs: `fuzz/README.md`.
use kiln_fuzz::run::{self, Options};
use kiln_fuzz::{TARGETS, seeds, target};

/// Mutations per target after the corpus (deterministic: seed 1).
const MUTATIONS: u64 = 3_000;

fn smoke(name: &str) {
    let mut t = target(name).expect("target");
    let mut corpus = run::load_corpus(&run::corpus_dir(name));
    let kept = corpus.len();
    assert!(kept > 0, "fuzz/corpus/{name} is empty");
    let generated = seeds::seeds(name);
    assert!(!generated.is_empty(), "no seeds for {name}");
    corpus.extend(generated.into_iter().map(|(_, b)| b));
    let n = corpus.len() as u64 + MUTATIONS;
    let s = run::fuzz(name, t.as_mut(), corpus, &Options::quiet(n, 1));
    assert_eq!(s.execs, n);
    let msgs: Vec<&str> = s.crash_inputs.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(s.crashes, 0, "{name}: {} crashes: {msgs:#?}", s.crashes);
    println!(
        "{name}: {} kept inputs, {} execs, {} outcome classes",
        kept, s.execs, s.classes
    );
}

#[test]
fn ticket() {
    smoke("ticket");
}

#[test]
fn batch() {
    smoke("batch");
}

#[test]
fn ack() {
    smoke("ack");
}

#[test]
fn bundle() {
    smoke("bundle");
}

#[test]
fn plan() {
    smoke("plan");
}

#[test]
fn http() {
    smoke("http");
}

#[test]
fn every_target_has_a_smoke_test_and_a_corpus() {
    for name in TARGETS {
        assert!(target(name).is_some(), "{name}");
        assert!(
            run::corpus_dir(name).is_dir(),
            "fuzz/corpus/{name} is missing"
        );
    }
}

/// The seeds do what the targets expect of them: the valid ones are accepted, so
/// the mutations start from inputs that get past the format checks.
#[test]
fn seeds_are_accepted() {
    use kiln_protocol::{Batch, SignedTicket};
    let key = kiln_fuzz::fixtures::coordinator_key().public();
    for (n, b) in seeds::seeds("ticket") {
        SignedTicket::from_file(&b)
            .and_then(|t| t.verify(&[key]))
            .unwrap_or_else(|e| panic!("ticket seed {n}: {e}"));
    }
    let agent = kiln_fuzz::fixtures::agent_key().public();
    for (n, b) in seeds::seeds("batch") {
        if n != "secrets-request" {
            Batch::open(&b, &agent).unwrap_or_else(|e| panic!("batch seed {n}: {e}"));
        }
    }
    let (_, whole) = &seeds::seeds("bundle")[0];
    let lab = kiln_fuzz::fixtures::Lab::new();
    let limits = kiln_coordinator::http::Limits::from_env().expect("limits");
    let i = kiln_coordinator::ingest::import_bundle(&lab.state, &whole[..], &limits)
        .expect("bundle seed imports");
    assert_eq!(i.frames, 9);
    let agent_key = kiln_fuzz::fixtures::agent_key().public();
    for (n, b) in seeds::seeds("ack") {
        if n.starts_with("secrets") {
            continue;
        }
        kiln_protocol::Ack::open(&b, &key, &agent_key)
            .unwrap_or_else(|e| panic!("ack seed {n}: {e}"));
    }
    assert!(
        seeds::example_plans().len() >= 4,
        "examples/plans is missing plans"
    );
}

/// A panic inside a target is counted and its input kept, and the runner goes on.
#[test]
fn a_panicking_target_is_a_crash() {
    struct Picky;
    impl kiln_fuzz::Target for Picky {
        fn run(&mut self, data: &[u8]) -> u64 {
            assert!(!data.starts_with(b"AB"), "found it");
            0
        }
        fn accepted(&self) -> u64 {
            0
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        crash_dir: Some(dir.path().to_path_buf()),
        ..Options::quiet(20_000, 7)
    };
    let s = run::fuzz(
        "ack",
        &mut Picky,
        vec![b"A".to_vec(), b"xB".to_vec()],
        &opts,
    );
    assert!(s.crashes > 0, "the mutator never made AB");
    assert_eq!(s.execs, 20_000);
    assert!(
        s.crash_inputs
            .iter()
            .all(|(i, m)| i.starts_with(b"AB") && m.contains("found it"))
    );
    let saved = run::load_corpus(dir.path());
    assert!(!saved.is_empty() && saved.iter().all(|i| i.starts_with(b"AB")));
}
