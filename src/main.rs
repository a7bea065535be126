//! The `smx` command: a thin layer over the library.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let matches = cli::Cli::command().get_matches();
    cli::check_usage(&matches);
    let args = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli::init_logging(args.verbose);
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            // A config error may be several problems, one per line.
            for line in format!("{e:#}").lines() {
                eprintln!("smx: {}", cli::terminal_text(line));
            }
            ExitCode::from(cli::EXIT_SMX_ERROR)
        }
    }
}
