//! `kiln-coordinator`: parse the command line, set up logging, hand over to the library.
fn main() {
    kiln_cmdline::logger::init("kiln-coordinator");
    let cli = kiln_coordinator::cli::from_env();
    match kiln_coordinator::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Errors can quote file and agent text: never raw controls on the terminal.
            eprintln!(
                "error: {}",
                kiln_coordinator::visible::visible(&format!("{e:#}"))
            );
            std::process::exit(2);
        }
    }
}
