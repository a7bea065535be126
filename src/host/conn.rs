//! The host's side of one SMX connection: it owns the writer and the commands awaiting a
//! reply, matched by Id (never by order). Every command is bounded by one deadline that
//! covers waiting for the writer, writing, and the reply, so a runtime that stops reading
//! can delay a command by at most the command timeout; a write that does not finish in
//! time leaves the stream cut mid-line, so the connection is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};

use crate::proto::{Command, Id, Reply};

use super::hello::HELLO_ID;
use super::pending::Pending;
use super::table::ConnId;

pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Why a command got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestError {
    /// No reply within the command timeout (rule 1 of RFC 3179 6.2.3-6.2.7).
    Timeout,
    /// The runtime did not take the command off the pipe within the command timeout; the
    /// connection is closed.
    WriteTimeout,
    Closed,
    /// The precheck of [`Conn::request_if`] declined to send.
    Cancelled,
}

impl RequestError {
    /// What happened, for smRunError: "no reply to `start` from runtime exec (pid 7) within 10s".
    pub fn describe(self, word: &str, who: &str, timeout: Duration) -> String {
        let t = humantime::format_duration(timeout);
        match self {
            RequestError::WriteTimeout => {
                format!("{who} did not read `{word}` within {t}: connection closed")
            }
            _ => format!("no reply to `{word}` from {who} within {t}"),
        }
    }
}

/// The host's side of one runtime connection.
pub(crate) struct Conn {
    pub id: ConnId,
    pub runtime: String,
    pub pid: Option<u32>,
    writer: tokio::sync::Mutex<Option<BoxWrite>>,
    pending: Mutex<HashMap<Id, (Pending, oneshot::Sender<Reply>)>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Wakes the connection task (its last run left, close requests, reloads).
    pub wake: Arc<Notify>,
    /// The last line the runtime wrote to stderr, for error texts.
    pub last_stderr: Mutex<String>,
    /// Admission: at most [`START_WINDOW`] `start`s awaiting their reply at once.
    pub starts: Arc<tokio::sync::Semaphore>,
}

/// How many `start` commands one connection has in flight at most. A burst of launches
/// waits in `initializing` (RFC 3165 lets that state last) instead of flooding the
/// runtime; the 6.2.3 timeout of each runs from when it is written.
pub(crate) const START_WINDOW: usize = 64;

impl Conn {
    pub fn new(id: ConnId, runtime: String, pid: Option<u32>, writer: BoxWrite) -> Conn {
        Conn {
            id,
            runtime,
            pid,
            writer: tokio::sync::Mutex::new(Some(writer)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(HELLO_ID.0 + 1),
            closed: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            last_stderr: Mutex::new(String::new()),
            starts: Arc::new(tokio::sync::Semaphore::new(START_WINDOW)),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the connection closed; its task then closes the pipe, which is how the host
    /// shuts a runtime down (RFC 3179 section 5.2).
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Drops the writer, closing the runtime's stdin (or the TCP connection's write side).
    /// Bounded: a writer stuck in a command gives up at that command's deadline.
    pub async fn shutdown_writer(&self, within: Duration) {
        let take = async {
            if let Some(mut w) = self.writer.lock().await.take() {
                let _ = w.shutdown().await;
            }
        };
        let _ = tokio::time::timeout(within, take).await;
    }

    pub fn describe(&self) -> String {
        match self.pid {
            Some(pid) => format!("runtime {} (pid {pid})", self.runtime),
            None => format!("runtime {}", self.runtime),
        }
    }

    /// Sends a command built for a fresh Id and waits for its reply. The reply's effect on
    /// the run table is applied by the reader (in arrival order) before this returns.
    pub async fn request(
        &self,
        what: Pending,
        build: impl FnOnce(Id) -> Command,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        self.request_if(what, || true, build, timeout).await
    }

    /// Like [`Conn::request`], but `precheck` runs while the write lock is held, just before
    /// the command is written; if it returns false nothing is sent. Commands written later
    /// are ordered after this one. `timeout` bounds everything: the wait for the writer,
    /// the write, and the reply.
    pub async fn request_if(
        &self,
        what: Pending,
        precheck: impl FnOnce() -> bool,
        build: impl FnOnce(Id) -> Command,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = Id(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, mut rx) = oneshot::channel();
        let send = async {
            let mut guard = self.writer.lock().await;
            if self.is_closed() {
                return Err(RequestError::Closed);
            }
            if !precheck() {
                return Err(RequestError::Cancelled);
            }
            let Some(w) = guard.as_mut() else {
                return Err(RequestError::Closed);
            };
            self.pending
                .lock()
                .expect("pending lock")
                .insert(id, (what, tx));
            let bytes = build(id).to_bytes();
            let written = async {
                w.write_all(&bytes).await?;
                w.flush().await
            }
            .await;
            if written.is_err() {
                guard.take();
                return Err(RequestError::Closed);
            }
            Ok(())
        };
        let sent = match tokio::time::timeout_at(deadline, send).await {
            Ok(r) => r,
            Err(_) => {
                // The writer was busy or the runtime stopped reading; a half-written line
                // cannot be taken back, so the connection ends here.
                tracing::warn!(runtime = %self.runtime, pid = ?self.pid, "{} not written within {timeout:?}: closing the connection", what.word());
                self.close();
                Err(RequestError::WriteTimeout)
            }
        };
        if let Err(e) = sent {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(e);
        }
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(RequestError::Closed),
            Err(_) => {
                // A reply racing the timeout wins; otherwise a late one is discarded (rule 5).
                if self
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&id)
                    .is_some()
                {
                    Err(RequestError::Timeout)
                } else {
                    rx.await.map_err(|_| RequestError::Closed)
                }
            }
        }
    }

    /// Takes the pending command `reply` answers, if any and if it accepts it.
    pub fn take_pending(&self, id: Id, reply: &Reply) -> Option<(Pending, oneshot::Sender<Reply>)> {
        let mut p = self.pending.lock().expect("pending lock");
        match p.get(&id) {
            Some((what, _)) if what.accepts(reply) => p.remove(&id),
            _ => None,
        }
    }

    /// Drops the pending commands of a run that has ended, except an abort (whose reply
    /// still decides the ExitCode); their waiters stop waiting and do nothing.
    pub fn cancel_for(&self, run: crate::proto::RunId) {
        self.pending
            .lock()
            .expect("pending lock")
            .retain(|_, (what, _)| what.run() != run || matches!(what, Pending::Abort(_)));
    }

    /// Fails every pending command (their waiters see the connection as closed).
    pub fn fail_pending(&self) {
        self.pending.lock().expect("pending lock").clear();
    }
}
