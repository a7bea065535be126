//! `smx daemon`: the host as a service, driven over a local Unix socket.
//!
//! Every connection is authorised by its peer credentials (SO_PEERCRED): root and members
//! of the configured admin group may act for any owner; any other user only for the owner
//! named like their user name. Requests on one connection are served concurrently (each
//! response carries its request's id), so a client may wait for one run while it controls
//! another. A bad request gets an error response and disturbs nothing else.
//!
//! Everything is bounded. Connections are capped in total and per uid ([`admission`]) and
//! closed when they send no first request in time; a failing accept backs off instead of
//! spinning. Each connection's lines go through a byte-bounded queue ([`outbox`]), so a
//! client that does not read gets backpressure (and, as a subscriber, `lagged` notices),
//! never unbounded memory. Every task has an owner that ends it: a connection's tasks run
//! on its own `TaskTracker` and end with its `CancellationToken`s (see [`Conn`]); the
//! connections run on the daemon's tracker, which shutdown waits for with a timeout.
//!
//! [`admission`]: super::admission
//! [`outbox`]: super::outbox

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf, UCred};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::{Admission, Seat};
use super::log_limit::LogLimit;
use super::outbox::{Drain, Outbox, outbox};
use super::proto::*;
use crate::config::{Config, IdRef};
use crate::framing::{Frame, LineReader};
use crate::host::{ControlError, Host, LaunchError, LaunchRequest, RecvError, RunInfo};
use crate::proto::RunId;
use crate::storage::Storage;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("another smx daemon is already listening on {0}")]
    AlreadyRunning(PathBuf),
    #[error(
        "an smx daemon started on {} is still running (its socket file was removed; its \
         processes are in cgroup {}): stop it first, or choose another --socket",
        socket.display(),
        cgroup.display()
    )]
    StillRunning { socket: PathBuf, cgroup: PathBuf },
    #[error(
        "control socket {path}: it exists and is {kind}, not a socket; not replacing it \
         (remove it or choose another --socket)"
    )]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control.{key}: unknown group {group}")]
    UnknownGroup { key: &'static str, group: String },
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::mib::store::StoreError),
}

/// Where the daemon listens when neither `--socket` nor `[control] socket` says.
pub fn default_socket() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/smx/smx.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => Path::new(&d).join("smx.sock"),
        None => PathBuf::from(format!("/tmp/smx-{}/smx.sock", nix::unistd::geteuid())),
    }
}

/// Where the daemon stores scripts when `[host] storage` does not say.
pub fn default_storage() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/smx/scripts");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".local/state/smx/scripts")
}

/// The socket path for a daemon: `--socket`, else the config's, else the default.
pub fn socket_path(flag: Option<&Path>, config: &Config) -> PathBuf {
    flag.map(Path::to_owned)
        .or_else(|| config.control.socket.as_ref().map(|s| s.0.clone()))
        .unwrap_or_else(default_socket)
}

struct Shared {
    host: Host,
    /// The Script MIB over `host`: scripts, launch buttons, languages.
    mib: crate::mib::Mib,
    config_path: Option<PathBuf>,
    admin_gid: Mutex<Option<u32>>,
    /// Open control connections, in total and per uid (the `clients` of `stats`).
    admission: Arc<Admission>,
    started: Instant,
    /// Cancelled when the daemon starts to shut down: every connection writes its notice,
    /// pending `wait`s answer `shutting_down`, and connections close.
    shutdown: CancellationToken,
    /// Cancelled when shutdown has waited long enough: whatever is left ends at once.
    /// Every connection's token is a child of it.
    stop: CancellationToken,
    /// Every connection's task (which waits for its own tasks before it ends).
    connections: TaskTracker,
    /// Work a request started that must not be dropped half-way even if the request is
    /// cancelled: host operations that write to a runtime, blocking calls. Each ends by
    /// itself (a host command is bounded by the command timeout).
    detached: TaskTracker,
    logs: LogLimit,
}

fn group_gid(key: &'static str, g: &IdRef) -> Result<u32, DaemonError> {
    match g {
        IdRef::Id(n) => Ok(*n),
        IdRef::Name(name) => nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
            .ok_or_else(|| DaemonError::UnknownGroup {
                key,
                group: name.clone(),
            }),
    }
}

