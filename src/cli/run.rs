//! `smx run`: install a script into the storage, run it through an in-process host, show
//! intermediate results on stderr and the final result on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use smx::config::Config;
use smx::host::{EventKind, Host, LaunchRequest, RunInfo, TimeInterval};
use smx::proto::{Octets, Profile};
use smx::storage::Storage;

use super::anyhow_lite::Result;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file extending the embedded default. Not with --daemon, which runs the script
    /// under the daemon's own config (SMX_CONFIG is then not read).
    #[arg(long, env = "SMX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Runtime to use; default: by the script's extension, else `exec` for executables.
    #[arg(long)]
    pub runtime: Option<String>,
    /// smLaunchOwner; must be mapped to an OS profile in the config. Without it the script
    /// runs as you.
    #[arg(long)]
    pub owner: Option<String>,
    /// Runtime security profile (only without --owner; default: the runtime's first).
    #[arg(long)]
    pub profile: Option<Profile>,
    /// smLaunchArgument as text.
    #[arg(long, conflicts_with = "argument_hex")]
    pub argument: Option<String>,
    /// smLaunchArgument as hex octets.
    #[arg(long, value_parser = parse_hex)]
    pub argument_hex: Option<HexArg>,
    /// smLaunchLifeTime in seconds, 0 to 21474836 (the script is aborted when it runs out).
    #[arg(
        long,
        default_value_t = 3600,
        value_name = "SECONDS",
        allow_negative_numbers = true,
        value_parser = super::parse_seconds
    )]
    pub lifetime: u64,
    /// Print the finished run as one JSON object instead of the bare result.
    #[arg(long)]
    pub json: bool,
    /// Run through `smx daemon` instead of an in-process host.
    #[arg(long)]
    pub daemon: bool,
    #[command(flatten)]
    pub socket: super::remote::SocketArg,
    /// The script file (any readable path; it is copied into the script storage).
    pub script: PathBuf,
}

/// The exit statuses of `smx run`, for `--help` and the man page.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0       the script ended with noError
  10+N    it ended with smRunExitCode N: 12 halted, 13 lifeTimeExceeded, 14 noResourcesLeft,
          15 languageError, 16 runtimeError, 17 invalidArgument, 18 securityViolation,
          19 genericError
  1       smx itself failed (bad config, refused launch, I/O)
  2       usage error";

/// Octets given in hex on the command line.
#[derive(Debug, Clone)]
pub struct HexArg(pub Vec<u8>);

fn parse_hex(s: &str) -> std::result::Result<HexArg, String> {
    hex::decode(s)
        .map(HexArg)
        .map_err(|e| format!("invalid hex: {e}"))
}

/// Exit status of `smx run` for a run that ended with `code`: 0 for noError, else 10 + the
/// smRunExitCode number (halted 12, lifeTimeExceeded 13, ... genericError 19).
pub fn exit_status(code: smx::proto::ExitCode) -> u8 {
    match code {
        smx::proto::ExitCode::NoError => 0,
        other => 10 + other.number(),
    }
}

