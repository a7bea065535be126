//! Command-line definitions and dispatch. Each verb lives in its own module.

mod check;
mod conform;
mod launch;
mod remote;
mod run;
mod safe;

/// An error or message for the terminal, its control characters escaped.
pub fn terminal_text(s: &str) -> String {
    safe::text(s)
}
mod script;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit status when smx itself fails (bad config, refused launch, I/O).
pub const EXIT_SMX_ERROR: u8 = 1;

/// What `--help` and the man page of `smx` add after the options.
const SMX_AFTER_HELP: &str = "\
Files:
  /etc/smx/smx.toml         the daemon's config file (extends the embedded default)
  /usr/lib/smx/runtimes     the runtimes that ship with smx ({runtimes})
  /var/lib/smx/scripts      the daemon's script storage (root)
  /run/smx/smx.sock         the daemon's control socket (root)

Environment:
  SMX_CONFIG     config file for run, daemon, runtimes and config check
  SMX_SOCKET     control socket of the daemon for the client verbs
  SMX_RUNTIMES   directory of the shipped runtimes
  RUST_LOG       log filter (overrides -v)";

/// smx: a Script MIB (RFC 3165) runtime host speaking SMX/1.1 (RFC 3179).
#[derive(Debug, Parser)]
#[command(
    name = "smx",
    version,
    about,
    max_term_width = 100,
    after_long_help = SMX_AFTER_HELP
)]
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
    #[command(after_long_help = run::EXIT_STATUS_HELP)]
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
    /// Check a config file as the daemon loads it, reporting every problem.
    Config {
        #[command(subcommand)]
        command: ConfigVerb,
    },
    /// List the runs the daemon knows (smRunTable) that you may see.
    Ps {
        /// Only this owner's runs.
        #[arg(long)]
        owner: Option<String>,
        /// Print the rows as one JSON array.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Show every column of one run.
    Status {
        /// The run id, as `smx ps` shows it.
        run: smx::proto::RunId,
        /// Ask the runtime for the current state first (SMX `status`).
        #[arg(long)]
        refresh: bool,
        /// Print the row as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Suspend a run (smRunControl suspend).
    Suspend {
        /// The run id.
        run: smx::proto::RunId,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Resume a suspended run (smRunControl resume).
    Resume {
        /// The run id.
        run: smx::proto::RunId,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Abort a run (smRunControl abort); it ends with halted.
    Abort {
        /// The run id.
        run: smx::proto::RunId,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Change a run's lifetime (smRunLifeTime) and/or expire time (smRunExpireTime).
    Set {
        /// The run id.
        run: smx::proto::RunId,
        /// Seconds the run may still execute; 0 aborts it now.
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = parse_seconds)]
        lifetime: Option<u64>,
        /// Seconds the row stays after the run terminated; 0 removes it then.
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = parse_seconds)]
        expire: Option<u64>,
        #[command(flatten)]
        socket: remote::SocketArg,
    },
    /// Follow the daemon's run events (state changes, results, errors, terminations).
    Events {
        /// Only events of this owner's runs.
        #[arg(long)]
        owner: Option<String>,
        /// Only events of this run.
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
        /// Config file extending the embedded default.
        #[arg(long, env = "SMX_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script (source it, or install it where your shell looks).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (smx.1, smx-run.1, ...) into a directory (for packaging).
    #[command(hide = true)]
    Manpages {
        /// The directory to write them into.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigVerb {
    /// Load the config as `smx daemon` would and report every problem with file:line:column.
    Check {
        /// The config file (default: SMX_CONFIG, else the embedded default alone).
        #[arg(env = "SMX_CONFIG")]
        file: Option<PathBuf>,
    },
}

/// `cmd` without its hidden verbs (`exec-runtime`, `manpages`), which clap_complete
/// would otherwise offer: completions are for what `--help` shows.
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new(cmd.get_name().to_owned())
        .args(cmd.get_arguments().cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(without_hidden),
        );
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(v) = cmd.get_version() {
        out = out.version(v.to_owned());
    }
    out
}

/// Largest number of seconds a TimeInterval holds (2147483647 centi-seconds).
pub const MAX_SECONDS: u64 = 21_474_836;

/// Seconds for smLaunchLifeTime, smRunLifeTime and smRunExpireTime: a whole number from 0
/// to [`MAX_SECONDS`].
pub fn parse_seconds(s: &str) -> Result<u64, String> {
    let range = format!("must be a whole number of seconds from 0 to {MAX_SECONDS}");
    match s.trim().parse::<i128>() {
        Ok(n) if (0..=i128::from(MAX_SECONDS)).contains(&n) => Ok(n as u64),
        Ok(_) => Err(format!("out of range: {range}")),
        Err(_) => Err(range),
    }
}

/// Usage errors clap cannot express (they exit with status 2, as clap's own do).
pub fn check_usage(matches: &clap::ArgMatches) {
    use clap::CommandFactory;
    use clap::parser::ValueSource;
    if let Some(("run", m)) = matches.subcommand()
        && m.get_flag("daemon")
        && m.value_source("config") == Some(ValueSource::CommandLine)
    {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--config cannot be used with --daemon: the daemon runs the script with its own \
                 configuration (give it to `smx daemon --config`)",
            )
            .exit();
    }
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

/// Raises the soft open-file limit of a process that holds descriptors per runtime or per
/// script (see smx::fdlimit); a failure leaves the limit as it was and is only logged. A
/// low limit is worth a warning in the host only: an OS profile's `rlimits.nofile` sets
/// the exec runtime's on purpose.
fn raise_nofile(host: bool) {
    match smx::fdlimit::raise_nofile() {
        Ok(l) if host && l.soft < 4096 => tracing::warn!(
            soft = l.soft,
            hard = l.hard,
            "the open-file limit is low: few scripts can run at once"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

pub fn dispatch(cli: Cli) -> anyhow_lite::Result<ExitCode> {
    match cli.command {
        Verb::Run(_) | Verb::Daemon { .. } => raise_nofile(true),
        Verb::ExecRuntime { .. } => raise_nofile(false),
        _ => {}
    }
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
        Verb::Config {
            command: ConfigVerb::Check { file },
        } => check::check(file.as_deref()),
        Verb::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = without_hidden(&Cli::command());
            clap_complete::generate(shell, &mut cmd, "smx", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Verb::Manpages { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)?;
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
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        super::Cli::command().debug_assert();
    }

    /// Every verb and every option an operator can see says what it is for (`--help`, the
    /// man pages and the completions are made from these texts).
    #[test]
    fn every_visible_verb_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !a.is_hide_set() && !builtin && a.get_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let mut cmd = super::Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "smx", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn seconds_are_range_checked() {
        assert_eq!(super::parse_seconds("0"), Ok(0));
        assert_eq!(super::parse_seconds("21474836"), Ok(21_474_836));
        let e = super::parse_seconds("-1").unwrap_err();
        assert!(
            e.contains("out of range") && e.contains("0 to 21474836"),
            "{e}"
        );
        assert!(super::parse_seconds("21474837").is_err());
        assert!(
            super::parse_seconds("soon")
                .unwrap_err()
                .contains("whole number")
        );
    }
}