/// How long shutdown waits for connections to write their notice and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(
    config_path: Option<PathBuf>,
    socket_flag: Option<PathBuf>,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    // First of all: a SIGTERM that arrives while the daemon is starting is then acted on
    // (a clean, prompt exit) instead of killing it half-way, socket file left behind.
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    // The same checks as `smx config check`: every problem, and users and groups that do
    // not exist, refuse the start.
    let config = Config::load_checked(config_path.as_deref())?;
    let socket = absolute(socket_path(socket_flag.as_deref(), &config))?;
    let storage_dir = config.host.storage.clone().unwrap_or_else(default_storage);
    let storage = Storage::open(&storage_dir)?;
    let admin_gid = config
        .control
        .admin_group
        .as_ref()
        .map(|g| group_gid("admin_group", g))
        .transpose()?;
    let socket_gid = config
        .control
        .socket_group
        .as_ref()
        .map(|g| group_gid("socket_group", g))
        .transpose()?;
    let listener = bind(&socket, socket_gid)?;
    // Only now, with the socket ours: an earlier instance on it is dead, and what it left
    // running is ended (crate::contain).
    let level = crate::contain::init_host(&crate::contain::key_for(&socket));
    if let crate::contain::HostLevel::Taken(cgroup) = level {
        // The socket just bound is ours; the rest belongs to the live one.
        drop(listener);
        let _ = std::fs::remove_file(&socket);
        return Err(DaemonError::StillRunning { socket, cgroup });
    }
    tracing::info!(?level, "process containment");
    crate::contain::spawn_orphan_reaper();
    let store = match &config.host.state_dir {
        Some(dir) => Some(crate::mib::store::Store::open(dir)?),
        None => None,
    };
    let agentx = config.agentx.clone();
    let host = Host::new(config, storage);
    let mib = crate::mib::Mib::new(host.clone(), store)?;
    // `[agentx]`: DISMAN-SCRIPT-MIB through the device's snmpd, until shutdown.
    let subagent_stop = CancellationToken::new();
    let subagent = agentx.map(|a| {
        tokio::spawn(crate::snmp::session::run(
            mib.clone(),
            a,
            subagent_stop.clone(),
        ))
    });
    let shared = Arc::new(Shared {
        host,
        mib,
        config_path,
        admin_gid: Mutex::new(admin_gid),
        admission: Arc::new(Admission::default()),
        started: Instant::now(),
        shutdown: CancellationToken::new(),
        stop: CancellationToken::new(),
        connections: TaskTracker::new(),
        detached: TaskTracker::new(),
        logs: LogLimit::default(),
    });
    tracing::info!(socket = %socket.display(), storage = %storage_dir.display(), "smx daemon listening");
    let mut backoff = Backoff::new();
    loop {
        tokio::select! {
            accepted = accept(&shared, &listener, &mut backoff) => {
                if let Some(stream) = accepted {
                    admit(&shared, stream);
                }
            }
            _ = hup.recv() => {
                if let Err(e) = reload(&shared) {
                    tracing::error!("SIGHUP: configuration not reloaded: {e}");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: aborting runs and closing runtimes");
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    // Runs end first (subscribers see them terminate), then clients are told and dropped.
    shared.host.shutdown().await;
    // After the host: the runs' terminations are saved before the store closes.
    shared.mib.shutdown().await;
    subagent_stop.cancel();
    if let Some(s) = subagent {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, s).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    shared.shutdown.cancel();
    shared.connections.close();
    shared.detached.close();
    // Let every connection write its shutdown notice (bounded: a client may not read).
    if tokio::time::timeout(SHUTDOWN_GRACE, shared.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = shared.admission.open(),
            "connections still open after {SHUTDOWN_GRACE:?}; closing them"
        );
    }
    shared.stop.cancel();
    let rest = async {
        shared.connections.wait().await;
        shared.detached.wait().await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, rest).await.is_err() {
        tracing::warn!("some control tasks did not end in time; leaving them");
    }
    crate::contain::shutdown_host();
    tracing::info!("smx daemon stopped");
    Ok(())
}

/// `path` made absolute against the working directory: a relative `--socket r.sock` is
/// bound, logged and removed as the same file.
fn absolute(path: PathBuf) -> Result<PathBuf, DaemonError> {
    if path.is_absolute() {
        return Ok(path);
    }
    std::env::current_dir()
        .map(|d| d.join(&path))
        .map_err(|source| DaemonError::Socket { path, source })
}

/// The pause after a failed accept: 5 ms, doubling up to 250 ms, back to 5 ms after a
/// success. An accept fails over and over while the process is out of file descriptors
/// (EMFILE, ENFILE); retrying at once spun a core and starved the connections being served.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(250);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn pause(&mut self) -> Duration {
        let p = self.next;
        self.next = (p * 2).min(Self::MAX);
        p
    }
}

/// The next connection, or `None` after a failed accept and its pause. Cancel-safe.
async fn accept(
    shared: &Shared,
    listener: &UnixListener,
    backoff: &mut Backoff,
) -> Option<UnixStream> {
    match listener.accept().await {
        Ok((stream, _)) => {
            backoff.reset();
            Some(stream)
        }
        Err(e) => {
            let pause = backoff.pause();
            if let Some(n) = shared.logs.allow("accept") {
                tracing::warn!("accept failed: {e}; retrying in {pause:?}{n}");
            }
            tokio::time::sleep(pause).await;
            None
        }
    }
}

/// Starts serving `stream` if the connection caps allow it; otherwise tells it why (one
/// error line instead of the greeting) and closes it.
fn admit(shared: &Arc<Shared>, stream: UnixStream) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            if let Some(n) = shared.logs.allow("peer_cred") {
                tracing::warn!("control connection without peer credentials refused: {e}{n}");
            }
            return;
        }
    };
    let limits = shared.host.config().control.clone();
    // The per-uid cap keeps one user from crowding out the others; root and the daemon's
    // own user (the agent, the admin) are bound by the total only.
    let uid = cred.uid();
    let per_uid = if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        usize::MAX
    } else {
        limits.max_connections_per_uid
    };
    match shared.admission.admit(uid, limits.max_connections, per_uid) {
        Ok(seat) => {
            let s = shared.clone();
            shared
                .connections
                .spawn(async move { serve_client(s, stream, cred, seat).await });
        }
        Err(refusal) => {
            if let Some(n) = shared.logs.allow("over_cap") {
                tracing::warn!(uid = cred.uid(), "control connection refused: {refusal}{n}");
            }
            let l = respond(
                None,
                Err(fail(ErrorCode::TooManyConnections, refusal.to_string())),
            );
            // A new socket's send buffer is empty, so the line fits without waiting; if it
            // does not, the client learns of the refusal from the close alone.
            let _ = stream.try_write(l.as_bytes());
        }
    }
}

