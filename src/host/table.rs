//! The run table: one row per run, as the Script MIB's smRunTable means it (RFC 3165).
//!
//! All changes go through [`Table`] methods, which enforce the invariants that the rest of the
//! host relies on: a terminated run never changes state again, its lifetime is 0, its expire
//! time starts ticking, and every change is published as an [`Event`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::events::EventBus;
use crate::proto::{ExitCode, MAX_ERROR_OCTETS, MAX_RESULT_OCTETS, Octets, RunId, RunState};

/// A TimeInterval of the Script MIB: hundredths of a second, 0..=2147483647.
/// For smRunLifeTime the maximum means "never ticks" (no lifetime limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimeInterval(u32);

impl TimeInterval {
    pub const MAX: TimeInterval = TimeInterval(2_147_483_647);
    pub const ZERO: TimeInterval = TimeInterval(0);
    /// smLaunchLifeTime's and smLaunchExpireTime's DEFVAL: one hour.
    pub const ONE_HOUR: TimeInterval = TimeInterval(360_000);

    /// `None` if out of the TimeInterval range.
    pub fn from_centis(cs: u64) -> Option<Self> {
        (cs <= u64::from(Self::MAX.0)).then_some(TimeInterval(cs as u32))
    }

    /// Whole seconds, saturating at the maximum (which then means "no limit").
    pub fn from_secs(s: u64) -> Self {
        TimeInterval(s.saturating_mul(100).min(u64::from(Self::MAX.0)) as u32)
    }

    pub fn centis(self) -> u32 {
        self.0
    }

    pub fn is_infinite(self) -> bool {
        self == Self::MAX
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0) * 10)
    }

    fn from_duration(d: Duration) -> Self {
        let cs = d.as_millis().div_ceil(10);
        TimeInterval(cs.min(u128::from(Self::MAX.0 - 1)) as u32)
    }
}

/// A countdown that may be paused, like smRunLifeTime (paused while suspended) and
/// smRunExpireTime (running only once the run has terminated).
#[derive(Debug, Clone)]
struct Countdown {
    value: TimeInterval,
    /// `Some` while ticking: the instant `value` was last taken.
    since: Option<Instant>,
}

impl Countdown {
    fn new(value: TimeInterval) -> Self {
        Countdown { value, since: None }
    }

    fn remaining(&self, now: Instant) -> TimeInterval {
        match self.since {
            Some(t) if !self.value.is_infinite() => {
                let left = self.value.as_duration().saturating_sub(now - t);
                TimeInterval::from_duration(left)
            }
            _ => self.value,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.since {
            Some(t) if !self.value.is_infinite() => Some(t + self.value.as_duration()),
            _ => None,
        }
    }

    fn start(&mut self, now: Instant) {
        if self.since.is_none() {
            self.since = Some(now);
        }
    }

    fn stop(&mut self, now: Instant) {
        self.value = self.remaining(now);
        self.since = None;
    }

    fn set(&mut self, value: TimeInterval, now: Instant) {
        self.value = value;
        if self.since.is_some() {
            self.since = Some(now);
        }
    }
}

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
    /// Clean-up after the host already ended the run (a timeout): no ExitCode change.
    Cleanup,
}

/// Receives the final row once a run has terminated.
pub(crate) type Done = watch::Receiver<Option<Arc<RunInfo>>>;

/// What a run's keeper task waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeeperAction {
    /// smRunLifeTime reaches 0 then: abort with lifeTimeExceeded.
    LifeTime(Instant),
    /// The `538` did not come by then: publish the termination as it is.
    Settle(Instant),
    /// smRunExpireTime reaches 0 then: remove the row.
    Expire(Instant),
    /// Nothing scheduled until something changes.
    Wait,
    /// The row is gone.
    Gone,
}

pub(crate) struct Run {
    pub info: RunInfo,
    lifetime: Countdown,
    expire: Countdown,
    /// The runtime connection the run lives on.
    pub conn: Option<u64>,
    /// When the run terminated (for the settle grace).
    ended_at: Option<Instant>,
    /// The termination has been published (event + `done`).
    settled: bool,
    /// Its key in `Table::finished`, once terminated.
    finished_key: Option<u64>,
    /// A `538`/`534`/`535` or `232` has fixed the ExitCode.
    pub exit_reported: bool,
    /// A host abort in progress.
    pub aborting: Option<AbortCause>,
    /// The runtime answered `suspend` with 401/402/431 (no suspend capability, 6.2.4 rule 3).
    pub suspend_unsupported: bool,
    /// Wakes the run's keeper task when a deadline may have changed.
    pub keeper: Arc<Notify>,
    /// Set once, with the final row, when the run terminates.
    pub done: watch::Sender<Option<Arc<RunInfo>>>,
}

