//! The `smx` command: a thin layer over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smx: {e:#}");
            ExitCode::from(cli::EXIT_SMX_ERROR)
        }
    }
}
