//! One SMX connection to a runtime process: the `hello` handshake, commands matched to
//! replies by Id (never by order), and the reader that feeds every line to the host.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};

use crate::framing::{Frame, LineReader};
use crate::proto::{Command, Id, Malformed, Reply, RunId, Version};

use super::table::AbortCause;

pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Why the `hello` exchange failed (RFC 3179 section 6.2.2).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no 211 reply to hello within {0:?} (RFC 3179 6.2.2 rule 1)")]
    Timeout(Duration),
    #[error("the runtime closed the connection before replying to hello")]
    Closed,
    #[error("reply to hello cannot be analyzed ({why}): {line:?} (RFC 3179 6.2.2 rule 2)")]
    Malformed { why: Malformed, line: String },
    #[error("a reply line longer than the limit arrived during hello")]
    Overlong,
    #[error("211 carries Id {got}, hello was sent with Id {sent} (RFC 3179 6.2.2 rule 3)")]
    WrongId { sent: Id, got: Id },
    #[error("the runtime speaks {0}, this host SMX/1.1 (RFC 3179 6.2.2 rule 3)")]
    Version(Version),
    #[error("211 lacks the Authenticator this host requires (RFC 3179 6.2.2 rule 3, 8.2)")]
    MissingAuthenticator,
    #[error("211 Authenticator does not match (RFC 3179 6.2.2 rule 3, 8.2)")]
    WrongAuthenticator,
    #[error("I/O error during hello: {0}")]
    Io(#[from] io::Error),
}

/// The Id of the `hello` that opens every connection.
pub(crate) const HELLO_ID: Id = Id(1);

/// Sends `hello` and waits for a valid `211` (RFC 3179 section 6.2.2). With `secret`, the
/// reply must carry it as Authenticator; it is compared in constant time.
pub(crate) async fn hello<R, W>(
    reader: &mut LineReader<R>,
    writer: &mut W,
    secret: Option<&[u8]>,
    timeout: Duration,
) -> Result<Version, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + ?Sized,
{
    let exchange = async {
        writer
            .write_all(&Command::Hello { id: HELLO_ID }.to_bytes())
            .await?;
        writer.flush().await?;
        loop {
            let line = match reader.next().await? {
                None => return Err(HandshakeError::Closed),
                Some(Frame::Overlong) => return Err(HandshakeError::Overlong),
                Some(Frame::Line(l)) => l,
            };
            let reply = Reply::decode(&line).map_err(|why| HandshakeError::Malformed {
                why,
                line: String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned(),
            })?;
            // Rule 4: any other well-formed message is discarded.
            let Reply::Hello { id, version, auth } = reply else {
                tracing::debug!(
                    code = reply.code(),
                    "discarding message received before 211"
                );
                continue;
            };
            if id != HELLO_ID {
                return Err(HandshakeError::WrongId {
                    sent: HELLO_ID,
                    got: id,
                });
            }
            if version != Version::V1_1 {
                return Err(HandshakeError::Version(version));
            }
            if let Some(secret) = secret {
                use subtle::ConstantTimeEq;
                let Some(auth) = auth else {
                    return Err(HandshakeError::MissingAuthenticator);
                };
                if !bool::from(auth.as_bytes().ct_eq(secret)) {
                    return Err(HandshakeError::WrongAuthenticator);
                }
            }
            return Ok(version);
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout(timeout)),
    }
}

/// What a pending command was, so its reply can be applied (RFC 3179 6.2.3-6.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    Start(RunId),
    Suspend(RunId),
    Resume(RunId),
    Abort(RunId, AbortCause),
    Status(RunId),
}

impl Pending {
    pub fn run(self) -> RunId {
        match self {
            Pending::Start(r)
            | Pending::Suspend(r)
            | Pending::Resume(r)
            | Pending::Abort(r, _)
            | Pending::Status(r) => r,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Pending::Start(_) => "start",
            Pending::Suspend(_) => "suspend",
            Pending::Resume(_) => "resume",
            Pending::Abort(..) => "abort",
            Pending::Status(_) => "status",
        }
    }

    /// Whether `reply` answers this command; anything else with the same Id is discarded
    /// (rule 5 of sections 6.2.3-6.2.7).
    pub fn accepts(self, reply: &Reply) -> bool {
        match (self, reply) {
            (_, Reply::Negative { .. }) => true,
            (Pending::Abort(..), Reply::Aborted { .. }) => true,
            (Pending::Abort(..), _) => false,
            (_, Reply::Status { .. }) => true,
            _ => false,
        }
    }
}

/// Why a command got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestError {
    Timeout,
    Closed,
    /// The precheck of [`Conn::request_if`] declined to send.
    Cancelled,
}

/// The host's side of one runtime connection.
pub(crate) struct Conn {
    pub serial: u64,
    pub runtime: String,
    pub pid: Option<u32>,
    writer: tokio::sync::Mutex<Option<BoxWrite>>,
    pending: Mutex<HashMap<Id, (Pending, oneshot::Sender<Reply>)>>,
    next_id: AtomicU64,
    /// Runs attached to this connection that have not terminated.
    pub runs: Mutex<HashSet<RunId>>,
    closed: AtomicBool,
    /// Wakes the connection task (idle bookkeeping, close requests).
    pub wake: Notify,
    /// The last line the runtime wrote to stderr, for error texts.
    pub last_stderr: Mutex<String>,
}

impl Conn {
    pub fn new(serial: u64, runtime: String, pid: Option<u32>, writer: BoxWrite) -> Conn {
        Conn {
            serial,
            runtime,
            pid,
            writer: tokio::sync::Mutex::new(Some(writer)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(HELLO_ID.0 + 1),
            runs: Mutex::new(HashSet::new()),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            last_stderr: Mutex::new(String::new()),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the connection closed; the task then closes the pipe, which is how the host
    /// shuts a runtime down (RFC 3179 section 5.2).
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Drops the writer, closing the runtime's stdin (or the TCP connection's write side).
    pub async fn shutdown_writer(&self) {
        if let Some(mut w) = self.writer.lock().await.take() {
            let _ = w.shutdown().await;
        }
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
    /// are ordered after this one.
    pub async fn request_if(
        &self,
        what: Pending,
        precheck: impl FnOnce() -> bool,
        build: impl FnOnce(Id) -> Command,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let id = Id(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let sent = {
            let mut guard = self.writer.lock().await;
            if !precheck() {
                return Err(RequestError::Cancelled);
            }
            self.pending
                .lock()
                .expect("pending lock")
                .insert(id, (what, tx));
            let bytes = build(id).to_bytes();
            match guard.as_mut() {
                None => false,
                Some(w) => {
                    let ok = async {
                        w.write_all(&bytes).await?;
                        w.flush().await
                    }
                    .await
                    .is_ok();
                    if !ok {
                        guard.take();
                    }
                    ok
                }
            }
        };
        if !sent {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(RequestError::Closed);
        }
        let mut rx = rx;
        match tokio::time::timeout(timeout, &mut rx).await {
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
    pub fn cancel_for(&self, run: RunId) {
        self.pending
            .lock()
            .expect("pending lock")
            .retain(|_, (what, _)| what.run() != run || matches!(what, Pending::Abort(..)));
    }

    /// Fails every pending command (their waiters see the connection as closed).
    pub fn fail_pending(&self) {
        self.pending.lock().expect("pending lock").clear();
    }
}
