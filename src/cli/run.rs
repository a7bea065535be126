//! `smx run`: install a script into the storage, run it through an in-process host, show
//! intermediate results on stderr and the final result on stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use smx::config::Config;
use smx::host::{EventKind, Host, LaunchRequest, RunInfo, TimeInterval};
use smx::proto::{Octets, Profile};
use smx::storage::Storage;

use super::anyhow_lite::Result;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file extending the embedded default.
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
    /// smLaunchLifeTime in seconds (default 3600; the script is aborted when it runs out).
    #[arg(long, default_value_t = 3600)]
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
    if args.daemon {
        let sock = args.socket.clone();
        return super::remote::run_remote(sock, args).await;
    }
    let config = Config::load_optional(args.config.as_deref())?;
    let storage = match &config.host.storage {
        Some(dir) => Storage::open(dir)?,
        None => Storage::temporary()?,
    };
    let owner_dir = args.owner.clone().unwrap_or_else(smx::host::invoking_user);
    let script = storage.install_file(&owner_dir, &args.script)?;
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

    let show = async {
        loop {
            match events.recv().await {
                Ok(ev) if ev.run_id == run => show_progress(&ev.kind),
                Ok(_) => {}
                Err(smx::host::RecvError::Lagged(n)) => {
                    eprintln!("smx: ({n} events not shown)");
                }
                Err(_) => std::future::pending::<()>().await,
            }
        }
    };
    let finished = tokio::select! {
        info = host.wait(run) => info,
        _ = show => None,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("smx: interrupted, aborting run {run}");
            let _ = host.abort(run).await;
            host.wait(run).await
        }
    };
    host.shutdown().await;
    let info = finished.ok_or("the run disappeared from the run table")?;
    print_outcome(&info, args.json)?;
    Ok(ExitCode::from(exit_status(info.exit_code)))
}

/// Shows an intermediate result or error of the run on stderr, as it arrives.
pub fn show_progress(kind: &EventKind) {
    match kind {
        EventKind::Result { result, notify } => {
            eprintln!(
                "smx: {}: {result}",
                if *notify { "event" } else { "result" }
            )
        }
        EventKind::Error { error, notify } => {
            eprintln!(
                "smx: {}: {error}",
                if *notify { "exception" } else { "error" }
            )
        }
        _ => {}
    }
}

pub fn print_outcome(info: &RunInfo, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, info)?;
        writeln!(out)?;
    } else {
        let r = info.result.as_bytes();
        out.write_all(r)?;
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
                "smx: run {} ended with {}{err}",
                info.run_id, info.exit_code
            );
        }
    }
    out.flush()
}
