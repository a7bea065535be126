//! The host: the agent side of SMX (RFC 3179 section 6.2).
//!
//! [`Host`] starts runtime processes (6.2.1), talks SMX to them, applies every reply and
//! notification to the run table (6.2.2-6.2.8), and keeps the table's clocks: lifetimes
//! that abort runs and expire times that remove them. The command line (`smx run`) and
//! the daemon drive the same type.
//!
//! Concurrency: each runtime connection has one task that reads its lines and applies
//! them in arrival order; commands wait for their reply by Id. The run table and the
//! runtime pool sit behind short-lived mutexes (lock order: pool, then table, then a
//! connection's run set), never held across an `.await`.

mod conn;
mod events;
mod spawn;
mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::Child;
use tokio::sync::watch;

use crate::config::{Config, OsProfileSpec, Registered, Threading};
use crate::framing::Frame;
use crate::proto::{Command, ExitCode, Negative, Octets, Profile, Reply, RunId, RunState, Script};
use crate::security::Prepared;
use crate::storage::{Storage, StorageError};

pub use conn::HandshakeError;
pub use events::{EventBus, RecvError, Subscriber, TryRecvError};
pub use spawn::{StartError, expand_command};
pub use table::{AbortCause, Event, EventKind, RunInfo, TimeInterval, admin_string};

pub(crate) use conn::BoxWrite;
pub(crate) use spawn::start as start_runtime;

use conn::{Conn, Pending, RequestError};
use table::{KeeperAction, NewRun, Table};

/// A request to run a script (smLaunchStart).
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// smLaunchOwner. `None` runs as the invoking user with no OS profile, which escalates
    /// nothing and is meant for the command line; any owner must be mapped by the config.
    pub owner: Option<String>,
    /// smLaunchName (at most 32 octets).
    pub name: String,
    /// The script, relative to the script storage.
    pub script: String,
    /// The runtime; by default chosen by the script's extension, then `exec` for
    /// executable files.
    pub runtime: Option<String>,
    /// The runtime security profile; only for runs without an owner mapping (an owner's
    /// profile comes from the config and cannot be overridden).
    pub profile: Option<Profile>,
    /// smLaunchArgument.
    pub argument: Octets,
    /// smLaunchLifeTime.
    pub lifetime: TimeInterval,
    /// smLaunchExpireTime.
    pub expire_time: TimeInterval,
}

impl LaunchRequest {
    /// A request with the Script MIB's defaults (lifetime and expire time one hour).
    pub fn new(script: impl Into<String>) -> Self {
        let script = script.into();
        LaunchRequest {
            owner: None,
            name: script
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .chars()
                .take(32)
                .collect(),
            script,
            runtime: None,
            profile: None,
            argument: Octets::default(),
            lifetime: TimeInterval::ONE_HOUR,
            expire_time: TimeInterval::ONE_HOUR,
        }
    }
}

/// Why a launch was refused before a run was created.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "owner {0:?} is not mapped to any OS profile in the configuration (add an [[owner]] entry, or a \"*\" entry)"
    )]
    OwnerNotMapped(String),
    #[error("{what} must be at most 32 octets")]
    NameTooLong { what: &'static str },
    #[error("unknown runtime {0:?}")]
    UnknownRuntime(String),
    #[error(
        "no runtime for {0:?}: no runtime is registered for its extension and it is not executable (use --runtime)"
    )]
    NoRuntime(String),
    #[error("runtime {runtime} does not accept profile {profile:?} (it accepts: {accepted})")]
    ProfileNotAccepted {
        runtime: String,
        profile: String,
        accepted: String,
    },
    #[error("owner {owner:?} runs with runtime profile {mapped:?}; it cannot be overridden")]
    ProfileOverride { owner: String, mapped: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("script path {0:?} cannot be sent in SMX (only printable ASCII fits a QuotedString)")]
    UnquotablePath(String),
    #[error("script storage {storage} is not visible inside chroot {chroot} (set chroot_storage)")]
    NotInChroot { storage: String, chroot: String },
    #[error("argument is {0} octets; the limit is 65535")]
    ArgumentTooLong(usize),
    #[error("{0} runs are active, the configured maximum (host.max_active_runs)")]
    TooManyRuns(usize),
    #[error("the host is shutting down")]
    ShuttingDown,
}

/// Why a control operation (smRunControl, lifetime changes) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no run {0}")]
    NoSuchRun(RunId),
    /// The Script MIB answers inconsistentValue here.
    #[error("run {run} is {state}: cannot {op}")]
    InvalidState {
        run: RunId,
        state: RunState,
        op: &'static str,
    },
}

/// Counters for `smx daemon`'s stats operation.
#[derive(Debug, Clone, Serialize)]
pub struct HostStats {
    pub runs_total: u64,
    pub runs_active: usize,
    pub runs_in_table: usize,
    pub runtimes_started: u64,
    pub runtime_processes: Vec<RuntimeProcess>,
}

/// One live runtime process.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeProcess {
    pub runtime: String,
    pub pid: Option<u32>,
    pub os_profile: Option<String>,
    pub runs: usize,
}

/// The Script MIB runtime host.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

struct Inner {
    config: RwLock<Arc<Config>>,
    storage: Storage,
    table: Mutex<Table>,
    events: EventBus,
    pool: Mutex<Pool>,
    next_run: AtomicU64,
    next_conn: AtomicU64,
    runtimes_started: AtomicU64,
    closing: watch::Sender<bool>,
}

#[derive(Default)]
struct Pool {
    /// Multi-threaded runtimes by (runtime, OS profile): RFC 3179 6.2.1 reuses a running one.
    slots: HashMap<(String, Option<String>), Slot>,
    /// Every live connection.
    conns: HashMap<u64, ConnEntry>,
}

struct ConnEntry {
    conn: Arc<Conn>,
    os_profile: Option<String>,
    finished: watch::Receiver<bool>,
}

