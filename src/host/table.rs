//! The run table: one row per run, as the Script MIB's smRunTable means it (RFC 3165).
//!
//! The table is the only owner of run state: the row, which runtime connection a run is
//! attached to and bound to, a host abort in progress, and the next deadline of its clocks.
//! All changes go through [`Table`] methods, which keep the invariants the rest of the host
//! relies on: a terminated run never changes state again, its lifetime is 0, its expire time
//! starts ticking, it leaves its connection once its termination is settled, and every
//! change is published as an [`Event`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::clock::{Countdown, TimeInterval};
use super::events::EventBus;
use crate::proto::{ExitCode, MAX_ERROR_OCTETS, MAX_RESULT_OCTETS, Octets, RunId, RunState};

/// A snapshot of one smRunTable row plus the host's own bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// The host-wide SMX RunId.
    pub run_id: RunId,
    /// smLaunchOwner.
    pub owner: String,
    /// smLaunchName.
    pub name: String,
    /// smRunIndex: unique per (owner, name).
    pub index: u32,
    /// The script, relative to the script storage.
    pub script: String,
    pub runtime: String,
    /// The runtime security profile sent in `start`.
    pub profile: String,
    /// The OS security profile the runtime process runs in (`None`: the invoking user).
    pub os_profile: Option<String>,
    /// smRunArgument.
    pub argument: Octets,
    /// smRunState.
    pub state: RunState,
    /// smRunExitCode.
    pub exit_code: ExitCode,
    /// smRunResult (at most 65535 octets).
    pub result: Octets,
    /// smRunError (UTF-8, at most 255 octets).
    pub error: String,
    /// smRunStartTime.
    #[serde(with = "time_serde")]
    pub start_time: SystemTime,
    /// smRunEndTime.
    #[serde(with = "opt_time_serde")]
    pub end_time: Option<SystemTime>,
    /// smRunResultTime.
    #[serde(with = "opt_time_serde")]
    pub result_time: Option<SystemTime>,
    /// smRunErrorTime.
    #[serde(with = "opt_time_serde")]
    pub error_time: Option<SystemTime>,
    /// smRunLifeTime: remaining centi-seconds (2147483647: no limit; 0 once terminated).
    pub lifetime: TimeInterval,
    /// smRunExpireTime: remaining centi-seconds (ticks once terminated).
    pub expire_time: TimeInterval,
    /// The runtime process serving the run, once known.
    pub runtime_pid: Option<u32>,
}

impl RunInfo {
    pub fn is_terminated(&self) -> bool {
        self.state == RunState::Terminated
    }
}

/// What happened to a run, as published to subscribers (the daemon's event stream).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub run_id: RunId,
    pub owner: String,
    pub name: String,
    #[serde(with = "time_serde")]
    pub time: SystemTime,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A row was created (smLaunchStart).
    Launched { script: String, runtime: String },
    /// smRunState changed.
    State { state: RunState },
    /// smRunResult changed: a `532` (`notify: false`) or a `533`/`534` (`notify` marks the
    /// `533` that asks for an smScriptResult notification).
    Result { result: Octets, notify: bool },
    /// smRunError changed: `536` (`notify: false`) or `537` (smScriptException).
    Error { error: String, notify: bool },
    /// The run terminated; an exit code other than noError calls for smScriptAbort.
    Terminated {
        exit_code: ExitCode,
        result: Octets,
        error: String,
    },
    /// The row left the table (its expire time ran out).
    Removed,
}

/// Why the host aborted a run; it decides the ExitCode after a `232` (RFC 3179 6.2.6 rule 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCause {
    /// smRunControl/smLaunchControl set to abort: halted.
    Manager,
    /// smRunLifeTime reached 0: lifeTimeExceeded.
    LifeTime,
}

impl AbortCause {
    /// The ExitCode after a `232` (RFC 3179 6.2.6 rule 4).
    pub fn exit_code(self) -> ExitCode {
        match self {
            AbortCause::Manager => ExitCode::Halted,
            AbortCause::LifeTime => ExitCode::LifeTimeExceeded,
        }
    }
}

/// One runtime connection, as the table knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Receives the final row once a run has terminated.
pub(crate) type Done = watch::Receiver<Option<Arc<RunInfo>>>;

/// How long a run reported terminated by `531`/`231` waits for its `538`.
pub(crate) const SETTLE_GRACE: Duration = Duration::from_secs(5);

struct Run {
    info: RunInfo,
    lifetime: Countdown,
    expire: Countdown,
    /// The connection the run is attached to: it counts as busy, its process serves the run.
    attached: Option<ConnId>,
    /// The connection `start` was written to (or is being written to): commands and
    /// notifications for the run belong there.
    bound: Option<ConnId>,
    /// When the run terminated (for the settle grace).
    ended_at: Option<Instant>,
    /// The termination has been published (event + `done`).
    settled: bool,
    /// Its key in `Table::finished`, once terminated.
    finished_key: Option<u64>,
    /// A `538`/`534`/`535` or `232` has fixed the ExitCode.
    exit_reported: bool,
    /// A host abort in progress.
    aborting: Option<AbortCause>,
    /// The runtime answered `suspend` with 401/402/431 (no suspend capability, 6.2.4 rule 3).
    suspend_unsupported: bool,
    /// Its entry in `Table::schedule`.
    due: Option<Instant>,
    /// Set once, with the final row, when the termination is settled.
    done: watch::Sender<Option<Arc<RunInfo>>>,
}

