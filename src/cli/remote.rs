//! The verbs that talk to `smx daemon`: ps, status, suspend, resume, abort, set, events,
//! and `run --daemon` (`script` and `launch` have modules of their own).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;
use smx::client::{Client, Notice, socket_path};
use smx::control::proto::LaunchParams;
use smx::host::{EventKind, RunInfo, TimeInterval};
use smx::proto::{Octets, RunId};

use super::anyhow_lite::Result;

/// `--socket`, shared by every verb that talks to the daemon.
#[derive(Debug, Args, Clone)]
pub struct SocketArg {
    /// The daemon's control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root,
    /// $XDG_RUNTIME_DIR/smx.sock otherwise).
    #[arg(long, env = "SMX_SOCKET")]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    pub async fn connect(&self) -> Result<Client> {
        Ok(Client::connect(&socket_path(self.socket.as_deref())).await?)
    }

    /// Connects, waiting up to 3 s for a daemon that is starting (no socket yet, or not
    /// listening yet), so that `smx daemon & smx run --daemon SCRIPT` works.
    pub async fn connect_soon(&self) -> Result<Client> {
        let path = socket_path(self.socket.as_deref());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match Client::connect(&path).await {
                Err(smx::client::ClientError::NotRunning { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                r => return Ok(r?),
            }
        }
    }
}

