//! `smx launch`: the daemon's smLaunchTable (RFC 3165 section 5.4): launch buttons that
//! name a script and the parameters of its runs, and smLaunchStart.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use smx::host::{RunInfo, TimeInterval};
use smx::mib::{LaunchAdmin, LaunchSpec, LaunchView, StorageType};
use smx::proto::Octets;

use super::anyhow_lite::Result;
use super::remote::SocketArg;

#[derive(Debug, Subcommand)]
pub enum LaunchCmd {
    /// Create a launch button for a script (an smLaunchTable row, enabled).
    Add(AddArgs),
    /// List the launch buttons you may see (smLaunchTable).
    List {
        /// Only this owner's buttons.
        #[arg(long)]
        owner: Option<String>,
        /// The rows as a JSON array, with the smLaunchTable column names.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Start a run from a launch button (smLaunchStart).
    ///
    /// --argument sets the button's smLaunchArgument first, and it stays set, as in the MIB.
    Start(StartArgs),
    /// Disable and destroy a launch button.
    Remove {
        /// smLaunchOwner.
        owner: String,
        /// smLaunchName.
        name: String,
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// smLaunchArgument as text or as hex octets.
#[derive(Debug, Args, Clone)]
pub struct ArgumentArg {
    /// smLaunchArgument as text.
    #[arg(long, conflicts_with = "argument_hex")]
    pub argument: Option<String>,
    /// smLaunchArgument as hex octets.
    #[arg(long, value_parser = parse_hex)]
    pub argument_hex: Option<Octets>,
}

fn parse_hex(s: &str) -> std::result::Result<Octets, String> {
    hex::decode(s)
        .map(Octets::new)
        .map_err(|e| format!("invalid hex: {e}"))
}

impl ArgumentArg {
    fn octets(&self) -> Option<Octets> {
        match (&self.argument, &self.argument_hex) {
            (Some(t), _) => Some(Octets::from(t.as_str())),
            (_, Some(h)) => Some(h.clone()),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// smLaunchOwner (0..32 octets): the owner whose OS profile runs the script.
    pub owner: String,
    /// smLaunchName (1..32 octets).
    pub name: String,
    /// The script, as SOWNER/SNAME (smLaunchScriptOwner, smLaunchScriptName); a bare SNAME
    /// is one of OWNER's scripts.
    #[arg(long, value_name = "SOWNER/SNAME")]
    pub script: String,
    #[command(flatten)]
    pub argument: ArgumentArg,
    /// smLaunchMaxRunning: runs that may execute at once (default 1).
    #[arg(long, value_name = "N")]
    pub max_running: Option<u32>,
    /// smLaunchMaxCompleted: finished runs kept, the oldest go first (default 1).
    #[arg(long, value_name = "N")]
    pub max_completed: Option<u32>,
    /// smLaunchLifeTime in seconds: a run is aborted when it runs out (default 3600).
    #[arg(long, value_name = "S")]
    pub lifetime: Option<u64>,
    /// smLaunchExpireTime in seconds: a finished run's row stays this long (default 3600).
    #[arg(long, value_name = "S")]
    pub expire: Option<u64>,
    /// smLaunchStorageType: nonVolatile buttons survive a restart of the daemon (it needs
    /// [host] state_dir); default volatile.
    #[arg(long, value_parser = super::script::storage_type)]
    pub storage: Option<StorageType>,
    /// smLaunchAdminStatus autostart: start a run whenever the button becomes enabled,
    /// such as when the daemon starts.
    #[arg(long)]
    pub autostart: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// smLaunchOwner.
    pub owner: String,
    /// smLaunchName.
    pub name: String,
    #[command(flatten)]
    pub argument: ArgumentArg,
    /// smRunIndex for the new run (default: a fresh one, as smLaunchStart 0 gives).
    #[arg(long, value_name = "N")]
    pub index: Option<u32>,
    /// Wait until the run has terminated; print its result and exit as `smx run` does.
    #[arg(long)]
    pub wait: bool,
    /// Print the run row as JSON (with --wait: the finished row, as `smx status --json`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub async fn launch(cmd: LaunchCmd) -> Result<ExitCode> {
    match cmd {
        LaunchCmd::Add(a) => add(a).await,
        LaunchCmd::List {
            owner,
            json,
            socket,
        } => list(socket, owner, json).await,
        LaunchCmd::Start(a) => start(a).await,
        LaunchCmd::Remove {
            owner,
            name,
            socket,
        } => {
            let mut c = socket.connect().await?;
            c.launch_remove(&owner, &name)
                .await
                .map_err(|e| format!("launch button {owner}/{name}: {e}"))?;
            println!("launch button {owner}/{name} removed");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn add(a: AddArgs) -> Result<ExitCode> {
    let (script_owner, script_name) = match a.script.split_once('/') {
        Some((o, n)) => (o.to_owned(), n.to_owned()),
        None => (a.owner.clone(), a.script.clone()),
    };
    let spec = LaunchSpec {
        owner: a.owner.clone(),
        name: a.name.clone(),
        script_owner,
        script_name,
        argument: a.argument.octets(),
        max_running: a.max_running,
        max_completed: a.max_completed,
        lifetime: a.lifetime.map(TimeInterval::from_secs),
        expire_time: a.expire.map(TimeInterval::from_secs),
        storage_type: a.storage,
        admin_status: a.autostart.then_some(LaunchAdmin::Autostart),
        row_expire_time: None,
    };
    let mut c = a.socket.connect().await?;
    let (o, n) = (&a.owner, &a.name);
    let v = c
        .launch_add(spec)
        .await
        .map_err(|e| format!("launch button {o}/{n}: {e}"))?;
    let l = &v.row;
    let admin = if l.admin_status == LaunchAdmin::Autostart {
        " (autostart)"
    } else {
        ""
    };
    println!(
        "launch button {o}/{n} added: {}{admin}, script {}/{}, {}",
        v.oper_status, l.script_owner, l.script_name, l.storage_type
    );
    Ok(ExitCode::SUCCESS)
}

fn interval(t: TimeInterval) -> String {
    if t.is_infinite() {
        "-".to_owned()
    } else {
        format!("{}s", t.centis() / 100)
    }
}

async fn list(sock: SocketArg, owner: Option<String>, json: bool) -> Result<ExitCode> {
    let mut c = sock.connect().await?;
    let rows: Vec<LaunchView> = c.launches(owner.as_deref()).await?;
    if json {
        // Exact: serde_json escapes what JSON requires, and nothing is changed after.
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = super::safe::Escape::new(std::io::stdout().lock());
    writeln!(
        out,
        "{:<10} {:<16} {:<26} {:<9} {:<8} {:>7} {:>5} {:>7} {:<11} {:>6}  ERROR",
        "OWNER", "NAME", "SCRIPT", "ADMIN", "OPER", "RUNNING", "KEEP", "LIFE", "STORAGE", "LAST"
    )?;
    for v in &rows {
        let l = &v.row;
        writeln!(
            out,
            "{:<10} {:<16} {:<26} {:<9} {:<8} {:>7} {:>5} {:>7} {:<11} {:>6}  {}",
            l.owner,
            l.name,
            format!("{}/{}", l.script_owner, l.script_name),
            l.admin_status.as_str(),
            v.oper_status.as_str(),
            format!("{}/{}", v.running, max(l.max_running)),
            max(l.max_completed),
            interval(l.lifetime),
            l.storage_type.as_str(),
            l.start,
            l.error
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// An Unsigned32 limit, `-` for the implicit buttons' "no limit".
fn max(v: u32) -> String {
    if v == u32::MAX {
        "-".to_owned()
    } else {
        v.to_string()
    }
}

async fn start(a: StartArgs) -> Result<ExitCode> {
    let (o, n) = (&a.owner, &a.name);
    let mut c = a.socket.connect().await?;
    let run: RunInfo = c
        .launch_start(o, n, a.index, a.argument.octets())
        .await
        .map_err(|e| format!("launch button {o}/{n}: {e}"))?;
    if !a.wait {
        if a.json {
            super::run::print_outcome(&run, true)?;
        } else {
            println!(
                "run {}: {o}/{n} index {}: {}",
                run.run_id, run.index, run.state
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let id = run.run_id;
    let finished = tokio::select! {
        r = c.wait(id) => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("smx: interrupted, aborting run {id}");
            let _ = c.abort(id).await;
            c.wait(id).await?
        }
    };
    super::run::print_outcome(&finished, a.json)?;
    Ok(ExitCode::from(super::run::exit_status(finished.exit_code)))
}
