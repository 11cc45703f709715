//! The command line, the top of the coordinator: the top-level argh types,
//! `--version`, parsing the process's arguments and the dispatch to the command
//! handlers (`commands/`, one file per command group, each with its argh types).
//! Nothing below imports this file.
use anyhow::Result;
use argh::FromArgs;
use std::path::PathBuf;

use crate::commands::admin::{
    DnsmasqCmd, HostAddCmd, HostListCmd, HostSetCmd, ImageAddCmd, InitCmd, KeyCmd, SecretSetCmd,
};
use crate::commands::gc::GcCmd;
use crate::commands::hold::{RunApproveCmd, RunReleaseCmd, RunRetryCmd};
use crate::commands::notify::{NotifyAddCmd, NotifyListCmd, NotifyRmCmd, NotifyStatusCmd};
use crate::commands::power::HostPowerCmd;
use crate::commands::runs::{
    ImportCmd, ReportCmd, RunAbortCmd, RunAckContestCmd, RunLogsCmd, RunShowCmd, RunsCmd,
};
use crate::commands::serve::ServeCmd;
use crate::commands::ticket::{TicketIssueCmd, TicketShowCmd};
use crate::commands::users::{TokenCmd, TokenSub, UserCmd, UserSub};
use crate::commands::watch::RunWatchCmd;
use crate::commands::{admin, gc, hold, notify, power, runs, serve, ticket, users, watch};
use crate::exit;
use crate::state::{State, resolve_root};

/// kiln coordinator: signs run tickets, serves iPXE scripts and artifacts, ingests reports.
#[derive(FromArgs, Debug)]
pub struct Cli {
    /// state folder (default: $KILN_STATE or ./kiln-state)
    #[argh(option)]
    pub state: Option<PathBuf>,
    #[argh(subcommand)]
    /// the command
    pub command: Command,
}

/// Top-level commands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(missing_docs)]
pub enum Command {
    Init(InitCmd),
    Serve(ServeCmd),
    Key(KeyCmd),
    Host(HostCmd),
    Secret(SecretCmd),
    Ticket(TicketCmd),
    Runs(RunsCmd),
    Run(RunCmd),
    Import(ImportCmd),
    Report(ReportCmd),
    Image(ImageCmd),
    Dnsmasq(DnsmasqCmd),
    Gc(GcCmd),
    User(UserCmd),
    Token(TokenCmd),
    Notify(NotifyCmd),
}

/// Manage hosts.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "host")]
pub struct HostCmd {
    #[argh(subcommand)]
    /// host command
    pub command: HostSub,
}

/// Host subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(missing_docs)]
pub enum HostSub {
    Add(HostAddCmd),
    Set(HostSetCmd),
    List(HostListCmd),
    Power(HostPowerCmd),
}

/// Manage secrets.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "secret")]
pub struct SecretCmd {
    #[argh(subcommand)]
    /// secret command
    pub command: SecretSub,
}

/// Secret subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(missing_docs)]
pub enum SecretSub {
    Set(SecretSetCmd),
}

/// Issue and inspect tickets.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "ticket")]
pub struct TicketCmd {
    #[argh(subcommand)]
    /// ticket command
    pub command: TicketSub,
}

/// Ticket subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(missing_docs)]
pub enum TicketSub {
    Issue(TicketIssueCmd),
    Show(TicketShowCmd),
}

/// Inspect and steer one run.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub struct RunCmd {
    #[argh(subcommand)]
    /// run command
    pub command: RunSub,
}

/// Run subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(missing_docs)]
pub enum RunSub {
    Show(RunShowCmd),
    Watch(RunWatchCmd),
    Logs(RunLogsCmd),
    Abort(RunAbortCmd),
    AckContest(RunAckContestCmd),
    Release(RunReleaseCmd),
    Retry(RunRetryCmd),
    Approve(RunApproveCmd),
}

/// Manage netboot images.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "image")]
pub struct ImageCmd {
    #[argh(subcommand)]
    /// image command
    pub command: ImageSub,
}

/// Image subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(missing_docs)]
pub enum ImageSub {
    Add(ImageAddCmd),
}

/// Notification receivers and the outbox.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "notify")]
pub struct NotifyCmd {
    #[argh(subcommand)]
    /// notify command
    pub command: NotifySub,
}

/// Notify subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(missing_docs)]
pub enum NotifySub {
    Add(NotifyAddCmd),
    List(NotifyListCmd),
    Rm(NotifyRmCmd),
    Status(NotifyStatusCmd),
}

