//! `kiln-agent gc`: remove what container stages kept (`keep_failed`).
use argh::FromArgs;

use crate::exit::{EXIT_PASSED, EXIT_REFUSED};
use crate::stages::container::engine::Engine;
use crate::stages::container::gc::remove_kept;
use kiln_protocol::Runtime;

/// Remove the stopped containers and the networks that `keep_failed` container
/// stages kept on this host (of every stage, or of one), on podman and docker.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "gc")]
pub struct GcCmd {
    /// only this engine: podman or docker (default: each one installed)
    #[argh(option)]
    pub runtime: Option<String>,
    /// only what this stage kept
    #[argh(option)]
    pub stage: Option<String>,
}

/// `gc`: removes kept containers and networks; prints one line per engine.
pub fn cmd_gc(c: &GcCmd) -> i32 {
    let wanted: &[Runtime] = match c.runtime.as_deref() {
        None => &[Runtime::Podman, Runtime::Docker],
        Some("podman") => &[Runtime::Podman],
        Some("docker") => &[Runtime::Docker],
        Some(other) => {
            eprintln!("kiln-agent: --runtime is podman or docker, not {other:?}");
            return EXIT_REFUSED;
        }
    };
    let mut any = false;
    for rt in wanted {
        let Ok(engine) = Engine::detect(*rt) else {
            continue;
        };
        any = true;
        let (containers, networks) = smol::block_on(remove_kept(&engine, c.stage.as_deref()));
        for n in &containers {
            println!("{}: removed container {n}", engine.program);
        }
        for n in &networks {
            println!("{}: removed network {n}", engine.program);
        }
        eprintln!(
            "{}: removed {} kept containers, {} networks",
            engine.program,
            containers.len(),
            networks.len()
        );
    }
    if !any {
        eprintln!("kiln-agent: no container engine installed (podman or docker)");
        return EXIT_REFUSED;
    }
    EXIT_PASSED
}