/// Makes room for the socket at `path`: nothing there, or a stale socket (connecting is
/// refused: its daemon is gone), which is removed. Anything else stays as it is and the
/// start is refused: a live socket (another daemon), and whatever is not a socket (a
/// regular file, a directory, a symlink, ...), which an operator's mistyped `--socket` must
/// never destroy.
fn clear_stale_socket(path: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::FileTypeExt;
    let err = |source| DaemonError::Socket {
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    let t = meta.file_type();
    if !t.is_socket() {
        let kind = if t.is_file() {
            "a regular file"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_symlink() {
            "a symbolic link"
        } else if t.is_fifo() {
            "a FIFO"
        } else {
            "a device"
        };
        return Err(DaemonError::NotASocket {
            path: path.to_owned(),
            kind,
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(DaemonError::AlreadyRunning(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing a stale control socket");
            std::fs::remove_file(path).map_err(err)
        }
        // Not allowed to connect, say: whoever listens there is not ours to displace.
        Err(e) => Err(err(e)),
    }
}

fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| DaemonError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    }
    clear_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Some(g) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g)))
            .map_err(|e| err(e.into()))?;
    }
    Ok(listener)
}

fn reload(shared: &Shared) -> Result<(), String> {
    let config = Config::load_checked(shared.config_path.as_deref()).map_err(|e| e.to_string())?;
    let admin = config
        .control
        .admin_group
        .as_ref()
        .map(|g| group_gid("admin_group", g))
        .transpose()
        .map_err(|e| e.to_string())?;
    *shared.admin_gid.lock().expect("admin lock") = admin;
    shared.host.reload(config);
    shared.mib.config_reloaded();
    tracing::info!("configuration reloaded");
    Ok(())
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
struct Peer {
    uid: u32,
    user: String,
    admin: bool,
}

impl Peer {
    /// The peer of a connection with credentials `cred`. Blocking: it asks NSS for the user
    /// (which may mean LDAP or a file read) and for the user's groups.
    fn resolve(cred: UCred, admin_gid: Option<u32>) -> Peer {
        let uid = cred.uid();
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let name = user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_else(|| uid.to_string());
        let in_admin_group = admin_gid.is_some_and(|g| {
            cred.gid() == g
                || user.as_ref().is_some_and(|u| {
                    let cname = std::ffi::CString::new(u.name.clone()).unwrap_or_default();
                    nix::unistd::getgrouplist(&cname, u.gid)
                        .is_ok_and(|gs| gs.iter().any(|x| x.as_raw() == g))
                })
        });
        Peer {
            uid,
            user: name,
            admin: uid == 0 || in_admin_group,
        }
    }

    fn may_act_for(&self, owner: &str) -> bool {
        self.admin || owner == self.user
    }
}

/// A result already serialized as JSON text, or an error.
type Reply = Result<String, ErrorBody>;

fn fail(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

fn ok<T: Serialize>(v: T) -> Reply {
    serde_json::to_string(&v).map_err(|e| fail(ErrorCode::Internal, e.to_string()))
}

fn line<T: Serialize>(v: &T) -> String {
    let mut s = String::new();
    push_line(&mut s, v);
    s
}

/// Appends `v` as one JSON line to `s`.
fn push_line<T: Serialize>(s: &mut String, v: &T) {
    let start = s.len();
    // SAFETY: serde_json writes valid UTF-8; on error what it wrote is cut off again.
    let buf = unsafe { s.as_mut_vec() };
    if let Err(e) = serde_json::to_writer(&mut *buf, v) {
        buf.truncate(start);
        s.push_str(&format!(
            r#"{{"ok":false,"error":{{"code":"internal","message":{:?}}}}}"#,
            e.to_string()
        ));
    }
    s.push('\n');
}

/// Most requests one connection may have in flight.
const MAX_IN_FLIGHT: usize = 64;
/// Most `wait`s one connection may have pending; they are passive, so they have their own
/// quota and never use up the one of the requests that act.
const MAX_WAITS: usize = 1024;
/// Most bytes of lines queued for one connection that have not been written to it yet
/// (see [`outbox`]): a client that does not read costs the daemon this much, not more.
const OUTBOX_BYTES: usize = 4 << 20;

/// One connection's state, shared by its reader loop and the tasks it spawns.
///
/// Ownership: every task of the connection runs on `tasks` and ends with `all`. The reader
/// loop ends at the client's EOF, at a failed write, at daemon shutdown or when the
/// connection stays idle; the connection's task then waits for `tasks`, and only then
/// frees its admission seat.
struct Conn {
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    out: Outbox,
    /// Ends everything of this connection at once: a write to the client failed (nobody
    /// reads the answers), or the daemon's shutdown grace ran out.
    all: CancellationToken,
    /// Ends the passive work, pending `wait`s and the subscription, at the client's EOF:
    /// they would otherwise keep the connection open for as long as a run lives. A child
    /// of `all`. Requests that act are not cancelled by EOF: they end within the host's
    /// command timeout and their answers are written if the client still reads.
    passive: CancellationToken,
    tasks: TaskTracker,
}

/// Why a connection's reader loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client closed its side (or reading failed).
    Eof,
    /// `all` was cancelled: a failed write or the end of the shutdown grace.
    Cancelled,
    /// The daemon is shutting down; the notice was queued.
    Shutdown,
    /// No request within the idle timeout.
    Idle,
}

impl Conn {
    /// Queues `line`; `false` if the connection is going away.
    async fn send(&self, line: String) -> bool {
        matches!(
            self.all.run_until_cancelled(self.out.send(line)).await,
            Some(Ok(()))
        )
    }
}

async fn serve_client(shared: Arc<Shared>, stream: UnixStream, cred: UCred, seat: Seat) {
    let _seat = seat;
    let admin_gid = *shared.admin_gid.lock().expect("admin lock");
    let all = shared.stop.child_token();
    let lookup = shared
        .detached
        .spawn_blocking(move || Peer::resolve(cred, admin_gid));
    let peer = match all.run_until_cancelled(lookup).await {
        Some(Ok(p)) => Arc::new(p),
        Some(Err(e)) => {
            tracing::error!("peer lookup failed: {e}");
            return;
        }
        None => return,
    };
    tracing::debug!(user = %peer.user, uid = peer.uid, admin = peer.admin, "control client connected");
    let (read, write) = stream.into_split();
    let (out, drain) = outbox(OUTBOX_BYTES);
    let tasks = TaskTracker::new();
    tasks.spawn(write_lines(drain, write, all.clone()));
    let conn = Conn {
        shared,
        peer,
        out,
        passive: all.child_token(),
        all,
        tasks,
    };
    let ended = read_requests(&conn, read).await;
    tracing::debug!(user = %conn.peer.user, ?ended, "control client done reading");
    if ended != Ended::Shutdown {
        // At shutdown pending waits answer `shutting_down` by themselves.
        conn.passive.cancel();
    }
    let Conn { out, tasks, .. } = conn;
    // The writer ends once every task holding an `Outbox` has ended and the queue is
    // written (or at once if `all` is cancelled).
    drop(out);
    tasks.close();
    tasks.wait().await;
}

/// Writes queued lines to the client until every sender is gone or `all` is cancelled. A
/// failed write cancels `all`: nobody reads what the connection would still produce.
async fn write_lines(mut drain: Drain, write: OwnedWriteHalf, all: CancellationToken) {
    let mut w = BufWriter::with_capacity(64 * 1024, write);
    loop {
        let Some(Some(first)) = all.run_until_cancelled(drain.recv()).await else {
            break;
        };
        // Write whatever else is queued in the same flush: one syscall for a burst of
        // events rather than one per line.
        let batch = async {
            w.write_all(first.line.as_bytes()).await?;
            drop(first);
            while let Some(q) = drain.try_recv() {
                w.write_all(q.line.as_bytes()).await?;
            }
            w.flush().await
        };
        match all.run_until_cancelled(batch).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::debug!("control client write failed: {e}");
                all.cancel();
                break;
            }
            None => break,
        }
    }
}