/// Runs a parsed command line; returns the process exit code ([`crate::exit`]).
pub fn run(cli: Cli) -> Result<i32> {
    let root = resolve_root(cli.state);
    if let Command::Init(_) = cli.command {
        return admin::cmd_init(&root);
    }
    if let Command::Dnsmasq(c) = &cli.command {
        return admin::cmd_dnsmasq(c);
    }
    let state = State::open(&root)?;
    match cli.command {
        Command::Init(_) | Command::Dnsmasq(_) => unreachable!("handled above"),
        Command::Serve(c) => serve::cmd_serve(&state, &c),
        Command::Key(_) => admin::cmd_key(&state),
        Command::Host(HostCmd {
            command: HostSub::Add(c),
        }) => admin::cmd_host_add(&state, &c),
        Command::Host(HostCmd {
            command: HostSub::Set(c),
        }) => admin::cmd_host_set(&state, &c),
        Command::Host(HostCmd {
            command: HostSub::List(_),
        }) => admin::cmd_host_list(&state),
        Command::Host(HostCmd {
            command: HostSub::Power(c),
        }) => power::cmd_host_power(&state, &c),
        Command::Secret(SecretCmd {
            command: SecretSub::Set(c),
        }) => admin::cmd_secret_set(&state, &c),
        Command::Ticket(TicketCmd {
            command: TicketSub::Issue(c),
        }) => ticket::cmd_issue(&state, &c),
        Command::Ticket(TicketCmd {
            command: TicketSub::Show(c),
        }) => ticket::cmd_show(&state, &c),
        Command::Runs(c) => runs::cmd_runs(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Show(c),
        }) => runs::cmd_show(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Watch(c),
        }) => watch::cmd_watch(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Logs(c),
        }) => runs::cmd_logs(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Abort(c),
        }) => runs::cmd_abort(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::AckContest(c),
        }) => runs::cmd_ack_contest(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Release(c),
        }) => hold::cmd_release(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Retry(c),
        }) => hold::cmd_retry(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Approve(c),
        }) => hold::cmd_approve(&state, &c),
        Command::Import(c) => runs::cmd_import(&state, &c),
        Command::Report(c) => runs::cmd_report(&state, &c),
        Command::Gc(c) => gc::cmd_gc(&state, &c),
        Command::User(UserCmd {
            command: UserSub::Add(c),
        }) => users::cmd_user_add(&state, &c),
        Command::User(UserCmd {
            command: UserSub::Rm(c),
        }) => users::cmd_user_rm(&state, &c),
        Command::Token(TokenCmd {
            command: TokenSub::Create(c),
        }) => users::cmd_token_create(&state, &c),
        Command::Token(TokenCmd {
            command: TokenSub::List(_),
        }) => users::cmd_token_list(&state),
        Command::Token(TokenCmd {
            command: TokenSub::Rm(c),
        }) => users::cmd_token_rm(&state, &c),
        Command::Notify(NotifyCmd { command }) => match command {
            NotifySub::Add(c) => notify::cmd_add(&state, &c),
            NotifySub::List(_) => notify::cmd_list(&state),
            NotifySub::Rm(c) => notify::cmd_rm(&state, &c),
            NotifySub::Status(c) => notify::cmd_status(&state, &c),
        },
        Command::Image(ImageCmd {
            command: ImageSub::Add(c),
        }) => admin::cmd_image_add(&state, &c),
    }
}

/// The git commit the binary was built from, when the build knew it (`build.rs`:
/// `git rev-parse`, or the `KILN_GIT_COMMIT` environment variable).
pub const GIT_COMMIT: Option<&str> = option_env!("KILN_GIT_COMMIT");

/// What `--version` prints: the crate version, the git commit when known, and the
/// wire-format version of tickets, batches and bundles.
pub fn version_text() -> String {
    format!(
        "kiln-coordinator {} (commit {}, wire format {})",
        env!("CARGO_PKG_VERSION"),
        GIT_COMMIT.filter(|c| !c.is_empty()).unwrap_or("unknown"),
        kiln_protocol::VERSION
    )
}

/// Parses the process's arguments; `--help` prints and exits 0, `--version` (as the
/// first argument) prints [`version_text`] and exits 0, bad arguments print the
/// reason and exit 2 (refused).
pub fn from_env() -> Cli {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("{}", version_text());
        std::process::exit(exit::OK)
    }
    kiln_cmdline::args::from_env()
}
