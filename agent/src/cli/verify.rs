//! `kiln-agent verify`: check a ticket and print its plan.
use argh::FromArgs;
use std::path::PathBuf;

use crate::exit::{EXIT_PASSED, EXIT_REFUSED};
use crate::hostinfo::HostInfo;
use crate::verify::{check_ticket, load_trust, now_s, read_ticket_file};

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

/// `verify`: exit 0 when valid (and print the plan), 2 with a one-line reason otherwise.
pub fn cmd_verify(c: &VerifyCmd) -> i32 {
    let result = (|| {
        let trusted = load_trust(&c.trust)?;
        let bytes = read_ticket_file(&c.ticket)?;
        check_ticket(&bytes, &trusted, now_s(), &HostInfo::detect())
    })();
    match result {
        Ok((_, t)) => {
            println!("ticket ok: run {} for host {}", t.run, t.host.name);
            println!("plan {:?}: {} stage(s)", t.plan.name, t.plan.stages.len());
            for (i, s) in t.plan.stages.iter().enumerate() {
                println!("  {}. {} ({})", i + 1, s.name, s.kind.name());
            }
            EXIT_PASSED
        }
        Err(reason) => {
            eprintln!("{reason}");
            EXIT_REFUSED
        }
    }
}