/// The runs attached to one connection, and how to tell its task when it has none left.
struct Attached {
    runs: HashSet<RunId>,
    wake: Arc<Notify>,
}

/// The run table.
pub(crate) struct Table {
    runs: HashMap<RunId, Run>,
    /// The runs of each (smLaunchOwner, smLaunchName): their smRunIndex values and limits.
    launches: HashMap<(String, String), LaunchRuns>,
    /// Terminated runs by end order, to enforce `max_finished`.
    finished: BTreeMap<u64, RunId>,
    finished_seq: u64,
    active: usize,
    /// Open connections and the runs attached to each.
    conns: HashMap<ConnId, Attached>,
    /// Every run's next clock deadline (lifetime, settle grace or expiry).
    schedule: BTreeSet<(Instant, RunId)>,
    /// Wakes the clock task when an earlier deadline appears.
    clock: Arc<Notify>,
    events: EventBus,
    max_finished: usize,
}

/// smRunIndex is Integer32 (1..2147483647).
pub(crate) const MAX_RUN_INDEX: u32 = 2_147_483_647;

/// Why a row could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertError {
    RunIdTaken,
    /// smLaunchStart check 5: the smRunIndex is in use (or out of range).
    IndexInUse(u32),
    /// Every smRunIndex of the launch is in use.
    NoIndexLeft,
    /// smLaunchStart check 6: this many runs of the launch are executing.
    MaxRunning(u32),
}

/// The runs of one (smLaunchOwner, smLaunchName).
#[derive(Default)]
struct LaunchRuns {
    /// The last smRunIndex handed out.
    counter: u32,
    by_index: BTreeMap<u32, RunId>,
    /// Runs that have not terminated.
    active: u32,
    max_completed: Option<u32>,
}

impl LaunchRuns {
    /// A fresh unused smRunIndex: counts up, wraps, and skips indexes still in use.
    fn next_index(&mut self) -> Option<u32> {
        if self.by_index.len() >= MAX_RUN_INDEX as usize {
            return None;
        }
        loop {
            self.counter = if self.counter >= MAX_RUN_INDEX {
                1
            } else {
                self.counter + 1
            };
            if !self.by_index.contains_key(&self.counter) {
                return Some(self.counter);
            }
        }
    }
}

/// The row fields a launch fills in.
pub(crate) struct NewRun {
    pub run_id: RunId,
    pub owner: String,
    pub name: String,
    pub script: String,
    pub runtime: String,
    pub profile: String,
    pub os_profile: Option<String>,
    pub argument: Octets,
    pub lifetime: TimeInterval,
    pub expire_time: TimeInterval,
    /// smRunIndex: the one smLaunchStart was set to, or `None` for a fresh one.
    pub index: Option<u32>,
    /// smLaunchMaxRunning, if the launch has one.
    pub max_running: Option<u32>,
}

impl Table {
    pub fn new(events: EventBus, max_finished: usize) -> Self {
        Table {
            runs: HashMap::new(),
            launches: HashMap::new(),
            finished: BTreeMap::new(),
            finished_seq: 0,
            active: 0,
            conns: HashMap::new(),
            schedule: BTreeSet::new(),
            clock: Arc::new(Notify::new()),
            events,
            max_finished,
        }
    }

    /// What the clock task waits on besides its next deadline.
    pub fn clock_wake(&self) -> Arc<Notify> {
        self.clock.clone()
    }

    pub fn set_max_finished(&mut self, n: usize) {
        self.max_finished = n;
        self.enforce_max_finished();
    }

    fn publish(&self, run: &RunInfo, kind: EventKind) {
        // No subscriber is fine: the table is the record, events are a convenience.
        self.events.publish(Event {
            run_id: run.run_id,
            owner: run.owner.clone(),
            name: run.name.clone(),
            time: SystemTime::now(),
            kind,
        });
    }

    /// Creates a row in state `initializing` (smLaunchStart, RFC 3179 6.2.1), with the
    /// smRunIndex the launch asked for (checked unused, smLaunchStart check 5) or a fresh
    /// one, if fewer than `max_running` runs of the launch are active (check 6).
    pub fn insert(&mut self, n: NewRun) -> Result<Done, InsertError> {
        if self.runs.contains_key(&n.run_id) {
            return Err(InsertError::RunIdTaken);
        }
        let key = (n.owner.clone(), n.name.clone());
        let l = self.launches.entry(key).or_default();
        if let Some(max) = n.max_running
            && l.active >= max
        {
            return Err(InsertError::MaxRunning(max));
        }
        let index = match n.index {
            Some(i) if !(1..=MAX_RUN_INDEX).contains(&i) => return Err(InsertError::IndexInUse(i)),
            Some(i) if l.by_index.contains_key(&i) => return Err(InsertError::IndexInUse(i)),
            Some(i) => i,
            None => l.next_index().ok_or(InsertError::NoIndexLeft)?,
        };
        l.by_index.insert(index, n.run_id);
        l.active += 1;
        let now = Instant::now();
        let mut lifetime = Countdown::new(n.lifetime);
        lifetime.start(now);
        let info = RunInfo {
            run_id: n.run_id,
            owner: n.owner,
            name: n.name,
            index,
            script: n.script,
            runtime: n.runtime,
            profile: n.profile,
            os_profile: n.os_profile,
            argument: n.argument,
            state: RunState::Initializing,
            exit_code: ExitCode::NoError,
            result: Octets::default(),
            error: String::new(),
            start_time: SystemTime::now(),
            end_time: None,
            result_time: None,
            error_time: None,
            lifetime: n.lifetime,
            expire_time: n.expire_time,
            runtime_pid: None,
        };
        let (done, done_rx) = watch::channel(None);
        self.publish(
            &info,
            EventKind::Launched {
                script: info.script.clone(),
                runtime: info.runtime.clone(),
            },
        );
        let id = n.run_id;
        self.runs.insert(
            id,
            Run {
                info,
                lifetime,
                expire: Countdown::new(n.expire_time),
                attached: None,
                bound: None,
                ended_at: None,
                settled: false,
                finished_key: None,
                exit_reported: false,
                aborting: None,
                suspend_unsupported: false,
                due: None,
                done,
            },
        );
        self.active += 1;
        self.reschedule(id);
        Ok(done_rx)
    }

