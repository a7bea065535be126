//! The runtime pool (RFC 3179 section 6.2.1): which runtime process serves a run. A
//! multi-threaded runtime is shared by the runs of one [`PoolKey`] (runtime, OS profile,
//! owner, runtime profile) and started on first use; a single-threaded one is started for each run. Idle processes are closed: a
//! single-threaded one at once, a multi-threaded one after `idle_timeout`, and one whose
//! definition changed in a reload as soon as it has no runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{OsProfileSpec, Registered, Threading};
use crate::proto::RunId;
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
    /// Multi-threaded runtimes by [`PoolKey`]: 6.2.1 reuses a running one.
    slots: HashMap<PoolKey, Slot>,
    /// Every live connection.
    pub conns: HashMap<ConnId, ConnEntry>,
}

pub(super) struct ConnEntry {
    pub conn: Arc<Conn>,
    pub os_profile: Option<String>,
    pub finished: watch::Receiver<bool>,
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

impl Pool {
    /// Forgets the slot of a connection (it is closing); no new run goes to it.
    pub fn unslot(&mut self, conn: &Arc<Conn>) {
        self.slots.retain(
            |_, s| !matches!(&*s.state.borrow(), SlotState::Ready(c) if Arc::ptr_eq(c, conn)),
        );
    }

    /// Forgets every slot (shutdown).
    pub fn clear_slots(&mut self) {
        self.slots.clear();
    }
}

impl Inner {
    /// The connection a run goes to: a running multi-threaded runtime of the same
    /// (runtime, OS profile), or a newly started one. The run is attached before return.
    pub(super) async fn conn_for(
        self: Arc<Self>,
        run: RunId,
        plan: &StartPlan,
    ) -> Result<Arc<Conn>, String> {
        if plan.runtime.threading == Threading::Single {
            return self
                .clone()
                .start_conn(plan.runtime.clone(), plan.os.clone(), run)
                .await;
        }
        let key = PoolKey::of(plan);
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
                            // Attached while the pool is locked, so an idle close cannot race.
                            Some(c) => {
                                return if self.attach(run, &c) {
                                    Ok(c)
                                } else {
                                    Err(format!("{} closed", c.describe()))
                                };
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
                        self.spawn(async move {
                            let state = match me.clone().start_conn(rt, os, run).await {
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

    /// Starts a runtime process in its OS profile and spawns its connection task. `first`
    /// is attached before the task runs, so it never sees a new runtime as idle.
    async fn start_conn(
        self: Arc<Self>,
        runtime: Arc<Registered>,
        os: Option<Arc<OsProfileSpec>>,
        first: RunId,
    ) -> Result<Arc<Conn>, String> {
        // User and group lookups may block on NSS (LDAP, files on a slow disk).
        let spec = os.clone();
        let prepared = tokio::task::spawn_blocking(move || match spec.as_deref() {
            Some(spec) => Prepared::new(spec),
            None => Ok(Prepared::invoker()),
        })
        .await
        .map_err(|e| format!("cannot start runtime {}: {e}", runtime.name))?
        .map_err(|e| format!("cannot start runtime {}: {e}", runtime.name))?;
        let hello_timeout = self.config().host.hello_timeout;
        let started = spawn::start(&runtime, &prepared, hello_timeout)
            .await
            .map_err(|e| e.to_string())?;
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
                stale || idle_for >= config.host.idle_timeout
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
}
