//! The runtime pool (RFC 3179 section 6.2.1): which runtime process serves a run. A
//! multi-threaded runtime is shared by the runs of one [`PoolKey`] (runtime, OS profile,
//! owner, runtime profile) and started on first use, and another is started when every one
//! of the key serves its [`capacity`]; a single-threaded one is started for each run. Idle
//! processes are closed: a
//! single-threaded one at once, a multi-threaded one after `idle_timeout`, and one whose
//! definition changed in a reload as soon as it has no runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{OsProfileSpec, Registered, Threading};
use crate::proto::{ExitCode, RunId};
use crate::security::Prepared;

use super::Inner;
use super::conn::Conn;
use super::launch::StartPlan;
use super::spawn;
use super::table::ConnId;

/// Which runs may share a runtime process: the same runtime, OS profile, owner and runtime
/// profile (RFC 3179 section 3: an owner's scripts never run in another owner's process),
/// or, where the OS profile says `share_runtimes`, the same runtime and OS profile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    runtime: String,
    os_profile: Option<String>,
    /// `None` when the OS profile shares runtimes among its owners.
    owner: Option<(String, String)>,
}

impl PoolKey {
    pub fn of(plan: &StartPlan) -> PoolKey {
        let shared = plan.os.as_ref().is_some_and(|o| o.share_runtimes);
        PoolKey {
            runtime: plan.runtime.name.0.clone(),
            os_profile: plan.os.as_ref().map(|o| o.name.0.clone()),
            owner: (!shared).then(|| (plan.owner.clone(), plan.profile.to_string())),
        }
    }
}

#[derive(Default)]
pub(super) struct Pool {
    /// Multi-threaded runtimes by [`PoolKey`]: 6.2.1 reuses a running one, and starts
    /// another of the same key when every one is full (see [`capacity`]).
    slots: HashMap<PoolKey, Vec<Slot>>,
    /// Every live connection.
    pub conns: HashMap<ConnId, ConnEntry>,
    /// Numbers the slots, to find one again after an await.
    next_slot: u64,
}

pub(super) struct ConnEntry {
    pub conn: Arc<Conn>,
    pub os_profile: Option<String>,
    pub finished: watch::Receiver<bool>,
}

struct Slot {
    id: u64,
    runtime: Arc<Registered>,
    os: Option<Arc<OsProfileSpec>>,
    state: watch::Receiver<SlotState>,
}

#[derive(Clone)]
enum SlotState {
    Starting,
    Ready(Arc<Conn>),
    Failed(NoRuntime),
}

/// Why a run got no runtime connection: the smRunExitCode and smRunError it ends with.
#[derive(Debug, Clone)]
pub(super) struct NoRuntime {
    /// noResourcesLeft when the host ran out of descriptors, processes or memory starting
    /// the runtime; genericError otherwise.
    pub exit: ExitCode,
    pub message: Arc<str>,
}

impl NoRuntime {
    fn generic(message: impl Into<Arc<str>>) -> NoRuntime {
        NoRuntime {
            exit: ExitCode::GenericError,
            message: message.into(),
        }
    }
}

impl From<spawn::StartError> for NoRuntime {
    fn from(e: spawn::StartError) -> NoRuntime {
        NoRuntime {
            exit: if e.out_of_resources() {
                ExitCode::NoResourcesLeft
            } else {
                ExitCode::GenericError
            },
            message: e.to_string().into(),
        }
    }
}

/// How many runs one process of `runtime` serves at most: its `max_runs`, else
/// `[host] max_runs_per_runtime`. A runtime holds descriptors and memory per run, so one
/// process cannot take every run; past this a new process of the same key is started.
pub(super) fn capacity(runtime: &Registered, config: &crate::config::Config) -> usize {
    runtime
        .max_runs
        .map_or(config.host.max_runs_per_runtime.get(), |n| n.get())
}

impl Pool {
    /// Forgets the slot of a connection (it is closing); no new run goes to it.
    pub fn unslot(&mut self, conn: &Arc<Conn>) {
        for slots in self.slots.values_mut() {
            slots.retain(|s| !s.serves(conn));
        }
        self.slots.retain(|_, v| !v.is_empty());
    }

