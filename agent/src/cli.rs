//! The command line (argh). Exit status: 0 passed (warnings included), 1 a stage
//! failed, 2 refused (bad ticket, bad arguments), 3 infrastructure error.
use argh::FromArgs;
use std::path::PathBuf;

/// Exit status: the run passed (warnings and skips included).
pub const EXIT_PASSED: i32 = 0;
/// Exit status: a stage failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit status: refused (bad ticket, bad arguments).
pub const EXIT_REFUSED: i32 = 2;
/// Exit status: infrastructure error.
pub const EXIT_INFRA: i32 = 3;

/// kiln agent: verifies a run ticket, runs its stages, reports signed frames.
#[derive(FromArgs, Debug)]
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
}

/// Check a ticket (signature, trusted key, expiry, host binding) and print its plan.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
pub struct VerifyCmd {
    /// ticket file
    #[argh(option)]
    pub ticket: PathBuf,
    /// trusted public key file
    #[argh(option)]
    pub trust: PathBuf,
}

/// Verify a ticket, run its stages, report to the coordinator or into a bundle.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
// The doc comments are argh's --help text, where `<run>` reads as a placeholder.
#[allow(rustdoc::invalid_html_tags)]
pub struct RunCmd {
    /// ticket file or URL
    #[argh(option)]
    pub ticket: String,
    /// trusted public key file
    #[argh(option)]
    pub trust: PathBuf,
    /// coordinator URL (overrides the ticket's)
    #[argh(option)]
    pub url: Option<String>,
    /// write an offline result bundle here instead of reporting online
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// work folder: spool, unpacked tests, claim key (default ./kiln-work/<run>)
    #[argh(option)]
    pub work: Option<PathBuf>,
    /// folder of CAS objects for offline runs (default: <ticket>.cas beside the ticket)
    #[argh(option)]
    pub cas: Option<PathBuf>,
    /// offline secret NAME=FILE (repeatable)
    #[argh(option)]
    pub secret: Vec<String>,
    /// the host key from `enroll`, used as the claim key when the ticket names an
    /// enrolled key (default /var/lib/kiln/agent.key)
    #[argh(option)]
    pub agent_key: Option<PathBuf>,
}

/// Netboot mode: read kiln.url / kiln.run from /proc/cmdline, trust
/// /etc/kiln/trusted.pub, run, report, power off.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "boot")]
pub struct BootCmd {
    /// kernel command line file (default /proc/cmdline)
    #[argh(option, default = "PathBuf::from(\"/proc/cmdline\")")]
    pub cmdline: PathBuf,
    /// trusted key file (default /etc/kiln/trusted.pub)
    #[argh(option, default = "PathBuf::from(\"/etc/kiln/trusted.pub\")")]
    pub trust: PathBuf,
    /// do not power off at the end (for debugging)
    #[argh(switch)]
    pub no_poweroff: bool,
    /// the host key from `enroll`, used as the claim key when the ticket names an
    /// enrolled key (default /var/lib/kiln/agent.key)
    #[argh(option)]
    pub agent_key: Option<PathBuf>,
}

/// Make this host's agent key (0600; an existing one is kept, never overwritten) and
/// print its public key line for `kiln-coordinator host add NAME --agent-key`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "enroll")]
pub struct EnrollCmd {
    /// key file (default /var/lib/kiln/agent.key)
    #[argh(option)]
    pub key: Option<PathBuf>,
}

/// Runs a parsed command line; returns the exit status.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Verify(c) => crate::verify::cmd_verify(&c),
        Command::Run(c) => crate::runner::cmd_run(&c),
        Command::Boot(c) => crate::boot::cmd_boot(&c),
        Command::Enroll(c) => crate::hostkey::cmd_enroll(&c),
    }
}

/// Parses the process's arguments; `--help` prints and exits 0, bad arguments print
/// the reason and exit 2 (refused).
pub fn from_env() -> Cli {
    kiln_cmdline::args::from_env()
}