    /// Puts back a row saved before the host restarted. A run that had not terminated ends
    /// now with genericError: its runtime went away with the old host. The row is settled
    /// (its termination is final) and its smRunExpireTime starts again from what was left.
    /// False if the RunId or the smRunIndex is taken.
    pub fn restore(&mut self, mut info: RunInfo) -> bool {
        let key = (info.owner.clone(), info.name.clone());
        let l = self.launches.entry(key).or_default();
        if self.runs.contains_key(&info.run_id) || l.by_index.contains_key(&info.index) {
            return false;
        }
        let now = Instant::now();
        if !info.is_terminated() {
            info.state = RunState::Terminated;
            info.exit_code = ExitCode::GenericError;
            info.error = "the host restarted while the script was running".into();
            info.error_time = Some(SystemTime::now());
            info.end_time = Some(SystemTime::now());
        }
        info.lifetime = TimeInterval::ZERO;
        info.runtime_pid = None;
        l.by_index.insert(info.index, info.run_id);
        l.counter = l.counter.max(info.index);
        let mut expire = Countdown::new(info.expire_time);
        expire.start(now);
        let (done, _) = watch::channel(Some(Arc::new(info.clone())));
        self.finished_seq += 1;
        self.finished.insert(self.finished_seq, info.run_id);
        let id = info.run_id;
        self.runs.insert(
            id,
            Run {
                info,
                lifetime: Countdown::new(TimeInterval::ZERO),
                expire,
                attached: None,
                bound: None,
                ended_at: Some(now),
                settled: true,
                finished_key: Some(self.finished_seq),
                exit_reported: true,
                aborting: None,
                suspend_unsupported: false,
                due: None,
                done,
            },
        );
        self.reschedule(id);
        self.enforce_max_finished();
        true
    }

    /// smLaunchRunIndexNext: an smRunIndex unused by the runs of (owner, name), different
    /// on every call; `None` when every index is in use.
    pub fn next_index(&mut self, owner: &str, name: &str) -> Option<u32> {
        self.launches
            .entry((owner.to_owned(), name.to_owned()))
            .or_default()
            .next_index()
    }

    /// The run with smRunIndex `index` of (owner, name).
    pub fn run_at(&self, owner: &str, name: &str, index: u32) -> Option<RunId> {
        self.launches
            .get(&(owner.to_owned(), name.to_owned()))
            .and_then(|l| l.by_index.get(&index).copied())
    }