impl RunArgs {
    /// smLaunchArgument from --argument or --argument-hex.
    pub fn argument_octets(&self) -> Octets {
        match (&self.argument, &self.argument_hex) {
            (Some(t), _) => Octets::from(t.as_str()),
            (_, Some(h)) => Octets::new(h.0.clone()),
            _ => Octets::default(),
        }
    }
}

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    check_script(&args.script)?;
    if args.daemon {
        let sock = args.socket.clone();
        return super::remote::run_remote(sock, args).await;
    }
    // From the start: a signal that comes while the host starts aborts the run once it
    // exists, instead of killing smx with the storage left behind.
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let config = Config::load_optional(args.config.as_deref())?;
    if let Some(owner) = &args.owner {
        check_identity(&config, owner)?;
    }
    let storage = match &config.host.storage {
        Some(dir) => Storage::open(dir)?,
        None => Storage::temporary()?,
    };
    let owner_dir = args.owner.clone().unwrap_or_else(smx::host::invoking_user);
    let script = storage.install_file(&owner_dir, &args.script)?;
    // Everything the run creates ends with it, also if a runtime dies (smx::contain).
    smx::contain::init_host(&format!("run-{}", std::process::id()));
    smx::contain::spawn_orphan_reaper();
    let host = Host::new(config, storage);
    let mut events = host.subscribe();

    let mut req = LaunchRequest::new(script);
    req.argument = args.argument_octets();
    req.owner = args.owner;
    req.runtime = args.runtime;
    req.profile = args.profile;
    req.lifetime = TimeInterval::from_secs(args.lifetime);
    req.expire_time = TimeInterval::MAX;
    let run = host.launch(req)?;

    use smx::host::{RecvError, TryRecvError};
    let mut aborted = false;
    let mut progress = Progress::default();
    // The run's end is taken from the event stream, not raced against it: every progress
    // line published before the termination is shown.
    let finished = 'run: loop {
        let first = tokio::select! {
            ev = events.recv() => ev,
            // Ctrl-C, SIGTERM or SIGHUP: abort the run (halted) and go on showing it to its
            // end, so that the host shuts down and the private storage is removed.
            sig = async { tokio::select! { _ = int.recv() => "interrupted", _ = term.recv() => "terminated", _ = hup.recv() => "hung up" } }, if !aborted => {
                aborted = true;
                eprintln!("smx: {sig}, aborting run {run}");
                let _ = host.abort(run).await;
                continue;
            }
        };
        // This event and every one already waiting behind it, so that a result that is
        // the run's final one (followed by its termination) is told apart.
        let mut next = first.map_err(|e| match e {
            RecvError::Lagged(n) => TryRecvError::Lagged(n),
            RecvError::Closed => TryRecvError::Closed,
        });
        loop {
            match next {
                Ok(ev) if ev.run_id == run => {
                    if progress.take(ev.kind) {
                        break 'run host.wait(run).await;
                    }
                }
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(n)) => {
                    progress.flush();
                    eprintln!("smx: ({n} events not shown)");
                    // The termination may have been among them: the row says.
                    if host.run(run).is_none_or(|r| r.is_terminated()) {
                        break 'run host.wait(run).await;
                    }
                }
                Err(TryRecvError::Closed) => break 'run host.wait(run).await,
            }
            next = events.try_recv();
        }
        progress.flush();
    };
    host.shutdown().await;
    smx::contain::shutdown_host();
    let info = finished.ok_or("the run disappeared from the run table")?;
    print_outcome(&info, args.json)?;
    Ok(ExitCode::from(exit_status(info.exit_code)))
}

/// Checks that `path` names a readable regular file, saying plainly what is wrong if not.
pub fn check_script(path: &Path) -> Result<()> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("script {shown} does not exist").into())
        }
        Err(e) => Err(format!("cannot read script {shown}: {e}").into()),
        Ok(m) if m.is_dir() => Err(format!("script {shown} is a directory, not a file").into()),
        Ok(m) if !m.is_file() => Err(format!("script {shown} is not a regular file").into()),
        Ok(_) => match std::fs::File::open(path) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot read script {shown}: {e}").into()),
        },
    }
}

/// Refuses, before anything is installed or started, an owner whose OS profile names a
/// user (or groups) this process cannot switch to.
fn check_identity(config: &Config, owner: &str) -> Result<()> {
    let Some((_, os)) = config.owner(owner) else {
        // The launch says that the owner is not mapped.
        return Ok(());
    };
    let prepared = smx::security::Prepared::new(os)?;
    if let Some(why) = prepared.identity.as_ref().and_then(|i| i.switch_refusal()) {
        return Err(format!(
            "cannot run as owner {owner:?} (os_profile {:?}): {why}; run smx as root, or \
             leave out --owner to run the script as yourself",
            os.name.0
        )
        .into());
    }
    Ok(())
}

