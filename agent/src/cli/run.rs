//! `kiln-agent run`: flags into [`RunOptions`], then the run loop.
use argh::FromArgs;
use std::path::PathBuf;

use crate::end::RunEnd;
use crate::exit::EXIT_REFUSED;
use crate::runner::{RunOptions, fetch_ticket, run_ticket};
use crate::verify::{load_trust, read_ticket_file};

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
    /// when the plan asks for a hold (`hold = "on_failure"`), wait after the run for
    /// the coordinator's release, retry or approve (until the plan's `hold_for`); no
    /// SSH server is started
    #[argh(switch)]
    pub hold: bool,
}

/// `run`: returns the exit status.
pub fn cmd_run(c: &RunCmd) -> i32 {
    let opts = match options(c) {
        Ok(o) => o,
        Err((code, e)) => {
            eprintln!("kiln-agent: {e}");
            return code;
        }
    };
    let end = run_ticket(opts);
    match &end {
        RunEnd::Refused(r) => eprintln!("{r}"),
        RunEnd::Infra(r) => eprintln!("kiln-agent: {r}"),
        RunEnd::Finished { .. } => {}
    }
    end.exit_status()
}

/// Builds run options from the flags (reads the ticket, trusted keys and secrets);
/// `Err` carries the exit status and a one-line reason.
fn options(c: &RunCmd) -> Result<RunOptions, (i32, String)> {
    let refused = |e: String| (EXIT_REFUSED, e);
    let trusted = load_trust(&c.trust).map_err(refused)?;
    let (ticket_bytes, ticket_path) =
        if c.ticket.starts_with("http://") || c.ticket.starts_with("https://") {
            (fetch_ticket(&c.ticket)?, None)
        } else {
            let p = PathBuf::from(&c.ticket);
            let bytes = read_ticket_file(&p).map_err(refused)?;
            (bytes, Some(p))
        };
    Ok(RunOptions {
        ticket_bytes,
        ticket_path,
        trusted,
        url: c.url.clone(),
        out: c.out.clone(),
        work: c.work.clone(),
        cas_dir: c.cas.clone(),
        secrets: crate::secrets::from_flags(&c.secret).map_err(refused)?,
        agent_key: c.agent_key.clone(),
        // Outside boot mode the clock is never set (only its skew is reported).
        clock: None,
        hold: if c.hold {
            crate::hold::HoldMode::Wait
        } else {
            crate::hold::HoldMode::Off
        },
    })
}