/// The run table.
pub(crate) struct Table {
    runs: HashMap<RunId, Run>,
    /// smRunIndex counters per (owner, name).
    indexes: HashMap<(String, String), u32>,
    /// Terminated runs by end order, to enforce `max_finished`.
    finished: BTreeMap<u64, RunId>,
    finished_seq: u64,
    pub active: usize,
    events: EventBus,
    max_finished: usize,
}

impl KeeperAction {
    #[cfg(test)]
    fn is_settle(self) -> bool {
        matches!(self, KeeperAction::Settle(_))
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
}

impl Table {
    pub fn new(events: EventBus, max_finished: usize) -> Self {
        Table {
            runs: HashMap::new(),
            indexes: HashMap::new(),
            finished: BTreeMap::new(),
            finished_seq: 0,
            active: 0,
            events,
            max_finished,
        }
    }

    pub fn set_max_finished(&mut self, n: usize) {
        self.max_finished = n;
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

    /// Creates a row in state `initializing` (smLaunchStart, RFC 3179 6.2.1).
    pub fn insert(&mut self, n: NewRun) -> Option<(Arc<Notify>, Done)> {
        let counter = self
            .indexes
            .entry((n.owner.clone(), n.name.clone()))
            .or_insert(0);
        // smRunIndex is Integer32 (1..2147483647). Before the counter wraps every index is
        // fresh; after it, skip indexes of rows that still exist.
        let mut index = *counter;
        let runs = &self.runs;
        let taken = |i: u32| {
            runs.values()
                .any(|r| r.info.index == i && r.info.owner == n.owner && r.info.name == n.name)
        };
        loop {
            let wrapped = index >= 2_147_483_647;
            index = if wrapped { 1 } else { index + 1 };
            if index > *counter && !wrapped || !taken(index) {
                break;
            }
        }
        *counter = index;
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
        let keeper = Arc::new(Notify::new());
        let (done, done_rx) = watch::channel(None);
        self.publish(
            &info,
            EventKind::Launched {
                script: info.script.clone(),
                runtime: info.runtime.clone(),
            },
        );
        let run = Run {
            info,
            lifetime,
            expire: Countdown::new(n.expire_time),
            conn: None,
            ended_at: None,
            settled: false,
            finished_key: None,
            exit_reported: false,
            aborting: None,
            suspend_unsupported: false,
            keeper: keeper.clone(),
            done,
        };
        if self.runs.insert(n.run_id, run).is_some() {
            return None;
        }
        self.active += 1;
        Some((keeper, done_rx))
    }

    pub fn get(&self, id: RunId) -> Option<&Run> {
        self.runs.get(&id)
    }

    pub fn get_mut(&mut self, id: RunId) -> Option<&mut Run> {
        self.runs.get_mut(&id)
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

    pub fn len(&self) -> usize {
        self.runs.len()
    }

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
        r.keeper.notify_one();
        let info = r.info.clone();
        self.publish(&info, EventKind::State { state });
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
        r.keeper.notify_one();
        let info = r.info.clone();
        self.active -= 1;
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
    /// abort is waiting for its `232`.
    fn maybe_settle(&mut self, id: RunId) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        if r.settled || !r.info.is_terminated() || !r.exit_reported || r.aborting.is_some() {
            return;
        }
        r.settled = true;
        r.keeper.notify_one();
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
    }

    /// Whether the run's termination is final and published (see `maybe_settle`).
    pub fn is_settled(&self, id: RunId) -> bool {
        self.runs.get(&id).is_some_and(|r| r.settled)
    }

    /// Settles every terminated run of connection `conn` whose ExitCode report never came.
    pub fn settle_all_on(&mut self, conn: u64) {
        let waiting: Vec<RunId> = self
            .runs
            .values()
            .filter(|r| r.conn == Some(conn) && r.info.is_terminated() && !r.settled)
            .map(|r| r.info.run_id)
            .collect();
        for id in waiting {
            self.force_settle(id);
        }
    }

    /// What the keeper task of a run waits for next.
    pub fn keeper_action(&self, id: RunId, settle_grace: Duration) -> KeeperAction {
        let Some(r) = self.runs.get(&id) else {
            return KeeperAction::Gone;
        };
        if !r.info.is_terminated() {
            match r.aborting {
                Some(_) => KeeperAction::Wait,
                None => r
                    .lifetime
                    .deadline()
                    .map_or(KeeperAction::Wait, KeeperAction::LifeTime),
            }
        } else if !r.settled {
            let ended = r.ended_at.unwrap_or_else(Instant::now);
            KeeperAction::Settle(ended + settle_grace)
        } else {
            r.expire
                .deadline()
                .map_or(KeeperAction::Wait, KeeperAction::Expire)
        }
    }

    /// Sets smRunLifeTime. Refused once terminated (it is 0 then).
    pub fn set_lifetime(&mut self, id: RunId, v: TimeInterval) -> Result<(), RunState> {
        let r = self.runs.get_mut(&id).ok_or(RunState::Terminated)?;
        if r.info.is_terminated() {
            return Err(r.info.state);
        }
        r.info.lifetime = v;
        r.lifetime.set(v, Instant::now());
        r.keeper.notify_one();
        Ok(())
    }

    /// Sets smRunExpireTime.
    pub fn set_expire(&mut self, id: RunId, v: TimeInterval) -> bool {
        let Some(r) = self.runs.get_mut(&id) else {
            return false;
        };
        r.info.expire_time = v;
        r.expire.set(v, Instant::now());
        r.keeper.notify_one();
        true
    }

    /// Removes a terminated row (its expire time ran out).
    pub fn remove(&mut self, id: RunId) -> Option<RunInfo> {
        let r = self.runs.get(&id)?;
        if !r.info.is_terminated() {
            return None;
        }
        let r = self.runs.remove(&id)?;
        if let Some(k) = r.finished_key {
            self.finished.remove(&k);
        }
        self.publish(&r.info, EventKind::Removed);
        Some(r.info)
    }

    fn enforce_max_finished(&mut self) {
        while self.finished.len() > self.max_finished {
            let Some((_, id)) = self.finished.pop_first() else {
                break;
            };
            if let Some(r) = self.runs.remove(&id) {
                tracing::info!(run = %id, "finished run removed early: more than {} kept", self.max_finished);
                self.publish(&r.info, EventKind::Removed);
            }
        }
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
    let s = String::from_utf8_lossy(bytes);
    if s.len() <= MAX_ERROR_OCTETS {
        return s.into_owned();
    }
    let mut end = MAX_ERROR_OCTETS;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
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

    fn new_run(id: u64, lifetime: TimeInterval) -> NewRun {
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
        assert_eq!(t.active, 0);
    }

    #[test]
    fn exit_after_terminated_state_report_and_232_override() {
        let (mut t, _rx) = table();
        t.insert(new_run(1, TimeInterval::ONE_HOUR)).unwrap();
        let (_, done) = t.insert(new_run(2, TimeInterval::ONE_HOUR)).unwrap();
        // 6.2.8 rule 2 then rule 9: a 531 says terminated, the 538 brings the ExitCode.
        t.set_state(RunId(1), RunState::Terminated);
        assert!(
            t.keeper_action(RunId(1), Duration::from_secs(5))
                .is_settle()
        );
        t.report_exit(RunId(1), ExitCode::RuntimeError);
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
        t.set_state(RunId(1), RunState::Suspended);
        let a = t.snapshot(RunId(1)).unwrap().lifetime;
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(t.snapshot(RunId(1)).unwrap().lifetime, a);
        assert_eq!(
            t.keeper_action(RunId(1), Duration::ZERO),
            KeeperAction::Wait
        );
        t.set_state(RunId(1), RunState::Executing);
        std::thread::sleep(Duration::from_millis(30));
        assert!(t.snapshot(RunId(1)).unwrap().lifetime < a);
    }

    #[test]
    fn infinite_lifetime_never_ticks() {
        let (mut t, _rx) = table();
        t.insert(new_run(1, TimeInterval::MAX)).unwrap();
        assert_eq!(
            t.keeper_action(RunId(1), Duration::ZERO),
            KeeperAction::Wait
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(t.snapshot(RunId(1)).unwrap().lifetime, TimeInterval::MAX);
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
    }

    #[test]
    fn oldest_finished_runs_go_beyond_the_cap() {
        let (mut t, _rx) = table();
        for i in 1..=5 {
            t.insert(new_run(i, TimeInterval::MAX)).unwrap();
            t.terminate(RunId(i), Some(ExitCode::NoError), None);
        }
        assert_eq!(t.len(), 3);
        assert!(t.get(RunId(1)).is_none() && t.get(RunId(3)).is_some());
    }

    #[test]
    fn error_text_is_capped_utf8() {
        let long = "é".repeat(200);
        let s = admin_string(long.as_bytes());
        assert!(s.len() <= 255 && s.chars().all(|c| c == 'é'));
        assert_eq!(admin_string(b"a\xffb"), "a\u{fffd}b");
    }
}
