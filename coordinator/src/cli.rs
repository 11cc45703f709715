//! The command line (argh) and its dispatch to the library's modules.
use anyhow::Result;
use argh::FromArgs;
use std::path::PathBuf;

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
}

/// Create the state folder and signing key (idempotent); print the public key.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "init")]
pub struct InitCmd {}

/// Run the HTTP server.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
pub struct ServeCmd {
    /// address to listen on (default 127.0.0.1:7373; port 0 picks one)
    #[argh(option, default = "kiln_protocol::DEFAULT_LISTEN.to_string()")]
    pub listen: String,
    /// also run an iperf3 server for network stages (on iperf3's default port)
    #[argh(switch)]
    pub iperf: bool,
    /// write the bound address to this file once listening (for scripts and tests)
    #[argh(option)]
    pub addr_file: Option<PathBuf>,
    /// most bytes all artifact uploads of one run may take (default 4G, or
    /// KILN_RUN_ARTIFACT_QUOTA)
    #[argh(option)]
    pub upload_quota: Option<String>,
    /// check a claim's source address against the neighbour table: on (default) or
    /// off. A claim whose address maps to a MAC the ticket does not name is refused
    #[argh(option, default = "String::from(\"on\")")]
    pub claim_check: String,
    /// the IPv4 neighbour table read by the claim check (default /proc/net/arp;
    /// another file in its format, for tests)
    #[argh(option)]
    pub neigh_table: Option<PathBuf>,
    /// most connections open at once; more are answered 503 and closed (default
    /// 4096, less if the open-file limit is lower)
    #[argh(option)]
    pub max_connections: Option<usize>,
    /// seconds one read of a request's header or body may wait, and a header may take
    /// in all (default 30)
    #[argh(option)]
    pub read_timeout: Option<u64>,
    /// seconds an idle keep-alive connection stays open (default 60)
    #[argh(option)]
    pub idle_timeout: Option<u64>,
}

/// Print the public key and its fingerprint.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "key")]
pub struct KeyCmd {}

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
    List(HostListCmd),
}

/// Add a host (or update it): name, MACs, serial, image.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct HostAddCmd {
    /// host name
    #[argh(positional)]
    pub name: String,
    /// MAC address (repeatable)
    #[argh(option)]
    pub mac: Vec<String>,
    /// DMI product serial
    #[argh(option)]
    pub serial: Option<String>,
    /// netboot image name
    #[argh(option)]
    pub image: Option<String>,
    /// enrol the host's agent key: the line `kiln-agent enroll` printed
    /// (`kiln-ed25519 <base64> [comment]`), a file holding it, or `none` to unenrol
    #[argh(option)]
    pub agent_key: Option<String>,
}

/// List hosts.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct HostListCmd {}

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

/// Store a secret a plan can name.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "set")]
pub struct SecretSetCmd {
    /// secret name
    #[argh(positional)]
    pub name: String,
    /// file holding the value
    #[argh(option)]
    pub file: PathBuf,
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

/// Sign a ticket for a host; prints the run id.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "issue")]
pub struct TicketIssueCmd {
    /// plan file (TOML)
    #[argh(option)]
    pub plan: PathBuf,
    /// host name (hosts.toml)
    #[argh(option)]
    pub host: String,
    /// validity, e.g. 24h (default 24h)
    #[argh(option, default = "String::from(\"24h\")")]
    pub ttl: String,
    /// coordinator URL the agent reports to (default: none, offline)
    #[argh(option)]
    pub url: Option<String>,
    /// also write the ticket file here
    #[argh(option)]
    pub out: Option<PathBuf>,
}

/// Decode, verify and pretty-print a ticket file.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "show")]
pub struct TicketShowCmd {
    /// ticket file
    #[argh(positional)]
    pub file: PathBuf,
    /// JSON output
    #[argh(switch)]
    pub json: bool,
}

/// List runs and their status.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "runs")]
pub struct RunsCmd {
    /// JSON output
    #[argh(switch)]
    pub json: bool,
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
}

/// Stages, outcomes, measurements, artifacts.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "show")]
pub struct RunShowCmd {
    /// run id or unique prefix (8+ hex digits)
    #[argh(positional)]
    pub run: String,
    /// JSON output
    #[argh(switch)]
    pub json: bool,
    /// print text from the run as stored, control characters included (by default
    /// they are shown as escapes such as \x1b)
    #[argh(switch)]
    pub raw: bool,
}

/// Follow a run live until it ends.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "watch")]
pub struct RunWatchCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
}

/// The full log, every line once, in order.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "logs")]
pub struct RunLogsCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
    /// only this stage
    #[argh(option)]
    pub stage: Option<String>,
    /// print the lines' exact bytes, control characters included (by default they
    /// are shown as escapes such as \x1b)
    #[argh(switch)]
    pub raw: bool,
}

