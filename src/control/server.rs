//! `smx daemon`: the host as a service, driven over a local Unix socket.
//!
//! Every connection is authorised by its peer credentials (SO_PEERCRED): root and members
//! of the configured admin group may act for any owner; any other user only for the owner
//! named like their user name. Requests on one connection are served concurrently (each
//! response carries its request's id), so a client may wait for one run while it controls
//! another. A bad request gets an error response and disturbs nothing else.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};

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
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control.{key}: unknown group {group}")]
    UnknownGroup { key: &'static str, group: String },
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
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
    config_path: Option<PathBuf>,
    admin_gid: Mutex<Option<u32>>,
    clients: AtomicUsize,
    started: Instant,
    shutdown: watch::Receiver<bool>,
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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(
    config_path: Option<PathBuf>,
    socket_flag: Option<PathBuf>,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let config = Config::load_optional(config_path.as_deref())?;
    let socket = socket_path(socket_flag.as_deref(), &config);
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
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        host: Host::new(config, storage),
        config_path,
        admin_gid: Mutex::new(admin_gid),
        clients: AtomicUsize::new(0),
        started: Instant::now(),
        shutdown: stop_rx,
    });
    tracing::info!(socket = %socket.display(), storage = %storage_dir.display(), "smx daemon listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let s = shared.clone();
                    tokio::spawn(async move { serve_client(s, stream).await });
                }
                Err(e) => tracing::warn!("accept failed: {e}"),
            },
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
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    stop_tx.send_replace(true);
    // Let every connection write its shutdown notice (bounded: a client may not read).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while shared.clients.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tracing::info!("smx daemon stopped");
    Ok(())
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
    if path.exists() {
        // A live daemon answers; a stale socket file from a crash is replaced.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Some(g) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g)))
            .map_err(|e| err(e.into()))?;
    }
    Ok(listener)
}