    /// The (owner, name) pairs with rows in the run table, in no particular order.
    pub fn run_launches(&self) -> Vec<(String, String)> {
        self.launches
            .iter()
            .filter(|(_, l)| !l.by_index.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The run of (owner, name) with the smallest smRunIndex >= `from`: one step of a
    /// GetNext walk over smRunTable without copying the table.
    pub fn run_from(&self, owner: &str, name: &str, from: u32) -> Option<RunId> {
        let l = self.launches.get(&(owner.to_owned(), name.to_owned()))?;
        l.by_index.range(from..).next().map(|(_, id)| *id)
    }

    /// The runs of (owner, name), by smRunIndex.
    pub fn runs_of(&self, owner: &str, name: &str) -> Vec<RunId> {
        self.launches
            .get(&(owner.to_owned(), name.to_owned()))
            .map(|l| l.by_index.values().copied().collect())
            .unwrap_or_default()
    }

    /// The states of the rows (owner, name) has in the run table.
    pub fn states_of(&self, owner: &str, name: &str) -> Vec<RunState> {
        self.launches
            .get(&(owner.to_owned(), name.to_owned()))
            .map(|l| {
                l.by_index
                    .values()
                    .filter_map(|id| self.runs.get(id).map(|r| r.info.state))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether (owner, name) has any row in the run table.
    pub fn has_runs(&self, owner: &str, name: &str) -> bool {
        self.launches
            .get(&(owner.to_owned(), name.to_owned()))
            .is_some_and(|l| !l.by_index.is_empty())
    }

    /// How many runs of (owner, name) have not terminated.
    pub fn active_of(&self, owner: &str, name: &str) -> u32 {
        self.launches
            .get(&(owner.to_owned(), name.to_owned()))
            .map_or(0, |l| l.active)
    }

    /// smLaunchMaxCompleted for (owner, name): at most this many of its terminated runs stay,
    /// the oldest by smRunEndTime go first. `None`: only `max_finished` applies.
    pub fn set_max_completed(&mut self, owner: &str, name: &str, max: Option<u32>) {
        let key = (owner.to_owned(), name.to_owned());
        self.launches.entry(key).or_default().max_completed = max;
        self.enforce_max_completed(owner, name);
    }

    fn enforce_max_completed(&mut self, owner: &str, name: &str) {
        let Some(l) = self.launches.get(&(owner.to_owned(), name.to_owned())) else {
            return;
        };
        let Some(max) = l.max_completed else { return };
        let mut done: Vec<(Instant, RunId)> = l
            .by_index
            .values()
            .filter_map(|id| self.runs.get(id))
            .filter(|r| r.settled)
            .map(|r| (r.ended_at.unwrap_or_else(Instant::now), r.info.run_id))
            .collect();
        if done.len() <= max as usize {
            return;
        }
        done.sort();
        let excess = done.len() - max as usize;
        for (_, id) in done.into_iter().take(excess) {
            tracing::debug!(run = %id, "smLaunchMaxCompleted {max} reached: oldest completed run removed");
            self.forget(id);
        }
    }

    pub fn contains(&self, id: RunId) -> bool {
        self.runs.contains_key(&id)
    }

    /// smRunState.
    pub fn state(&self, id: RunId) -> Option<RunState> {
        self.runs.get(&id).map(|r| r.info.state)
    }

    /// The host abort in progress, if any.
    pub fn aborting(&self, id: RunId) -> Option<AbortCause> {
        self.runs.get(&id).and_then(|r| r.aborting)
    }

    /// Whether a runtime report or a host decision has fixed the ExitCode.
    pub fn exit_reported(&self, id: RunId) -> bool {
        self.runs.get(&id).is_some_and(|r| r.exit_reported)
    }

    pub fn exit_code(&self, id: RunId) -> Option<ExitCode> {
        self.runs.get(&id).map(|r| r.info.exit_code)
    }

    /// Whether the runtime said it cannot suspend this run (6.2.4 rule 3).
    pub fn suspend_unsupported(&self, id: RunId) -> bool {
        self.runs.get(&id).is_some_and(|r| r.suspend_unsupported)
    }

    pub fn set_suspend_unsupported(&mut self, id: RunId) {
        if let Some(r) = self.runs.get_mut(&id) {
            r.suspend_unsupported = true;
        }
    }

    /// The connection the run was started on.
    pub fn bound(&self, id: RunId) -> Option<ConnId> {
        self.runs.get(&id).and_then(|r| r.bound)
    }

    /// Whether the termination is final and published.
    #[cfg(test)]
    pub fn is_settled(&self, id: RunId) -> bool {
        self.runs.get(&id).is_some_and(|r| r.settled)
    }

    /// Receives the final row once the run's termination is settled.
    pub fn done(&self, id: RunId) -> Option<Done> {
        self.runs.get(&id).map(|r| r.done.subscribe())
    }

    /// A snapshot with the countdowns evaluated now.
    pub fn snapshot(&self, id: RunId) -> Option<RunInfo> {
        self.runs.get(&id).map(|r| snapshot(r, Instant::now()))
    }

    pub fn snapshots(&self) -> Vec<RunInfo> {
        let now = Instant::now();
        let mut v: Vec<RunInfo> = self.runs.values().map(|r| snapshot(r, now)).collect();
        v.sort_by_key(|r| r.run_id);
        v
    }

    /// RunIds of the runs that have not terminated.
    pub fn active_ids(&self) -> Vec<RunId> {
        self.runs
            .values()
            .filter(|r| !r.info.is_terminated())
            .map(|r| r.info.run_id)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Runs that have not terminated.
    pub fn active(&self) -> usize {
        self.active
    }

    // ---- runtime connections ----

    /// Registers an open connection; `wake` is notified whenever its last run leaves it.
    pub fn open_conn(&mut self, conn: ConnId, wake: Arc<Notify>) {
        self.conns.insert(
            conn,
            Attached {
                runs: HashSet::new(),
                wake,
            },
        );
    }

    /// Attaches a run to an open connection (its process now serves it). False if either
    /// is gone.
    pub fn attach(&mut self, id: RunId, conn: ConnId, pid: Option<u32>) -> bool {
        let (Some(c), Some(r)) = (self.conns.get_mut(&conn), self.runs.get_mut(&id)) else {
            return false;
        };
        c.runs.insert(id);
        r.attached = Some(conn);
        r.info.runtime_pid = pid;
        c.wake.notify_one();
        true
    }

    /// Binds an attached run to its connection just before `start` is written there.
    pub fn bind(&mut self, id: RunId, conn: ConnId) -> bool {
        match self.runs.get_mut(&id) {
            Some(r) if r.attached == Some(conn) && !r.info.is_terminated() => {
                r.bound = Some(conn);
                true
            }
            _ => false,
        }
    }

    /// The connection a run is attached to, if any.
    pub fn attached(&self, id: RunId) -> Option<ConnId> {
        self.runs.get(&id).and_then(|r| r.attached)
    }

    /// How many runs are attached to a connection (0 also for an unknown one).
    pub fn runs_on(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.runs.len())
    }

    /// Takes a run off its connection; wakes the connection's task if it is now idle.
    fn detach(&mut self, id: RunId) {
        let Some(conn) = self.runs.get(&id).and_then(|r| r.attached) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&conn)
            && c.runs.remove(&id)
            && c.runs.is_empty()
        {
            c.wake.notify_one();
        }
    }

    /// The connection ended: every run still on it terminates with genericError and `why`
    /// (or with its abort's ExitCode if the host was aborting it), and runs that reported
    /// `terminated` but never their `538` settle now. Returns the runs this terminated.
    pub fn close_conn(&mut self, conn: ConnId, why: &str) -> Vec<RunId> {
        let Some(c) = self.conns.remove(&conn) else {
            return Vec::new();
        };
        let mut ended = Vec::new();
        for id in c.runs {
            match self.aborting(id) {
                Some(cause) => self.finish_abort(id, cause.exit_code(), None),
                None => {
                    if self.terminate(id, Some(ExitCode::GenericError), Some(why)) {
                        ended.push(id);
                    }
                }
            }
            self.force_settle(id);
        }
        ended
    }

    // ---- smRunTable columns ----

    /// Sets smRunState, pausing or resuming the lifetime, unless the run has terminated.
    /// A report of `terminated` ends the run; its ExitCode is expected from a `538`.
    pub fn set_state(&mut self, id: RunId, state: RunState) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        if r.info.is_terminated() || r.info.state == state {
            return;
        }
        if state == RunState::Terminated {
            self.terminate(id, None, None);
            return;
        }
        let now = Instant::now();
        r.info.state = state;
        if state == RunState::Suspended {
            r.lifetime.stop(now);
        } else {
            r.lifetime.start(now);
        }
        let info = r.info.clone();
        self.publish(&info, EventKind::State { state });
        self.reschedule(id);
    }

    /// Stores an intermediate result (`532`/`533`, smRunResult + smRunResultTime).
    pub fn set_result(&mut self, id: RunId, mut result: Octets, notify: bool) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        if result.truncate(MAX_RESULT_OCTETS) {
            tracing::warn!(run = %id, "result longer than {MAX_RESULT_OCTETS} octets truncated");
        }
        r.info.result = result.clone();
        r.info.result_time = Some(SystemTime::now());
        let info = r.info.clone();
        self.publish(&info, EventKind::Result { result, notify });
    }

    /// Stores an error text (smRunError + smRunErrorTime), cut to 255 octets of UTF-8.
    pub fn set_error(&mut self, id: RunId, error: &[u8], notify: bool) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        let text = admin_string(error);
        r.info.error = text.clone();
        r.info.error_time = Some(SystemTime::now());
        let info = r.info.clone();
        self.publish(
            &info,
            EventKind::Error {
                error: text,
                notify,
            },
        );
    }

    /// A line from `conn` that should have carried a result for `id` could not be read
    /// (RFC 3179 6.2.x rule 2 ignores it): smRunError says so, with `why`, so that the run
    /// does not end looking as if the script had had nothing to say. Only a run started on
    /// that connection and still taking notifications (as in 6.2.8) is changed; returns
    /// whether it was.
    pub fn result_unreadable(&mut self, id: RunId, conn: ConnId, why: &str) -> bool {
        let Some(r) = self.runs.get(&id) else {
            return false;
        };
        if r.bound != Some(conn) || r.info.is_terminated() && r.exit_reported {
            return false;
        }
        self.set_error(id, why.as_bytes(), false);
        true
    }

    /// Ends a run: state terminated, end time, lifetime 0, expire time ticking. `exit`, if
    /// given, is the final ExitCode; `error`, if given, becomes smRunError. Returns false if
    /// the run had already terminated (nothing changes then).
    pub fn terminate(&mut self, id: RunId, exit: Option<ExitCode>, error: Option<&str>) -> bool {
        match self.runs.get(&id) {
            Some(r) if !r.info.is_terminated() => {}
            _ => return false,
        }
        if let Some(e) = error {
            self.set_error(id, e.as_bytes(), false);
        }
        let Some(r) = self.runs.get_mut(&id) else {
            return false;
        };
        let now = Instant::now();
        if let Some(x) = exit {
            r.info.exit_code = x;
            r.exit_reported = true;
        }
        r.info.state = RunState::Terminated;
        r.info.end_time = Some(SystemTime::now());
        r.ended_at = Some(now);
        r.lifetime.set(TimeInterval::ZERO, now);
        r.lifetime.stop(now);
        r.info.lifetime = TimeInterval::ZERO;
        r.expire.start(now);
        let info = r.info.clone();
        self.active -= 1;
        if let Some(l) = self
            .launches
            .get_mut(&(info.owner.clone(), info.name.clone()))
        {
            l.active -= 1;
        }
        self.finished_seq += 1;
        r.finished_key = Some(self.finished_seq);
        self.finished.insert(self.finished_seq, id);
        self.publish(
            &info,
            EventKind::State {
                state: RunState::Terminated,
            },
        );
        self.maybe_settle(id);
        self.reschedule(id);
        self.enforce_max_finished();
        true
    }

    /// A termination report from the runtime (`538`, `534`, `535`): ends the run, or sets
    /// the ExitCode of a run already reported terminated by a `531`/`231`. Only the first
    /// report counts.
    pub fn report_exit(&mut self, id: RunId, exit: ExitCode) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        if r.exit_reported {
            return;
        }
        if r.info.is_terminated() {
            r.info.exit_code = exit;
            r.exit_reported = true;
            self.maybe_settle(id);
        } else {
            self.terminate(id, Some(exit), None);
        }
    }

