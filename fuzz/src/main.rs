//! `kiln-fuzz`: runs the fuzz targets on stable Rust, writes the seed corpus, replays
//! saved inputs. See `fuzz/README.md`.
use argh::FromArgs;
use kiln_fuzz::{TARGETS, run, seeds, target};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(FromArgs)]
/// kiln's fuzz runner (stable Rust, no instrumentation).
struct Args {
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Run(RunCmd),
    Seed(SeedCmd),
    Replay(ReplayCmd),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "run")]
/// fuzz one target: its corpus as is, then mutations of it.
struct RunCmd {
    /// the target (ticket, batch, ack, bundle, plan, http)
    #[argh(positional)]
    target: String,
    /// executions in all (default 10000000)
    #[argh(option, default = "10_000_000")]
    execs: u64,
    /// mutation RNG seed (default 1)
    #[argh(option, default = "1")]
    seed: u64,
    /// the corpus folder (default fuzz/corpus/TARGET)
    #[argh(option)]
    corpus: Option<PathBuf>,
    /// save up to this many of the inputs that reached a new outcome class into the
    /// corpus folder as `found-<hash>` (default 0)
    #[argh(option, default = "0")]
    keep: usize,
    /// seconds between progress lines (default 30; 0: none)
    #[argh(option, default = "30")]
    progress: u64,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "seed")]
/// write the generated seeds into fuzz/corpus/TARGET/seed-* (all targets if none named).
struct SeedCmd {
    /// targets
    #[argh(positional)]
    targets: Vec<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "replay")]
/// run saved inputs once each (a crash file, a corpus folder, or the inflight file
/// an aborted run left, with --inflight).
struct ReplayCmd {
    /// the target
    #[argh(positional)]
    target: String,
    /// input files or folders
    #[argh(positional)]
    inputs: Vec<PathBuf>,
    /// the inputs are inflight files (8-byte length, then the input)
    #[argh(switch)]
    inflight: bool,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    match args.cmd {
        Cmd::Run(c) => run_cmd(c),
        Cmd::Seed(c) => {
            let names: Vec<String> = if c.targets.is_empty() {
                TARGETS.iter().map(|s| s.to_string()).collect()
            } else {
                c.targets
            };
            for name in names {
                let dir = run::corpus_dir(&name);
                std::fs::create_dir_all(&dir).expect("corpus folder");
                for (seed, bytes) in seeds::seeds(&name) {
                    std::fs::write(dir.join(format!("seed-{seed}")), bytes).expect("write");
                }
                println!("{name}: seeds written to {}", dir.display());
            }
            ExitCode::SUCCESS
        }
        Cmd::Replay(c) => {
            let Some(mut t) = target(&c.target) else {
                eprintln!("no target {:?} (one of {})", c.target, TARGETS.join(", "));
                return ExitCode::from(2);
            };
            let mut bad = 0;
            for p in &c.inputs {
                let files = if p.is_dir() {
                    run::load_corpus(p)
                } else {
                    vec![std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))]
                };
                for mut data in files {
                    if c.inflight && data.len() >= 8 {
                        let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
                        data = data[8..].iter().copied().take(n as usize).collect();
                    }
                    match run::run_one(t.as_mut(), &data) {
                        Ok(_) => println!("{}: ok ({} bytes)", p.display(), data.len()),
                        Err(m) => {
                            bad += 1;
                            println!("{}: CRASH {m}", p.display());
                        }
                    }
                }
            }
            if bad > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

fn run_cmd(c: RunCmd) -> ExitCode {
    let Some(mut t) = target(&c.target) else {
        eprintln!("no target {:?} (one of {})", c.target, TARGETS.join(", "));
        return ExitCode::from(2);
    };
    let dir = c.corpus.unwrap_or_else(|| run::corpus_dir(&c.target));
    let mut corpus = run::load_corpus(&dir);
    corpus.extend(seeds::seeds(&c.target).into_iter().map(|(_, b)| b));
    let inflight = std::env::temp_dir().join(format!("kiln-fuzz-{}.inflight", c.target));
    let opts = run::Options {
        execs: c.execs,
        seed: c.seed,
        crash_dir: Some(dir.clone()),
        inflight: Some(inflight),
        progress: (c.progress > 0).then(|| Duration::from_secs(c.progress)),
        max_live: 4096,
    };
    println!(
        "{}: {} corpus inputs from {}, seed {}, {} execs",
        c.target,
        corpus.len(),
        dir.display(),
        c.seed,
        c.execs
    );
    let s = run::fuzz(&c.target, t.as_mut(), corpus, &opts);
    println!(
        "{}: {} execs in {:.0} s ({:.0}/s), {} crashes, {} accepted, {} outcome classes, {} live inputs, slowest exec {:.1} ms",
        c.target,
        s.execs,
        s.secs,
        s.rate(),
        s.crashes,
        s.accepted,
        s.classes,
        s.live,
        s.slowest_ms
    );
    for input in s.found.iter().take(c.keep) {
        println!("  kept {}", run::save(&dir, "found", input).display());
    }
    for (input, msg) in &s.crash_inputs {
        println!("  crash ({} bytes): {msg}", input.len());
    }
    if s.crashes > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
