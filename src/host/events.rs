//! The host's event bus: every run event goes to every subscriber, in a bounded ring.
//!
//! `tokio::sync::broadcast` keeps the last N events whether or not anyone still needs them,
//! and an event can carry a 65,535-octet result, so a ring sized for bursts of small
//! events pinned hundreds of megabytes during a result flood. This bus instead:
//!
//! - drops an event as soon as every live subscriber has read it (each retained event
//!   counts the subscribers that still have to read it);
//! - retains at most [`DEFAULT_MAX_EVENTS`] events and [`DEFAULT_MAX_BYTES`] of estimated
//!   event size; past either, the oldest events are dropped and a subscriber that had not
//!   read them is told how many it lost ([`RecvError::Lagged`]), like `broadcast` does;
//! - stores each event once, as an `Arc<Event>`, however many subscribers read it.
//!
//! Publishing is one short mutex section and one allocation (the `Arc`), independent of the
//! number of subscribers; waking them is a single [`Notify::notify_waiters`]. The count cap
//! is generous because a subscriber that reads as fast as it can must not lag when tens of
//! thousands of events are published in one burst.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::table::{Event, EventKind};

/// Most events retained for subscribers that have not read them yet.
pub const DEFAULT_MAX_EVENTS: usize = 65_536;
/// Most estimated bytes of events retained for subscribers that have not read them yet.
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;
/// What an event costs beyond its variable-length fields: the `Event` itself, its `Arc`
/// header, its ring slot and allocator slack. An estimate: the budget is about orders of
/// magnitude (a 64 KiB result against a state change), not exact accounting.
const EVENT_OVERHEAD: usize = 128;

/// Why [`Subscriber::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// This many events were dropped before this subscriber read them; the next `recv`
    /// continues with the oldest event still retained.
    #[error("{0} events were dropped before this subscriber read them")]
    Lagged(u64),
    /// The bus is gone (the host was dropped) and every retained event has been read.
    #[error("the event bus is closed")]
    Closed,
}

/// Why [`Subscriber::try_recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// No event is waiting for this subscriber right now.
    #[error("no event is waiting")]
    Empty,
    #[error("{0} events were dropped before this subscriber read them")]
    Lagged(u64),
    #[error("the event bus is closed")]
    Closed,
}

/// The publishing side. Cloning it is cheap; the bus closes when the last clone is dropped.
pub struct EventBus {
    shared: Arc<Shared>,
}

/// One subscriber's cursor. Dropping it releases every event only it still had to read.
pub struct Subscriber {
    shared: Arc<Shared>,
    /// Sequence number of the next event this subscriber reads.
    next: u64,
}

struct Shared {
    ring: Mutex<Ring>,
    /// Woken on every publish and on close.
    notify: Notify,
    /// Live [`EventBus`] handles.
    publishers: AtomicUsize,
}

struct Ring {
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    head: u64,
    /// Sum of the retained slots' `size`.
    bytes: usize,
    /// Live subscribers.
    subscribers: usize,
    max_events: usize,
    max_bytes: usize,
    closed: bool,
}

struct Slot {
    event: Arc<Event>,
    size: usize,
    /// Live subscribers that have not read this event yet.
    unread: usize,
}

impl Ring {
    /// Sequence number of the next event published.
    fn tail(&self) -> u64 {
        self.head + self.slots.len() as u64
    }

    fn pop_front(&mut self) {
        if let Some(s) = self.slots.pop_front() {
            self.head += 1;
            self.bytes -= s.size;
        }
    }

    /// Drops the events every live subscriber has read. Subscribers read in order and a
    /// new one only counts for later events, so those form a prefix of the ring.
    fn release_read(&mut self) {
        while self.slots.front().is_some_and(|s| s.unread == 0) {
            self.pop_front();
        }
        // After a burst the ring's buffer would stay at its largest size for good.
        if self.slots.is_empty() && self.slots.capacity() > 1024 {
            self.slots.shrink_to(1024);
        }
    }
}

