//! The command layer: runs a parsed command line ([`crate::cli`]) by translating its
//! arguments into plain calls on the domain modules, and prints the results. Nothing
//! below this layer imports it or [`crate::cli`].
use anyhow::Result;

use crate::cli::{
    Cli, Command, HostCmd, HostSub, ImageCmd, ImageSub, RunCmd, RunSub, SecretCmd, SecretSub,
    TicketCmd, TicketSub,
};
use crate::state::{State, resolve_root};

pub mod admin;
pub mod runs;
pub mod serve;
pub mod ticket;
pub mod watch;

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
            command: HostSub::List(_),
        }) => admin::cmd_host_list(&state),
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
        Command::Import(c) => runs::cmd_import(&state, &c),
        Command::Report(c) => runs::cmd_report(&state, &c),
        Command::Image(ImageCmd {
            command: ImageSub::Add(c),
        }) => admin::cmd_image_add(&state, &c),
    }
}
