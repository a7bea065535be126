//! Command-line definitions and dispatch. Each verb lives in its own module.

mod conform;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit status when smx itself fails (bad config, refused launch, I/O).
pub const EXIT_SMX_ERROR: u8 = 1;

/// smx: a Script MIB (RFC 3165) runtime host speaking SMX/1.1 (RFC 3179).
#[derive(Debug, Parser)]
#[command(name = "smx", version, about, max_term_width = 100)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Run a script to completion through an in-process host and print its result.
    Run(run::RunArgs),
    /// Serve SMX on stdin/stdout as the `exec` runtime (started by the host).
    #[command(hide = true)]
    ExecRuntime {
        /// Runtime security profile names to accept, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "trusted")]
        profiles: Vec<smx::proto::Profile>,
        /// Time between SIGTERM and SIGKILL when a script is aborted.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Check a runtime against RFC 3179 section 6.1 from the outside.
    Conform(conform::ConformArgs),
    /// List the runtimes of the effective configuration (smLangTable).
    Runtimes {
        #[arg(long, env = "SMX_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// A single-threaded runtime: runtime processes get PR_SET_PDEATHSIG tied to the thread
/// that forked them, and this thread lives as long as the command.
fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub fn dispatch(cli: Cli) -> anyhow_lite::Result<ExitCode> {
    match cli.command {
        Verb::Run(args) => current_thread()?.block_on(run::run(args)),
        Verb::Conform(args) => current_thread()?.block_on(conform::conform(args)),
        Verb::ExecRuntime { profiles, grace } => {
            current_thread()?.block_on(smx::exec::serve(smx::exec::Options { profiles, grace }))?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Runtimes { config } => {
            let config = smx::config::Config::load_optional(config.as_deref())?;
            println!(
                "{:<10} {:<9} {:<6} {:<12} {:<26} COMMAND",
                "NAME", "TRANSPORT", "THREAD", "EXTENSIONS", "PROFILES"
            );
            for r in &config.runtimes {
                println!(
                    "{:<10} {:<9} {:<6} {:<12} {:<26} {}",
                    r.name.0,
                    format!("{:?}", r.transport).to_lowercase(),
                    format!("{:?}", r.threading).to_lowercase(),
                    r.extensions
                        .iter()
                        .map(|e| e.0.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    r.profiles
                        .0
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    smx::host::expand_command(r).join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A boxed error with context, for the binary only.
pub mod anyhow_lite {
    pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;
    pub type Result<T> = std::result::Result<T, Error>;
}

#[cfg(test)]
mod tests {
    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
