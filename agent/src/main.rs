//! `kiln-agent`: parse the command line, set up logging, hand over to the library.
fn main() {
    kiln_cmdline::logger::init("kiln-agent");
    kiln_agent::signals::install_stop_signals();
    let cli = kiln_agent::cli::from_env();
    let code = kiln_agent::cli::run(cli);
    std::process::exit(code);
}