fn reload(shared: &Shared) -> Result<(), String> {
    let config = Config::load_optional(shared.config_path.as_deref()).map_err(|e| e.to_string())?;
    let admin = config
        .control
        .admin_group
        .as_ref()
        .map(|g| group_gid("admin_group", g))
        .transpose()
        .map_err(|e| e.to_string())?;
    *shared.admin_gid.lock().expect("admin lock") = admin;
    shared.host.reload(config);
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
    fn of(stream: &UnixStream, admin_gid: Option<u32>) -> Option<Peer> {
        let cred = stream.peer_cred().ok()?;
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
        Some(Peer {
            uid,
            user: name,
            admin: uid == 0 || in_admin_group,
        })
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
    let mut s = serde_json::to_string(v).unwrap_or_else(|e| {
        format!(
            r#"{{"ok":false,"error":{{"code":"internal","message":{:?}}}}}"#,
            e.to_string()
        )
    });
    s.push('\n');
    s
}

/// Most requests one connection may have in flight.
const MAX_IN_FLIGHT: usize = 64;
/// Most `wait`s one connection may have pending; they are passive, so they have their own
/// quota and never use up the one of the requests that act.
const MAX_WAITS: usize = 1024;

async fn serve_client(shared: Arc<Shared>, stream: UnixStream) {
    let admin_gid = *shared.admin_gid.lock().expect("admin lock");
    let Some(peer) = Peer::of(&stream, admin_gid) else {
        tracing::warn!("control connection without peer credentials refused");
        return;
    };
    shared.clients.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(user = %peer.user, uid = peer.uid, admin = peer.admin, "control client connected");
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<String>(1024);
    let writer = tokio::spawn(async move {
        while let Some(l) = rx.recv().await {
            if write.write_all(l.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let greeting = Greeting {
        protocol: PROTOCOL.into(),
        version: VERSION,
        server: format!("smx/{}", env!("CARGO_PKG_VERSION")),
    };
    let _ = tx.send(line(&greeting)).await;
    let mut reader = LineReader::new(read, MAX_REQUEST_LINE);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let waits = Arc::new(Semaphore::new(MAX_WAITS));
    let mut subscription: Option<tokio::task::JoinHandle<()>> = None;
    let mut shutdown = shared.shutdown.clone();
    loop {
        let frame = tokio::select! {
            f = reader.next() => f,
            _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => {
                let _ = tx.send(line(&ServerLine::Shutdown { shutdown: true })).await;
                break;
            }
        };
        let raw = match frame {
            Ok(Some(Frame::Line(l))) => l,
            Ok(Some(Frame::Overlong)) => {
                tracing::warn!(user = %peer.user, "request line longer than {MAX_REQUEST_LINE} octets refused");
                let r = respond(
                    None,
                    Err(fail(
                        ErrorCode::LineTooLong,
                        format!("request lines are limited to {MAX_REQUEST_LINE} octets"),
                    )),
                );
                let _ = tx.send(r).await;
                continue;
            }
            _ => break,
        };
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let req = match parse(&raw) {
            Ok(r) => r,
            Err((id, e)) => {
                tracing::info!(user = %peer.user, "bad request: {}", e.message);
                let _ = tx.send(respond(id, Err(e))).await;
                continue;
            }
        };
        if let Op::Subscribe { owner, run_id } = &req.op {
            let r = subscribe(&shared, &peer, owner.clone(), *run_id, tx.clone());
            match r {
                Ok(task) => {
                    if let Some(old) = subscription.replace(task) {
                        old.abort();
                    }
                    let _ = tx
                        .send(respond(req.id, ok(serde_json::json!({"subscribed": true}))))
                        .await;
                }
                Err(e) => {
                    let _ = tx.send(respond(req.id, Err(e))).await;
                }
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
                    let _ = tx
                        .send(respond(req.id, Err(fail(ErrorCode::Busy, msg))))
                        .await;
                    continue;
                }
            }
        } else {
            let Ok(p) = slots.clone().acquire_owned().await else {
                break;
            };
            p
        };
        let (s, p, tx) = (shared.clone(), peer.clone(), tx.clone());
        tokio::spawn(async move {
            let id = req.id.clone();
            let result = handle(&s, &p, req.op).await;
            let _ = tx.send(respond(id, result)).await;
            drop(permit);
        });
    }
    if let Some(t) = subscription {
        t.abort();
    }
    drop(tx);
    let _ = writer.await;
    shared.clients.fetch_sub(1, Ordering::Relaxed);
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

fn refuse(peer: &Peer, op: &str, owner: &str) -> ErrorBody {
    tracing::warn!(user = %peer.user, uid = peer.uid, op, owner, "refused: not permitted to act for this owner");
    fail(
        ErrorCode::NotPermitted,
        format!("user {} may not {op} for owner {owner:?}", peer.user),
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
    };
    fail(code, e.to_string())
}

/// The row of a run the peer may act on.
fn owned_run(shared: &Shared, peer: &Peer, run: RunId, op: &str) -> Result<RunInfo, ErrorBody> {
    let info = shared
        .host
        .run(run)
        .ok_or_else(|| fail(ErrorCode::NoSuchRun, format!("no run {run}")))?;
    if !peer.may_act_for(&info.owner) {
        return Err(refuse(peer, op, &info.owner));
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
            let config = host.config();
            let langs: Vec<Language> = config
                .runtimes
                .iter()
                .enumerate()
                .map(|(i, r)| Language {
                    index: i as u32 + 1,
                    name: r.name.0.clone(),
                    description: r.description.clone(),
                    extensions: r.extensions.iter().map(|e| e.0.clone()).collect(),
                    profiles: r.profiles.0.iter().map(|p| p.to_string()).collect(),
                    transport: r.transport,
                    threading: r.threading,
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
            if !peer.may_act_for(&owner) {
                return Err(refuse(peer, name, &owner));
            }
            if script.is_empty() || script.len() > 255 {
                return Err(fail(
                    ErrorCode::BadRequest,
                    "script name must be 1-255 octets",
                ));
            }
            let rel = host
                .storage()
                .install(&owner, &script, content.as_bytes(), executable)
                .map_err(|e| fail(ErrorCode::BadScript, e.to_string()))?;
            tracing::info!(user = %peer.user, owner, script = rel, "script installed");
            ok(Installed { script: rel })
        }
        Op::Launch(p) => {
            if !peer.may_act_for(&p.owner) {
                return Err(refuse(peer, name, &p.owner));
            }
            let mut req = LaunchRequest::new(p.script.clone());
            if let Some(n) = p.name {
                req.name = n;
            }
            req.owner = Some(p.owner);
            req.runtime = p.runtime;
            req.argument = p.argument;
            req.lifetime = p.lifetime;
            req.expire_time = p.expire_time;
            let run_id = host.launch(req).map_err(launch_error)?;
            let index = host.run(run_id).map(|r| r.index).unwrap_or(0);
            ok(Launched { run_id, index })
        }
        Op::Runs { owner } => {
            if let Some(o) = &owner
                && !peer.may_act_for(o)
            {
                return Err(refuse(peer, name, o));
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
            ok(host.suspend(run_id).await.map_err(control_error)?)
        }
        Op::Resume { run_id } => {
            owned_run(shared, peer, run_id, name)?;
            ok(host.resume(run_id).await.map_err(control_error)?)
        }
        Op::Abort { run_id } => {
            owned_run(shared, peer, run_id, name)?;
            ok(host.abort(run_id).await.map_err(control_error)?)
        }
        Op::Refresh { run_id } => {
            owned_run(shared, peer, run_id, name)?;
            ok(host.refresh(run_id).await.map_err(control_error)?)
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
            let mut stop = shared.shutdown.clone();
            tokio::select! {
                r = host.wait(run_id) => ok(r.ok_or_else(|| fail(ErrorCode::NoSuchRun, format!("run {run_id} was removed")))?),
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => Err(fail(ErrorCode::ShuttingDown, "the daemon is shutting down")),
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
                clients: shared.clients.load(Ordering::Relaxed),
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

/// Forwards matching host events to the connection until it closes.
fn subscribe(
    shared: &Shared,
    peer: &Peer,
    owner: Option<String>,
    run: Option<RunId>,
    tx: mpsc::Sender<String>,
) -> Result<tokio::task::JoinHandle<()>, ErrorBody> {
    if let Some(o) = &owner
        && !peer.may_act_for(o)
    {
        return Err(refuse(peer, "subscribe", o));
    }
    if let Some(r) = run {
        owned_run(shared, peer, r, "subscribe")?;
    }
    let mut events = shared.host.subscribe();
    let peer = peer.clone();
    Ok(tokio::spawn(async move {
        loop {
            let l = match events.recv().await {
                Ok(e) => {
                    let visible = peer.may_act_for(&e.owner)
                        && owner.as_ref().is_none_or(|o| *o == e.owner)
                        && run.is_none_or(|r| r == e.run_id);
                    if !visible {
                        continue;
                    }
                    line(&ServerLine::Event { event: e })
                }
                Err(RecvError::Lagged(n)) => {
                    line(&ServerLine::Lagged { lagged: n })
                }
                Err(RecvError::Closed) => break,
            };
            if tx.send(l).await.is_err() {
                break;
            }
        }
    }))
}
