//! The host: the agent side of SMX (RFC 3179 section 6.2).
//!
//! [`Host`] starts runtime processes (6.2.1), talks SMX to them, applies every reply and
//! notification to the run table (6.2.2-6.2.8), and keeps the table's clocks: lifetimes
//! that abort runs and expire times that remove them. The command line (`smx run`) and
//! the daemon drive the same type.
//!
//! Layout, one concept a file:
//! - `launch`: validation of a launch request into a start plan (pure);
//! - `table`: the run table, the only owner of run state and of run↔connection bindings;
//! - `clock`: TimeInterval, countdowns, and the one task that acts on deadlines;
//! - `pool`: which runtime process serves a run, starting and closing them;
//! - `connection`: a connection's task (read loop, reaping, the end of its runs);
//! - `conn`: one connection's writer and commands awaiting replies, every write bounded;
//! - `hello`, `start`, `suspend`, `resume`, `abort`, `status`: one SMX command each, with
//!   its precondition, the command, how its replies change the run, and its timeout;
//! - `pending`: routes a reply to its command's rule; `notify`: 6.2.8 notifications;
//! - `events`: the bounded bus that publishes every change of a run;
//! - `spawn`: starting a runtime process over a pipe or TCP.
//!
//! Concurrency: each runtime connection has one task that reads its lines and applies
//! them in arrival order; commands wait for their reply by Id. The run table and the
//! runtime pool sit behind short-lived mutexes (lock order: pool, then table), never held
//! across an `.await`. Every task is spawned on the host's tracker and ends with it.

mod abort;
mod clock;
mod conn;
mod connection;
mod events;
mod hello;
mod launch;
mod notify;
mod pending;
mod pool;
mod resume;
mod spawn;
mod start;
mod status;
mod suspend;
mod table;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::proto::{Command, Id, RunId, RunState};
use crate::storage::Storage;

pub use clock::TimeInterval;
pub use events::{EventBus, RecvError, Subscriber, TryRecvError};
pub use hello::HandshakeError;
pub use launch::{LaunchError, LaunchRequest, admin_prefix, invoking_user};
pub use spawn::{StartError, expand_command};
pub use table::{AbortCause, Event, EventKind, RunInfo, admin_string};

pub(crate) use clock::Countdown;
pub(crate) use conn::BoxWrite;
pub(crate) use spawn::start as start_runtime;

use conn::{Conn, RequestError};
use pending::Pending;
use pool::Pool;
use table::{ConnId, Table};

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
    /// Lines from runtimes that could not be read as SMX replies, and were ignored.
    pub unreadable_replies: u64,
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
    /// Lines from runtimes that were not SMX replies (`HostStats::unreadable_replies`).
    unreadable_replies: AtomicU64,
    /// Set by `shutdown`: no new launches.
    closing: AtomicBool,
    /// Every task the host spawns.
    tasks: TaskTracker,
    /// Ends the tasks that would otherwise run forever (the clock).
    stop: CancellationToken,
    /// The owner of runs launched without one.
    invoker: String,
}

