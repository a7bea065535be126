//! The `exec` runtime: runs executable files (shell scripts with a shebang, binaries).
//!
//! It is part of the `smx` binary (`smx exec-runtime`) but the host starts it like any other
//! runtime, as a separate process speaking SMX/1.1 (RFC 3179 section 6.1) on stdin/stdout,
//! or, with `SMX_TRANSPORT=tcp`, on a connection back to the host (section 8.2).
//! Each run is a child process in its own process group, so suspend (SIGSTOP), resume
//! (SIGCONT) and abort (SIGTERM, then SIGKILL after a grace period) reach the whole tree.
//!
//! What a script sees (documented in the README):
//! - the Argument as `$1` (when it has no NUL octet and is not empty) and, octet for octet,
//!   on its stdin;
//! - `SMX_RUN_ID`, `SMX_PROFILE`, `SMX_SCRIPT` and `SMX_REPORT_FD=3` in its environment;
//! - fd 3, where it writes report lines: `result TEXT`, `event TEXT`, `error TEXT`,
//!   `exception TEXT` (532, 533, 536, 537), or `result-hex HEX` and so on for binary values.
//!
//! Its final result is its stdout (one trailing newline removed, at most 65535 octets) if it
//! wrote any, else the last `result`/`event` it reported. Its error text is the last line it
//! wrote to stderr. See [`exit_code_for`] for how it ends up with an ExitCode. A script that
//! stops (SIGSTOP, SIGTSTP) is reported `suspended` and `resume` continues it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinSet;

use crate::framing::{DEFAULT_MAX_LINE, Frame, LineReader};
use crate::proto::{
    Authenticator, Command, ExitCode, Id, MAX_RESULT_OCTETS, Negative, Octets, Profile, Quoted,
    Reply, RunId, RunState, Version,
};

/// The fd number scripts write their reports to.
pub const REPORT_FD: i32 = 3;

/// Options of `smx exec-runtime`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runtime security profiles this runtime accepts (it has no sandbox of its own, so
    /// every profile means the same; unknown ones get 432).
    pub profiles: Vec<Profile>,
    /// Time between SIGTERM and SIGKILL when aborting.
    pub grace: Duration,
}

/// How a finished script maps to an ExitCode (the table in the README).
///
/// | how it ended | ExitCode |
/// |---|---|
/// | exit status 0 | noError |
/// | killed after an `abort` | halted |
/// | exit status 64 (EX_USAGE) or 65 (EX_DATAERR) | invalidArgument |
/// | exit status 77 (EX_NOPERM) | securityViolation |
/// | exit status 71 (EX_OSERR), killed by SIGXCPU or SIGXFSZ | noResourcesLeft |
/// | exit status 2 with "syntax error" on stderr (shells) | languageError |
/// | any other exit status, any other signal | runtimeError |
///
/// `stderr_tail` is the last lines the script wrote to stderr (see [`syntax_error_line`]).
pub fn exit_code_for(
    status: std::process::ExitStatus,
    aborted: bool,
    stderr_tail: &str,
) -> ExitCode {
    if aborted {
        return ExitCode::Halted;
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => ExitCode::NoError,
        (Some(64 | 65), _) => ExitCode::InvalidArgument,
        (Some(77), _) => ExitCode::SecurityViolation,
        (Some(71), _) => ExitCode::NoResourcesLeft,
        (Some(2), _) if syntax_error_line(stderr_tail).is_some() => ExitCode::LanguageError,
        (None, Some(libc::SIGXCPU | libc::SIGXFSZ)) => ExitCode::NoResourcesLeft,
        _ => ExitCode::RuntimeError,
    }
}

/// Stderr lines a shell's syntax error may be in: dash writes one line, bash two (the error,
/// then the offending line quoted).
const SYNTAX_ERROR_LINES: usize = 2;

/// The line of `stderr_tail` (its last [`SYNTAX_ERROR_LINES`] non-empty lines) that reports
/// a shell syntax error, if any.
pub fn syntax_error_line(stderr_tail: &str) -> Option<&str> {
    stderr_tail
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(SYNTAX_ERROR_LINES)
        .find(|l| l.to_ascii_lowercase().contains("syntax error"))
}

/// A file the runtime may read but not execute: it is a script (RFC 3179 6.1.2 item 3), it
/// just cannot start (item 5), and says why.
#[derive(Debug, thiserror::Error)]
#[error("not executable (mode {mode:04o}: no execute permission for the runtime)")]
struct NotExecutable {
    mode: u32,
}

