//! A connection's outgoing lines: a queue bounded in bytes, drained by one writer task.
//!
//! A line can be large (a 64 KiB result hex-encoded in JSON is about 130 KB; a `runs`
//! answer over a big table is more), so a queue bounded by count alone bounds nothing
//! useful: 1024 such lines are 130 MB for one client that does not read. Here every queued
//! line holds permits worth its allocated size from a byte budget until the writer has
//! written it; a sender waits (backpressure) while the budget is used up. A line larger
//! than the whole budget takes all of it, so it waits for an empty queue and then goes
//! alone: the queue never holds more than the budget plus one such line.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// The writer has stopped (the connection is closing); the line was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection's writer has stopped")]
pub struct Closed;

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    limit: usize,
}

/// The writer's side: the queued lines in order.
pub struct Drain {
    rx: mpsc::UnboundedReceiver<Queued>,
    budget: Arc<Semaphore>,
}

/// A queued line; its share of the budget is returned when it is dropped (once written).
pub struct Queued {
    pub line: String,
    _permit: OwnedSemaphorePermit,
}

/// A queue that holds at most `budget` bytes of lines (plus one larger line at a time).
pub fn outbox(budget: usize) -> (Outbox, Drain) {
    let limit = budget.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let sem = Arc::new(Semaphore::new(limit));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Outbox {
            tx,
            budget: sem.clone(),
            limit,
        },
        Drain { rx, budget: sem },
    )
}

impl Outbox {
    /// Queues `line`, waiting while the queue is full. Cancel-safe: a cancelled send
    /// queues nothing.
    pub async fn send(&self, line: String) -> Result<(), Closed> {
        let cost = line.capacity().clamp(1, self.limit) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Queued {
                line,
                _permit: permit,
            })
            .map_err(|_| Closed)
    }
}

impl Drain {
    /// The next line, waiting for one; `None` once every [`Outbox`] is gone and the queue
    /// is empty.
    pub async fn recv(&mut self) -> Option<Queued> {
        self.rx.recv().await
    }

    /// The next line if one is queued.
    pub fn try_recv(&mut self) -> Option<Queued> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        // Senders waiting for budget learn at once that nobody will write their line.
        self.budget.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn line(n: usize) -> String {
        let mut s = String::with_capacity(n);
        s.extend(std::iter::repeat_n('x', n));
        s
    }

    #[tokio::test]
    async fn a_full_queue_makes_the_sender_wait_until_lines_are_written() {
        let (out, mut drain) = outbox(1000);
        out.send(line(600)).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(20), out.send(line(600))).await;
        assert!(blocked.is_err(), "600 + 600 > 1000 must wait");
        let first = drain.recv().await.unwrap();
        assert_eq!(first.line.len(), 600);
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), out.send(line(600)))
            .await
            .expect("room once the first line is written")
            .unwrap();
    }

    #[tokio::test]
    async fn a_line_larger_than_the_budget_goes_alone() {
        let (out, mut drain) = outbox(1000);
        out.send(line(10)).await.unwrap();
        let big = tokio::time::timeout(Duration::from_millis(20), out.send(line(5000))).await;
        assert!(big.is_err(), "waits for an empty queue");
        drop(drain.recv().await);
        out.send(line(5000)).await.unwrap();
        assert_eq!(drain.recv().await.unwrap().line.len(), 5000);
    }

    #[tokio::test]
    async fn senders_learn_when_the_writer_is_gone() {
        let (out, drain) = outbox(100);
        out.send(line(100)).await.unwrap();
        let waiting = tokio::spawn({
            let out = out.clone();
            async move { out.send(line(50)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(drain);
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r, Err(Closed));
        assert_eq!(out.send(line(1)).await, Err(Closed));
    }

    #[tokio::test]
    async fn the_drain_ends_when_every_sender_is_gone() {
        let (out, mut drain) = outbox(100);
        out.send(line(3)).await.unwrap();
        drop(out);
        assert_eq!(drain.recv().await.unwrap().line, "xxx");
        assert!(drain.recv().await.is_none());
    }
}