impl Host {
    /// A host with `config`, storing scripts in `storage`. Must be called inside a tokio
    /// runtime; nothing starts until the first launch but the clock task.
    pub fn new(config: Config, storage: Storage) -> Host {
        storage.set_quota(config.host.storage_quota);
        let events = EventBus::new();
        let table = Table::new(events.clone(), config.host.max_finished_runs);
        let wake = table.clock_wake();
        let inner = Arc::new(Inner {
            config: RwLock::new(Arc::new(config)),
            storage,
            table: Mutex::new(table),
            events,
            pool: Mutex::new(Pool::default()),
            next_run: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            runtimes_started: AtomicU64::new(0),
            unreadable_replies: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            invoker: invoking_user(),
        });
        inner.spawn(clock::run(Arc::downgrade(&inner), wake, inner.stop.clone()));
        Host { inner }
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
        self.inner.storage.set_quota(config.host.storage_quota);
        *self.inner.config.write().expect("config lock") = Arc::new(config);
        let conns: Vec<Arc<Conn>> = {
            let pool = self.inner.pool.lock().expect("pool lock");
            pool.conns.values().map(|e| e.conn.clone()).collect()
        };
        for c in conns {
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
        self.inner.launch(req)
    }

    /// One row of the run table.
    pub fn run(&self, id: RunId) -> Option<RunInfo> {
        self.inner.table.lock().expect("table lock").snapshot(id)
    }

    /// The whole run table, by RunId.
    pub fn runs(&self) -> Vec<RunInfo> {
        self.inner.table.lock().expect("table lock").snapshots()
    }

    /// Puts back a run row saved before a restart (see `Table::restore`): a run that was
    /// executing is terminated with genericError and an smRunError that says why. New runs
    /// get RunIds above every restored one.
    pub fn restore(&self, info: RunInfo) -> bool {
        let id = info.run_id.0;
        let ok = self.inner.table.lock().expect("table lock").restore(info);
        if ok {
            self.inner.next_run.fetch_max(id + 1, Ordering::Relaxed);
        }
        ok
    }

    /// smLaunchRunIndexNext: an smRunIndex unused by the runs of (owner, name), different on
    /// every call; `None` when none is left.
    pub fn next_run_index(&self, owner: &str, name: &str) -> Option<u32> {
        self.inner
            .table
            .lock()
            .expect("table lock")
            .next_index(owner, name)
    }

    /// The smRunTable row (owner, name, index).
    pub fn run_at(&self, owner: &str, name: &str, index: u32) -> Option<RunInfo> {
        let t = self.inner.table.lock().expect("table lock");
        t.run_at(owner, name, index).and_then(|id| t.snapshot(id))
    }

    /// The (owner, name) pairs that have rows in the run table (smRunTable's first two
    /// index components), in no particular order.
    pub fn run_launches(&self) -> Vec<(String, String)> {
        self.inner.table.lock().expect("table lock").run_launches()
    }

    /// The row of (owner, name) with the smallest smRunIndex >= `from` (AgentX GetNext).
    pub fn run_from(&self, owner: &str, name: &str, from: u32) -> Option<RunInfo> {
        let t = self.inner.table.lock().expect("table lock");
        t.run_from(owner, name, from).and_then(|id| t.snapshot(id))
    }

    /// The rows of one launch button (owner, name), by smRunIndex.
    pub fn runs_of(&self, owner: &str, name: &str) -> Vec<RunInfo> {
        let t = self.inner.table.lock().expect("table lock");
        t.runs_of(owner, name)
            .into_iter()
            .filter_map(|id| t.snapshot(id))
            .collect()
    }

    /// The smRunState of every row of one launch button (cheap: no row is copied).
    pub fn states_of(&self, owner: &str, name: &str) -> Vec<RunState> {
        self.inner
            .table
            .lock()
            .expect("table lock")
            .states_of(owner, name)
    }

    /// Whether (owner, name) has any row in the run table (without copying them, unlike
    /// `runs_of`).
    pub fn has_runs(&self, owner: &str, name: &str) -> bool {
        self.inner
            .table
            .lock()
            .expect("table lock")
            .has_runs(owner, name)
    }

    /// How many runs of (owner, name) have not terminated.
    pub fn active_of(&self, owner: &str, name: &str) -> u32 {
        self.inner
            .table
            .lock()
            .expect("table lock")
            .active_of(owner, name)
    }

    /// smLaunchMaxCompleted of (owner, name): at most this many of its terminated runs are
    /// kept, the oldest by smRunEndTime removed first; `None` lifts the limit.
    pub fn set_max_completed(&self, owner: &str, name: &str, max: Option<u32>) {
        self.inner
            .table
            .lock()
            .expect("table lock")
            .set_max_completed(owner, name, max);
    }

    /// Waits until the run has terminated and its ExitCode is final; `None` if unknown.
    pub async fn wait(&self, id: RunId) -> Option<RunInfo> {
        let mut rx = self.inner.table.lock().expect("table lock").done(id)?;
        let r = rx.wait_for(|v| v.is_some()).await.ok()?;
        r.as_deref().cloned()
    }

    /// smRunControl `suspend` (RFC 3179 6.2.4); returns the row once the runtime answered.
    /// Like every control operation it runs to its end even if the caller stops waiting.
    pub async fn suspend(&self, id: RunId) -> Result<RunInfo, ControlError> {
        let i = self.inner.clone();
        self.inner.detached(id, suspend::suspend(i, id)).await
    }

    /// smRunControl `resume` (RFC 3179 6.2.5).
    pub async fn resume(&self, id: RunId) -> Result<RunInfo, ControlError> {
        let i = self.inner.clone();
        self.inner.detached(id, resume::resume(i, id)).await
    }

    /// smRunControl `abort` (RFC 3179 6.2.6); ends with halted.
    pub async fn abort(&self, id: RunId) -> Result<RunInfo, ControlError> {
        let i = self.inner.clone();
        self.inner
            .detached(id, abort::abort(i, id, AbortCause::Manager))
            .await
    }

    /// Asks the runtime for the run's state with `status` (RFC 3179 6.2.7).
    pub async fn refresh(&self, id: RunId) -> Result<RunInfo, ControlError> {
        let i = self.inner.clone();
        self.inner.detached(id, status::status(i, id)).await
    }

    /// Sets smRunLifeTime; 0 aborts the run now (with lifeTimeExceeded).
    pub fn set_lifetime(&self, id: RunId, v: TimeInterval) -> Result<RunInfo, ControlError> {
        let mut t = self.inner.table.lock().expect("table lock");
        t.set_lifetime(id, v)
            .map_err(|state| match t.contains(id) {
                false => ControlError::NoSuchRun(id),
                true => ControlError::InvalidState {
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
        let pool = self.inner.pool.lock().expect("pool lock");
        let t = self.inner.table.lock().expect("table lock");
        let mut procs: Vec<RuntimeProcess> = pool
            .conns
            .values()
            .map(|e| RuntimeProcess {
                runtime: e.conn.runtime.clone(),
                pid: e.conn.pid,
                os_profile: e.os_profile.clone(),
                runs: t.runs_on(e.conn.id),
            })
            .collect();
        procs.sort_by(|a, b| (&a.runtime, a.pid).cmp(&(&b.runtime, b.pid)));
        HostStats {
            runs_total: self.inner.next_run.load(Ordering::Relaxed) - 1,
            runs_active: t.active(),
            runs_in_table: t.len(),
            runtimes_started: self.inner.runtimes_started.load(Ordering::Relaxed),
            unreadable_replies: self.inner.unreadable_replies.load(Ordering::Relaxed),
            runtime_processes: procs,
        }
    }

    /// Aborts every active run (halted), closes every runtime connection, waits for the
    /// processes to exit (killing those that do not within the grace period), reaps them,
    /// and ends every task of the host. Bounded: each step has its timeout.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::Release);
        let config = inner.config();
        let host = &config.host;
        let active = inner.table.lock().expect("table lock").active_ids();
        let aborts = active.into_iter().map(|id| self.abort(id));
        let bound = host.command_timeout + host.hello_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(bound, futures_util::future::join_all(aborts)).await;
        let entries: Vec<(Arc<Conn>, watch::Receiver<bool>)> = {
            let mut pool = inner.pool.lock().expect("pool lock");
            pool.clear_slots();
            pool.conns
                .values()
                .map(|e| (e.conn.clone(), e.finished.clone()))
                .collect()
        };
        for (c, _) in &entries {
            c.close();
        }
        let closed = futures_util::future::join_all(
            entries
                .into_iter()
                .map(|(_, mut fin)| async move { fin.wait_for(|done| *done).await.map(|_| ()) }),
        );
        let bound = host.command_timeout + host.shutdown_grace + Duration::from_secs(2);
        if tokio::time::timeout(bound, closed).await.is_err() {
            tracing::warn!("runtime connections did not close within {bound:?}");
        }
        inner.stop.cancel();
        inner.tasks.close();
        if tokio::time::timeout(Duration::from_secs(2), inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} host tasks still running after shutdown",
                inner.tasks.len()
            );
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

    /// Spawns a task the host owns.
    fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(fut)
    }

    /// Runs a control operation as a host task, so that a caller that stops waiting (a
    /// control client that went away) cannot cut a command off mid-write.
    async fn detached<F>(&self, run: RunId, fut: F) -> Result<RunInfo, ControlError>
    where
        F: Future<Output = Result<RunInfo, ControlError>> + Send + 'static,
    {
        self.spawn(fut)
            .await
            .unwrap_or(Err(ControlError::NoSuchRun(run)))
    }

    fn conn(&self, id: ConnId) -> Option<Arc<Conn>> {
        self.pool
            .lock()
            .expect("pool lock")
            .conns
            .get(&id)
            .map(|e| e.conn.clone())
    }

    fn snapshot(&self, run: RunId) -> Result<RunInfo, ControlError> {
        self.table
            .lock()
            .expect("table lock")
            .snapshot(run)
            .ok_or(ControlError::NoSuchRun(run))
    }

    fn launch(self: &Arc<Self>, req: LaunchRequest) -> Result<RunId, LaunchError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(LaunchError::ShuttingDown);
        }
        let config = self.config();
        let (mut row, plan) = launch::plan(&config, &self.storage, req, &self.invoker)?;
        let run_id = RunId(self.next_run.fetch_add(1, Ordering::Relaxed));
        row.run_id = run_id;
        tracing::info!(run = %run_id, runtime = %plan.runtime.name, script = %row.script, profile = %plan.profile, "launch");
        {
            let mut t = self.table.lock().expect("table lock");
            if t.active() >= config.host.max_active_runs {
                return Err(LaunchError::TooManyRuns(t.active()));
            }
            t.insert(row).map_err(|e| match e {
                table::InsertError::IndexInUse(i) => LaunchError::IndexInUse(i),
                table::InsertError::NoIndexLeft => LaunchError::NoIndexLeft,
                table::InsertError::MaxRunning(n) => LaunchError::MaxRunning(n),
                table::InsertError::RunIdTaken => unreachable!("RunIds are never reused"),
            })?;
        }
        self.spawn(start::drive(self.clone(), run_id, plan));
        Ok(run_id)
    }