/// How a script that could not be executed at all maps to an ExitCode.
fn exit_code_for_exec_error(e: &io::Error) -> ExitCode {
    match e.raw_os_error() {
        Some(libc::ENOEXEC) => ExitCode::LanguageError,
        Some(libc::EACCES | libc::EPERM) => ExitCode::SecurityViolation,
        Some(libc::ENOMEM | libc::EAGAIN | libc::EMFILE | libc::ENFILE) => {
            ExitCode::NoResourcesLeft
        }
        _ => ExitCode::GenericError,
    }
}

/// Messages waiting for stdout, at most. A message is one SMX line of at most about 128 KiB
/// (a 64 KiB report line, or a 65535-octet stdout result, in hex), so a full queue holds a
/// few MB. A full queue makes its senders wait: that is the backpressure that reaches a
/// flooding script, whose run then stops reading fd 3, so the script blocks on its pipe.
const OUT_QUEUE: usize = 32;

/// The writer joins queued messages into one write of at most about this many octets.
const COALESCE: usize = 256 * 1024;

/// Controls (suspend, resume, abort) waiting for one run, at most. A command that finds the
/// queue full is answered with 434 (RFC 3179 6.1 lets any command fail with a 4yz), so a
/// peer that floods controls cannot make us queue them.
const CTL_QUEUE: usize = 8;

/// Abort Ids one run keeps to answer with 232 when it has ended; further aborts get 434.
const MAX_ABORT_IDS: usize = 16;

/// Messages one run queues for itself (its outbox) before it stops taking controls. Fd 3 is
/// read only when the outbox is empty, so it holds at most one report plus the replies of a
/// few controls.
const RUN_OUTBOX: usize = 8;

/// The output queue; the writer task owns its receiver.
type Out = mpsc::Sender<Vec<u8>>;

/// Queues one message for stdout, waiting while the queue is full. If the queue is closed
/// (the writer failed: the host is gone) the message is dropped, as there is no one to tell.
async fn send(out: &Out, r: Reply) {
    let _ = out.send(r.to_bytes()).await;
}

enum Ctl {
    Suspend(Id),
    Resume(Id),
    Abort(Id),
}

struct RunSlot {
    state: Arc<Mutex<RunState>>,
    ctl: mpsc::Sender<Ctl>,
    /// The run's task in the [`JoinSet`], to find the slot if the task fails.
    task: tokio::task::Id,
    /// The script's pid, and where its stops and continues are told to the run.
    pid: u32,
    stops: Arc<StopReport>,
}

/// The last stop or continue of a run's script that the runtime did not cause itself (or
/// did: the run sorts that out), from [`report_stops`] to the run's task.
#[derive(Default)]
struct StopReport {
    /// 0, or the RunState number it implies (suspended, executing).
    last: std::sync::atomic::AtomicU8,
    notify: tokio::sync::Notify,
}

/// Whether the process is still in the state a report said: a report may be of the
/// runtime's own SIGSTOP or SIGCONT, taken after the next command already undid it (a
/// suspend's stop read after the resume), and must not be taken for the script's doing.
fn still(pid: i32, now: RunState) -> bool {
    let state = crate::process::proc_state(pid);
    match now {
        RunState::Suspended => state == Some('T'),
        _ => state.is_some_and(|c| !matches!(c, 'T' | 't' | 'Z' | 'X')),
    }
}

impl StopReport {
    fn report(&self, now: RunState) {
        self.last
            .store(now.number(), std::sync::atomic::Ordering::Relaxed);
        self.notify.notify_one();
    }

    fn take(&self) -> Option<RunState> {
        RunState::from_number(self.last.swap(0, std::sync::atomic::Ordering::Relaxed))
    }
}