/// The reader loop: parses requests and starts a task for each.
async fn read_requests(conn: &Conn, read: OwnedReadHalf) -> Ended {
    let shared = &conn.shared;
    let peer = &conn.peer;
    let greeting = Greeting {
        protocol: PROTOCOL.into(),
        version: VERSION,
        server: format!("smx/{}", env!("CARGO_PKG_VERSION")),
    };
    if !conn.send(line(&greeting)).await {
        return Ended::Cancelled;
    }
    let idle_timeout = shared.host.config().control.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut active = false;
    let mut reader = LineReader::new(read, MAX_REQUEST_LINE);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let waits = Arc::new(Semaphore::new(MAX_WAITS));
    let mut subscription: Option<(CancellationToken, JoinHandle<()>)> = None;
    let ended = loop {
        let frame = tokio::select! {
            biased;
            _ = conn.all.cancelled() => break Ended::Cancelled,
            _ = shared.shutdown.cancelled() => break Ended::Shutdown,
            _ = &mut idle, if !active => break Ended::Idle,
            f = reader.next() => f,
        };
        let raw = match frame {
            Ok(Some(Frame::Line(l))) => l,
            Ok(Some(Frame::Overlong)) => {
                active = true;
                if let Some(n) = shared.logs.allow("overlong") {
                    tracing::warn!(user = %peer.user, "request line longer than {MAX_REQUEST_LINE} octets refused{n}");
                }
                let r = respond(
                    None,
                    Err(fail(
                        ErrorCode::LineTooLong,
                        format!("request lines are limited to {MAX_REQUEST_LINE} octets"),
                    )),
                );
                if !conn.send(r).await {
                    break Ended::Cancelled;
                }
                continue;
            }
            _ => break Ended::Eof,
        };
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        active = true;
        let req = match parse(&raw) {
            Ok(r) => r,
            Err((id, e)) => {
                if let Some(n) = shared.logs.allow("bad_request") {
                    tracing::info!(user = %peer.user, "bad request: {}{n}", e.message);
                }
                if !conn.send(respond(id, Err(e))).await {
                    break Ended::Cancelled;
                }
                continue;
            }
        };
        if let Op::Subscribe { owner, run_id } = &req.op {
            let r = match subscribe(conn, owner.clone(), *run_id) {
                Ok(started) => {
                    if let Some((old, _)) = subscription.replace(started) {
                        old.cancel();
                    }
                    ok(serde_json::json!({"subscribed": true}))
                }
                Err(e) => Err(e),
            };
            if !conn.send(respond(req.id, r)).await {
                break Ended::Cancelled;
            }
            continue;
        }
        // Requests that act finish within the command timeout: a full quota just slows the
        // reader down (backpressure). `wait`s may never finish, so they have their own quota
        // and a full one is answered `busy` at once: the reader keeps reading, and an
        // `abort` sent after many `wait`s is still served.
        let permit = if matches!(req.op, Op::Wait { .. }) {
            match waits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let msg = format!(
                        "{MAX_WAITS} waits of this connection are pending; retry when one is answered"
                    );
                    if !conn
                        .send(respond(req.id, Err(fail(ErrorCode::Busy, msg))))
                        .await
                    {
                        break Ended::Cancelled;
                    }
                    continue;
                }
            }
        } else {
            match conn
                .all
                .run_until_cancelled(slots.clone().acquire_owned())
                .await
            {
                Some(Ok(p)) => p,
                _ => break Ended::Cancelled,
            }
        };
        spawn_request(conn, req, permit);
    };
    match ended {
        Ended::Shutdown => {
            // The notice is the last line: stop the event stream first.
            if let Some((token, task)) = subscription.take() {
                token.cancel();
                let _ = task.await;
            }
            conn.send(line(&ServerLine::Shutdown { shutdown: true }))
                .await;
        }
        Ended::Idle => {
            tracing::debug!(user = %peer.user, "control connection idle for {idle_timeout:?}; closing");
            let msg = format!(
                "no request within {} ([control] idle_timeout); closing",
                humantime::format_duration(idle_timeout)
            );
            conn.send(respond(None, Err(fail(ErrorCode::IdleTimeout, msg))))
                .await;
        }
        Ended::Eof | Ended::Cancelled => {}
    }
    ended
}