    /// Sends a command on `conn` and applies a missing reply (rule 1 of 6.2.3-6.2.7); the
    /// reply itself is applied by the connection task as it arrives.
    async fn send(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        what: Pending,
        build: impl FnOnce(Id) -> Command,
    ) {
        self.send_if(conn, what, || true, build).await
    }

    /// Like [`Inner::send`], with a precheck under the write lock (see `Conn::request_if`).
    async fn send_if(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        what: Pending,
        check: impl FnOnce() -> bool,
        build: impl FnOnce(Id) -> Command,
    ) {
        let timeout = self.command_timeout();
        match conn.request_if(what, check, build, timeout).await {
            Err(e @ (RequestError::Timeout | RequestError::WriteTimeout)) => {
                let why = e.describe(what.word(), &conn.describe(), timeout);
                let effects = what.timed_out(&mut self.table.lock().expect("table lock"), &why);
                connection::apply_effects(self, conn, what.run(), effects);
            }
            Ok(_) | Err(RequestError::Closed | RequestError::Cancelled) => {}
        }
    }

    /// Sends a control command to the connection a run was started on, then returns the row.
    async fn control(
        self: &Arc<Self>,
        conn: ConnId,
        what: Pending,
        build: impl FnOnce(Id) -> Command,
    ) -> Result<RunInfo, ControlError> {
        if let Some(c) = self.conn(conn) {
            self.send(&c, what, build).await;
        }
        self.snapshot(what.run())
    }
}