    /// Starts a host abort: state `aborting`; the outcome comes with [`Table::finish_abort`].
    pub fn begin_abort(&mut self, id: RunId, cause: AbortCause) -> Result<(), RunState> {
        let r = self.runs.get_mut(&id).ok_or(RunState::Terminated)?;
        match r.info.state {
            RunState::Aborting | RunState::Terminated => return Err(r.info.state),
            _ => {}
        }
        r.aborting = Some(cause);
        self.set_state(id, RunState::Aborting);
        self.reschedule(id);
        Ok(())
    }

    /// Ends a host abort with its ExitCode: after a `232` the code follows from the cause
    /// (RFC 3179 6.2.6 rule 4), after a `4yz` or a timeout it is genericError (rules 1, 3).
    /// This overrides whatever a `538` said in the meantime.
    pub fn finish_abort(&mut self, id: RunId, exit: ExitCode, error: Option<&str>) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        r.aborting = None;
        r.exit_reported = true;
        if r.info.is_terminated() {
            r.info.exit_code = exit;
            if let Some(e) = error {
                self.set_error(id, e.as_bytes(), false);
            }
            self.maybe_settle(id);
        } else {
            self.terminate(id, Some(exit), error);
        }
    }

    /// Publishes a terminated run as final even though its ExitCode report never came.
    pub fn force_settle(&mut self, id: RunId) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        if r.info.is_terminated() {
            r.aborting = None;
            r.exit_reported = true;
            self.maybe_settle(id);
        }
    }

    /// Publishes the termination once: the run ended, its ExitCode is known, and no host
    /// abort is waiting for its `232`. The run then leaves its connection.
    fn maybe_settle(&mut self, id: RunId) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        if r.settled || !r.info.is_terminated() || !r.exit_reported || r.aborting.is_some() {
            return;
        }
        r.settled = true;
        let info = Arc::new(snapshot(r, Instant::now()));
        r.done.send_replace(Some(info.clone()));
        self.publish(
            &info,
            EventKind::Terminated {
                exit_code: info.exit_code,
                result: info.result.clone(),
                error: info.error.clone(),
            },
        );
        self.detach(id);
        self.reschedule(id);
        let (owner, name) = (info.owner.clone(), info.name.clone());
        self.enforce_max_completed(&owner, &name);
        self.enforce_max_finished();
    }

    /// Sets smRunLifeTime. Refused once terminated (it is 0 then).
    pub fn set_lifetime(&mut self, id: RunId, v: TimeInterval) -> Result<(), RunState> {
        let r = self.runs.get_mut(&id).ok_or(RunState::Terminated)?;
        if r.info.is_terminated() {
            return Err(r.info.state);
        }
        r.info.lifetime = v;
        r.lifetime.set(v, Instant::now());
        self.reschedule(id);
        Ok(())
    }

    /// Sets smRunExpireTime.
    pub fn set_expire(&mut self, id: RunId, v: TimeInterval) -> bool {
        let Some(r) = self.runs.get_mut(&id) else {
            return false;
        };
        r.info.expire_time = v;
        r.expire.set(v, Instant::now());
        self.reschedule(id);
        true
    }

    // ---- row lifetime ----

    /// Removes a row and everything that refers to it (its connection attachment, its
    /// place in the clocks and in the finished index).
    fn forget(&mut self, id: RunId) -> Option<RunInfo> {
        self.detach(id);
        let r = self.runs.remove(&id)?;
        if let Some(k) = r.finished_key {
            self.finished.remove(&k);
        }
        if let Some(d) = r.due {
            self.schedule.remove(&(d, id));
        }
        if !r.info.is_terminated() {
            self.active -= 1;
        }
        let key = (r.info.owner.clone(), r.info.name.clone());
        if let Some(l) = self.launches.get_mut(&key) {
            l.by_index.remove(&r.info.index);
            if !r.info.is_terminated() {
                l.active -= 1;
            }
            if l.by_index.is_empty() && l.max_completed.is_none() {
                self.launches.remove(&key);
            }
        }
        self.publish(&r.info, EventKind::Removed);
        Some(r.info)
    }

    /// Keeps at most `max_finished` terminated rows by removing the oldest settled ones
    /// (a run still waiting for its `538` stays until it settles).
    fn enforce_max_finished(&mut self) {
        let Some(excess) = self.finished.len().checked_sub(self.max_finished) else {
            return;
        };
        if excess == 0 {
            return;
        }
        let evict: Vec<RunId> = self
            .finished
            .values()
            .filter(|id| self.runs.get(id).is_some_and(|r| r.settled))
            .take(excess)
            .copied()
            .collect();
        for id in evict {
            tracing::info!(run = %id, "finished run removed early: more than {} kept", self.max_finished);
            self.forget(id);
        }
    }

    // ---- clocks ----

    /// The run's next deadline: its lifetime while active, the settle grace once terminated,
    /// its expire time once settled; none while a host abort runs.
    fn deadline(r: &Run) -> Option<Instant> {
        if !r.info.is_terminated() {
            match r.aborting {
                Some(_) => None,
                None => r.lifetime.deadline(),
            }
        } else if !r.settled {
            // A host abort settles with its 232 or its own timeout, never by this grace.
            match r.aborting {
                Some(_) => None,
                None => Some(r.ended_at.unwrap_or_else(Instant::now) + SETTLE_GRACE),
            }
        } else {
            r.expire.deadline()
        }
    }

    /// Brings the run's entry in the schedule up to date.
    fn reschedule(&mut self, id: RunId) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        let next = Self::deadline(r);
        if next == r.due {
            return;
        }
        if let Some(old) = r.due.take() {
            self.schedule.remove(&(old, id));
        }
        if let Some(d) = next {
            let earliest = self.schedule.first().is_none_or(|(first, _)| d < *first);
            self.schedule.insert((d, id));
            r.due = Some(d);
            if earliest {
                self.clock.notify_one();
            }
        }
    }

    /// The earliest deadline of any run.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.schedule.first().map(|(d, _)| *d)
    }

    /// Acts on every deadline that has passed by `now`: settles runs whose `538` did not
    /// come within the grace, removes rows whose smRunExpireTime reached 0, and returns the
    /// runs whose smRunLifeTime reached 0 (the caller aborts them).
    pub fn tick(&mut self, now: Instant) -> Vec<RunId> {
        let mut expired = Vec::new();
        while let Some(&(d, id)) = self.schedule.first() {
            if d > now {
                break;
            }
            self.schedule.pop_first();
            let Some(r) = self.runs.get_mut(&id) else {
                continue;
            };
            r.due = None;
            if !r.info.is_terminated() {
                // Left unscheduled: the abort about to begin decides what comes next.
                expired.push(id);
            } else if !r.settled {
                self.force_settle(id);
            } else if self.forget(id).is_some() {
                tracing::debug!(run = %id, "smRunExpireTime reached 0: row removed");
            }
        }
        expired
    }
}

