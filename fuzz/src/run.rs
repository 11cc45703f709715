//! The runner: the kept corpus as is, then mutations of it, counting executions and
//! crashes (panics), growing a live corpus with inputs that reach a new outcome class.
use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::{Target, dictionary, max_len, mutate::mutate, stable_hash};

/// How long and how a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Executions in all (the kept corpus first, then mutations).
    pub execs: u64,
    /// Seed of the mutation RNG: the same seed, corpus and target make the same run.
    pub seed: u64,
    /// Where crashing inputs are saved (`crash-<hash>`); none: not saved.
    pub crash_dir: Option<PathBuf>,
    /// A file that always holds the input being run (8-byte LE length, then the
    /// bytes), so an abort the runner cannot catch (out of memory, stack overflow)
    /// leaves its input behind.
    pub inflight: Option<PathBuf>,
    /// Print a progress line this often (none: quiet).
    pub progress: Option<Duration>,
    /// Most inputs kept in the live corpus.
    pub max_live: usize,
}

impl Options {
    /// `execs` executions from `seed`, quiet, nothing saved.
    pub fn quiet(execs: u64, seed: u64) -> Self {
        Options {
            execs,
            seed,
            crash_dir: None,
            inflight: None,
            progress: None,
            max_live: 4096,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Executions.
    pub execs: u64,
    /// Executions that panicked.
    pub crashes: u64,
    /// The first crashing inputs (at most 20) with their panic messages.
    pub crash_inputs: Vec<(Vec<u8>, String)>,
    /// Distinct outcome classes reached.
    pub classes: usize,
    /// Inputs in the live corpus at the end.
    pub live: usize,
    /// The inputs that joined the live corpus (each reached a new outcome class).
    pub found: Vec<Vec<u8>>,
    /// Wall time, seconds.
    pub secs: f64,
    /// Inputs that got all the way through ([`Target::accepted`]).
    pub accepted: u64,
    /// The slowest single execution, milliseconds.
    pub slowest_ms: f64,
}

impl Stats {
    /// Executions per second.
    pub fn rate(&self) -> f64 {
        self.execs as f64 / self.secs.max(1e-9)
    }
}

thread_local! {
    /// Set while this thread runs a target: the panic hook records instead of printing.
    static CAUGHT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records the message and location of a panic on
/// a fuzzing thread and leaves other threads' panics to the previous hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let fuzzing = CAUGHT.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        *slot = Some(info.to_string().replace('\n', " "));
                        true
                    }
                    None => false,
                }
            });
            if !fuzzing {
                prev(info);
            }
        }));
    });
}

/// Runs `data` once; `Err(message)` if it panicked.
pub fn run_one(target: &mut dyn Target, data: &[u8]) -> Result<u64, String> {
    install_hook();
    CAUGHT.with(|c| *c.borrow_mut() = Some(None));
    let r = panic::catch_unwind(AssertUnwindSafe(|| target.run(data)));
    let msg = CAUGHT.with(|c| c.borrow_mut().take()).flatten();
    r.map_err(|_| msg.unwrap_or_else(|| "panic".into()))
}

/// Fuzzes `target` (named `name`, for its length cap and dictionary) for
/// `opts.execs` executions, starting from `corpus` (which must not be empty).
pub fn fuzz(name: &str, target: &mut dyn Target, corpus: Vec<Vec<u8>>, opts: &Options) -> Stats {
    assert!(!corpus.is_empty(), "target {name}: empty corpus");
    let (dict, cap) = (dictionary(name), max_len(name));
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let inflight = opts
        .inflight
        .as_ref()
        .map(|p| File::create(p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display())));
    let mut stats = Stats::default();
    let mut classes: HashSet<u64> = HashSet::new();
    let mut live = corpus;
    let kept = live.len();
    let start = Instant::now();
    let mut next_report = opts.progress.map(|p| start + p);
    let mut input = Vec::new();
    while stats.execs < opts.execs {
        let i = stats.execs as usize;
        if i < kept {
            input.clone_from(&live[i]);
        } else {
            let pick = rng.usize(0..live.len());
            input.clone_from(&live[pick]);
            let other = &live[rng.usize(0..live.len())];
            mutate(&mut rng, &mut input, other, dict, cap);
        }
        if let Some(f) = &inflight {
            let mut rec = (input.len() as u64).to_le_bytes().to_vec();
            rec.extend_from_slice(&input);
            let _ = f
                .write_at(&rec, 0)
                .and_then(|_| f.set_len(rec.len() as u64));
        }
        let t0 = Instant::now();
        let outcome = run_one(target, &input);
        stats.slowest_ms = stats.slowest_ms.max(t0.elapsed().as_secs_f64() * 1000.0);
        stats.execs += 1;
        match outcome {
            Ok(class) => {
                if classes.insert(class) && i >= kept && live.len() < opts.max_live {
                    live.push(input.clone());
                }
            }
            Err(msg) => {
                stats.crashes += 1;
                classes.insert(stable_hash(&msg));
                if stats.crash_inputs.len() < 20 {
                    if let Some(dir) = &opts.crash_dir {
                        save(dir, "crash", &input);
                    }
                    eprintln!("{name}: CRASH at exec {}: {msg}", stats.execs);
                    stats.crash_inputs.push((input.clone(), msg));
                }
            }
        }
        if let Some(at) = next_report
            && stats.execs % 256 == 0
            && Instant::now() >= at
        {
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "{name}: {} execs, {:.0}/s, {} crashes, {} classes, {} live",
                stats.execs,
                stats.execs as f64 / secs,
                stats.crashes,
                classes.len(),
                live.len()
            );
            next_report = Some(Instant::now() + opts.progress.unwrap_or_default());
        }
    }
    stats.secs = start.elapsed().as_secs_f64();
    stats.classes = classes.len();
    stats.live = live.len();
    stats.found = live.split_off(kept);
    stats.accepted = target.accepted();
    stats
}

/// Writes `data` to `dir/<prefix>-<hash>` (the hash makes names stable).
pub fn save(dir: &Path, prefix: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(format!("{prefix}-{:016x}", stable_hash(data)));
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut f) = File::create(&path) {
        let _ = f.write_all(data);
    }
    path
}

/// The files of a corpus folder, sorted by name (empty if there is none).
pub fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.retain(|p| p.is_file());
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// `fuzz/corpus/<target>` in this source tree.
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}
