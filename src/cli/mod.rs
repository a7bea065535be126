//! Command-line definitions and dispatch. Each verb lives in its own module.

mod conform;
mod launch;
mod remote;
mod run;
mod script;

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
    /// Run the host as a service with a local control socket.
    Daemon {
        /// Config file extending the embedded default (re-read on SIGHUP).
        #[arg(long, env = "SMX_CONFIG")]
        config: Option<PathBuf>,
        /// Control socket (default: [control] socket, else /run/smx/smx.sock for root,
        /// $XDG_RUNTIME_DIR/smx.sock otherwise).
        #[arg(long, env = "SMX_SOCKET")]
        socket: Option<PathBuf>,
    },
    /// List the runs the daemon knows (smRunTable) that you may see.
    Ps {
        /// Only this owner's runs.
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Show every column of one run.
    Status {
        run: smx::proto::RunId,
        /// Ask the runtime for the current state first (SMX `status`).
        #[arg(long)]
        refresh: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Suspend a run (smRunControl suspend).
    Suspend {
        run: smx::proto::RunId,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Resume a suspended run (smRunControl resume).
    Resume {
        run: smx::proto::RunId,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Abort a run (smRunControl abort); it ends with halted.
    Abort {
        run: smx::proto::RunId,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Change a run's lifetime (smRunLifeTime) and/or expire time (smRunExpireTime).
    Set {
        run: smx::proto::RunId,
        /// Seconds the run may still execute; 0 aborts it now.
        #[arg(long)]
        lifetime: Option<u64>,
        /// Seconds the row stays after the run terminated; 0 removes it then.
        #[arg(long)]
        expire: Option<u64>,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Follow the daemon's run events (state changes, results, errors, terminations).
    Events {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        run: Option<smx::proto::RunId>,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Scripts in the daemon (smScriptTable): install, list, remove.
    #[command(subcommand)]
    Script(script::ScriptCmd),
    /// Launch buttons in the daemon (smLaunchTable): add, list, start, remove.
    #[command(subcommand)]
    Launch(launch::LaunchCmd),
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Verb::Daemon { config, socket } => {
            // Several worker threads: control clients are served in parallel. Runtimes are
            // spawned from worker threads, which live as long as the daemon, so their
            // parent-death signal fires only when the daemon goes.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(smx::control::server::run(config, socket))?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Ps {
            owner,
            json,
            socket,
        } => current_thread()?.block_on(remote::ps(socket, owner, json)),
        Verb::Status {
            run,
            refresh,
            json,
            socket,
        } => current_thread()?.block_on(remote::status(socket, run, refresh, json)),
        Verb::Suspend { run, socket } => {
            current_thread()?.block_on(remote::control(socket, run, remote::Control::Suspend))
        }
        Verb::Resume { run, socket } => {
            current_thread()?.block_on(remote::control(socket, run, remote::Control::Resume))
        }
        Verb::Abort { run, socket } => {
            current_thread()?.block_on(remote::control(socket, run, remote::Control::Abort))
        }
        Verb::Set {
            run,
            lifetime,
            expire,
            socket,
        } => current_thread()?.block_on(remote::set(socket, run, lifetime, expire)),
        Verb::Events {
            owner,
            run,
            json,
            socket,
        } => current_thread()?.block_on(remote::events(socket, owner, run, json)),
        Verb::Script(cmd) => current_thread()?.block_on(script::script(cmd)),
        Verb::Launch(cmd) => current_thread()?.block_on(launch::launch(cmd)),
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