/// Serves one request on the connection's tracker. A `wait` ends with `passive` (the
/// client's EOF), anything else with `all`.
fn spawn_request(conn: &Conn, req: Request, permit: OwnedSemaphorePermit) {
    let token = if matches!(req.op, Op::Wait { .. }) {
        conn.passive.clone()
    } else {
        conn.all.clone()
    };
    let (shared, peer, out, all) = (
        conn.shared.clone(),
        conn.peer.clone(),
        conn.out.clone(),
        conn.all.clone(),
    );
    conn.tasks.spawn(async move {
        let id = req.id.clone();
        let Some(result) = token
            .run_until_cancelled(handle(&shared, &peer, req.op))
            .await
        else {
            return;
        };
        let _ = all.run_until_cancelled(out.send(respond(id, result))).await;
        // Only now: the quota also bounds the answers waiting for room in the outbox.
        drop(permit);
    });
}

fn respond(id: Option<serde_json::Value>, r: Reply) -> String {
    match r {
        // Written by hand so that a big result is serialized once, straight from its rows
        // (no serde_json::Value tree of 10,000 rows to build and drop).
        Ok(result) => {
            let id = serde_json::to_string(&id).unwrap_or_else(|_| "null".into());
            let mut s = String::with_capacity(result.len() + id.len() + 32);
            s.push_str("{\"id\":");
            s.push_str(&id);
            s.push_str(",\"ok\":true,\"result\":");
            s.push_str(&result);
            s.push_str("}\n");
            s
        }
        Err(e) => line(&Response {
            id,
            ok: false,
            result: None,
            error: Some(e),
        }),
    }
}

/// Parses a request, telling malformed JSON, unknown ops and bad fields apart.
fn parse(raw: &[u8]) -> Result<Request, (Option<serde_json::Value>, ErrorBody)> {
    let v: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|e| (None, fail(ErrorCode::BadJson, format!("not JSON: {e}"))))?;
    let obj = v
        .as_object()
        .ok_or_else(|| (None, fail(ErrorCode::BadJson, "a request is a JSON object")))?;
    let id = obj.get("id").cloned();
    let op = obj.get("op").and_then(|o| o.as_str());
    match op {
        None => return Err((id, fail(ErrorCode::BadRequest, "missing \"op\""))),
        Some(o) if !Op::NAMES.contains(&o) => {
            return Err((
                id,
                fail(
                    ErrorCode::UnknownOp,
                    format!("unknown op {o:?}; known: {}", Op::NAMES.join(", ")),
                ),
            ));
        }
        _ => {}
    }
    serde_json::from_value::<Request>(v.clone())
        .map_err(|e| (id, fail(ErrorCode::BadRequest, e.to_string())))
}

/// Refuses (and logs) an op for an owner the peer may not act for.
fn permit(peer: &Peer, op: &str, owner: &str) -> Result<(), ErrorBody> {
    if peer.may_act_for(owner) {
        Ok(())
    } else {
        Err(refuse(peer, op, owner))
    }
}

fn refuse(peer: &Peer, op: &str, owner: &str) -> ErrorBody {
    tracing::warn!(user = %peer.user, uid = peer.uid, op, owner, "refused: not permitted to act for this owner");
    fail(
        ErrorCode::NotPermitted,
        format!("user {} may not use `{op}` for owner {owner:?}", peer.user),
    )
}

fn control_error(e: ControlError) -> ErrorBody {
    match e {
        ControlError::NoSuchRun(_) => fail(ErrorCode::NoSuchRun, e.to_string()),
        ControlError::InvalidState { .. } => fail(ErrorCode::InvalidState, e.to_string()),
    }
}

fn launch_error(e: LaunchError) -> ErrorBody {
    let code = match &e {
        LaunchError::OwnerNotMapped(_) => ErrorCode::OwnerNotMapped,
        LaunchError::UnknownRuntime(_) | LaunchError::NoRuntime(_) => ErrorCode::NoRuntime,
        LaunchError::ProfileNotAccepted { .. } | LaunchError::ProfileOverride { .. } => {
            ErrorCode::ProfileRefused
        }
        LaunchError::Storage(_)
        | LaunchError::UnquotablePath(_)
        | LaunchError::NotInChroot { .. } => ErrorCode::BadScript,
        LaunchError::NameTooLong { .. } => ErrorCode::BadRequest,
        LaunchError::ArgumentTooLong(_) => ErrorCode::ArgumentTooLong,
        LaunchError::TooManyRuns(_) => ErrorCode::TooManyRuns,
        LaunchError::ShuttingDown => ErrorCode::ShuttingDown,
        LaunchError::IndexInUse(_) | LaunchError::NoIndexLeft | LaunchError::MaxRunning(_) => {
            ErrorCode::InconsistentValue
        }
    };
    fail(code, e.to_string())
}