/// The estimated memory an event pins while retained: its variable-length fields plus
/// [`EVENT_OVERHEAD`].
pub fn estimated_size(e: &Event) -> usize {
    let payload = match &e.kind {
        EventKind::Launched { script, runtime } => script.len() + runtime.len(),
        EventKind::State { .. } | EventKind::Removed => 0,
        EventKind::Result { result, .. } => result.len(),
        EventKind::Error { error, .. } => error.len(),
        EventKind::Terminated { result, error, .. } => result.len() + error.len(),
    };
    EVENT_OVERHEAD + e.owner.len() + e.name.len() + payload
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    /// A bus with the default limits ([`DEFAULT_MAX_EVENTS`], [`DEFAULT_MAX_BYTES`]).
    pub fn new() -> EventBus {
        EventBus::with_limits(DEFAULT_MAX_EVENTS, DEFAULT_MAX_BYTES)
    }

    /// A bus retaining at most `max_events` events and `max_bytes` estimated bytes (but
    /// always the newest event, however large).
    pub fn with_limits(max_events: usize, max_bytes: usize) -> EventBus {
        EventBus {
            shared: Arc::new(Shared {
                ring: Mutex::new(Ring {
                    slots: VecDeque::new(),
                    head: 0,
                    bytes: 0,
                    subscribers: 0,
                    max_events: max_events.max(1),
                    max_bytes,
                    closed: false,
                }),
                notify: Notify::new(),
                publishers: AtomicUsize::new(1),
            }),
        }
    }

    /// Offers `event` to every current subscriber. Never blocks on them: a subscriber too
    /// slow to keep up with the limits loses the oldest events instead.
    pub fn publish(&self, event: Event) {
        {
            let mut r = self.shared.lock();
            if r.subscribers == 0 {
                // Nobody would ever read it.
                return;
            }
            let size = estimated_size(&event);
            let unread = r.subscribers;
            r.slots.push_back(Slot {
                event: Arc::new(event),
                size,
                unread,
            });
            r.bytes += size;
            while r.slots.len() > 1 && (r.slots.len() > r.max_events || r.bytes > r.max_bytes) {
                r.pop_front();
            }
        }
        self.shared.notify.notify_waiters();
    }

    /// A subscriber that receives every event published from now on.
    pub fn subscribe(&self) -> Subscriber {
        let mut r = self.shared.lock();
        r.subscribers += 1;
        Subscriber {
            shared: self.shared.clone(),
            next: r.tail(),
        }
    }

    /// Events and estimated bytes retained right now (for tests and stats).
    pub fn retained(&self) -> (usize, usize) {
        let r = self.shared.lock();
        (r.slots.len(), r.bytes)
    }
}