/// Shows a run's intermediate results and errors as they arrive, except the one that is
/// its final result (or error): a `534` (`535`) is published as a result (error) and at
/// once the termination, and that value is printed as the outcome, not as progress.
#[derive(Default)]
pub struct Progress {
    /// The last result or error, held back while the events behind it are looked at.
    held: Option<EventKind>,
}

impl Progress {
    /// Takes the run's next event; `true` once it is its termination.
    pub fn take(&mut self, kind: EventKind) -> bool {
        match kind {
            EventKind::Terminated {
                exit_code,
                ref result,
                ref error,
            } => {
                if let Some(held) = self.held.take() {
                    let is_outcome = match &held {
                        EventKind::Result { result: r, notify } => {
                            !notify && r.as_bytes() == result.as_bytes()
                        }
                        EventKind::Error { error: e, notify } => {
                            !notify && exit_code != smx::proto::ExitCode::NoError && e == error
                        }
                        _ => false,
                    };
                    if !is_outcome {
                        show_progress(&held);
                    }
                }
                true
            }
            EventKind::Result { .. } | EventKind::Error { .. } => {
                self.flush();
                self.held = Some(kind);
                false
            }
            _ => false,
        }
    }

    /// Nothing else has arrived: shows what is held back.
    pub fn flush(&mut self) {
        if let Some(held) = self.held.take() {
            show_progress(&held);
        }
    }
}

/// Shows an intermediate result or error of the run on stderr, as it arrives: every line
/// of it with the `smx: result:` (`event:`, `error:`, `exception:`) prefix.
pub fn show_progress(kind: &EventKind) {
    let (label, value) = match kind {
        EventKind::Result { result, notify } => {
            (if *notify { "event" } else { "result" }, result.to_string())
        }
        EventKind::Error { error, notify } => (
            if *notify { "exception" } else { "error" },
            error.to_string(),
        ),
        _ => return,
    };
    let mut err = super::safe::Escape::new(std::io::stderr().lock());
    for line in progress_lines(label, &value) {
        let _ = writeln!(err, "{line}");
    }
}

/// `smx: LABEL: line` for each line of `text` (one line if it is empty).
fn progress_lines(label: &str, text: &str) -> Vec<String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n')
        .map(|l| format!("smx: {label}: {}", l.strip_suffix('\r').unwrap_or(l)))
        .collect()
}

pub fn print_outcome(info: &RunInfo, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, info)?;
        writeln!(out)?;
    } else {
        // The result goes out as the script produced it, except onto a terminal.
        use std::io::IsTerminal;
        let r = info.result.as_bytes();
        if out.is_terminal() {
            super::safe::Escape::new(&mut out).write_all(r)?;
        } else {
            out.write_all(r)?;
        }
        if !r.is_empty() && !r.ends_with(b"\n") {
            writeln!(out)?;
        }
        if info.exit_code != smx::proto::ExitCode::NoError {
            let err = if info.error.is_empty() {
                String::new()
            } else {
                format!(": {}", info.error)
            };
            eprintln!(
                "smx: run {} ended with {}{}",
                info.run_id,
                info.exit_code,
                super::safe::text(&err)
            );
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::progress_lines;

    #[test]
    fn every_line_of_a_progress_value_keeps_the_prefix() {
        assert_eq!(progress_lines("result", "one"), ["smx: result: one"]);
        assert_eq!(
            progress_lines("result", "a\r\nb\nc\n"),
            ["smx: result: a", "smx: result: b", "smx: result: c"]
        );
        assert_eq!(progress_lines("error", ""), ["smx: error: "]);
        assert_eq!(
            progress_lines("event", "x\n\ny"),
            ["smx: event: x", "smx: event: ", "smx: event: y"]
        );
    }
}
