//! The run table's clocks (RFC 3165 smRunLifeTime, smRunExpireTime): the TimeInterval type,
//! countdowns that pause, and the one task per host that acts when a deadline passes.
//!
//! Deadlines live in the table (it recomputes a run's next one whenever the run changes);
//! this task only sleeps until the earliest and asks the table what is due. One task serves
//! every run, so 10,000 live runs cost one timer, not 10,000 tasks.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::table::AbortCause;

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
pub(crate) struct Countdown {
    value: TimeInterval,
    /// `Some` while ticking: the instant `value` was last taken.
    since: Option<Instant>,
}

impl Countdown {
    pub(crate) fn new(value: TimeInterval) -> Self {
        Countdown { value, since: None }
    }

    pub(crate) fn remaining(&self, now: Instant) -> TimeInterval {
        match self.since {
            Some(t) if !self.value.is_infinite() => {
                let left = self.value.as_duration().saturating_sub(now - t);
                TimeInterval::from_duration(left)
            }
            _ => self.value,
        }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.since {
            Some(t) if !self.value.is_infinite() => Some(t + self.value.as_duration()),
            _ => None,
        }
    }

    pub(crate) fn start(&mut self, now: Instant) {
        if self.since.is_none() {
            self.since = Some(now);
        }
    }

    pub(crate) fn stop(&mut self, now: Instant) {
        self.value = self.remaining(now);
        self.since = None;
    }

    pub(crate) fn set(&mut self, value: TimeInterval, now: Instant) {
        self.value = value;
        if self.since.is_some() {
            self.since = Some(now);
        }
    }
}

/// Runs the host's clocks until `stop`: aborts runs whose smRunLifeTime reached 0 (with
/// lifeTimeExceeded), publishes terminations whose `538` never came, and removes rows whose
/// smRunExpireTime reached 0. `wake` is notified by the table when an earlier deadline appears.
pub(super) async fn run(inner: Weak<Inner>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let next = {
            let Some(i) = inner.upgrade() else { return };
            let (expired, next) = {
                let mut t = i.table.lock().expect("table lock");
                let expired = t.tick(Instant::now());
                (expired, t.next_deadline())
            };
            for run in expired {
                tracing::info!(run = %run, "smRunLifeTime reached 0: aborting");
                i.spawn(super::abort::abort(i.clone(), run, AbortCause::LifeTime));
            }
            next
        };
        let sleep = async {
            match next {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = wake.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}