/// A short age such as `42s`, `5m`, `3h`, `2d`.
fn age(t: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The first line of a value, shortened, for tables.
fn head(o: &Octets, max: usize) -> String {
    let s = o.to_string();
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() > max || s.contains('\n') {
        let cut: String = first.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        first.to_owned()
    }
}

pub async fn ps(sock: SocketArg, owner: Option<String>, json: bool) -> Result<ExitCode> {
    let mut c = sock.connect().await?;
    let runs = c.runs(owner.as_deref()).await?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &runs)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = super::safe::Escape::new(out);
    // (OWNER, LAUNCH, INDEX) is the smRunTable index; RUNID the host's SMX RunId.
    writeln!(
        out,
        "{:>6}  {:<10} {:<16} {:>5}  {:<8} {:<12} {:<18} {:>4}  RESULT",
        "RUNID", "OWNER", "LAUNCH", "INDEX", "RUNTIME", "STATE", "EXIT", "AGE"
    )?;
    for r in &runs {
        writeln!(
            out,
            "{:>6}  {:<10} {:<16} {:>5}  {:<8} {:<12} {:<18} {:>4}  {}",
            r.run_id.0,
            r.owner,
            r.name,
            r.index,
            r.runtime,
            r.state.mib_name(),
            exit_column(r),
            age(r.start_time),
            head(&r.result, 40)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// smRunExitCode as a person reads it: nothing until the run has ended (the MIB's noError
/// of a running script says nothing yet).
fn exit_column(r: &RunInfo) -> String {
    if r.is_terminated() {
        r.exit_code.mib_name().to_string()
    } else {
        "-".to_owned()
    }
}

fn print_row(r: &RunInfo, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut out = super::safe::Escape::new(out);
    let time = |t: Option<SystemTime>| {
        t.map(|t| humantime::format_rfc3339_millis(t).to_string())
            .unwrap_or_else(|| "-".into())
    };
    let interval = |t: TimeInterval| {
        if t.is_infinite() {
            "unlimited".to_owned()
        } else {
            format!("{:.2}s", f64::from(t.centis()) / 100.0)
        }
    };
    writeln!(out, "run_id:      {}", r.run_id)?;
    writeln!(out, "owner:       {}", r.owner)?;
    writeln!(out, "name:        {} (index {})", r.name, r.index)?;
    writeln!(out, "script:      {}", r.script)?;
    writeln!(
        out,
        "runtime:     {} (profile {}, os profile {})",
        r.runtime,
        r.profile,
        r.os_profile.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "pid:         {}",
        r.runtime_pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into())
    )?;
    writeln!(out, "argument:    {}", r.argument)?;
    writeln!(out, "state:       {}", r.state)?;
    if r.is_terminated() {
        writeln!(out, "exit_code:   {}", r.exit_code)?;
    } else {
        writeln!(out, "exit_code:   - (not ended)")?;
    }
    writeln!(out, "result:      {}", r.result)?;
    writeln!(out, "error:       {}", r.error)?;
    writeln!(out, "start_time:  {}", time(Some(r.start_time)))?;
    writeln!(out, "end_time:    {}", time(r.end_time))?;
    writeln!(out, "result_time: {}", time(r.result_time))?;
    writeln!(out, "error_time:  {}", time(r.error_time))?;
    writeln!(out, "lifetime:    {}", interval(r.lifetime))?;
    writeln!(out, "expire_time: {}", interval(r.expire_time))?;
    Ok(())
}

pub async fn status(sock: SocketArg, run: RunId, refresh: bool, json: bool) -> Result<ExitCode> {
    let mut c = sock.connect().await?;
    let r = if refresh {
        c.refresh(run).await?
    } else {
        c.run(run).await?
    };
    print_row(&r, json)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy)]
pub enum Control {
    Suspend,
    Resume,
    Abort,
}

pub async fn control(sock: SocketArg, run: RunId, what: Control) -> Result<ExitCode> {
    let mut c = sock.connect().await?;
    let r = match what {
        Control::Suspend => c.suspend(run).await?,
        Control::Resume => c.resume(run).await?,
        Control::Abort => c.abort(run).await?,
    };
    if r.is_terminated() {
        println!("run {}: {} ({})", r.run_id, r.state, r.exit_code);
    } else if matches!(what, Control::Suspend) && r.state == smx::proto::RunState::Executing {
        // The runtime answered 434 (unable to change the status): the run went back to
        // executing (RFC 3179 6.2.4; README "How smx reads RFC 3179").
        eprintln!(
            "smx: run {}: the runtime could not suspend it (434 unable to change the status of a running script); it is still executing",
            r.run_id
        );
        return Ok(ExitCode::from(super::EXIT_SMX_ERROR));
    } else if matches!(what, Control::Resume) && r.state == smx::proto::RunState::Suspended {
        // The same for resume (RFC 3179 6.2.5): a 434 leaves the run suspended.
        eprintln!(
            "smx: run {}: the runtime could not resume it (434 unable to change the status of a running script); it is still suspended",
            r.run_id
        );
        return Ok(ExitCode::from(super::EXIT_SMX_ERROR));
    } else {
        println!("run {}: {}", r.run_id, r.state);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn set(
    sock: SocketArg,
    run: RunId,
    lifetime: Option<u64>,
    expire: Option<u64>,
) -> Result<ExitCode> {
    if lifetime.is_none() && expire.is_none() {
        return Err("give --lifetime and/or --expire".into());
    }
    let mut c = sock.connect().await?;
    let r = c
        .set(
            run,
            lifetime.map(TimeInterval::from_secs),
            expire.map(TimeInterval::from_secs),
        )
        .await?;
    print_row(&r, false)?;
    Ok(ExitCode::SUCCESS)
}

fn describe_event(kind: &EventKind) -> String {
    match kind {
        EventKind::Launched { script, runtime } => format!("launched {script} in {runtime}"),
        EventKind::State { state } => format!("state {state}"),
        EventKind::Result {
            result,
            notify: false,
        } => format!("result {result}"),
        EventKind::Result {
            result,
            notify: true,
        } => format!("event {result} (smScriptResult)"),
        EventKind::Error {
            error,
            notify: false,
        } => format!("error {error}"),
        EventKind::Error {
            error,
            notify: true,
        } => format!("exception {error} (smScriptException)"),
        EventKind::Terminated {
            exit_code, error, ..
        } if *exit_code != smx::proto::ExitCode::NoError => {
            format!("terminated {exit_code} {error} (smScriptAbort)")
        }
        EventKind::Terminated { exit_code, .. } => format!("terminated {exit_code}"),
        EventKind::Removed => "removed".to_owned(),
    }
}

pub async fn events(
    sock: SocketArg,
    owner: Option<String>,
    run: Option<RunId>,
    json: bool,
) -> Result<ExitCode> {
    let mut c = sock.connect().await?;
    c.subscribe(owner.as_deref(), run).await?;
    loop {
        let n = c.next_event().await?;
        let mut out = std::io::stdout().lock();
        match n {
            Notice::Event(e) if json => {
                serde_json::to_writer(&mut out, &e)?;
                writeln!(out)?;
            }
            Notice::Event(e) => writeln!(
                super::safe::Escape::new(&mut out),
                "{} run {} {}/{}: {}",
                humantime::format_rfc3339_millis(e.time),
                e.run_id,
                e.owner,
                e.name,
                describe_event(&e.kind)
            )?,
            Notice::Lagged(n) => eprintln!("smx: {n} events lost (this client read too slowly)"),
            Notice::Shutdown => {
                eprintln!("smx: the daemon is shutting down");
                return Ok(ExitCode::SUCCESS);
            }
        }
        out.flush()?;
    }
}

/// `smx run --daemon`: install the script in the daemon's storage, launch it, show its
/// results as they come, and wait for it to end.
pub async fn run_remote(sock: SocketArg, args: super::run::RunArgs) -> Result<ExitCode> {
    // Ctrl-C, SIGTERM and SIGHUP abort the run in the daemon, as without --daemon;
    // taken from the start, so one that comes while launching aborts the run once it exists.
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut c = sock.connect_soon().await?;
    let owner = match &args.owner {
        Some(o) => o.clone(),
        None => c.whoami().await?.user,
    };
    if args.profile.is_some() {
        return Err("--profile cannot be used with --daemon: an owner's runtime profile comes from the daemon's config".into());
    }
    let content =
        std::fs::read(&args.script).map_err(|e| format!("{}: {e}", args.script.display()))?;
    let executable = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&args.script)
            .map(|m| m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let name = file_name(&args.script);
    let script = c.install(&owner, &name, &content, executable).await?;
    c.subscribe(Some(&owner), None).await?;
    let launched = c
        .launch(LaunchParams {
            owner,
            name: Some(smx::host::admin_prefix(&name, 32).to_owned()),
            script,
            runtime: args.runtime.clone(),
            argument: args.argument_octets(),
            lifetime: TimeInterval::from_secs(args.lifetime),
            expire_time: TimeInterval::ONE_HOUR,
        })
        .await?;
    let run = launched.run_id;
    let mut progress = super::run::Progress::default();
    let mut aborted = false;
    let finished = loop {
        let n = tokio::select! {
            n = c.next_event() => n?,
            sig = async { tokio::select! { _ = int.recv() => "interrupted", _ = term.recv() => "terminated", _ = hup.recv() => "hung up" } }, if !aborted => {
                aborted = true;
                eprintln!("smx: {sig}, aborting run {run}");
                let _ = c.abort(run).await;
                continue;
            }
        };
        let mut next = Some(n);
        let mut ended = false;
        while let Some(n) = next.take() {
            match n {
                Notice::Event(e) if e.run_id == run => {
                    if progress.take(e.kind) {
                        ended = true;
                        break;
                    }
                }
                // Events were dropped, perhaps the termination: the row says where the run is.
                Notice::Lagged(n) => {
                    progress.flush();
                    eprintln!("smx: ({n} events not shown)");
                    if c.run(run).await?.is_terminated() {
                        ended = true;
                        break;
                    }
                }
                Notice::Shutdown => {
                    progress.flush();
                    return Err("the daemon shut down before the run ended".into());
                }
                Notice::Event(_) => {}
            }
            // A line already on its way (a final result's termination is written with
            // it) is looked at before what is held back is shown.
            next = match tokio::time::timeout(PEEK, c.next_event()).await {
                Ok(n) => Some(n?),
                Err(_) => None,
            };
        }
        if ended {
            break c.wait(run).await?;
        }
        progress.flush();
    };
    super::run::print_outcome(&finished, args.json)?;
    Ok(ExitCode::from(super::run::exit_status(finished.exit_code)))
}

/// How long `smx run --daemon` waits for the line after a result before showing it.
const PEEK: std::time::Duration = std::time::Duration::from_millis(20);

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "script".into())
}