/// Abort a run: reaches the agent with its next ack.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "abort")]
pub struct RunAbortCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
    /// why
    #[argh(option, default = "String::from(\"aborted by operator\")")]
    pub reason: String,
}

/// Acknowledge a run's contested claims: it stops showing `contested` (the record
/// of every claim stays in runs/<run>/claims).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "ack-contest")]
// The doc comment is argh's --help text, where `<run>` reads as a placeholder.
#[allow(rustdoc::invalid_html_tags)]
pub struct RunAckContestCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
}

/// Ingest an offline result bundle (same path as online reports).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "import")]
pub struct ImportCmd {
    /// bundle file
    #[argh(positional)]
    pub bundle: PathBuf,
}

/// Write a run's report.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "report")]
pub struct ReportCmd {
    /// run id or unique prefix
    #[argh(positional)]
    pub run: String,
    /// html, json or junit (default json)
    #[argh(option, default = "String::from(\"json\")")]
    pub format: String,
    /// output file (default stdout)
    #[argh(option)]
    pub out: Option<PathBuf>,
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

/// Store a kernel + initrd pair in the CAS under a name.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct ImageAddCmd {
    /// image name
    #[argh(positional)]
    pub name: String,
    /// kernel file
    #[argh(option)]
    pub kernel: PathBuf,
    /// initrd file
    #[argh(option)]
    pub initrd: PathBuf,
    /// extra kernel command line
    #[argh(option, default = "String::new()")]
    pub cmdline: String,
}

/// Print a dnsmasq snippet that chains PXE ROMs to iPXE and iPXE to /boot.ipxe.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "dnsmasq")]
pub struct DnsmasqCmd {
    /// coordinator base URL as seen by booting machines, e.g. http://10.0.0.1:7373
    #[argh(option)]
    pub url: String,
    /// proxy-DHCP mode for a network whose router already hands out addresses,
    /// given as the subnet, e.g. 10.0.0.0
    #[argh(option)]
    pub proxy: Option<String>,
    /// DHCP range for full DHCP mode, e.g. 10.0.0.100,10.0.0.200,12h
    #[argh(option)]
    pub range: Option<String>,
    /// interface to serve on
    #[argh(option)]
    pub interface: Option<String>,
    /// TFTP folder holding undionly.kpxe and ipxe.efi for plain PXE ROMs
    /// (default /usr/lib/ipxe, Debian's `ipxe` package)
    #[argh(option, default = "PathBuf::from(\"/usr/lib/ipxe\")")]
    pub tftp_root: PathBuf,
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let root = resolve_root(cli.state);
    if let Command::Init(_) = cli.command {
        return crate::setup::cmd_init(&root);
    }
    if let Command::Dnsmasq(c) = &cli.command {
        return crate::ipxe::cmd_dnsmasq(c);
    }
    let state = State::open(&root)?;
    match cli.command {
        Command::Init(_) | Command::Dnsmasq(_) => unreachable!("handled above"),
        Command::Serve(c) => crate::http::cmd_serve(&state, &c),
        Command::Key(_) => crate::setup::cmd_key(&state),
        Command::Host(HostCmd {
            command: HostSub::Add(c),
        }) => crate::setup::cmd_host_add(&state, &c),
        Command::Host(HostCmd {
            command: HostSub::List(_),
        }) => crate::setup::cmd_host_list(&state),
        Command::Secret(SecretCmd {
            command: SecretSub::Set(c),
        }) => crate::setup::cmd_secret_set(&state, &c),
        Command::Ticket(TicketCmd {
            command: TicketSub::Issue(c),
        }) => crate::ticket::cmd_issue(&state, &c),
        Command::Ticket(TicketCmd {
            command: TicketSub::Show(c),
        }) => crate::ticket::cmd_show(&state, &c),
        Command::Runs(c) => crate::report::cmd_runs(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Show(c),
        }) => crate::report::cmd_show(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Watch(c),
        }) => crate::report::cmd_watch(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Logs(c),
        }) => crate::report::cmd_logs(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::Abort(c),
        }) => crate::store::cmd_abort(&state, &c),
        Command::Run(RunCmd {
            command: RunSub::AckContest(c),
        }) => crate::claims::cmd_ack_contest(&state, &c),
        Command::Import(c) => crate::ingest::cmd_import(&state, &c),
        Command::Report(c) => crate::report::cmd_report(&state, &c),
        Command::Image(ImageCmd {
            command: ImageSub::Add(c),
        }) => crate::ipxe::cmd_image_add(&state, &c),
    }
}

/// Parses the process's arguments; `--help` prints and exits 0, bad arguments print
/// the reason and exit 2 (refused).
pub fn from_env() -> Cli {
    kiln_cmdline::args::from_env()
}