fn snapshot(r: &Run, now: Instant) -> RunInfo {
    let mut i = r.info.clone();
    i.lifetime = r.lifetime.remaining(now);
    i.expire_time = r.expire.remaining(now);
    i
}

/// Makes an smRunError value: UTF-8 (invalid sequences replaced), at most 255 octets,
/// cut at a character boundary.
pub fn admin_string(bytes: &[u8]) -> String {
    super::launch::admin_prefix(&String::from_utf8_lossy(bytes), MAX_ERROR_OCTETS).to_owned()
}

mod time_serde {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_time_serde {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::time_serde::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let s = <Option<String> as serde::Deserialize>::deserialize(d)?;
        s.map(|s| humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> (Table, super::super::events::Subscriber) {
        let bus = EventBus::new();
        let rx = bus.subscribe();
        (Table::new(bus, 3), rx)
    }

    pub(crate) fn new_run(id: u64, lifetime: TimeInterval) -> NewRun {
        NewRun {
            run_id: RunId(id),
            owner: "o".into(),
            name: "n".into(),
            script: "s".into(),
            runtime: "exec".into(),
            profile: "trusted".into(),
            os_profile: None,
            argument: Octets::default(),
            lifetime,
            expire_time: TimeInterval::ONE_HOUR,
            index: None,
            max_running: None,
        }
    }

    #[test]
    fn terminated_is_final_and_zeroes_lifetime() {
        let (mut t, _rx) = table();
        t.insert(new_run(1, TimeInterval::ONE_HOUR)).unwrap();
        t.set_state(RunId(1), RunState::Executing);
        assert!(t.terminate(RunId(1), Some(ExitCode::RuntimeError), Some("boom")));
        t.set_state(RunId(1), RunState::Executing);
        let s = t.snapshot(RunId(1)).unwrap();
        assert_eq!(s.state, RunState::Terminated);
        assert_eq!(s.exit_code, ExitCode::RuntimeError);
        assert_eq!(s.lifetime, TimeInterval::ZERO);
        assert_eq!(s.error, "boom");
        assert!(s.end_time.is_some());
        assert!(!t.terminate(RunId(1), Some(ExitCode::NoError), None));
        assert_eq!(t.active(), 0);
    }

    #[test]
    fn exit_after_terminated_state_report_and_232_override() {
        let (mut t, _rx) = table();
        t.insert(new_run(1, TimeInterval::ONE_HOUR)).unwrap();
        let done = t.insert(new_run(2, TimeInterval::ONE_HOUR)).unwrap();
        // 6.2.8 rule 2 then rule 9: a 531 says terminated, the 538 brings the ExitCode.
        t.set_state(RunId(1), RunState::Terminated);
        assert!(!t.is_settled(RunId(1)));
        let grace = t.next_deadline().unwrap();
        assert!(grace > Instant::now() + SETTLE_GRACE - Duration::from_secs(1));
        t.report_exit(RunId(1), ExitCode::RuntimeError);
        assert!(t.is_settled(RunId(1)));
        assert_eq!(
            t.snapshot(RunId(1)).unwrap().exit_code,
            ExitCode::RuntimeError
        );
        t.report_exit(RunId(1), ExitCode::NoError);
        assert_eq!(
            t.snapshot(RunId(1)).unwrap().exit_code,
            ExitCode::RuntimeError
        );
        // 6.2.6 rule 4: the 232 to a lifetime abort decides, even after a 538 said halted.
        t.begin_abort(RunId(2), AbortCause::LifeTime).unwrap();
        t.report_exit(RunId(2), ExitCode::Halted);
        assert!(done.borrow().is_none(), "not published before the 232");
        t.finish_abort(RunId(2), ExitCode::LifeTimeExceeded, None);
        assert_eq!(
            done.borrow().as_ref().unwrap().exit_code,
            ExitCode::LifeTimeExceeded
        );
    }

    #[test]
    fn lifetime_pauses_while_suspended() {
        let (mut t, _rx) = table();
        t.insert(new_run(1, TimeInterval::from_secs(10))).unwrap();
        assert!(t.next_deadline().is_some());
        t.set_state(RunId(1), RunState::Suspended);
        let a = t.snapshot(RunId(1)).unwrap().lifetime;
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(t.snapshot(RunId(1)).unwrap().lifetime, a);
        assert_eq!(
            t.next_deadline(),
            None,
            "no lifetime deadline while suspended"
        );
        t.set_state(RunId(1), RunState::Executing);
        std::thread::sleep(Duration::from_millis(30));
        assert!(t.snapshot(RunId(1)).unwrap().lifetime < a);
        assert!(t.next_deadline().is_some());
    }

    #[test]
    fn infinite_lifetime_never_ticks() {
        let (mut t, _rx) = table();
        t.insert(new_run(1, TimeInterval::MAX)).unwrap();
        assert_eq!(t.next_deadline(), None);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(t.snapshot(RunId(1)).unwrap().lifetime, TimeInterval::MAX);
    }

    #[test]
    fn the_clock_aborts_at_lifetime_zero_settles_and_expires() {
        let (mut t, _rx) = table();
        t.insert(new_run(1, TimeInterval::ZERO)).unwrap();
        let mut r2 = new_run(2, TimeInterval::MAX);
        r2.expire_time = TimeInterval::ZERO;
        t.insert(r2).unwrap();
        // smRunLifeTime 0: due now; the host aborts it.
        assert_eq!(t.tick(Instant::now()), vec![RunId(1)]);
        t.begin_abort(RunId(1), AbortCause::LifeTime).unwrap();
        assert!(t.tick(Instant::now()).is_empty());
        // smRunExpireTime 0: the row goes as soon as the termination is settled.
        t.terminate(RunId(2), Some(ExitCode::NoError), None);
        assert!(t.tick(Instant::now()).is_empty());
        assert!(!t.contains(RunId(2)));
        // A 531 without its 538: settled when the grace has passed.
        t.set_state(RunId(1), RunState::Terminated);
        t.tick(Instant::now() + SETTLE_GRACE + Duration::from_millis(1));
        assert!(
            !t.is_settled(RunId(1)),
            "a host abort still waits for its 232"
        );
        t.finish_abort(RunId(1), ExitCode::LifeTimeExceeded, None);
        assert!(t.is_settled(RunId(1)));
    }

    #[test]
    fn run_index_counts_per_owner_and_name() {
        let (mut t, _rx) = table();
        t.insert(new_run(1, TimeInterval::MAX)).unwrap();
        t.insert(new_run(2, TimeInterval::MAX)).unwrap();
        let mut other = new_run(3, TimeInterval::MAX);
        other.name = "m".into();
        t.insert(other).unwrap();
        assert_eq!(t.snapshot(RunId(2)).unwrap().index, 2);
        assert_eq!(t.snapshot(RunId(3)).unwrap().index, 1);
        assert!(t.insert(new_run(3, TimeInterval::MAX)).is_err());
    }

    #[test]
    fn oldest_finished_runs_go_beyond_the_cap() {
        let (mut t, _rx) = table();
        for i in 1..=5 {
            t.insert(new_run(i, TimeInterval::MAX)).unwrap();
            t.terminate(RunId(i), Some(ExitCode::NoError), None);
        }
        assert_eq!(t.len(), 3);
        assert!(!t.contains(RunId(1)) && t.contains(RunId(3)));
    }

    #[test]
    fn a_run_leaves_its_connection_when_settled_and_when_evicted() {
        let mut t = Table::new(EventBus::new(), 0);
        let wake = Arc::new(Notify::new());
        let c = ConnId(7);
        t.open_conn(c, wake.clone());
        for i in 1..=2 {
            t.insert(new_run(i, TimeInterval::MAX)).unwrap();
            assert!(t.attach(RunId(i), c, Some(42)));
            assert!(t.bind(RunId(i), c));
        }
        assert_eq!(t.runs_on(c), 2);
        // A 531 terminated: still attached, it waits for its 538.
        t.set_state(RunId(1), RunState::Terminated);
        assert_eq!(t.runs_on(c), 2);
        assert!(t.contains(RunId(1)), "an unsettled run is not evicted");
        // max_finished 0: a settled run is evicted, and its connection no longer counts it.
        let done = t.done(RunId(2)).unwrap();
        t.terminate(RunId(2), Some(ExitCode::NoError), None);
        assert!(!t.contains(RunId(2)));
        assert!(done.borrow().is_some(), "waiters got the final row first");
        assert_eq!(t.runs_on(c), 1);
        t.report_exit(RunId(1), ExitCode::NoError);
        assert_eq!(t.runs_on(c), 0);
        assert!(!t.contains(RunId(1)));
    }

    #[test]
    fn a_closed_connection_ends_its_runs() {
        let (mut t, _rx) = table();
        let c = ConnId(1);
        t.open_conn(c, Arc::new(Notify::new()));
        for i in 1..=3 {
            t.insert(new_run(i, TimeInterval::MAX)).unwrap();
            t.attach(RunId(i), c, None);
            t.bind(RunId(i), c);
        }
        t.begin_abort(RunId(2), AbortCause::Manager).unwrap();
        t.set_state(RunId(3), RunState::Terminated);
        let ended = t.close_conn(c, "runtime x exited");
        assert_eq!(ended, vec![RunId(1)]);
        let r1 = t.snapshot(RunId(1)).unwrap();
        assert_eq!(
            (r1.exit_code, r1.error.as_str()),
            (ExitCode::GenericError, "runtime x exited")
        );
        assert_eq!(t.snapshot(RunId(2)).unwrap().exit_code, ExitCode::Halted);
        assert!((1..=3).all(|i| t.is_settled(RunId(i))));
        assert!(
            !t.attach(RunId(1), c, None),
            "a closed connection takes no runs"
        );
    }

    #[test]
    fn error_text_is_capped_utf8() {
        let long = "é".repeat(200);
        let s = admin_string(long.as_bytes());
        assert!(s.len() <= 255 && s.chars().all(|c| c == 'é'));
        assert_eq!(admin_string(b"a\xffb"), "a\u{fffd}b");
    }
}