/// Tells runs whose scripts stopped or continued since the last SIGCHLD. waitid with
/// WSTOPPED | WCONTINUED (never WEXITED: reaping stays tokio's) reports each change once,
/// and a child has at most one pending, so this takes one call per change plus one: a
/// SIGCHLD costs no work per run (the runs do not each listen).
fn report_stops(runs: &HashMap<RunId, RunSlot>) {
    use nix::sys::wait::{Id as WaitId, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WSTOPPED | WaitPidFlag::WCONTINUED | WaitPidFlag::WNOHANG;
    for _ in 0..=runs.len() {
        let (pid, now) = match waitid(WaitId::All, flags) {
            Ok(WaitStatus::Stopped(pid, _)) => (pid, RunState::Suspended),
            Ok(WaitStatus::Continued(pid)) => (pid, RunState::Executing),
            _ => return,
        };
        if let Some(slot) = runs.values().find(|s| s.pid == pid.as_raw() as u32) {
            slot.stops.report(now);
        }
    }
}

/// Serves SMX until the channel closes, then aborts every run and returns. The channel is
/// stdin/stdout, or with `SMX_TRANSPORT=tcp` a connection to `SMX_HOST:SMX_PORT`.
pub async fn serve(opts: Options) -> io::Result<()> {
    let (input, mut output, auth) = match std::env::var("SMX_TRANSPORT").as_deref() {
        Ok("tcp") => connect_tcp().await?,
        _ => (stdio_in(), stdio_out(), None),
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(mut buf) = out_rx.recv().await {
            // Coalesce what is queued into one write, up to a bound: senders refill the
            // queue as it drains, and the buffer must not become the unbounded queue.
            while buf.len() < COALESCE {
                let Ok(more) = out_rx.try_recv() else { break };
                buf.extend_from_slice(&more);
            }
            if output.write_all(&buf).await.is_err() || output.flush().await.is_err() {
                break;
            }
        }
    });
    let mut runs: HashMap<RunId, RunSlot> = HashMap::new();
    // One task per run, each yielding its RunId when it ends; at most one per slot in `runs`.
    let mut tasks: JoinSet<RunId> = JoinSet::new();
    let mut input = LineReader::new(input, DEFAULT_MAX_LINE);
    // SIGCHLD also tells of a script that stopped or continued without us: it is then
    // suspended (RFC 3179 6.1.7 item 1), and `resume` continues it.
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .map_err(|e| tracing::warn!("no SIGCHLD stream, scripts that stop go unnoticed: {e}"))
        .ok();
    loop {
        tokio::select! {
            frame = input.next() => {
                let line = match frame {
                    Ok(Some(Frame::Line(l))) => l,
                    Ok(Some(Frame::Overlong)) => {
                        send(&out_tx, Reply::Message { text: Quoted::lossy(b"over-long line discarded") }).await;
                        continue;
                    }
                    Ok(None) | Err(_) => break,
                };
                // Waits while the output queue is full: a host that does not read our
                // replies stops being read.
                handle(&line, &opts, auth.as_ref(), &mut runs, &mut tasks, &out_tx).await;
            }
            Some(done) = tasks.join_next_with_id() => match done {
                Ok((_, run)) => {
                    runs.remove(&run);
                }
                Err(e) => {
                    tracing::error!("run task failed: {e}");
                    runs.retain(|_, s| s.task != e.id());
                }
            },
            Some(()) = async {
                match sigchld.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => report_stops(&runs),
        }
    }
    // The channel closed: the host asks us to terminate every run and exit (RFC 3179 5.2).
    let deadline = tokio::time::Instant::now() + opts.grace + Duration::from_secs(5);
    for slot in runs.values() {
        // Waits for room: a live run keeps taking controls; an ended one fails at once.
        let _ = tokio::time::timeout_at(deadline, slot.ctl.send(Ctl::Abort(Id(0)))).await;
    }
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
    // Runs still going after the deadline are dropped (their scripts killed on drop).
    drop(tasks);
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

type Input = Box<dyn AsyncRead + Send + Unpin>;
type Output = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// RFC 3179 8.2: connects to the host and learns the cookie its `211` must carry.
async fn connect_tcp() -> io::Result<(Input, Output, Option<Authenticator>)> {
    let auth = read_cookie();
    let host = std::env::var("SMX_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("SMX_PORT").unwrap_or_default();
    let failed = |why: String| {
        io::Error::other(format!(
            "cannot connect to the host at {host}:{port}: {why}"
        ))
    };
    let port_n: u16 = port
        .parse()
        .map_err(|_| failed("SMX_PORT is not a port".into()))?;
    let stream = tokio::net::TcpStream::connect((host.as_str(), port_n))
        .await
        .map_err(|e| failed(e.to_string()))?;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    Ok((Box::new(r), Box::new(w), auth))
}

/// The cookie, hex: read to EOF from the inherited fd `SMX_COOKIE_FD` (then closed), else
/// `SMX_COOKIE` (RFC 2593 style). Without one, `hello` is answered without Authenticator
/// and the host closes the connection, which is the right outcome.
fn read_cookie() -> Option<Authenticator> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let text = match std::env::var("SMX_COOKIE_FD") {
        Ok(fd) => {
            let fd: i32 = fd.parse().ok().filter(|&fd| fd > 2)?;
            // SAFETY: F_GETFD only asks whether the fd is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
                tracing::error!("SMX_COOKIE_FD={fd} is not an open file descriptor");
                return None;
            }
            // SAFETY: the fd is open, inherited for this purpose, and owned (and closed) here.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            let mut s = String::new();
            if let Err(e) = f.read_to_string(&mut s) {
                tracing::error!("cannot read the cookie from fd {fd}: {e}");
                return None;
            }
            s
        }
        Err(_) => std::env::var("SMX_COOKIE").ok()?,
    };
    let auth = hex::decode(text.trim()).ok().and_then(Authenticator::new);
    if auth.is_none() {
        tracing::error!("the cookie is not a HexString; answering hello without it");
    }
    auth
}

/// stdin as a non-blocking pipe when it is one (the host's case: no thread hop per read),
/// else tokio's blocking-thread stdin.
fn stdio_in() -> Input {
    let fd = std::io::stdin().as_fd().try_clone_to_owned();
    match fd.map(tokio::net::unix::pipe::Receiver::from_owned_fd) {
        Ok(Ok(r)) => Box::new(r),
        _ => Box::new(tokio::io::stdin()),
    }
}

/// stdout as a non-blocking pipe when it is one, else tokio's blocking-thread stdout.
fn stdio_out() -> Output {
    let fd = std::io::stdout().as_fd().try_clone_to_owned();
    match fd.map(tokio::net::unix::pipe::Sender::from_owned_fd) {
        Ok(Ok(w)) => Box::new(w),
        _ => Box::new(tokio::io::stdout()),
    }
}

async fn handle(
    line: &[u8],
    opts: &Options,
    auth: Option<&Authenticator>,
    runs: &mut HashMap<RunId, RunSlot>,
    tasks: &mut JoinSet<RunId>,
    out: &Out,
) {
    let cmd = match Command::decode(line) {
        Ok(c) => c,
        Err(e) => {
            let r = e.reply().unwrap_or_else(|| Reply::Message {
                text: Quoted::lossy(format!("discarded: {e}").as_bytes()),
            });
            return send(out, r).await;
        }
    };
    let negative = |id, code| Reply::Negative { id, code };
    match cmd {
        Command::Hello { id } => {
            send(
                out,
                Reply::Hello {
                    id,
                    version: Version::V1_1,
                    auth: auth.cloned(),
                },
            )
            .await
        }
        Command::Start {
            id,
            run,
            script,
            profile,
            argument,
        } => {
            // RFC 3179 6.1.2 items 2-4, in this order.
            if runs.contains_key(&run) {
                return send(out, negative(id, Negative::IllegalRunId)).await;
            }
            let path = Path::new(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(script.as_bytes()),
            );
            if !readable_file(path) {
                return send(out, negative(id, Negative::IllegalScript)).await;
            }
            if !opts.profiles.contains(&profile) {
                return send(out, negative(id, Negative::IllegalProfile)).await;
            }
            match spawn_script(path, run, &profile, &argument) {
                Ok(spawned) => {
                    // Queued before the run's task exists, so it precedes all the run says.
                    send(
                        out,
                        Reply::Status {
                            id,
                            state: RunState::Executing,
                        },
                    )
                    .await;
                    let state = Arc::new(Mutex::new(RunState::Executing));
                    let (ctl_tx, ctl_rx) = mpsc::channel(CTL_QUEUE);
                    let pid = spawned.child.id().unwrap_or(0);
                    let stops = Arc::new(StopReport::default());
                    let job = supervise(
                        run,
                        spawned,
                        state.clone(),
                        ctl_rx,
                        stops.clone(),
                        out.clone(),
                        opts.grace,
                    );
                    let task = tasks.spawn(async move {
                        job.await;
                        run
                    });
                    runs.insert(
                        run,
                        RunSlot {
                            state,
                            ctl: ctl_tx,
                            task: task.id(),
                            pid,
                            stops,
                        },
                    );
                }
                Err(e) => {
                    // An error before the script runs: no 231, a 536 and the 538 (6.1.2).
                    let code = exit_code_for_exec_error(&e);
                    let msg = format!("cannot execute {}: {e}", path.display());
                    send(
                        out,
                        Reply::Error {
                            run,
                            state: RunState::Terminated,
                            error: msg.into(),
                        },
                    )
                    .await;
                    send(
                        out,
                        Reply::StateChange {
                            run,
                            state: RunState::Terminated,
                        },
                    )
                    .await;
                    send(out, Reply::Terminated { run, exit: code }).await;
                }
            }
        }
        Command::Suspend { id, run } | Command::Resume { id, run } | Command::Abort { id, run } => {
            let ctl = match cmd {
                Command::Suspend { .. } => Ctl::Suspend(id),
                Command::Resume { .. } => Ctl::Resume(id),
                _ => Ctl::Abort(id),
            };
            let refused = match runs.get(&run).map(|slot| slot.ctl.try_send(ctl)) {
                Some(Ok(())) => return,
                Some(Err(TrySendError::Full(_))) => {
                    tracing::warn!(%run, "controls queue full, answering 434");
                    Negative::CannotChange
                }
                // Gone, or ended and no longer taking controls.
                None | Some(Err(TrySendError::Closed(_))) => Negative::IllegalRunId,
            };
            send(out, negative(id, refused)).await;
        }
        Command::Status { id, run } => {
            let reply = match runs.get(&run) {
                Some(slot) => Reply::Status {
                    id,
                    state: *slot.state.lock().expect("state lock"),
                },
                None => negative(id, Negative::IllegalRunId),
            };
            send(out, reply).await;
        }
    }
}

/// RFC 3179 6.1.2 item 3: "the name of a file on the local storage device, that can be
/// read". Whether it can also be executed is item 5's business (see [`spawn_script`]).
fn readable_file(p: &Path) -> bool {
    access(p, libc::R_OK) && std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

fn access(p: &Path, mode: i32) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) on a valid C string.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

struct Spawned {
    child: tokio::process::Child,
    reports: tokio::net::unix::pipe::Receiver,
}

/// Refuses files that are neither `#!` scripts nor ELF binaries. execvp(3) would run them
/// with /bin/sh on ENOEXEC, turning a wrong file into a confusing shell error.
fn check_format(path: &Path) -> io::Result<()> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)?.read(&mut head)?;
    if head[..n].starts_with(b"#!") || head[..n] == *b"\x7fELF" {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::ENOEXEC))
    }
}

