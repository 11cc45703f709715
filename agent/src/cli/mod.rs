//! The command layer, on top of the agent: argh types and `cmd_*` handlers that
//! translate arguments into plain calls of the domain modules, which never import
//! this one. One file per command; exit statuses are [`crate::exit`]'s.
use argh::FromArgs;

mod boot;
mod enroll;
mod gc;
mod run;
mod verify;

// Absolute paths, so the CI cycle check (`.ci/modcycles.py`, which follows
// `crate::` paths) sees this module import its commands: a domain module importing
// `crate::cli` then closes a cycle and fails the check.
pub use crate::cli::boot::BootCmd;
pub use crate::cli::enroll::EnrollCmd;
pub use crate::cli::gc::GcCmd;
pub use crate::cli::run::RunCmd;
pub use crate::cli::verify::VerifyCmd;

/// kiln agent: verifies a run ticket, runs its stages, reports signed frames.
#[derive(FromArgs, Debug)]
#[argh(note = "kiln-agent --version prints the version, the git commit and the wire format.")]
pub struct Cli {
    #[argh(subcommand)]
    /// the command
    pub command: Command,
}

/// Agent commands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(missing_docs)]
pub enum Command {
    Verify(VerifyCmd),
    Run(RunCmd),
    Boot(BootCmd),
    Enroll(EnrollCmd),
    Gc(GcCmd),
}

/// Runs a parsed command line; returns the exit status.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Verify(c) => crate::cli::verify::cmd_verify(&c),
        Command::Run(c) => crate::cli::run::cmd_run(&c),
        Command::Boot(c) => crate::cli::boot::cmd_boot(&c),
        Command::Enroll(c) => crate::cli::enroll::cmd_enroll(&c),
        Command::Gc(c) => crate::cli::gc::cmd_gc(&c),
    }
}

/// `kiln-agent --version`'s line: the crate version, the git commit it was built from
/// when the build knew it, and the wire-format version ([`kiln_protocol::VERSION`]).
pub fn version_line() -> String {
    let commit = option_env!("KILN_GIT_COMMIT").unwrap_or("unknown");
    format!(
        "kiln-agent {} (commit {commit}, wire format {})",
        env!("CARGO_PKG_VERSION"),
        kiln_protocol::VERSION
    )
}

/// Parses the process's arguments (`--version` alone prints [`version_line`] and
/// exits 0); `--help` prints and exits 0, bad arguments print
/// the reason and exit 2 (refused, [`crate::exit::EXIT_REFUSED`]).
pub fn from_env() -> Cli {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["--version"] {
        println!("{}", version_line());
        std::process::exit(crate::exit::EXIT_PASSED);
    }
    kiln_cmdline::args::from_env()
}