struct Slot {
    runtime: Arc<Registered>,
    os: Option<Arc<OsProfileSpec>>,
    state: watch::Receiver<SlotState>,
}

#[derive(Clone)]
enum SlotState {
    Starting,
    Ready(Arc<Conn>),
    Failed(Arc<str>),
}

/// Everything `start` needs, fixed at launch time.
struct StartPlan {
    runtime: Arc<Registered>,
    os: Option<Arc<OsProfileSpec>>,
    script: Script,
    profile: Profile,
    argument: Octets,
}

/// How long a run reported terminated by `531`/`231` waits for its `538`.
const SETTLE_GRACE: Duration = Duration::from_secs(5);

impl Host {
    /// A host with `config`, storing scripts in `storage`. Must be called inside a tokio
    /// runtime; nothing starts until the first launch.
    pub fn new(config: Config, storage: Storage) -> Host {
        let events = EventBus::new();
        let table = Table::new(events.clone(), config.host.max_finished_runs);
        Host {
            inner: Arc::new(Inner {
                config: RwLock::new(Arc::new(config)),
                storage,
                table: Mutex::new(table),
                events,
                pool: Mutex::new(Pool::default()),
                next_run: AtomicU64::new(1),
                next_conn: AtomicU64::new(1),
                runtimes_started: AtomicU64::new(0),
                closing: watch::channel(false).0,
            }),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.inner.config()
    }

    /// Replaces the configuration. Running scripts are not disturbed: their runtimes keep
    /// serving them and are closed once idle if their definition changed.
    pub fn reload(&self, config: Config) {
        self.inner
            .table
            .lock()
            .expect("table lock")
            .set_max_finished(config.host.max_finished_runs);
        *self.inner.config.write().expect("config lock") = Arc::new(config);
        let stale: Vec<Arc<Conn>> = {
            let pool = self.inner.pool.lock().expect("pool lock");
            pool.conns.values().map(|e| e.conn.clone()).collect()
        };
        for c in stale {
            c.wake.notify_one();
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// Publishes every run event from now on.
    pub fn subscribe(&self) -> Subscriber {
        self.inner.events.subscribe()
    }

    /// Creates a run (state `initializing`) and starts it in a suitable runtime
    /// (RFC 3179 6.2.1, 6.2.3). Returns as soon as the row exists.
    pub fn launch(&self, req: LaunchRequest) -> Result<RunId, LaunchError> {
        self.inner.clone().launch(req)
    }

    /// One row of the run table.
    pub fn run(&self, id: RunId) -> Option<RunInfo> {
        self.inner.table.lock().expect("table lock").snapshot(id)
    }

    /// The whole run table, by RunId.
    pub fn runs(&self) -> Vec<RunInfo> {
        self.inner.table.lock().expect("table lock").snapshots()
    }

    /// Waits until the run has terminated and its ExitCode is final; `None` if unknown.
    pub async fn wait(&self, id: RunId) -> Option<RunInfo> {
        let mut rx = self
            .inner
            .table
            .lock()
            .expect("table lock")
            .get(id)?
            .done
            .subscribe();
        let r = rx.wait_for(|v| v.is_some()).await.ok()?;
        r.as_deref().cloned()
    }

    /// smRunControl `suspend` (RFC 3179 6.2.4); returns the row once the runtime answered.
    pub async fn suspend(&self, id: RunId) -> Result<RunInfo, ControlError> {
        self.inner.clone().suspend(id).await
    }

    /// smRunControl `resume` (RFC 3179 6.2.5).
    pub async fn resume(&self, id: RunId) -> Result<RunInfo, ControlError> {
        self.inner.clone().resume(id).await
    }

    /// smRunControl `abort` (RFC 3179 6.2.6); ends with halted.
    pub async fn abort(&self, id: RunId) -> Result<RunInfo, ControlError> {
        self.inner.clone().abort(id, AbortCause::Manager).await
    }

    /// Asks the runtime for the run's state with `status` (RFC 3179 6.2.7).
    pub async fn refresh(&self, id: RunId) -> Result<RunInfo, ControlError> {
        self.inner.clone().status(id).await
    }

    /// Sets smRunLifeTime; 0 aborts the run now (with lifeTimeExceeded).
    pub fn set_lifetime(&self, id: RunId, v: TimeInterval) -> Result<RunInfo, ControlError> {
        let mut t = self.inner.table.lock().expect("table lock");
        t.set_lifetime(id, v).map_err(|state| match t.get(id) {
            None => ControlError::NoSuchRun(id),
            Some(_) => ControlError::InvalidState {
                run: id,
                state,
                op: "change the lifetime",
            },
        })?;
        t.snapshot(id).ok_or(ControlError::NoSuchRun(id))
    }

    /// Sets smRunExpireTime; 0 removes the row as soon as the run has terminated.
    pub fn set_expire_time(&self, id: RunId, v: TimeInterval) -> Result<RunInfo, ControlError> {
        let mut t = self.inner.table.lock().expect("table lock");
        if !t.set_expire(id, v) {
            return Err(ControlError::NoSuchRun(id));
        }
        t.snapshot(id).ok_or(ControlError::NoSuchRun(id))
    }

    pub fn stats(&self) -> HostStats {
        let (active, len) = {
            let t = self.inner.table.lock().expect("table lock");
            (t.active, t.len())
        };
        let pool = self.inner.pool.lock().expect("pool lock");
        let mut procs: Vec<RuntimeProcess> = pool
            .conns
            .values()
            .map(|e| RuntimeProcess {
                runtime: e.conn.runtime.clone(),
                pid: e.conn.pid,
                os_profile: e.os_profile.clone(),
                runs: e.conn.runs.lock().expect("runs lock").len(),
            })
            .collect();
        procs.sort_by(|a, b| (&a.runtime, a.pid).cmp(&(&b.runtime, b.pid)));
        HostStats {
            runs_total: self.inner.next_run.load(Ordering::Relaxed) - 1,
            runs_active: active,
            runs_in_table: len,
            runtimes_started: self.inner.runtimes_started.load(Ordering::Relaxed),
            runtime_processes: procs,
        }
    }

    /// Aborts every active run (halted), closes every runtime connection, waits for the
    /// processes to exit (killing those that do not within the grace period) and reaps them.
    pub async fn shutdown(&self) {
        self.inner.closing.send_replace(true);
        let active: Vec<RunId> = {
            let t = self.inner.table.lock().expect("table lock");
            t.snapshots()
                .into_iter()
                .filter(|r| !r.is_terminated())
                .map(|r| r.run_id)
                .collect()
        };
        let aborts = active
            .into_iter()
            .map(|id| self.inner.clone().abort(id, AbortCause::Manager));
        futures_util::future::join_all(aborts).await;
        let entries: Vec<(Arc<Conn>, watch::Receiver<bool>)> = {
            let mut pool = self.inner.pool.lock().expect("pool lock");
            pool.slots.clear();
            pool.conns
                .values()
                .map(|e| (e.conn.clone(), e.finished.clone()))
                .collect()
        };
        for (c, _) in &entries {
            c.close();
        }
        for (_, mut fin) in entries {
            let _ = fin.wait_for(|done| *done).await;
        }
    }
}

impl Inner {
    fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    fn command_timeout(&self) -> Duration {
        self.config().host.command_timeout
    }

    fn launch(self: Arc<Self>, req: LaunchRequest) -> Result<RunId, LaunchError> {
        if *self.closing.borrow() {
            return Err(LaunchError::ShuttingDown);
        }
        let config = self.config();
        if req.name.len() > 32 {
            return Err(LaunchError::NameTooLong {
                what: "smLaunchName",
            });
        }
        if req.argument.len() > crate::proto::MAX_RESULT_OCTETS {
            return Err(LaunchError::ArgumentTooLong(req.argument.len()));
        }
        let (owner, mapped) = match &req.owner {
            Some(o) => {
                if o.len() > 32 {
                    return Err(LaunchError::NameTooLong {
                        what: "smLaunchOwner",
                    });
                }
                let (spec, os) = config
                    .owner(o)
                    .ok_or_else(|| LaunchError::OwnerNotMapped(o.clone()))?;
                (o.clone(), Some((spec.runtime_profile.clone(), os.clone())))
            }
            None => (invoking_user(), None),
        };

        let path = self.storage.resolve(&req.script)?;
        let runtime = match &req.runtime {
            Some(name) => config
                .runtime(name)
                .cloned()
                .ok_or_else(|| LaunchError::UnknownRuntime(name.clone()))?,
            None => match config.runtime_for_extension(&path) {
                Some(r) => r.clone(),
                None if is_executable(&path) => config
                    .runtime("exec")
                    .cloned()
                    .ok_or_else(|| LaunchError::UnknownRuntime("exec".into()))?,
                None => return Err(LaunchError::NoRuntime(req.script.clone())),
            },
        };

        let (profile, os) = match mapped {
            Some((mapped_profile, os)) => {
                if let Some(p) = &req.profile
                    && *p != mapped_profile
                {
                    return Err(LaunchError::ProfileOverride {
                        owner,
                        mapped: mapped_profile.to_string(),
                    });
                }
                (mapped_profile, Some(os))
            }
            None => (
                req.profile
                    .clone()
                    .unwrap_or_else(|| runtime.default_profile().clone()),
                None,
            ),
        };
        if !runtime.accepts_profile(&profile) {
            return Err(LaunchError::ProfileNotAccepted {
                runtime: runtime.name.0.clone(),
                profile: profile.to_string(),
                accepted: runtime
                    .profiles
                    .0
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }

        let seen = self.path_in_root(&path, os.as_deref())?;
        let script = Script::new(seen.as_bytes().to_vec())
            .map_err(|_| LaunchError::UnquotablePath(seen.clone()))?;

        let run_id = RunId(self.next_run.fetch_add(1, Ordering::Relaxed));
        let (keeper, _) = {
            let mut t = self.table.lock().expect("table lock");
            if t.active >= config.host.max_active_runs {
                return Err(LaunchError::TooManyRuns(t.active));
            }
            t.insert(NewRun {
                run_id,
                owner,
                name: req.name,
                script: req.script,
                runtime: runtime.name.0.clone(),
                profile: profile.to_string(),
                os_profile: os.as_ref().map(|o| o.name.0.clone()),
                argument: req.argument.clone(),
                lifetime: req.lifetime,
                expire_time: req.expire_time,
            })
            .expect("RunIds are never reused")
        };
        tracing::info!(run = %run_id, runtime = %runtime.name, script = %seen, %profile, "launch");
        tokio::spawn(keep(
            Arc::downgrade(&self),
            run_id,
            keeper,
            self.closing.subscribe(),
        ));
        let plan = StartPlan {
            runtime,
            os,
            script,
            profile,
            argument: req.argument,
        };
        tokio::spawn(self.drive_start(run_id, plan));
        Ok(run_id)
    }

    /// The script path as the runtime sees it (inside its chroot, if any).
    fn path_in_root(
        &self,
        path: &std::path::Path,
        os: Option<&OsProfileSpec>,
    ) -> Result<String, LaunchError> {
        let Some(root) = os.and_then(|o| o.chroot.as_ref()) else {
            return Ok(path.display().to_string());
        };
        let inside = match os.and_then(|o| o.chroot_storage.as_ref()) {
            Some(mounted) => {
                let rel = path
                    .strip_prefix(self.storage.root())
                    .expect("resolved inside storage");
                mounted.0.join(rel)
            }
            None => match path.strip_prefix(&root.0) {
                Ok(rel) => std::path::Path::new("/").join(rel),
                Err(_) => {
                    return Err(LaunchError::NotInChroot {
                        storage: self.storage.root().display().to_string(),
                        chroot: root.0.display().to_string(),
                    });
                }
            },
        };
        Ok(inside.display().to_string())
    }

    /// Finds or starts the runtime, then sends `start` (RFC 3179 6.2.1, 6.2.3).
    async fn drive_start(self: Arc<Self>, run: RunId, plan: StartPlan) {
        let conn = match self.clone().conn_for(run, &plan).await {
            Ok(c) => c,
            Err(msg) => {
                let mut t = self.table.lock().expect("table lock");
                match t.get(run).and_then(|r| r.aborting) {
                    Some(cause) => t.finish_abort(run, abort_exit(cause), None),
                    None => {
                        t.terminate(run, Some(ExitCode::GenericError), Some(&msg));
                    }
                }
                tracing::warn!(run = %run, "{msg}");
                return;
            }
        };
        let timeout = self.command_timeout();
        let StartPlan {
            script,
            profile,
            argument,
            ..
        } = plan;
        // Under the connection's write lock: either an abort that arrived while the runtime
        // was starting ends the run here, or the run is bound to the connection, so that a
        // later abort can only be written after this start.
        let serial = conn.serial;
        let bind = || {
            let mut t = self.table.lock().expect("table lock");
            match t.get(run).map(|r| r.aborting) {
                Some(Some(cause)) => {
                    t.finish_abort(run, abort_exit(cause), None);
                    false
                }
                Some(None) => {
                    if let Some(r) = t.get_mut(run) {
                        r.conn = Some(serial);
                    }
                    true
                }
                None => false,
            }
        };
        let r = conn
            .request_if(
                Pending::Start(run),
                bind,
                |id| Command::Start {
                    id,
                    run,
                    script,
                    profile,
                    argument,
                },
                timeout,
            )
            .await;
        match r {
            Err(RequestError::Timeout) => self.timed_out(&conn, run, "start", timeout),
            Err(RequestError::Cancelled) => self.detach_from(run, &conn),
            _ => {}
        }
    }

    /// Rule 1 of 6.2.3-6.2.5 and 6.2.7: abort the run and end it with genericError.
    fn timed_out(self: &Arc<Self>, conn: &Arc<Conn>, run: RunId, word: &str, timeout: Duration) {
        let msg = format!(
            "no reply to `{word}` from {} within {}",
            conn.describe(),
            humantime::format_duration(timeout)
        );
        tracing::warn!(run = %run, "{msg}");
        self.table.lock().expect("table lock").terminate(
            run,
            Some(ExitCode::GenericError),
            Some(&msg),
        );
        self.detach(run);
        self.cleanup_abort(conn, run);
    }

    /// Sends an `abort` for a run the host already ended; its reply changes nothing.
    fn cleanup_abort(self: &Arc<Self>, conn: &Arc<Conn>, run: RunId) {
        let conn = conn.clone();
        let timeout = self.command_timeout();
        tokio::spawn(async move {
            let _ = conn
                .request(
                    Pending::Abort(run, AbortCause::Cleanup),
                    |id| Command::Abort { id, run },
                    timeout,
                )
                .await;
        });
    }

    /// The connection a run goes to: a running multi-threaded runtime of the same
    /// (runtime, OS profile), or a newly started one. The run is attached before return.
    async fn conn_for(self: Arc<Self>, run: RunId, plan: &StartPlan) -> Result<Arc<Conn>, String> {
        if plan.runtime.threading == Threading::Single {
            return self
                .clone()
                .start_conn(plan.runtime.clone(), plan.os.clone(), run)
                .await;
        }
        let key = (
            plan.runtime.name.0.clone(),
            plan.os.as_ref().map(|o| o.name.0.clone()),
        );
        loop {
            let mut rx = {
                let mut pool = self.pool.lock().expect("pool lock");
                let usable = pool.slots.get(&key).filter(|s| {
                    *s.runtime == *plan.runtime
                        && s.os.as_deref() == plan.os.as_deref()
                        && match &*s.state.borrow() {
                            SlotState::Starting => true,
                            SlotState::Ready(c) => !c.is_closed(),
                            SlotState::Failed(_) => false,
                        }
                });
                match usable {
                    Some(slot) => {
                        let ready = match &*slot.state.borrow() {
                            SlotState::Ready(c) => Some(c.clone()),
                            _ => None,
                        };
                        match ready {
                            Some(c) => {
                                // Attach while the pool is locked, so an idle close cannot race.
                                self.attach(run, &c);
                                return Ok(c);
                            }
                            None => slot.state.clone(),
                        }
                    }
                    None => {
                        let (tx, rx) = watch::channel(SlotState::Starting);
                        pool.slots.insert(
                            key.clone(),
                            Slot {
                                runtime: plan.runtime.clone(),
                                os: plan.os.clone(),
                                state: rx.clone(),
                            },
                        );
                        let me = self.clone();
                        let (rt, os, key) = (plan.runtime.clone(), plan.os.clone(), key.clone());
                        tokio::spawn(async move {
                            let r = me.clone().start_conn(rt, os, run).await;
                            let state = match r {
                                Ok(c) => SlotState::Ready(c),
                                Err(m) => {
                                    let mut pool = me.pool.lock().expect("pool lock");
                                    if pool
                                        .slots
                                        .get(&key)
                                        .is_some_and(|s| s.state.same_channel(&tx.subscribe()))
                                    {
                                        pool.slots.remove(&key);
                                    }
                                    SlotState::Failed(m.into())
                                }
                            };
                            tx.send_replace(state);
                        });
                        rx
                    }
                }
            };
            let state = rx
                .wait_for(|s| !matches!(s, SlotState::Starting))
                .await
                .map(|s| s.clone())
                .unwrap_or_else(|_| SlotState::Failed("runtime start was cancelled".into()));
            match state {
                SlotState::Failed(m) => return Err(m.to_string()),
                // Loop to attach under the pool lock, so an idle close cannot race us.
                _ => continue,
            }
        }
    }

    /// Starts a runtime process in its OS profile and spawns its connection task.
    async fn start_conn(
        self: Arc<Self>,
        runtime: Arc<Registered>,
        os: Option<Arc<OsProfileSpec>>,
        first: RunId,
    ) -> Result<Arc<Conn>, String> {
        let prepared = match os.as_deref() {
            Some(spec) => Prepared::new(spec)
                .map_err(|e| format!("cannot start runtime {}: {e}", runtime.name))?,
            None => Prepared::invoker(),
        };
        let hello_timeout = self.config().host.hello_timeout;
        let started = spawn::start(&runtime, &prepared, hello_timeout)
            .await
            .map_err(|e| e.to_string())?;
        self.runtimes_started.fetch_add(1, Ordering::Relaxed);
        let serial = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(
            serial,
            runtime.name.0.clone(),
            Some(started.pid),
            started.writer,
        ));
        tracing::info!(runtime = %runtime.name, pid = started.pid, os_profile = ?prepared.name, "runtime started");
        let (fin_tx, fin_rx) = watch::channel(false);
        self.pool.lock().expect("pool lock").conns.insert(
            serial,
            ConnEntry {
                conn: conn.clone(),
                os_profile: prepared.name.clone(),
                finished: fin_rx,
            },
        );
        // Attached before the connection task runs, so it never sees a new runtime as idle.
        self.attach(first, &conn);
        for out in started.logs {
            let c = conn.clone();
            tokio::spawn(spawn::log_lines(
                out,
                runtime.name.0.clone(),
                started.pid,
                move |l| {
                    *c.last_stderr.lock().expect("stderr lock") = l;
                },
            ));
        }
        let task = serve(
            self.clone(),
            conn.clone(),
            started.reader,
            started.child,
            fin_tx,
        );
        tokio::spawn(task);
        Ok(conn)
    }

    fn attach(&self, run: RunId, conn: &Arc<Conn>) {
        conn.runs.lock().expect("runs lock").insert(run);
        if let Some(r) = self.table.lock().expect("table lock").get_mut(run) {
            r.info.runtime_pid = conn.pid;
        }
        conn.wake.notify_one();
    }

    /// Takes a run off its connection once its termination is settled (a run reported
    /// terminated still expects its 538, a host abort its 232). An idle single-threaded
    /// runtime, or one whose definition changed, is then shut down.
    fn detach(&self, run: RunId) {
        let serial = {
            let t = self.table.lock().expect("table lock");
            match t.get(run) {
                Some(r) if t.is_settled(run) => r.conn,
                _ => None,
            }
        };
        let Some(serial) = serial else { return };
        let pool = self.pool.lock().expect("pool lock");
        if let Some(e) = pool.conns.get(&serial) {
            let empty = {
                let mut runs = e.conn.runs.lock().expect("runs lock");
                runs.remove(&run) && runs.is_empty()
            };
            if empty {
                e.conn.wake.notify_one();
            }
        }
    }

    /// Takes a run off a connection it was attached to but never started on.
    fn detach_from(&self, run: RunId, conn: &Arc<Conn>) {
        let empty = {
            let mut runs = conn.runs.lock().expect("runs lock");
            runs.remove(&run) && runs.is_empty()
        };
        if empty {
            conn.wake.notify_one();
        }
    }

    /// Whether an idle connection should be closed now, and closes it if so. Idle
    /// single-threaded runtimes close at once, stale ones too; others after `idle_for`.
    fn close_if_idle(&self, conn: &Arc<Conn>, idle_for: Option<Duration>) -> bool {
        let config = self.config();
        let mut pool = self.pool.lock().expect("pool lock");
        if !conn.runs.lock().expect("runs lock").is_empty() {
            return false;
        }
        let in_slot = pool
            .slots
            .iter()
            .find(
                |(_, s)| matches!(&*s.state.borrow(), SlotState::Ready(c) if Arc::ptr_eq(c, conn)),
            )
            .map(|(k, s)| (k.clone(), s.runtime.clone(), s.os.clone()));
        let close = match &in_slot {
            // Single-threaded runtimes are never pooled: one process per run.
            None => true,
            Some((_, rt, os)) => {
                let current = config.runtime(&rt.name.0);
                let os_now = os.as_ref().and_then(|o| config.os_profiles.get(&o.name.0));
                let stale =
                    current.is_none_or(|c| **c != **rt) || os.as_deref() != os_now.map(|o| &**o);
                stale || idle_for.is_some_and(|d| d >= config.host.idle_timeout)
            }
        };
        if close {
            if let Some((k, ..)) = in_slot {
                pool.slots.remove(&k);
            }
            conn.close();
        }
        close
    }

    /// Applies one line from a runtime (RFC 3179 6.2.3-6.2.8).
    fn on_line(self: &Arc<Self>, conn: &Arc<Conn>, line: &[u8]) {
        let reply = match Reply::decode(line) {
            Ok(r) => r,
            Err(why) => {
                // Rule 2: a message that cannot be analyzed is ignored.
                tracing::debug!(runtime = %conn.runtime, "ignoring line ({why}): {:?}", String::from_utf8_lossy(&line[..line.len().min(120)]));
                return;
            }
        };
        match reply.id() {
            Some(id) => match conn.take_pending(id, &reply) {
                Some((what, tx)) => {
                    self.on_reply(conn, what, &reply);
                    let _ = tx.send(reply);
                }
                None => {
                    tracing::debug!(runtime = %conn.runtime, code = reply.code(), %id, "discarding reply that matches no command (rule 5)")
                }
            },
            None => self.on_notification(conn, reply),
        }
    }

    /// Applies a reply to its command (rules 3 and 4 of 6.2.3-6.2.7).
    fn on_reply(self: &Arc<Self>, conn: &Arc<Conn>, what: Pending, reply: &Reply) {
        let run = what.run();
        let mut abort_after = false;
        {
            let mut t = self.table.lock().expect("table lock");
            match (what, reply) {
                (Pending::Abort(_, AbortCause::Cleanup), _) => {}
                (Pending::Abort(_, cause), Reply::Aborted { .. }) => {
                    t.finish_abort(run, abort_exit(cause), None);
                }
                (Pending::Abort(..), Reply::Negative { code, .. }) => {
                    match t.get(run) {
                        // The script ended on its own (its 538 came first): that outcome
                        // stands; the abort merely found nothing left to stop.
                        Some(r) if r.info.is_terminated() && r.exit_reported => {
                            let exit = r.info.exit_code;
                            tracing::info!(run = %run, "abort answered {code}: the run had already ended with {exit}");
                            t.finish_abort(run, exit, None);
                        }
                        _ => {
                            // 6.2.6 rule 3 says smRunResult; the text belongs in smRunError.
                            let msg =
                                format!("{} could not abort the script: {code}", conn.describe());
                            t.finish_abort(run, ExitCode::GenericError, Some(&msg));
                        }
                    }
                }
                (Pending::Start(_), Reply::Negative { code, .. }) => {
                    let msg = format!("{} refused to start the script: {code}", conn.describe());
                    t.terminate(run, Some(ExitCode::GenericError), Some(&msg));
                }
                (Pending::Suspend(_), Reply::Negative { code, .. }) => match code {
                    // Rule 3: no suspend/resume capability; the run stays `suspending`
                    // (RFC 3165 smRunState) until resumed or terminated.
                    Negative::Syntax | Negative::UnknownCommand | Negative::IllegalRunId => {
                        if let Some(r) = t.get_mut(run) {
                            r.suspend_unsupported = true;
                        }
                        tracing::info!(run = %run, "{} cannot suspend ({code})", conn.describe());
                    }
                    // The suspend failed: suspending -> executing (RFC 3165 smRunState).
                    _ => {
                        if t.get(run)
                            .is_some_and(|r| r.info.state == RunState::Suspending)
                        {
                            t.set_state(run, RunState::Executing);
                        }
                    }
                },
                (Pending::Resume(_), Reply::Negative { code, .. }) => {
                    let unsupported = t.get(run).is_some_and(|r| r.suspend_unsupported);
                    if t.get(run)
                        .is_some_and(|r| r.info.state == RunState::Resuming)
                    {
                        // Without suspend support the script never stopped: it is executing.
                        let back = if unsupported {
                            RunState::Executing
                        } else {
                            RunState::Suspended
                        };
                        t.set_state(run, back);
                    }
                    tracing::info!(run = %run, "{} could not resume: {code}", conn.describe());
                }
                (Pending::Status(_), Reply::Negative { code, .. }) => {
                    // 6.2.7 rule 3: a fatal condition; abort and end with genericError.
                    let msg = format!(
                        "{} cannot report the script's status: {code}",
                        conn.describe()
                    );
                    t.terminate(run, Some(ExitCode::GenericError), Some(&msg));
                    abort_after = true;
                }
                (_, Reply::Status { state, .. }) => t.set_state(run, *state),
                _ => {}
            }
        }
        if abort_after {
            self.cleanup_abort(conn, run);
        }
        self.detach(run);
    }

    /// Applies an asynchronous notification (RFC 3179 6.2.8).
    fn on_notification(self: &Arc<Self>, conn: &Arc<Conn>, reply: Reply) {
        if let Reply::Message { text } = &reply {
            tracing::info!(runtime = %conn.runtime, pid = ?conn.pid, "511: {text}");
            return;
        }
        let Some(run) = reply.run() else { return };
        {
            let mut t = self.table.lock().expect("table lock");
            // "checks whether a running script with the given RunId exists in the runtime
            // system": the run must live on this connection and not have ended, except that a
            // run reported terminated by a 531 still takes the 538 with its ExitCode.
            let Some(r) = t.get(run) else {
                tracing::debug!(run = %run, code = reply.code(), "notification for unknown run ignored");
                return;
            };
            let ends = matches!(
                reply,
                Reply::Terminated { .. } | Reply::Completed { .. } | Reply::Failed { .. }
            );
            let open = !r.info.is_terminated() || (ends && !r.exit_reported);
            if r.conn != Some(conn.serial) || !open {
                tracing::debug!(run = %run, code = reply.code(), "notification for a run not running in this runtime ignored");
                return;
            }
            match reply {
                Reply::StateChange { state, .. } => t.set_state(run, state),
                Reply::Result { state, result, .. } => {
                    t.set_result(run, result, false);
                    t.set_state(run, state);
                }
                Reply::ResultEvent { state, result, .. } => {
                    t.set_result(run, result, true);
                    t.set_state(run, state);
                }
                Reply::Completed { result, .. } => {
                    t.set_result(run, result, false);
                    t.report_exit(run, ExitCode::NoError);
                }
                Reply::Failed { exit, error, .. } => {
                    t.set_error(run, error.as_bytes(), false);
                    t.report_exit(run, exit);
                }
                Reply::Error { state, error, .. } => {
                    t.set_error(run, error.as_bytes(), false);
                    t.set_state(run, state);
                }
                Reply::ErrorEvent { state, error, .. } => {
                    t.set_error(run, error.as_bytes(), true);
                    t.set_state(run, state);
                }
                Reply::Terminated { exit, .. } => t.report_exit(run, exit),
                _ => {}
            }
            if t.get(run).is_some_and(|r| r.info.is_terminated()) {
                // A run may end before its start was answered (6.1.2): nothing is owed now.
                conn.cancel_for(run);
            }
        }
        self.detach(run);
    }

    /// The connection ended: every run still on it terminates with genericError
    /// (or with its abort's ExitCode if the host was aborting it).
    fn on_closed(&self, conn: &Arc<Conn>, why: &str) {
        conn.close();
        conn.fail_pending();
        {
            let mut pool = self.pool.lock().expect("pool lock");
            pool.slots.retain(
                |_, s| !matches!(&*s.state.borrow(), SlotState::Ready(c) if Arc::ptr_eq(c, conn)),
            );
        }
        let runs: Vec<RunId> = conn.runs.lock().expect("runs lock").drain().collect();
        let mut t = self.table.lock().expect("table lock");
        for run in runs {
            match t.get(run).and_then(|r| r.aborting) {
                Some(cause) => t.finish_abort(run, abort_exit(cause), None),
                None => {
                    if t.terminate(run, Some(ExitCode::GenericError), Some(why)) {
                        tracing::warn!(run = %run, "{why}");
                    }
                }
            }
        }
        // Runs that reported `terminated` but never their 538 settle now.
        t.settle_all_on(conn.serial);
    }

    async fn suspend(self: Arc<Self>, run: RunId) -> Result<RunInfo, ControlError> {
        let conn = self.transition(run, "suspend", &[RunState::Executing], RunState::Suspending)?;
        self.control(conn, run, Pending::Suspend(run), |id| Command::Suspend {
            id,
            run,
        })
        .await
    }

    async fn resume(self: Arc<Self>, run: RunId) -> Result<RunInfo, ControlError> {
        let unsupported = {
            let t = self.table.lock().expect("table lock");
            t.get(run).is_some_and(|r| r.suspend_unsupported)
        };
        let from: &[RunState] = if unsupported {
            &[RunState::Suspended, RunState::Suspending]
        } else {
            &[RunState::Suspended]
        };
        let conn = self.transition(run, "resume", from, RunState::Resuming)?;
        self.control(conn, run, Pending::Resume(run), |id| Command::Resume {
            id,
            run,
        })
        .await
    }

    async fn status(self: Arc<Self>, run: RunId) -> Result<RunInfo, ControlError> {
        let conn = {
            let t = self.table.lock().expect("table lock");
            let r = t.get(run).ok_or(ControlError::NoSuchRun(run))?;
            match (r.info.state, r.conn) {
                (RunState::Terminated, _) | (_, None) => {
                    return t.snapshot(run).ok_or(ControlError::NoSuchRun(run));
                }
                (_, Some(c)) => c,
            }
        };
        let conn = self.conn(conn).ok_or(ControlError::NoSuchRun(run))?;
        self.control(Some(conn), run, Pending::Status(run), |id| {
            Command::Status { id, run }
        })
        .await
    }

    /// Checks smRunControl's preconditions and sets the transient state (6.2.4, 6.2.5).
    fn transition(
        &self,
        run: RunId,
        op: &'static str,
        from: &[RunState],
        to: RunState,
    ) -> Result<Option<Arc<Conn>>, ControlError> {
        let serial = {
            let mut t = self.table.lock().expect("table lock");
            let r = t.get(run).ok_or(ControlError::NoSuchRun(run))?;
            if !from.contains(&r.info.state) || r.conn.is_none() {
                return Err(ControlError::InvalidState {
                    run,
                    state: r.info.state,
                    op,
                });
            }
            let serial = r.conn;
            t.set_state(run, to);
            serial
        };
        Ok(serial.and_then(|s| self.conn(s)))
    }

    fn conn(&self, serial: u64) -> Option<Arc<Conn>> {
        self.pool
            .lock()
            .expect("pool lock")
            .conns
            .get(&serial)
            .map(|e| e.conn.clone())
    }

    /// Sends a control command and handles its timeout (rule 1 of 6.2.4, 6.2.5, 6.2.7).
    async fn control(
        self: Arc<Self>,
        conn: Option<Arc<Conn>>,
        run: RunId,
        what: Pending,
        build: impl FnOnce(crate::proto::Id) -> Command,
    ) -> Result<RunInfo, ControlError> {
        if let Some(conn) = conn {
            let timeout = self.command_timeout();
            if conn.request(what, build, timeout).await == Err(RequestError::Timeout) {
                self.timed_out(&conn, run, what.word(), timeout);
            }
        }
        self.table
            .lock()
            .expect("table lock")
            .snapshot(run)
            .ok_or(ControlError::NoSuchRun(run))
    }

    /// Aborts a run (RFC 3179 6.2.6) and waits for the outcome.
    async fn abort(
        self: Arc<Self>,
        run: RunId,
        cause: AbortCause,
    ) -> Result<RunInfo, ControlError> {
        let (serial, mut done) = {
            let mut t = self.table.lock().expect("table lock");
            let r = t.get(run).ok_or(ControlError::NoSuchRun(run))?;
            let serial = r.conn;
            let done = r.done.subscribe();
            t.begin_abort(run, cause)
                .map_err(|state| ControlError::InvalidState {
                    run,
                    state,
                    op: "abort",
                })?;
            (serial, done)
        };
        let timeout = self.command_timeout();
        match serial.and_then(|s| self.conn(s)) {
            Some(conn) => {
                let r = conn
                    .request(
                        Pending::Abort(run, cause),
                        |id| Command::Abort { id, run },
                        timeout,
                    )
                    .await;
                if r == Err(RequestError::Timeout) {
                    let msg = format!(
                        "no reply to `abort` from {} within {}",
                        conn.describe(),
                        humantime::format_duration(timeout)
                    );
                    tracing::warn!(run = %run, "{msg}");
                    self.table.lock().expect("table lock").finish_abort(
                        run,
                        ExitCode::GenericError,
                        Some(&msg),
                    );
                }
                self.detach(run);
            }
            // Not started yet: drive_start sees the abort once its runtime is ready.
            None => {
                let _ = tokio::time::timeout(
                    timeout + self.config().host.hello_timeout,
                    done.wait_for(|d| d.is_some()),
                )
                .await;
            }
        }
        self.table
            .lock()
            .expect("table lock")
            .snapshot(run)
            .ok_or(ControlError::NoSuchRun(run))
    }
}

/// The ExitCode after a `232` (RFC 3179 6.2.6 rule 4).
fn abort_exit(cause: AbortCause) -> ExitCode {
    match cause {
        AbortCause::LifeTime => ExitCode::LifeTimeExceeded,
        AbortCause::Manager | AbortCause::Cleanup => ExitCode::Halted,
    }
}

/// A run's clocks: aborts it when smRunLifeTime reaches 0, publishes a termination whose
/// `538` never came, and removes the row when smRunExpireTime reaches 0.
async fn keep(
    inner: Weak<Inner>,
    run: RunId,
    wake: Arc<tokio::sync::Notify>,
    mut closing: watch::Receiver<bool>,
) {
    let mut closing_seen = false;
    loop {
        let action = {
            let Some(i) = inner.upgrade() else { return };
            let t = i.table.lock().expect("table lock");
            t.keeper_action(run, SETTLE_GRACE)
        };
        let deadline = match action {
            KeeperAction::Gone => return,
            KeeperAction::Wait => None,
            KeeperAction::LifeTime(d) | KeeperAction::Settle(d) | KeeperAction::Expire(d) => {
                Some(d)
            }
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = wake.notified() => continue,
            _ = closing.wait_for(|c| *c), if !closing_seen => {
                // The host is going away: keep running only while the run is active.
                closing_seen = true;
                if matches!(action, KeeperAction::Expire(_)) {
                    return;
                }
                continue;
            }
        }
        let Some(i) = inner.upgrade() else { return };
        if Instant::now() < deadline.unwrap_or_else(Instant::now) {
            continue;
        }
        match action {
            KeeperAction::LifeTime(_) => {
                tracing::info!(run = %run, "smRunLifeTime reached 0: aborting");
                tokio::spawn(i.clone().abort(run, AbortCause::LifeTime));
                // begin_abort makes the next action Wait; don't spin meanwhile.
                wake.notified().await;
            }
            KeeperAction::Settle(_) => {
                i.table.lock().expect("table lock").force_settle(run);
                i.detach(run);
            }
            KeeperAction::Expire(_) => {
                if i.table.lock().expect("table lock").remove(run).is_some() {
                    tracing::debug!(run = %run, "smRunExpireTime reached 0: row removed");
                }
                return;
            }
            _ => {}
        }
    }
}

/// A runtime connection's task: reads and applies lines in order, notices the process
/// exiting, closes idle connections, and on the way out reaps the process.
async fn serve(
    inner: Arc<Inner>,
    conn: Arc<Conn>,
    mut reader: crate::framing::LineReader<conn::BoxRead>,
    mut child: Child,
    finished: watch::Sender<bool>,
) {
    let mut idle_since: Option<Instant> = None;
    let mut exited: Option<std::process::ExitStatus> = None;
    let why = loop {
        if conn.is_closed() {
            break None;
        }
        let idle = conn.runs.lock().expect("runs lock").is_empty();
        idle_since = if idle {
            Some(idle_since.unwrap_or_else(Instant::now))
        } else {
            None
        };
        if let Some(t) = idle_since
            && inner.close_if_idle(&conn, Some(t.elapsed()))
        {
            break None;
        }
        let idle_timeout = inner.config().host.idle_timeout;
        let idle_check = async {
            match idle_since {
                Some(t) => tokio::time::sleep_until((t + idle_timeout).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = reader.next() => match frame {
                Ok(Some(Frame::Line(l))) => inner.on_line(&conn, &l),
                Ok(Some(Frame::Overlong)) => tracing::warn!(runtime = %conn.runtime, "ignoring over-long line (RFC 3179 6.2.x rule 2)"),
                Ok(None) => break Some("closed the SMX connection".to_owned()),
                Err(e) => break Some(format!("SMX connection failed: {e}")),
            },
            status = child.wait(), if exited.is_none() => {
                exited = status.ok();
                // Drain what the runtime wrote before it exited (its last 538s), briefly.
                let drain = async {
                    while let Ok(Some(f)) = reader.next().await {
                        if let Frame::Line(l) = f {
                            inner.on_line(&conn, &l);
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
                break Some("exited".to_owned());
            }
            _ = idle_check => {}
            _ = conn.wake.notified() => {}
        }
    };
    // Closing our end of the pipe is how the host shuts a runtime down (RFC 3179 5.2).
    conn.close();
    conn.shutdown_writer().await;
    let grace = inner.config().host.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    if exited.is_none() {
        // Whatever the runtime still says while it shuts down is applied, up to its EOF.
        loop {
            tokio::select! {
                frame = reader.next() => match frame {
                    Ok(Some(Frame::Line(l))) => inner.on_line(&conn, &l),
                    Ok(Some(Frame::Overlong)) => {}
                    _ => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        exited = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                tracing::warn!(runtime = %conn.runtime, pid = ?conn.pid, "runtime did not exit within {grace:?} of its pipe closing: killing it");
                if let Some(pid) = conn.pid {
                    crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = child.kill().await;
                child.wait().await.ok()
            }
        };
    } else if let Some(pid) = conn.pid {
        // The runtime is gone; make sure nothing it left in its process group lingers.
        crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let status = exited
        .map(crate::process::describe_exit)
        .unwrap_or_else(|| "unknown status".into());
    let last = conn.last_stderr.lock().expect("stderr lock").clone();
    let reason = match why {
        Some(w) => {
            let mut m = format!("{} {w} ({status})", conn.describe());
            if !last.is_empty() {
                m.push_str("; last stderr: ");
                m.extend(last.chars().take(120));
            }
            m
        }
        None => format!("{} was shut down ({status})", conn.describe()),
    };
    tracing::info!(runtime = %conn.runtime, pid = ?conn.pid, "{reason}");
    inner.on_closed(&conn, &reason);
    inner
        .pool
        .lock()
        .expect("pool lock")
        .conns
        .remove(&conn.serial);
    finished.send_replace(true);
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The invoking user's name (the owner of runs launched without one).
pub fn invoking_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| nix::unistd::getuid().to_string())
}