/// Who sets, for the Script MIB: root and the admin group may touch every owner's rows.
fn principal(peer: &Peer) -> crate::mib::Principal {
    if peer.admin {
        crate::mib::Principal::Admin
    } else {
        crate::mib::Principal::User(peer.user.clone())
    }
}

fn mib_error(e: crate::mib::MibError) -> ErrorBody {
    use crate::mib::{MibError, SetError};
    let code = match &e {
        MibError::Set { error, .. } => match error {
            SetError::WrongValue(_) => ErrorCode::WrongValue,
            SetError::WrongLength(_) => ErrorCode::WrongLength,
            SetError::InconsistentValue(_) => ErrorCode::InconsistentValue,
            SetError::NoCreation(_) => ErrorCode::NoCreation,
            SetError::NotWritable(_) => ErrorCode::NotWritable,
            SetError::ResourceUnavailable(_) => ErrorCode::ResourceUnavailable,
        },
        MibError::NoSuchRow(_) => ErrorCode::NoSuchRow,
        MibError::BadRequest(_) => ErrorCode::BadRequest,
    };
    fail(code, e.to_string())
}

trait WithIndex {
    fn with_index(self, i: usize) -> Self;
}

impl WithIndex for ErrorBody {
    /// Names the failing change of a `mib_set` (SNMP's error-index, from 0).
    fn with_index(mut self, i: usize) -> Self {
        self.message = format!("change {i}: {}", self.message);
        self
    }
}

/// Whether a launch for `owner` runs as the daemon's own user without an OS profile, as
/// `smx run` does: only on the embedded default (no config file, so no owner mapping was
/// ever written), only for the caller's own owner name, and only when the caller is the
/// user the daemon runs as. That escalates nothing: the caller could run the script
/// itself. Every other owner still needs an [[owner]] entry.
fn runs_as_itself(config: &Config, peer: &Peer, owner: &str) -> bool {
    config.source.is_none()
        && config.owner(owner).is_none()
        && owner == peer.user
        && peer.uid == nix::unistd::geteuid().as_raw()
}

/// The row of a run the peer may act on.
fn owned_run(shared: &Shared, peer: &Peer, run: RunId, op: &str) -> Result<RunInfo, ErrorBody> {
    let no_run = || fail(ErrorCode::NoSuchRun, format!("no run {run}"));
    let info = shared.host.run(run).ok_or_else(no_run)?;
    if !peer.may_act_for(&info.owner) {
        // The same answer as for a run that does not exist: which RunIds other owners
        // have is not this peer's business. The refusal is still logged.
        tracing::warn!(user = %peer.user, uid = peer.uid, op, run = %run, "refused: run of another owner");
        return Err(no_run());
    }
    Ok(info)
}

