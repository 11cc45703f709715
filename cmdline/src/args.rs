//! Parsing the process's arguments with argh, with kiln's exit statuses.
use argh::{FromArgs, TopLevelCommand};

/// Exit status of a command line that could not be parsed: refused, like a bad ticket.
pub const EXIT_USAGE: i32 = 2;

/// Parses the process's arguments into `T`; `--help` prints and exits 0, bad
/// arguments print the reason and exit [`EXIT_USAGE`].
pub fn from_env<T: TopLevelCommand>() -> T {
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    match parse::<T>(&strs) {
        Ok(t) => t,
        Err((0, out)) => {
            println!("{out}");
            std::process::exit(0)
        }
        Err((code, out)) => {
            eprintln!("{out}");
            std::process::exit(code)
        }
    }
}

/// Parses `argv` (the program's path first) into `T`, or the exit status and text to
/// print instead (0 and the help text for `--help`).
pub fn parse<T: TopLevelCommand>(argv: &[&str]) -> Result<T, (i32, String)> {
    let name = argv
        .first()
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or("kiln");
    <T as FromArgs>::from_args(&[name], argv.get(1..).unwrap_or(&[])).map_err(|early| {
        match early.status {
            Ok(()) => (0, early.output),
            Err(()) => (EXIT_USAGE, early.output),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test command.
    #[derive(FromArgs, Debug, PartialEq)]
    struct Demo {
        /// a flag
        #[argh(switch)]
        flag: bool,
    }

    #[test]
    fn help_is_0_and_bad_arguments_are_2() {
        assert_eq!(
            parse::<Demo>(&["/bin/demo", "--flag"]),
            Ok(Demo { flag: true })
        );
        let (code, out) = parse::<Demo>(&["demo", "--help"]).unwrap_err();
        assert_eq!(code, 0);
        assert!(out.contains("a flag"), "{out}");
        let (code, out) = parse::<Demo>(&["demo", "--nope"]).unwrap_err();
        assert_eq!(code, EXIT_USAGE);
        assert!(out.contains("--nope"), "{out}");
    }
}