    /// Forgets every slot (shutdown).
    pub fn clear_slots(&mut self) {
        self.slots.clear();
    }

    /// Drops the slot numbered `id` of `key`, if it is still there.
    fn remove_slot(&mut self, key: &PoolKey, id: u64) {
        if let Some(v) = self.slots.get_mut(key) {
            v.retain(|s| s.id != id);
            if v.is_empty() {
                self.slots.remove(key);
            }
        }
    }
}

impl Slot {
    fn serves(&self, conn: &Arc<Conn>) -> bool {
        matches!(&*self.state.borrow(), SlotState::Ready(c) if Arc::ptr_eq(c, conn))
    }
}

impl Inner {
    /// The connection a run goes to: a running multi-threaded runtime of the same
    /// [`PoolKey`] with room for another run, or a newly started one. The run is attached
    /// before return.
    pub(super) async fn conn_for(
        self: Arc<Self>,
        run: RunId,
        plan: &StartPlan,
    ) -> Result<Arc<Conn>, NoRuntime> {
        if plan.runtime.threading == Threading::Single {
            // Boxed: starting a runtime is a large future, and every run waiting for a
            // runtime (10,000 in a burst) would otherwise carry room for it.
            return Box::pin(
                self.clone()
                    .start_conn(plan.runtime.clone(), plan.os.clone(), run),
            )
            .await;
        }
        let key = PoolKey::of(plan);
        let cap = capacity(&plan.runtime, &self.config());
        loop {
            let mut rx = {
                let mut guard = self.pool.lock().expect("pool lock");
                let pool = &mut *guard;
                let slots = pool.slots.entry(key.clone()).or_default();
                // A runtime redefined by a reload, or one that failed or closed, takes no
                // new runs (close_if_idle then closes it once its runs are done).
                slots.retain(|s| {
                    *s.runtime == *plan.runtime
                        && s.os.as_deref() == plan.os.as_deref()
                        && match &*s.state.borrow() {
                            SlotState::Starting => true,
                            SlotState::Ready(c) => !c.is_closed(),
                            SlotState::Failed(_) => false,
                        }
                });
                let mut starting = None;
                let mut ready = None;
                {
                    let table = self.table.lock().expect("table lock");
                    // The run that started a runtime was attached to it by start_conn.
                    let mine = table.attached(run);
                    for s in slots.iter() {
                        match &*s.state.borrow() {
                            SlotState::Ready(c)
                                if mine == Some(c.id) || table.runs_on(c.id) < cap =>
                            {
                                ready = Some(c.clone());
                                break;
                            }
                            SlotState::Starting if starting.is_none() => {
                                starting = Some(s.state.clone())
                            }
                            _ => {}
                        }
                    }
                }
                if let Some(c) = ready {
                    // Attached while the pool is locked, so an idle close cannot race.
                    return if self.attach(run, &c) {
                        Ok(c)
                    } else {
                        Err(NoRuntime::generic(format!("{} closed", c.describe())))
                    };
                }
                match starting {
                    // One that is starting may have room once it is ready.
                    Some(rx) => rx,
                    None => {
                        let (tx, rx) = watch::channel(SlotState::Starting);
                        let id = pool.next_slot;
                        pool.next_slot += 1;
                        slots.push(Slot {
                            id,
                            runtime: plan.runtime.clone(),
                            os: plan.os.clone(),
                            state: rx.clone(),
                        });
                        let me = self.clone();
                        let (rt, os, key) = (plan.runtime.clone(), plan.os.clone(), key.clone());
                        self.spawn(async move {
                            let state = match me.clone().start_conn(rt, os, run).await {
                                Ok(c) => SlotState::Ready(c),
                                Err(e) => {
                                    me.pool.lock().expect("pool lock").remove_slot(&key, id);
                                    SlotState::Failed(e)
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
                .unwrap_or_else(|_| {
                    SlotState::Failed(NoRuntime::generic("runtime start was cancelled"))
                });
            match state {
                SlotState::Failed(e) => return Err(e),
                // Loop to attach under the pool lock, so an idle close cannot race us.
                _ => continue,
            }
        }
    }

    /// Starts a runtime process in its OS profile and spawns its connection task. `first`
    /// is attached before the task runs, so it never sees a new runtime as idle.
    async fn start_conn(
        self: Arc<Self>,
        runtime: Arc<Registered>,
        os: Option<Arc<OsProfileSpec>>,
        first: RunId,
    ) -> Result<Arc<Conn>, NoRuntime> {
        // User and group lookups may block on NSS (LDAP, files on a slow disk).
        let spec = os.clone();
        let prepared = tokio::task::spawn_blocking(move || match spec.as_deref() {
            Some(spec) => Prepared::new(spec),
            None => Ok(Prepared::invoker()),
        })
        .await
        .map_err(|e| NoRuntime::generic(format!("cannot start runtime {}: {e}", runtime.name)))?
        .map_err(|e| NoRuntime::generic(format!("cannot start runtime {}: {e}", runtime.name)))?;
        let hello_timeout = self.config().host.hello_timeout;
        let started = spawn::start(&runtime, &prepared, hello_timeout).await?;
        self.runtimes_started.fetch_add(1, Ordering::Relaxed);
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let conn = Arc::new(Conn::new(
            id,
            runtime.name.0.clone(),
            Some(started.pid),
            started.writer,
        ));
        tracing::info!(runtime = %runtime.name, pid = started.pid, os_profile = ?prepared.name, "runtime started");
        let (fin_tx, fin_rx) = watch::channel(false);
        {
            let mut pool = self.pool.lock().expect("pool lock");
            pool.conns.insert(
                id,
                ConnEntry {
                    conn: conn.clone(),
                    os_profile: prepared.name.clone(),
                    finished: fin_rx,
                },
            );
            self.table
                .lock()
                .expect("table lock")
                .open_conn(id, conn.wake.clone());
        }
        self.attach(first, &conn);
        for out in started.logs {
            let c = conn.clone();
            self.spawn(spawn::log_lines(
                out,
                runtime.name.0.clone(),
                started.pid,
                move |l| {
                    *c.last_stderr.lock().expect("stderr lock") = l;
                },
            ));
        }
        let task = super::connection::serve(
            self.clone(),
            conn.clone(),
            started.reader,
            started.child,
            fin_tx,
        );
        self.spawn(task);
        Ok(conn)
    }

    /// Attaches a run to a connection; false if either is gone.
    fn attach(&self, run: RunId, conn: &Arc<Conn>) -> bool {
        self.table
            .lock()
            .expect("table lock")
            .attach(run, conn.id, conn.pid)
    }

    /// Whether an idle connection should be closed now, and closes it if so. Idle
    /// single-threaded runtimes close at once, stale ones too; others after `idle_for`.
    pub(super) fn close_if_idle(&self, conn: &Arc<Conn>, idle_for: Duration) -> bool {
        let config = self.config();
        let mut pool = self.pool.lock().expect("pool lock");
        if self.table.lock().expect("table lock").runs_on(conn.id) > 0 {
            return false;
        }
        let in_slot = pool
            .slots
            .iter()
            .find_map(|(k, v)| v.iter().find(|s| s.serves(conn)).map(|s| (k, s)))
            .map(|(k, s)| (k.clone(), s.id, s.runtime.clone(), s.os.clone()));
        let close = match &in_slot {
            // Single-threaded runtimes are never pooled: one process per run.
            None => true,
            Some((_, _, rt, os)) => {
                let current = config.runtime(&rt.name.0);
                let os_now = os.as_ref().and_then(|o| config.os_profiles.get(&o.name.0));
                let stale =
                    current.is_none_or(|c| **c != **rt) || os.as_deref() != os_now.map(|o| &**o);
                stale || idle_for >= config.host.idle_timeout
            }
        };
        if close {
            if let Some((k, id, ..)) = in_slot {
                pool.remove_slot(&k, id);
            }
            conn.close();
        }
        close
    }
}
