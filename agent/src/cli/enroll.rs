//! `kiln-agent enroll`: make (or keep) this host's agent key and print its public line.
use argh::FromArgs;
use std::path::PathBuf;

use crate::exit::EXIT_PASSED;
use crate::hostkey::{DEFAULT_AGENT_KEY, enroll, public_line};

/// Make this host's agent key (0600; an existing one is kept, never overwritten) and
/// print its public key line for `kiln-coordinator host add NAME --agent-key`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "enroll")]
pub struct EnrollCmd {
    /// key file (default /var/lib/kiln/agent.key)
    #[argh(option)]
    pub key: Option<PathBuf>,
}

/// `enroll`: makes the host key (0600) unless one exists, and prints its public key
/// line. An existing key is never overwritten: its public line is printed again.
pub fn cmd_enroll(c: &EnrollCmd) -> i32 {
    let path = c
        .key
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_KEY));
    match enroll(&path) {
        Ok((key, created)) => {
            println!("{}", public_line(&key.public()));
            let what = if created {
                format!("created host key {} (0600)", path.display())
            } else {
                format!(
                    "{} already holds a host key; kept it (enroll never overwrites)",
                    path.display()
                )
            };
            eprintln!(
                "{what}, {}; bind it on the coordinator: kiln-coordinator host add NAME --agent-key '<the line above>'",
                key.public().fingerprint()
            );
            EXIT_PASSED
        }
        Err((code, e)) => {
            eprintln!("kiln-agent: {e}");
            code
        }
    }
}
