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
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt};
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
    /// Where the script's wait status goes once [`reap`] has it.
    exit: Option<tokio::sync::oneshot::Sender<std::process::ExitStatus>>,
}

/// The last stop or continue of a run's script that the runtime did not cause itself (or
/// did: the run sorts that out), from [`reap`] to the run's task.
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

/// Takes every wait status there is since the last SIGCHLD: a script's exit goes to its
/// run, its stops and continues (WUNTRACED | WCONTINUED) to the run's [`StopReport`], and
/// any other child is an orphan of a script, reparented to us as subreaper, now reaped.
/// One waitpid per change plus one: a SIGCHLD costs no work per run.
fn reap(runs: &mut HashMap<RunId, RunSlot>, by_pid: &mut HashMap<i32, RunId>) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let pid = unsafe {
            libc::waitpid(
                -1,
                &mut status,
                libc::WNOHANG | libc::WUNTRACED | libc::WCONTINUED,
            )
        };
        if pid <= 0 {
            return;
        }
        let Some(slot) = by_pid.get(&pid).and_then(|r| runs.get_mut(r)) else {
            continue;
        };
        if libc::WIFSTOPPED(status) {
            slot.stops.report(RunState::Suspended);
        } else if libc::WIFCONTINUED(status) {
            slot.stops.report(RunState::Executing);
        } else {
            by_pid.remove(&pid);
            if let Some(tx) = slot.exit.take() {
                let _ = tx.send(std::process::ExitStatus::from_raw(status));
            }
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
    // Orphans of scripts (double forks, `setsid` children) come back to us, and end with
    // their run (crate::contain).
    if let Err(e) = crate::contain::become_subreaper() {
        tracing::warn!("PR_SET_CHILD_SUBREAPER failed, orphans of scripts go to init: {e}");
    }
    reserve_low_fds();
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
    let ctx = SpawnContext::new();
    let mut runs: HashMap<RunId, RunSlot> = HashMap::new();
    let mut by_pid: HashMap<i32, RunId> = HashMap::new();
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
                handle(&line, &opts, &ctx, auth.as_ref(), &mut runs, &mut by_pid, &mut tasks, &out_tx).await;
            }
            Some(done) = tasks.join_next_with_id() => match done {
                Ok((_, run)) => {
                    if let Some(s) = runs.remove(&run) {
                        by_pid.remove(&(s.pid as i32));
                    }
                }
                Err(e) => {
                    tracing::error!("run task failed: {e}");
                    runs.retain(|_, s| s.task != e.id());
                    by_pid.retain(|_, r| runs.contains_key(r));
                }
            },
            Some(()) = next_sigchld(&mut sigchld) => reap(&mut runs, &mut by_pid),
        }
    }
    // The channel closed: the host asks us to terminate every run and exit (RFC 3179 5.2).
    let deadline = tokio::time::Instant::now() + opts.grace + Duration::from_secs(5);
    for slot in runs.values() {
        // Waits for room: a live run keeps taking controls; an ended one fails at once.
        let _ = tokio::time::timeout_at(deadline, slot.ctl.send(Ctl::Abort(Id(0)))).await;
    }
    // Exits reach the runs' tasks only through `reap`, so SIGCHLD is still served while
    // they end.
    reap(&mut runs, &mut by_pid);
    loop {
        tokio::select! {
            done = tokio::time::timeout_at(deadline, tasks.join_next()) => match done {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            Some(()) = next_sigchld(&mut sigchld) => reap(&mut runs, &mut by_pid),
        }
    }
    // Runs still going after the deadline are dropped (their scripts killed on drop).
    drop(tasks);
    ctx.end_all();
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

/// The next SIGCHLD; never, without a SIGCHLD stream.
async fn next_sigchld(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
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

#[allow(clippy::too_many_arguments)]
async fn handle(
    line: &[u8],
    opts: &Options,
    ctx: &SpawnContext,
    auth: Option<&Authenticator>,
    runs: &mut HashMap<RunId, RunSlot>,
    by_pid: &mut HashMap<i32, RunId>,
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
            match ctx.spawn_script(path, run, &profile, &argument) {
                Ok(spawned) => {
                    // The 231 goes first, before all the run says; the run is in the table
                    // before the main loop can reap its exit.
                    let permit = out.reserve().await.ok();
                    let state = Arc::new(Mutex::new(RunState::Executing));
                    let (ctl_tx, ctl_rx) = mpsc::channel(CTL_QUEUE);
                    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
                    let pid = spawned.guard.pid;
                    let stops = Arc::new(StopReport::default());
                    let job = supervise(
                        run,
                        spawned,
                        state.clone(),
                        ctl_rx,
                        stops.clone(),
                        exit_rx,
                        out.clone(),
                        opts.grace,
                    );
                    let task = tasks.spawn(async move {
                        job.await;
                        run
                    });
                    // In the table before anything is awaited: its exit may be reaped next.
                    runs.insert(
                        run,
                        RunSlot {
                            state,
                            ctl: ctl_tx,
                            task: task.id(),
                            pid: pid as u32,
                            stops,
                            exit: Some(exit_tx),
                        },
                    );
                    by_pid.insert(pid, run);
                    if let Some(p) = permit {
                        p.send(
                            Reply::Status {
                                id,
                                state: RunState::Executing,
                            }
                            .to_bytes(),
                        );
                    }
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

/// A script's process and everything of it that must end with its run: its process group,
/// its cgroup (if any), and without cgroups the orphans it left with us. Dropping it kills
/// them all; [`Contained::end`] does the same and waits for the cgroup to empty.
struct Contained {
    run: RunId,
    pid: i32,
    cgroup: Option<crate::contain::Cgroup>,
    /// The cgroup was frozen at some time (it is thawed before it is used again).
    froze: bool,
    ended: bool,
}

/// Empty run cgroups kept for the next runs: creating and removing a cgroup costs about
/// as much as starting a small program, and an empty one is as good as a new one.
static CGROUP_POOL: Mutex<Vec<crate::contain::Cgroup>> = Mutex::new(Vec::new());

/// Empty cgroups kept, at most.
const CGROUP_POOL_MAX: usize = 64;

/// What a sweep for strays spares: the cgroups of live runs, and the scripts (process
/// group leaders) that run without one. Anything else in the runs' cgroup directory is a
/// process that moved itself out of its run's cgroup (the directory is delegated to the
/// scripts' own user, so the kernel lets it) and would otherwise outlive its run.
#[derive(Default)]
struct Live {
    cgroups: std::collections::HashSet<PathBuf>,
    uncontained: std::collections::HashSet<i32>,
}

static LIVE: std::sync::LazyLock<Mutex<Live>> = std::sync::LazyLock::new(Mutex::default);

/// The directory the runs' cgroups are made in (see [`run_cgroups`]), once known.
static RUNS_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Kills what sits in the runs' cgroup directory outside every live run's cgroup: in the
/// directory itself (but this runtime and live scripts without a cgroup), and, when it
/// holds more cgroups than the live and kept ones, in every unknown one, which is then
/// removed. Costs one small read per run end while no script misbehaves.
fn sweep_strays() {
    let Some(dir) = RUNS_DIR.get() else { return };
    let live = LIVE.lock().expect("live lock");
    let me = std::process::id() as i32;
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let group = crate::contain::stat_field(pid, 2);
            if pid != me && !group.is_some_and(|g| live.uncontained.contains(&g)) {
                tracing::info!(pid, "ended a process that left its run's cgroup");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let pool = CGROUP_POOL.lock().expect("pool lock");
    let known = live.cgroups.len() + pool.len();
    let descendants = std::fs::read_to_string(dir.join("cgroup.stat"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("nr_descendants "))
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        .unwrap_or(0);
    if descendants <= known {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir())
            && !live.cgroups.contains(&path)
            && !pool.iter().any(|c| c.path() == path)
        {
            tracing::info!(cgroup = %path.display(), "ended a cgroup no run made");
            crate::contain::kill_tree(&path);
            // Removed by a later sweep if its processes take longer to go.
            let _ = std::fs::remove_dir(&path);
        }
    }
}

impl Contained {
    fn new(run: RunId, pid: i32, cgroup: Option<crate::contain::Cgroup>) -> Contained {
        let mut live = LIVE.lock().expect("live lock");
        match &cgroup {
            Some(cg) => live.cgroups.insert(cg.path().to_path_buf()),
            None => live.uncontained.insert(pid),
        };
        Contained {
            run,
            pid,
            cgroup,
            froze: false,
            ended: false,
        }
    }

    /// This run no longer spares its cgroup or process group from [`sweep_strays`].
    fn unregister(&self) {
        let mut live = LIVE.lock().expect("live lock");
        match &self.cgroup {
            Some(cg) => live.cgroups.remove(cg.path()),
            None => live.uncontained.remove(&self.pid),
        };
    }

    fn kill(&self) {
        crate::process::signal_group(self.pid as u32, nix::sys::signal::Signal::SIGKILL);
        match &self.cgroup {
            Some(cg) => cg.kill(),
            None => kill_orphans_of(self.run, self.pid),
        }
    }

    async fn end(mut self) {
        self.ended = true;
        self.unregister();
        crate::process::signal_group(self.pid as u32, nix::sys::signal::Signal::SIGKILL);
        let Some(cg) = self.cgroup.take() else {
            kill_orphans_of(self.run, self.pid);
            return;
        };
        // The script left nothing: the cgroup serves the next run.
        if cg.is_empty() && (!self.froze || cg.freeze(false).is_ok()) {
            let mut pool = CGROUP_POOL.lock().expect("pool lock");
            if pool.len() < CGROUP_POOL_MAX {
                pool.push(cg);
                drop(pool);
                sweep_strays();
                return;
            }
        }
        cg.remove().await;
        sweep_strays();
    }

    fn freeze(&mut self, frozen: bool) {
        if let Some(cg) = &self.cgroup {
            self.froze |= frozen;
            if let Err(e) = cg.freeze(frozen) {
                tracing::warn!(run = %self.run, "cgroup.freeze: {e}");
            }
        }
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if !self.ended {
            self.unregister();
            self.kill();
            if let Some(cg) = &self.cgroup {
                let _ = std::fs::remove_dir(cg.path());
                sweep_strays();
            }
        }
    }
}

/// Without a cgroup: kills the processes a run left behind, as far as they can be told
/// apart. A child of ours that is no live script's and is in the script's process group
/// or has the run's `SMX_RUN_ID` (an orphan reparented to us), and everything below it.
/// A process that left the group and cleared its environment is not found (README).
fn kill_orphans_of(run: RunId, pgid: i32) {
    let marker = format!("SMX_RUN_ID={run}");
    let mut doomed: Vec<i32> = crate::contain::own_children()
        .into_iter()
        .filter(|&c| c != pgid)
        .filter(|&c| {
            crate::contain::stat_field(c, 2) == Some(pgid)
                || crate::contain::environ_has(c, marker.as_bytes())
        })
        .collect();
    if doomed.is_empty() {
        return;
    }
    // Their descendants, found by parent links (they have not been reparented yet).
    let parents: Vec<(i32, i32)> = crate::contain::processes()
        .filter_map(|p| Some((p, crate::contain::stat_field(p, 1)?)))
        .collect();
    let mut i = 0;
    while i < doomed.len() {
        let p = doomed[i];
        doomed.extend(parents.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    for p in doomed {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Takes fds 0 to 3 if any is free (with /dev/null), so that no pipe of ours is ever
/// created there: a script's fds 0 to 3 are then always dup2'd from higher ones.
fn reserve_low_fds() {
    loop {
        // SAFETY: open(2) of a constant path; the fd is kept for the life of the process.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return;
        }
        if fd > REPORT_FD {
            // SAFETY: closing the fd just opened.
            unsafe { libc::close(fd) };
            return;
        }
    }
}

/// Environment variables of the runtime that scripts must not see, or get per run.
const NOT_INHERITED: [&str; 10] = [
    "SMX_TRANSPORT",
    "SMX_HOST",
    "SMX_PORT",
    "SMX_COOKIE",
    "SMX_COOKIE_FD",
    "SMX_CGROUP",
    "SMX_RUN_ID",
    "SMX_PROFILE",
    "SMX_SCRIPT",
    "SMX_REPORT_FD",
];

/// What every spawn shares, set up once when the runtime starts.
struct SpawnContext {
    /// The runtime's environment without [`NOT_INHERITED`].
    base_env: Vec<CString>,
    /// The fd limit the runtime was started with, given back to every script.
    nofile: Option<libc::rlimit>,
    /// Where the runs' cgroups go, and whether we made that directory ourselves.
    cgroups: Option<(PathBuf, bool)>,
}

impl SpawnContext {
    fn new() -> SpawnContext {
        use std::os::unix::ffi::OsStrExt;
        let base_env = std::env::vars_os()
            .filter(|(k, _)| !NOT_INHERITED.iter().any(|n| k.as_bytes() == n.as_bytes()))
            .filter_map(|(k, v)| {
                let mut e = k.as_bytes().to_vec();
                e.push(b'=');
                e.extend_from_slice(v.as_bytes());
                CString::new(e).ok()
            })
            .collect();
        let cgroups = run_cgroups();
        if let Some((dir, _)) = &cgroups {
            let _ = RUNS_DIR.set(dir.clone());
        }
        SpawnContext {
            base_env,
            nofile: raise_nofile(),
            cgroups,
        }
    }

    /// A cgroup for one run, if this machine gives us cgroups: an empty one left by an
    /// earlier run, else a new one.
    fn run_cgroup(&self, run: RunId) -> Option<crate::contain::Cgroup> {
        let (parent, _) = self.cgroups.as_ref()?;
        while let Some(cg) = CGROUP_POOL.lock().expect("pool lock").pop() {
            // A process may have moved itself into a kept cgroup: not the next run's.
            if cg.is_empty() {
                return Some(cg);
            }
            crate::contain::kill_tree(cg.path());
            let _ = std::fs::remove_dir(cg.path());
        }
        match crate::contain::Cgroup::create(parent.join(format!("run-{run}"))) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(%run, "no cgroup for the run ({e}): contained by process group");
                None
            }
        }
    }

    /// The runtime is ending: every process left (scripts' orphans) goes with it.
    fn end_all(&self) {
        CGROUP_POOL.lock().expect("pool lock").clear();
        for c in crate::contain::own_children() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match &self.cgroups {
            Some((dir, true)) => {
                crate::contain::remove_tree(dir);
            }
            Some((dir, false)) => {
                for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    if e.file_name().to_string_lossy().starts_with("run-") {
                        crate::contain::remove_tree(&e.path());
                    }
                }
            }
            None => {}
        }
    }

    fn spawn_script(
        &self,
        path: &Path,
        run: RunId,
        profile: &Profile,
        argument: &Octets,
    ) -> io::Result<Spawned> {
        use std::os::unix::ffi::OsStrExt;
        if !access(path, libc::X_OK) {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                NotExecutable { mode },
            ));
        }
        check_format(path)?;
        let program = CString::new(path.as_os_str().as_bytes())?;
        let arg = argument.as_bytes();
        let arg1 = (!arg.is_empty() && !arg.contains(&0))
            .then(|| CString::new(arg).expect("no NUL octet"));
        let per_run = [
            format!("SMX_RUN_ID={run}"),
            format!("SMX_PROFILE={}", profile.as_str()),
            format!("SMX_REPORT_FD={REPORT_FD}"),
        ];
        let mut script_var = b"SMX_SCRIPT=".to_vec();
        script_var.extend_from_slice(path.as_os_str().as_bytes());
        let per_run: Vec<CString> = per_run
            .into_iter()
            .map(|v| CString::new(v).expect("no NUL octet"))
            .chain(CString::new(script_var).ok())
            .collect();
        let envp: Vec<*const libc::c_char> = self
            .base_env
            .iter()
            .chain(&per_run)
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let argv: Vec<*const libc::c_char> = std::iter::once(program.as_ptr())
            .chain(arg1.as_ref().map(|a| a.as_ptr()))
            .chain(std::iter::once(std::ptr::null()))
            .collect();

        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from);
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (rep_r, rep_w) = pipe()?;
        // The Argument goes to stdin, octet for octet, written now if the pipe takes it
        // (65535 octets fit an ordinary pipe), so no fd of ours stays open for it.
        let (in_r, in_w) = pipe()?;
        let in_w = std::fs::File::from(in_w);
        let rest = write_now(&in_w, arg);
        let cgroup = self.run_cgroup(run);
        let procs = cgroup.as_ref().and_then(|c| c.procs().ok());
        let fds = [
            (in_r.as_raw_fd(), 0),
            (out_w.as_raw_fd(), 1),
            (err_w.as_raw_fd(), 2),
            (rep_w.as_raw_fd(), REPORT_FD),
        ];
        let plan = crate::process::SpawnPlan {
            program: &program,
            argv: &argv,
            envp: &envp,
            fds: &fds,
            cgroup_procs: procs.as_ref().map(|f| f.as_raw_fd()),
            nofile: self.nofile,
        };
        let child = crate::process::spawn(&plan)?;
        if procs.is_some() && !child.cgroup_joined {
            tracing::warn!(%run, "script did not join its cgroup: contained by process group");
        }
        let cgroup = cgroup.filter(|_| child.cgroup_joined);
        let guard = Contained::new(run, child.pid, cgroup);
        drop((in_r, out_w, err_w, rep_w, procs));
        if let Some(rest) = rest {
            let mut stdin = tokio::net::unix::pipe::Sender::from_file(in_w)?;
            tokio::spawn(async move {
                let _ = stdin.write_all(&rest).await;
            });
        }
        use tokio::net::unix::pipe::Receiver;
        Ok(Spawned {
            guard,
            stdout: Receiver::from_owned_fd(out_r)?,
            stderr: Receiver::from_owned_fd(err_r)?,
            reports: Receiver::from_owned_fd(rep_r)?,
        })
    }
}

/// Writes what a pipe takes at once (non-blocking); the rest, if any, to be written later.
fn write_now(w: &std::fs::File, bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.is_empty() {
        return None;
    }
    let fd = w.as_fd();
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).ok()?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).ok()?;
    let n = nix::unistd::write(fd, bytes).unwrap_or(0);
    (n < bytes.len()).then(|| bytes[n..].to_vec())
}

/// Raises the soft fd limit to the hard one (a live script holds three of our fds; see
/// [`crate::fdlimit`]) and returns the limit the runtime started with, for the scripts.
fn raise_nofile() -> Option<libc::rlimit> {
    match crate::fdlimit::raise_nofile() {
        Ok(l) => Some(libc::rlimit {
            rlim_cur: l.soft_at_start,
            rlim_max: l.hard,
        }),
        Err(e) => {
            tracing::warn!("cannot raise the soft fd limit: {e}");
            None
        }
    }
}

/// Where the runs' cgroups go: the cgroup the host made for this runtime (`SMX_CGROUP`,
/// which we are in), else one we make next to our own, if the hierarchy lets us.
fn run_cgroups() -> Option<(PathBuf, bool)> {
    if let Some(dir) = std::env::var_os("SMX_CGROUP") {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some((dir, false));
    }
    let own = crate::contain::own_cgroup()?;
    // Exec runtimes killed outright (a test's host gone, SIGKILL) leave theirs behind.
    crate::contain::sweep_dead(&own, "smx-exec-");
    let dir = own.join(format!("smx-exec-{}", std::process::id()));
    match std::fs::create_dir(&dir) {
        Ok(()) => Some((dir, true)),
        Err(e) => {
            tracing::debug!("no cgroups for runs ({e}): contained by process groups");
            None
        }
    }
}

struct Spawned {
    guard: Contained,
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: tokio::net::unix::pipe::Receiver,
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

/// At most this many octets are taken from a pipe per wakeup, so that a script flooding
/// its stdout cannot keep the runtime from its other runs.
const DRAIN_CHUNKS: usize = 16;

/// At most this many reads of 8 KiB at a script's exit: more than a pipe holds (1 MiB is
/// Linux's default `pipe-max-size`), and a bound against a background child that keeps
/// writing to the pipe it inherited.
const EXIT_DRAIN_CHUNKS: usize = 128;

/// One non-blocking `read(2)` of the pipe now, whatever tokio's readiness says (the fd is
/// in non-blocking mode: WouldBlock when it is empty).
fn read_now(rx: &tokio::net::unix::pipe::Receiver, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: read(2) into a buffer we own, of its length.
    let n = unsafe { libc::read(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The end of stderr kept for the error text (its last lines).
const STDERR_TAIL: usize = 4096;

/// Reads what `rx` has now, without waiting, at most `chunks` reads of 8 KiB: keeps up to
/// `max` octets (the first ones, or with `tail` the last ones) and drops the rest, setting
/// `cut`. False at EOF (or on an error): nothing more will come.
fn drain(
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    kept: &mut Vec<u8>,
    max: usize,
    tail: bool,
    cut: &mut bool,
    chunks: usize,
) -> bool {
    let mut chunk = [0u8; 8192];
    for _ in 0..chunks {
        match read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) if tail => {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > max {
                    let excess = kept.len() - max;
                    kept.drain(..excess);
                }
            }
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                *cut |= n > room;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Fd 3 of a script: lines framed as they come, with no buffer while there is nothing.
struct Reports {
    rx: tokio::net::unix::pipe::Receiver,
    buf: bytes::BytesMut,
    framer: crate::framing::LineFramer,
    open: bool,
    /// Every writer closed fd 3.
    eof: bool,
}

impl Reports {
    fn new(rx: tokio::net::unix::pipe::Receiver) -> Reports {
        Reports {
            rx,
            buf: bytes::BytesMut::new(),
            framer: crate::framing::LineFramer::new(64 * 1024 + 16),
            open: true,
            eof: false,
        }
    }

    fn frame(&mut self) -> Option<Frame> {
        let f = self.framer.next_frame(&mut self.buf);
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = bytes::BytesMut::new();
        }
        f
    }

    /// The next whole line (cancel-safe: what was read stays in `buf`); `None` at EOF,
    /// with an unterminated rest left for [`Reports::rest`].
    async fn next(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(f) = self.frame() {
                return Ok(Some(f));
            }
            self.rx.readable().await?;
            if !self.read(false)? {
                return Ok(None);
            }
        }
    }

    /// One non-blocking read; false at EOF. `now` reads with the syscall whatever tokio's
    /// readiness says (see [`read_now`]); only for the last reads, at the script's exit.
    fn read(&mut self, now: bool) -> io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        let got = if now {
            let mut chunk = [0u8; 4096];
            read_now(&self.rx, &mut chunk).inspect(|&n| self.buf.extend_from_slice(&chunk[..n]))
        } else {
            self.rx.try_read_buf(&mut self.buf)
        };
        match got {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The whole lines there are now, without waiting (at most what a pipe holds).
    fn drain_now(&mut self, lines: &mut Vec<Frame>) {
        for _ in 0..256 {
            while let Some(f) = self.frame() {
                lines.push(f);
            }
            let before = self.buf.len();
            match self.read(true) {
                Ok(true) if self.buf.len() > before => {}
                _ => break,
            }
        }
        while let Some(f) = self.frame() {
            lines.push(f);
        }
    }

    /// The unterminated rest of the last line, if any.
    fn rest(&mut self) -> Option<bytes::Bytes> {
        match self.framer.finish(&mut self.buf) {
            Some(Frame::Line(l)) => Some(l),
            _ => None,
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
///
/// The run ends when the script exits: what it wrote is what is buffered then (a child it
/// left in the background may hold its pipes open, and is not waited for), and then
/// everything it left is killed ([`Contained`]).
#[allow(clippy::too_many_arguments)]
async fn supervise(
    run: RunId,
    sp: Spawned,
    state: Arc<Mutex<RunState>>,
    mut ctl: mpsc::Receiver<Ctl>,
    stops: Arc<StopReport>,
    mut exit: tokio::sync::oneshot::Receiver<std::process::ExitStatus>,
    out: Out,
    grace: Duration,
) {
    let Spawned {
        mut guard,
        stdout,
        stderr,
        reports,
    } = sp;
    let pid = guard.pid;
    let pgid = nix::unistd::Pid::from_raw(pid);
    let mut result: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut stdout_open = true;
    let mut err: Vec<u8> = Vec::new();
    let mut stderr_open = true;
    let mut reports = Reports::new(reports);
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
            st = &mut exit => break st.map_err(|_| io::Error::other("its wait status was lost")),
            _ = async { tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)).await }, if kill_at.is_some() => {
                guard.kill();
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
                        // A frozen cgroup takes no signal: thawed first.
                        guard.freeze(false);
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
                            // Its whole tree, `setsid` children included.
                            guard.freeze(true);
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
                        guard.freeze(false);
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
            frame = reports.next(), if reports.open && outbox.is_empty() => match frame {
                Ok(Some(Frame::Line(l))) => push(&mut outbox, report(run, current, &l)),
                Ok(Some(Frame::Overlong)) => push(&mut outbox, overlong(run)),
                _ => reports.open = false,
            },
            r = stdout.readable(), if stdout_open => {
                stdout_open = r.is_ok() && drain(|b| stdout.try_read(b), &mut result, MAX_RESULT_OCTETS + 2, false, &mut cut, DRAIN_CHUNKS);
            }
            r = stderr.readable(), if stderr_open => {
                stderr_open = r.is_ok() && drain(|b| stderr.try_read(b), &mut err, STDERR_TAIL, true, &mut false, DRAIN_CHUNKS);
            }
        }
    };
    let aborted = *state.lock().expect("state lock") == RunState::Aborting;
    // Decided now, at the script's exit: its output is what is buffered. Read with the
    // syscall itself: tokio's `try_read` answers WouldBlock without reading until its
    // reactor has seen the pipe become readable, which may come after the SIGCHLD.
    if stdout_open {
        drain(
            |b| read_now(&stdout, b),
            &mut result,
            MAX_RESULT_OCTETS + 2,
            false,
            &mut cut,
            EXIT_DRAIN_CHUNKS,
        );
    }
    if stderr_open {
        drain(
            |b| read_now(&stderr, b),
            &mut err,
            STDERR_TAIL,
            true,
            &mut false,
            EXIT_DRAIN_CHUNKS,
        );
    }
    let mut late = Vec::new();
    if reports.open {
        reports.drain_now(&mut late);
    }
    // An unterminated last report counts only if the script ended by itself and nothing
    // holds fd 3 any more; else it was cut, and is not taken for a result.
    let exited = matches!(&status, Ok(s) if s.code().is_some());
    let mut cut_note = None;
    if let Some(rest) = reports.rest() {
        if exited && reports.eof {
            late.push(Frame::Line(rest));
        } else {
            cut_note = Some(format!(
                "output was cut: an unterminated report line of {} octets was discarded",
                rest.len()
            ));
        }
    }
    drop((stdout, stderr, reports));
    // Whatever the script left (its group, its cgroup, orphans) goes with it.
    guard.end().await;
    for m in outbox.drain(..) {
        let _ = out.send(m).await;
    }
    for f in late {
        let m = match f {
            Frame::Line(l) => report(run, RunState::Executing, &l),
            Frame::Overlong => overlong(run),
        };
        send(&out, m).await;
    }
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
        let mut msg = if tail.is_empty() {
            why
        } else {
            format!("{tail} ({why})")
        };
        if let Some(note) = cut_note.take() {
            msg = format!("{msg}; {note}");
        }
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
    if let Some(note) = cut_note {
        send(
            &out,
            Reply::Error {
                run,
                state: RunState::Terminated,
                error: note.into(),
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

/// The message for a report line over the limit.
fn overlong(run: RunId) -> Reply {
    Reply::Message {
        text: Quoted::lossy(format!("run {run}: over-long report line discarded").as_bytes()),
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