async fn handle(shared: &Shared, peer: &Peer, op: Op) -> Reply {
    let host = &shared.host;
    let name = op.name();
    match op {
        Op::Whoami => ok(Whoami {
            user: peer.user.clone(),
            uid: peer.uid,
            admin: peer.admin,
        }),
        Op::Languages => {
            // smLangTable as the model has it (the stable smLangIndex), with the runtime's
            // host-side settings.
            let config = host.config();
            let rows = shared.mib.languages().0;
            let langs: Vec<Language> = rows
                .into_iter()
                .filter_map(|l| {
                    let r = config.runtime(&l.runtime)?;
                    Some(Language {
                        index: l.index,
                        name: l.runtime,
                        description: r.description.clone(),
                        extensions: r.extensions.iter().map(|e| e.0.clone()).collect(),
                        profiles: r.profiles.0.iter().map(|p| p.to_string()).collect(),
                        transport: r.transport,
                        threading: r.threading,
                        language: l.language,
                        version: l.version,
                        vendor: l.vendor,
                        revision: l.revision,
                    })
                })
                .collect();
            ok(langs)
        }
        Op::Install {
            owner,
            name: script,
            content,
            executable,
        } => {
            permit(peer, name, &owner)?;
            if script.is_empty() || script.len() > 255 {
                return Err(fail(
                    ErrorCode::BadRequest,
                    "script name must be 1-255 octets",
                ));
            }
            // It fsyncs while holding the fork guard: not on an async worker.
            let (h, o, sc) = (host.clone(), owner.clone(), script.clone());
            let rel = shared
                .detached
                .spawn_blocking(move || {
                    h.storage().install(&o, &sc, content.as_bytes(), executable)
                })
                .await
                .map_err(|e| fail(ErrorCode::Internal, e.to_string()))?
                .map_err(|e| match e {
                    crate::storage::StorageError::QuotaExceeded { .. } => {
                        fail(ErrorCode::QuotaExceeded, e.to_string())
                    }
                    e => fail(ErrorCode::BadScript, e.to_string()),
                })?;
            tracing::info!(user = %peer.user, owner, script = rel, "script installed");
            ok(Installed { script: rel })
        }
        Op::Launch(p) => {
            permit(peer, name, &p.owner)?;
            // Only the owner's own scripts (admins may run any): the storage keeps each
            // owner's scripts in a directory of its own.
            let own = format!("{}/", crate::storage::component(&p.owner));
            if !peer.admin && !p.script.starts_with(&own) {
                tracing::warn!(user = %peer.user, uid = peer.uid, owner = p.owner, script = p.script, "refused: script of another owner");
                return Err(fail(
                    ErrorCode::NotPermitted,
                    format!(
                        "owner {:?} may only launch its own scripts ({own}...), not {:?}",
                        p.owner, p.script
                    ),
                ));
            }
            let mut req = LaunchRequest::new(p.script.clone());
            if let Some(n) = p.name {
                req.name = n;
            }
            shared
                .mib
                .may_launch_file(&p.owner, &req.name)
                .map_err(mib_error)?;
            req.owner = (!runs_as_itself(&host.config(), peer, &p.owner)).then_some(p.owner);
            req.runtime = p.runtime;
            req.argument = p.argument;
            req.lifetime = p.lifetime;
            req.expire_time = p.expire_time;
            let run_id = host.launch(req).map_err(launch_error)?;
            let row = host.run(run_id);
            if let Some(r) = &row
                && let Err(e) = shared.mib.adopt(r)
            {
                tracing::info!(run = %run_id, "run has no launch button: {e}");
            }
            let index = row.map(|r| r.index).unwrap_or(0);
            ok(Launched { run_id, index })
        }
        Op::Extensions => ok(shared.mib.languages().1),
        Op::Scripts { owner } => {
            if let Some(o) = &owner {
                permit(peer, name, o)?;
            }
            let rows: Vec<crate::mib::ScriptRow> = shared
                .mib
                .scripts()
                .into_iter()
                .filter(|r| {
                    peer.may_act_for(&r.owner) && owner.as_ref().is_none_or(|o| *o == r.owner)
                })
                .collect();
            ok(rows)
        }
        Op::Code {
            owner,
            name: script,
        } => {
            permit(peer, name, &owner)?;
            if shared.mib.script(&owner, &script).is_none() {
                return Err(fail(
                    ErrorCode::NoSuchRow,
                    format!("no script {owner}/{script}"),
                ));
            }
            ok(shared.mib.code(Some((&owner, &script))))
        }
        Op::ScriptInstall(spec) => {
            permit(peer, name, &spec.owner)?;
            let (o, n) = (spec.owner.clone(), spec.name.clone());
            let row = shared
                .mib
                .install_script(&principal(peer), spec)
                .await
                .map_err(mib_error)?;
            tracing::info!(user = %peer.user, owner = o, script = n, oper = %row.oper_status, "script installed");
            ok(row)
        }
        Op::ScriptRemove {
            owner,
            name: script,
        } => {
            permit(peer, name, &owner)?;
            shared
                .mib
                .remove_script(&principal(peer), &owner, &script)
                .await
                .map_err(mib_error)?;
            ok(serde_json::json!({"removed": true}))
        }
        Op::Launches { owner } => {
            if let Some(o) = &owner {
                permit(peer, name, o)?;
            }
            let rows: Vec<crate::mib::LaunchView> = shared
                .mib
                .launches()
                .into_iter()
                .filter(|l| {
                    peer.may_act_for(&l.row.owner)
                        && owner.as_ref().is_none_or(|o| *o == l.row.owner)
                })
                .collect();
            ok(rows)
        }
        Op::LaunchAdd(spec) => {
            permit(peer, name, &spec.owner)?;
            ok(shared
                .mib
                .add_launch(&principal(peer), spec)
                .await
                .map_err(mib_error)?)
        }
        Op::LaunchStart {
            owner,
            name: launch,
            index,
            argument,
        } => {
            permit(peer, name, &owner)?;
            ok(shared
                .mib
                .start_launch(&principal(peer), &owner, &launch, index, argument)
                .await
                .map_err(mib_error)?)
        }
        Op::LaunchRemove {
            owner,
            name: launch,
        } => {
            permit(peer, name, &owner)?;
            shared
                .mib
                .remove_launch(&principal(peer), &owner, &launch)
                .await
                .map_err(mib_error)?;
            ok(serde_json::json!({"removed": true}))
        }
        Op::RunIndexNext {
            owner,
            name: launch,
        } => {
            permit(peer, name, &owner)?;
            ok(serde_json::json!({"index": shared.mib.run_index_next(&owner, &launch)}))
        }
        Op::MibSet { changes } => {
            let mut list = Vec::with_capacity(changes.len());
            for (i, c) in changes.iter().enumerate() {
                permit(peer, name, &c.owner)?;
                list.push(c.to_change().map_err(|e| {
                    fail(
                        ErrorCode::BadRequest,
                        format!("change {i}: {e} (wrongType)"),
                    )
                })?);
            }
            match shared.mib.set(&principal(peer), &list).await {
                Ok(out) => ok(out),
                Err(f) => {
                    Err(mib_error(crate::mib::MibError::at(&list, f.clone())).with_index(f.0))
                }
            }
        }
        Op::Runs { owner } => {
            if let Some(o) = &owner {
                permit(peer, name, o)?;
            }
            let rows: Vec<RunInfo> = host
                .runs()
                .into_iter()
                .filter(|r| {
                    peer.may_act_for(&r.owner) && owner.as_ref().is_none_or(|o| *o == r.owner)
                })
                .collect();
            ok(rows)
        }
        Op::Run { run_id } => ok(owned_run(shared, peer, run_id, name)?),
        Op::Suspend { run_id } => {
            owned_run(shared, peer, run_id, name)?;
            let h = host.clone();
            ok(detached(shared, async move { h.suspend(run_id).await })
                .await?
                .map_err(control_error)?)
        }
        Op::Resume { run_id } => {
            owned_run(shared, peer, run_id, name)?;
            let h = host.clone();
            ok(detached(shared, async move { h.resume(run_id).await })
                .await?
                .map_err(control_error)?)
        }
        Op::Abort { run_id } => {
            owned_run(shared, peer, run_id, name)?;
            let h = host.clone();
            ok(detached(shared, async move { h.abort(run_id).await })
                .await?
                .map_err(control_error)?)
        }
        Op::Refresh { run_id } => {
            owned_run(shared, peer, run_id, name)?;
            let h = host.clone();
            ok(detached(shared, async move { h.refresh(run_id).await })
                .await?
                .map_err(control_error)?)
        }
        Op::Set {
            run_id,
            lifetime,
            expire_time,
        } => {
            owned_run(shared, peer, run_id, name)?;
            if let Some(v) = lifetime {
                host.set_lifetime(run_id, v).map_err(control_error)?;
            }
            if let Some(v) = expire_time {
                host.set_expire_time(run_id, v).map_err(control_error)?;
            }
            ok(host
                .run(run_id)
                .ok_or_else(|| fail(ErrorCode::NoSuchRun, format!("no run {run_id}")))?)
        }
        Op::Wait { run_id } => {
            owned_run(shared, peer, run_id, name)?;
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => Err(fail(ErrorCode::ShuttingDown, "the daemon is shutting down")),
                r = host.wait(run_id) => ok(r.ok_or_else(|| fail(ErrorCode::NoSuchRun, format!("run {run_id} was removed")))?),
            }
        }
        Op::Stats => {
            #[derive(Serialize)]
            struct Stats {
                #[serde(flatten)]
                host: crate::host::HostStats,
                clients: usize,
                uptime_secs: u64,
            }
            let mut stats = host.stats();
            if !peer.admin {
                // Which users run which runtimes is for admins only.
                stats.runtime_processes.clear();
            }
            ok(Stats {
                host: stats,
                clients: shared.admission.open(),
                uptime_secs: shared.started.elapsed().as_secs(),
            })
        }
        Op::Reload => {
            if !peer.admin {
                tracing::warn!(user = %peer.user, uid = peer.uid, "refused: reload needs an admin");
                return Err(fail(
                    ErrorCode::NotPermitted,
                    "reload is for root and the admin group",
                ));
            }
            reload(shared).map_err(|e| fail(ErrorCode::ConfigError, e))?;
            ok(serde_json::json!({"reloaded": true}))
        }
        Op::Subscribe { .. } => Err(fail(
            ErrorCode::Internal,
            "subscribe is handled by the connection",
        )),
    }
}