impl Clone for EventBus {
    fn clone(&self) -> Self {
        self.shared.publishers.fetch_add(1, Ordering::Relaxed);
        EventBus {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EventBus {
    fn drop(&mut self) {
        if self.shared.publishers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.lock().closed = true;
            self.shared.notify.notify_waiters();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Every critical section leaves the ring consistent before anything can panic.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Subscriber {
    /// The next event, waiting for one if needed. Cancel-safe: dropping the future loses
    /// no event.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        self.recv_shared().await.map(Arc::unwrap_or_clone)
    }

    /// Like [`Subscriber::recv`], without copying the event out of the bus (a result can
    /// be 64 KiB and there may be many subscribers).
    pub async fn recv_shared(&mut self) -> Result<Arc<Event>, RecvError> {
        loop {
            // Register for the wake-up before looking, so a publish in between is not lost.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.shared.take(&mut self.next) {
                Ok(e) => return Ok(e),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                Err(TryRecvError::Empty) => notified.await,
            }
        }
    }

    /// Waits for at least one event, then appends to `out` every event waiting, up to
    /// `max`, under one lock: a reader that forwards events (the daemon's subscription)
    /// pays the lock and the wake-up once per batch, not once per event, which is what
    /// lets it keep up with a burst. A lag is reported before the events after it.
    pub async fn recv_batch(
        &mut self,
        max: usize,
        out: &mut Vec<Arc<Event>>,
    ) -> Result<(), RecvError> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.shared.take_many(&mut self.next, max.max(1), out) {
                Ok(()) => return Ok(()),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                Err(TryRecvError::Empty) => notified.await,
            }
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<Event, TryRecvError> {
        self.shared.take(&mut self.next).map(Arc::unwrap_or_clone)
    }
}

impl Shared {
    /// The event at cursor `next` (advancing it), or why there is none.
    fn take(&self, next: &mut u64) -> Result<Arc<Event>, TryRecvError> {
        let mut r = self.lock();
        if *next < r.head {
            let lost = r.head - *next;
            *next = r.head;
            return Err(TryRecvError::Lagged(lost));
        }
        let i = (*next - r.head) as usize;
        let Some(slot) = r.slots.get_mut(i) else {
            return Err(if r.closed {
                TryRecvError::Closed
            } else {
                TryRecvError::Empty
            });
        };
        slot.unread -= 1;
        let e = slot.event.clone();
        let first = i == 0 && slot.unread == 0;
        *next += 1;
        if first {
            r.release_read();
        }
        Ok(e)
    }
}

impl Shared {
    /// Up to `max` events from cursor `next` (advancing it), at least one; or why none.
    fn take_many(
        &self,
        next: &mut u64,
        max: usize,
        out: &mut Vec<Arc<Event>>,
    ) -> Result<(), TryRecvError> {
        let mut r = self.lock();
        if *next < r.head {
            let lost = r.head - *next;
            *next = r.head;
            return Err(TryRecvError::Lagged(lost));
        }
        let from = (*next - r.head) as usize;
        if from >= r.slots.len() {
            return Err(if r.closed {
                TryRecvError::Closed
            } else {
                TryRecvError::Empty
            });
        }
        let to = r.slots.len().min(from + max);
        for slot in r.slots.range_mut(from..to) {
            slot.unread -= 1;
            out.push(slot.event.clone());
        }
        *next += (to - from) as u64;
        if from == 0 {
            r.release_read();
        }
        Ok(())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut r = self.shared.lock();
        let from = self.next.saturating_sub(r.head) as usize;
        for s in r.slots.iter_mut().skip(from) {
            s.unread -= 1;
        }
        r.subscribers -= 1;
        r.release_read();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::proto::{Octets, RunId, RunState};

    fn state(n: u64) -> Event {
        Event {
            run_id: RunId(n),
            owner: "noc".into(),
            name: "x.sh".into(),
            time: SystemTime::UNIX_EPOCH,
            kind: EventKind::State {
                state: RunState::Executing,
            },
        }
    }

    fn result(n: u64, len: usize) -> Event {
        Event {
            kind: EventKind::Result {
                result: Octets::new(vec![b'x'; len]),
                notify: false,
            },
            ..state(n)
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let bus = EventBus::new();
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        for n in 0..10 {
            bus.publish(state(n));
        }
        for n in 0..10 {
            assert_eq!(a.recv().await.unwrap().run_id, RunId(n));
        }
        for n in 0..10 {
            assert_eq!(b.recv().await.unwrap().run_id, RunId(n));
        }
        assert_eq!(a.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_subscriber_sees_only_events_published_after_it_subscribed() {
        let bus = EventBus::new();
        let mut a = bus.subscribe();
        bus.publish(state(1));
        let mut b = bus.subscribe();
        bus.publish(state(2));
        assert_eq!(b.recv().await.unwrap().run_id, RunId(2));
        assert_eq!(a.recv().await.unwrap().run_id, RunId(1));
        assert_eq!(a.recv().await.unwrap().run_id, RunId(2));
    }

    #[test]
    fn events_nobody_can_read_are_not_kept() {
        let bus = EventBus::new();
        bus.publish(state(1));
        assert_eq!(bus.retained(), (0, 0));
    }

    #[test]
    fn read_events_are_released_at_once() {
        let bus = EventBus::new();
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        for n in 0..5 {
            bus.publish(result(n, 1000));
        }
        assert_eq!(bus.retained().0, 5);
        for _ in 0..5 {
            a.try_recv().unwrap();
        }
        assert_eq!(bus.retained().0, 5, "b has not read them");
        b.try_recv().unwrap();
        b.try_recv().unwrap();
        assert_eq!(bus.retained().0, 3);
        drop(b);
        assert_eq!(bus.retained(), (0, 0), "only b still needed them");
    }

    #[test]
    fn a_slow_subscriber_lags_by_the_byte_budget_and_continues() {
        let bus = EventBus::with_limits(1000, 10 * (60_000 + 200));
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        for n in 0..100 {
            bus.publish(result(n, 60_000));
            assert_eq!(fast.try_recv().unwrap().run_id, RunId(n));
        }
        let (count, bytes) = bus.retained();
        assert!(
            count <= 10 && bytes <= 10 * 60_200,
            "{count} events, {bytes} bytes"
        );
        let lost = match slow.try_recv() {
            Err(TryRecvError::Lagged(n)) => n,
            other => panic!("expected a lag, got {other:?}"),
        };
        assert_eq!(lost, 100 - count as u64);
        for n in lost..100 {
            assert_eq!(slow.try_recv().unwrap().run_id, RunId(n));
        }
        assert_eq!(slow.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(bus.retained(), (0, 0));
    }

    #[test]
    fn the_count_cap_holds_for_small_events() {
        let bus = EventBus::with_limits(100, usize::MAX);
        let mut s = bus.subscribe();
        for n in 0..250 {
            bus.publish(state(n));
        }
        assert_eq!(bus.retained().0, 100);
        assert_eq!(s.try_recv(), Err(TryRecvError::Lagged(150)));
        assert_eq!(s.try_recv().unwrap().run_id, RunId(150));
    }

    #[test]
    fn an_event_larger_than_the_budget_is_still_delivered() {
        let bus = EventBus::with_limits(10, 1000);
        let mut s = bus.subscribe();
        bus.publish(result(1, 5000));
        assert_eq!(s.try_recv().unwrap().run_id, RunId(1));
    }

    #[test]
    fn one_event_is_stored_once_for_all_subscribers() {
        let bus = EventBus::new();
        let mut subs: Vec<Subscriber> = (0..10).map(|_| bus.subscribe()).collect();
        bus.publish(result(1, 60_000));
        assert_eq!(bus.retained(), (1, estimated_size(&result(1, 60_000))));
        let got: Vec<Arc<Event>> = subs
            .iter_mut()
            .map(|s| s.shared.take(&mut s.next).expect("an event"))
            .collect();
        assert!(got.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
    }

    #[tokio::test]
    async fn a_burst_of_fifty_thousand_events_does_not_lag_a_reader() {
        let bus = EventBus::new();
        let mut s = bus.subscribe();
        for n in 0..50_000 {
            bus.publish(state(n));
        }
        for n in 0..50_000 {
            assert_eq!(s.recv().await.unwrap().run_id, RunId(n));
        }
        assert_eq!(bus.retained(), (0, 0));
    }

    #[tokio::test]
    async fn a_batch_takes_what_is_waiting_in_order_and_releases_it() {
        let bus = EventBus::with_limits(100, usize::MAX);
        let mut s = bus.subscribe();
        for n in 0..10 {
            bus.publish(state(n));
        }
        let mut got = Vec::new();
        s.recv_batch(4, &mut got).await.unwrap();
        s.recv_batch(100, &mut got).await.unwrap();
        let ids: Vec<u64> = got.iter().map(|e| e.run_id.0).collect();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        assert_eq!(bus.retained(), (0, 0), "read by the only subscriber");
        for n in 10..250 {
            bus.publish(state(n));
        }
        got.clear();
        assert_eq!(
            s.recv_batch(10, &mut got).await,
            Err(RecvError::Lagged(140))
        );
        s.recv_batch(10, &mut got).await.unwrap();
        assert_eq!(got[0].run_id, RunId(150));
        assert_eq!(got.len(), 10);
    }

    #[tokio::test]
    async fn recv_waits_for_a_publish_and_ends_when_the_bus_is_dropped() {
        let bus = EventBus::new();
        let mut s = bus.subscribe();
        let reader = tokio::spawn(async move {
            let first = s.recv().await;
            let second = s.recv().await;
            (first, second)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        bus.publish(state(7));
        let clone = bus.clone();
        drop(bus);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!reader.is_finished(), "a clone keeps the bus open");
        drop(clone);
        let (first, second) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.unwrap().run_id, RunId(7));
        assert_eq!(second, Err(RecvError::Closed));
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let bus = EventBus::new();
        let mut s = bus.subscribe();
        assert!(
            tokio::time::timeout(Duration::from_millis(10), s.recv())
                .await
                .is_err()
        );
        bus.publish(state(1));
        assert_eq!(s.recv().await.unwrap().run_id, RunId(1));
    }
}