fn spawn_script(
    path: &Path,
    run: RunId,
    profile: &Profile,
    argument: &Octets,
) -> io::Result<Spawned> {
    if !access(path, libc::X_OK) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            NotExecutable { mode },
        ));
    }
    check_format(path)?;
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut cmd = std::process::Command::new(path);
    let arg = argument.as_bytes();
    if !arg.is_empty() && !arg.contains(&0) {
        use std::os::unix::ffi::OsStrExt;
        cmd.arg(std::ffi::OsStr::from_bytes(arg));
    }
    cmd.env("SMX_RUN_ID", run.to_string())
        .env("SMX_PROFILE", profile.as_str())
        .env("SMX_SCRIPT", path)
        .env("SMX_REPORT_FD", REPORT_FD.to_string())
        .env_remove("SMX_TRANSPORT")
        .env_remove("SMX_HOST")
        .env_remove("SMX_PORT")
        .env_remove("SMX_COOKIE")
        .env_remove("SMX_COOKIE_FD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let raw = report_w.as_raw_fd();
    let nofile = crate::fdlimit::inherited_soft();
    // SAFETY: only async-signal-safe calls on an fd owned by the closure.
    unsafe {
        cmd.pre_exec(move || {
            // Scripts get the open-file limit the runtime started with, not its raised one.
            if let Some(soft) = nofile {
                crate::fdlimit::restore_in_child(soft)?;
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::dup2(raw, REPORT_FD) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn()?;
    drop(report_w);
    // The Argument goes to stdin, octet for octet; a script that ignores it is fine.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let bytes = arg.to_vec();
    tokio::spawn(async move {
        let _ = stdin.write_all(&bytes).await;
    });
    let reports = tokio::net::unix::pipe::Receiver::from_owned_fd(report_r)?;
    Ok(Spawned { child, reports })
}

/// Reads up to `max` octets and discards the rest; returns whether anything was dropped.
async fn read_capped(mut r: impl AsyncRead + Unpin, max: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut cut = false;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return (buf, cut),
            Ok(n) => {
                let room = max.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
}

fn set_state(state: &Mutex<RunState>, s: RunState) {
    *state.lock().expect("state lock") = s;
}

/// Owns one script process until it ends.
///
/// Everything the run says goes through its outbox and leaves it only when the output queue
/// has room, so the loop never waits in a send: an abort is acted on (SIGTERM, `aborting`)
/// at once even while the script floods fd 3, and fd 3 is read only when the outbox is empty,
/// which makes a full output queue stop the script at its pipe.
async fn supervise(
    run: RunId,
    mut sp: Spawned,
    state: Arc<Mutex<RunState>>,
    mut ctl: mpsc::Receiver<Ctl>,
    stops: Arc<StopReport>,
    out: Out,
    grace: Duration,
) {
    let pid = sp.child.id().unwrap_or(0) as i32;
    let pgid = nix::unistd::Pid::from_raw(pid);
    let stdout = tokio::spawn(read_capped(
        sp.child.stdout.take().expect("piped"),
        MAX_RESULT_OCTETS + 2,
    ));
    let stderr = tokio::spawn(read_capped(
        sp.child.stderr.take().expect("piped"),
        64 * 1024,
    ));
    let mut reports = LineReader::new(sp.reports, 64 * 1024 + 16);
    let mut reports_open = true;
    let mut ctl_open = true;
    let mut outbox: VecDeque<Vec<u8>> = VecDeque::new();
    let push = |outbox: &mut VecDeque<Vec<u8>>, r: Reply| outbox.push_back(r.to_bytes());
    let mut abort_ids: Vec<Id> = Vec::new();
    let mut kill_at: Option<tokio::time::Instant> = None;
    // Set while the run is suspended because the script stopped itself (not by a
    // `suspend`): only then may a continue reported by the kernel make it executing again.
    let mut self_stopped = false;
    let killpg = |sig| {
        let _ = nix::sys::signal::killpg(pgid, sig);
    };
    let status = loop {
        let current = *state.lock().expect("state lock");
        tokio::select! {
            // In this order: the end, the kill timer and controls are never starved by a
            // flood of reports.
            biased;
            st = sp.child.wait() => break st,
            _ = async { tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)).await }, if kill_at.is_some() => {
                killpg(nix::sys::signal::Signal::SIGKILL);
                kill_at = None;
            }
            c = ctl.recv(), if ctl_open && outbox.len() < RUN_OUTBOX => match c {
                None => ctl_open = false,
                Some(Ctl::Abort(id)) => {
                    if id.0 != 0 {
                        if abort_ids.len() < MAX_ABORT_IDS {
                            abort_ids.push(id);
                        } else {
                            push(&mut outbox, Reply::Negative { id, code: Negative::CannotChange });
                        }
                    }
                    if current != RunState::Aborting {
                        set_state(&state, RunState::Aborting);
                        killpg(nix::sys::signal::Signal::SIGTERM);
                        // A stopped process only acts on SIGTERM once continued.
                        killpg(nix::sys::signal::Signal::SIGCONT);
                        kill_at = Some(tokio::time::Instant::now() + grace);
                        push(&mut outbox, Reply::StateChange { run, state: RunState::Aborting });
                    }
                }
                Some(Ctl::Suspend(id)) => match current {
                    RunState::Suspended => push(&mut outbox, Reply::Status { id, state: current }),
                    RunState::Executing => {
                        killpg(nix::sys::signal::Signal::SIGSTOP);
                        if wait_stopped(pid, true).await {
                            set_state(&state, RunState::Suspended);
                            // A stop or continue reported before this one is stale now.
                            let _ = stops.take();
                            self_stopped = false;
                            push(&mut outbox, Reply::StateChange { run, state: RunState::Suspended });
                            push(&mut outbox, Reply::Status { id, state: RunState::Suspended });
                        } else {
                            killpg(nix::sys::signal::Signal::SIGCONT);
                            push(&mut outbox, Reply::Negative { id, code: Negative::CannotChange });
                        }
                    }
                    _ => push(&mut outbox, Reply::Negative { id, code: Negative::CannotChange }),
                },
                Some(Ctl::Resume(id)) => match current {
                    RunState::Executing => push(&mut outbox, Reply::Status { id, state: current }),
                    RunState::Suspended => {
                        killpg(nix::sys::signal::Signal::SIGCONT);
                        if wait_stopped(pid, false).await {
                            set_state(&state, RunState::Executing);
                            let _ = stops.take();
                            self_stopped = false;
                            push(&mut outbox, Reply::StateChange { run, state: RunState::Executing });
                            push(&mut outbox, Reply::Status { id, state: RunState::Executing });
                        } else {
                            push(&mut outbox, Reply::Negative { id, code: Negative::CannotChange });
                        }
                    }
                    _ => push(&mut outbox, Reply::Negative { id, code: Negative::CannotChange }),
                },
            },
            // The script stopped or continued on its own (see report_stops).
            _ = stops.notify.notified(), if matches!(current, RunState::Executing | RunState::Suspended) && outbox.len() < RUN_OUTBOX => {
                let reported = stops.take().filter(|&now| {
                    now != current
                        && still(pid, now)
                        // A `suspend` of ours is undone only by a `resume`.
                        && (now == RunState::Suspended || self_stopped)
                });
                if let Some(now) = reported {
                    self_stopped = now == RunState::Suspended;
                    set_state(&state, now);
                    push(&mut outbox, Reply::StateChange { run, state: now });
                }
            }
            permit = out.reserve(), if !outbox.is_empty() => match permit {
                Ok(p) => p.send(outbox.pop_front().expect("outbox is not empty")),
                // The writer is gone (so is the host): nothing can be told any more.
                Err(_) => outbox.clear(),
            },
            frame = reports.next(), if reports_open && outbox.is_empty() => match frame {
                Ok(Some(Frame::Line(l))) => push(&mut outbox, report(run, current, &l)),
                Ok(Some(Frame::Overlong)) => push(&mut outbox, Reply::Message { text: Quoted::lossy(format!("run {run}: over-long report line discarded").as_bytes()) }),
                _ => reports_open = false,
            },
        }
    };
    let aborted = *state.lock().expect("state lock") == RunState::Aborting;
    // Whatever the script left in its group goes with it.
    killpg(nix::sys::signal::Signal::SIGKILL);
    for m in outbox.drain(..) {
        let _ = out.send(m).await;
    }
    // Pipes may be held open (and written) by grandchildren that escaped the group: bound
    // the wait. What the script wrote to fd 3 before it ended is reported first.
    let collect_until = tokio::time::Instant::now() + Duration::from_millis(500);
    if reports_open {
        while let Ok(Ok(Some(Frame::Line(l)))) =
            tokio::time::timeout_at(collect_until, reports.next()).await
        {
            let m = report(run, RunState::Executing, &l).to_bytes();
            if tokio::time::timeout_at(collect_until, out.send(m))
                .await
                .is_err()
            {
                break;
            }
        }
    }
    let collect = async {
        let o = stdout.await.unwrap_or_default();
        let e = stderr.await.unwrap_or_default();
        (o, e)
    };
    let ((mut result, cut), (err, _)) = tokio::time::timeout_at(collect_until, collect)
        .await
        .unwrap_or_default();
    let lines = last_lines(&err, SYNTAX_ERROR_LINES);
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            send(
                &out,
                Reply::Error {
                    run,
                    state: RunState::Terminated,
                    error: format!("wait failed: {e}").into(),
                },
            )
            .await;
            send(
                &out,
                Reply::StateChange {
                    run,
                    state: RunState::Terminated,
                },
            )
            .await;
            send(
                &out,
                Reply::Terminated {
                    run,
                    exit: ExitCode::GenericError,
                },
            )
            .await;
            return;
        }
    };
    let code = exit_code_for(status, aborted, &lines);
    // The error text: a shell's syntax error message, else the last line of stderr.
    let tail = match code {
        ExitCode::LanguageError => syntax_error_line(&lines).unwrap_or_default().trim(),
        _ => lines.lines().next_back().unwrap_or_default(),
    };
    if !result.is_empty() && !aborted {
        if result.ends_with(b"\r\n") {
            result.truncate(result.len() - 2);
        } else if result.ends_with(b"\n") {
            result.pop();
        }
        if cut || result.len() > MAX_RESULT_OCTETS {
            result.truncate(MAX_RESULT_OCTETS);
            send(
                &out,
                Reply::Message {
                    text: Quoted::lossy(
                        format!("run {run}: stdout truncated to {MAX_RESULT_OCTETS} octets")
                            .as_bytes(),
                    ),
                },
            )
            .await;
        }
        send(
            &out,
            Reply::Result {
                run,
                state: RunState::Executing,
                result: Octets::new(result),
            },
        )
        .await;
    }
    if code != ExitCode::NoError && code != ExitCode::Halted {
        let why = crate::process::describe_exit(status);
        let msg = if tail.is_empty() {
            why
        } else {
            format!("{tail} ({why})")
        };
        send(
            &out,
            Reply::Error {
                run,
                state: RunState::Terminated,
                error: msg.into(),
            },
        )
        .await;
    }
    set_state(&state, RunState::Terminated);
    send(
        &out,
        Reply::StateChange {
            run,
            state: RunState::Terminated,
        },
    )
    .await;
    send(&out, Reply::Terminated { run, exit: code }).await;
    for id in abort_ids {
        send(&out, Reply::Aborted { id }).await;
    }
    // Further controls for this run find it gone (431).
    ctl.close();
    while let Some(c) = ctl.recv().await {
        let id = match c {
            Ctl::Abort(id) => {
                if id.0 != 0 {
                    send(&out, Reply::Aborted { id }).await;
                }
                continue;
            }
            Ctl::Suspend(id) | Ctl::Resume(id) => id,
        };
        send(
            &out,
            Reply::Negative {
                id,
                code: Negative::IllegalRunId,
            },
        )
        .await;
    }
}

/// The message for one report line from fd 3.
fn report(run: RunId, state: RunState, line: &[u8]) -> Reply {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (word, value) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    let (word, value) = match word.strip_suffix(b"-hex") {
        Some(w) => match hex::decode(value) {
            Ok(v) => (w, v),
            Err(_) => {
                return Reply::Message {
                    text: Quoted::lossy(format!("run {run}: bad hex in report line").as_bytes()),
                };
            }
        },
        None => (word, value.to_vec()),
    };
    let value = Octets::new(value);
    // The run's state now: a line the script wrote just before it was stopped may be read
    // after the suspend, and must not report the run as executing again.
    let state = match state {
        RunState::Aborting | RunState::Suspended => state,
        _ => RunState::Executing,
    };
    match word {
        b"result" => Reply::Result {
            run,
            state,
            result: value,
        },
        b"event" => Reply::ResultEvent {
            run,
            state,
            result: value,
        },
        b"error" => Reply::Error {
            run,
            state,
            error: value,
        },
        b"exception" => Reply::ErrorEvent {
            run,
            state,
            error: value,
        },
        _ => Reply::Message {
            text: Quoted::lossy(
                format!(
                    "run {run}: unknown report {:?}",
                    String::from_utf8_lossy(word)
                )
                .as_bytes(),
            ),
        },
    }
}

/// Polls /proc until the process is (or is no longer) stopped; bounded to three seconds. A
/// stop takes effect only once the target is scheduled, which on a loaded machine can take
/// well over a second; the host's command timeout (10 s by default) is longer still.
async fn wait_stopped(pid: i32, stopped: bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        match crate::process::proc_state(pid) {
            Some(c) if (c == 'T' || c == 't') == stopped => return true,
            // A vfork() parent whose child the same SIGSTOP stopped before exec stays in D
            // until continued, and stops before running any code of its own.
            Some('D') if stopped && stop_pending(pid) => return true,
            None => return !stopped,
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    false
}

/// Whether SIGSTOP is pending for the process (or its thread group).
fn stop_pending(pid: i32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let bit = 1u64 << (libc::SIGSTOP - 1);
    s.lines()
        .filter_map(|l| {
            l.strip_prefix("ShdPnd:")
                .or_else(|| l.strip_prefix("SigPnd:"))
        })
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .any(|m| m & bit != 0)
}

/// The last `n` non-empty lines, trimmed, each at most 240 characters, oldest first.
fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<String> = text
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(n)
        .map(|l| l.chars().take(240).collect())
        .collect();
    lines.reverse();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn exit_code_table() {
        let exit = |c: i32| ExitStatus::from_raw(c << 8);
        let sig = |s: i32| ExitStatus::from_raw(s);
        assert_eq!(exit_code_for(exit(0), false, ""), ExitCode::NoError);
        assert_eq!(exit_code_for(exit(0), true, ""), ExitCode::Halted);
        assert_eq!(
            exit_code_for(sig(libc::SIGKILL), true, ""),
            ExitCode::Halted
        );
        assert_eq!(
            exit_code_for(exit(64), false, ""),
            ExitCode::InvalidArgument
        );
        assert_eq!(
            exit_code_for(exit(65), false, ""),
            ExitCode::InvalidArgument
        );
        assert_eq!(
            exit_code_for(exit(77), false, ""),
            ExitCode::SecurityViolation
        );
        assert_eq!(
            exit_code_for(exit(71), false, ""),
            ExitCode::NoResourcesLeft
        );
        assert_eq!(
            exit_code_for(sig(libc::SIGXCPU), false, ""),
            ExitCode::NoResourcesLeft
        );
        assert_eq!(
            exit_code_for(exit(2), false, "x.sh: 3: Syntax error: EOF"),
            ExitCode::LanguageError
        );
        assert_eq!(
            exit_code_for(exit(2), false, "usage"),
            ExitCode::RuntimeError
        );
        // bash: the error, then the offending line quoted.
        let bash =
            "x.sh: line 2: syntax error near unexpected token `then'\nx.sh: line 2: `if then'";
        assert_eq!(exit_code_for(exit(2), false, bash), ExitCode::LanguageError);
        assert_eq!(
            syntax_error_line(bash),
            Some("x.sh: line 2: syntax error near unexpected token `then'")
        );
        assert_eq!(syntax_error_line("syntax error\nsome\nmore"), None);
        assert_eq!(exit_code_for(exit(1), false, ""), ExitCode::RuntimeError);
        assert_eq!(
            exit_code_for(sig(libc::SIGSEGV), false, ""),
            ExitCode::RuntimeError
        );
        assert_eq!(
            exit_code_for_exec_error(&io::Error::from_raw_os_error(libc::ENOEXEC)),
            ExitCode::LanguageError
        );
    }
}