/// Runs a host operation as a task of its own and waits for it. The host's futures write
/// to a runtime's pipe and are not cancel-safe: if the request is cancelled (its client
/// went away), the operation goes on to its end, detached, instead of being dropped
/// half-way.
async fn detached<T: Send + 'static>(
    shared: &Shared,
    op: impl Future<Output = T> + Send + 'static,
) -> Result<T, ErrorBody> {
    shared
        .detached
        .spawn(op)
        .await
        .map_err(|e| fail(ErrorCode::Internal, e.to_string()))
}

/// Most events a subscription takes off the bus at once. Small enough that what a batch
/// holds (it keeps the events alive) stays bounded with 64 KiB results: 4 MiB.
const EVENT_BATCH: usize = 64;
/// A subscription's outbox entry is cut after this many bytes of event lines.
const EVENT_CHUNK: usize = 64 * 1024;

/// An event line, serialized from the bus's shared copy (no copy per subscriber).
#[derive(Serialize)]
struct EventLine<'a> {
    event: &'a crate::host::Event,
}

/// Starts forwarding matching host events to the connection; the subscription ends with
/// its token (a child of `passive`) or when the connection can take no more lines.
fn subscribe(
    conn: &Conn,
    owner: Option<String>,
    run: Option<RunId>,
) -> Result<(CancellationToken, JoinHandle<()>), ErrorBody> {
    let peer = conn.peer.clone();
    if let Some(o) = &owner {
        permit(&peer, "subscribe", o)?;
    }
    if let Some(r) = run {
        owned_run(&conn.shared, &peer, r, "subscribe")?;
    }
    let mut events = conn.shared.host.subscribe();
    let token = conn.passive.child_token();
    let (out, stop) = (conn.out.clone(), token.clone());
    let task = conn.tasks.spawn(async move {
        let mut batch = Vec::with_capacity(EVENT_BATCH);
        loop {
            batch.clear();
            let Some(got) = stop
                .run_until_cancelled(events.recv_batch(EVENT_BATCH, &mut batch))
                .await
            else {
                break;
            };
            // The events waiting go out in few outbox entries (one allocation and one
            // wake-up of the writer for many lines), so a subscriber keeps up with a burst.
            let mut chunks = Vec::new();
            match got {
                Ok(()) => {
                    let mut lines = String::new();
                    for e in batch.drain(..) {
                        let visible = peer.may_act_for(&e.owner)
                            && owner.as_ref().is_none_or(|o| *o == e.owner)
                            && run.is_none_or(|r| r == e.run_id);
                        if visible {
                            push_line(&mut lines, &EventLine { event: &e });
                        }
                        if lines.len() >= EVENT_CHUNK {
                            chunks.push(std::mem::take(&mut lines));
                        }
                    }
                    if !lines.is_empty() {
                        chunks.push(lines);
                    }
                }
                // A subscriber whose client reads slowly waits here (the outbox is full)
                // while the bus drops what it cannot keep: the client is told how many.
                Err(RecvError::Lagged(n)) => chunks.push(line(&ServerLine::Lagged { lagged: n })),
                Err(RecvError::Closed) => break,
            }
            for c in chunks {
                if !matches!(stop.run_until_cancelled(out.send(c)).await, Some(Ok(()))) {
                    return;
                }
            }
        }
    });
    Ok((token, task))
}
