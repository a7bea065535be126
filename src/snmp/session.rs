//! The AgentX session with the master agent (RFC 2741 section 7.1): the only IO of the
//! subagent. It connects to `[agentx] socket`, opens a session, registers scriptMIB
//! (1.3.6.1.2.1.64) at the default priority 127, then serves the master's requests while
//! sending notifications, until the master goes away (reconnect with backoff, register
//! again) or the daemon stops (Close with reason shutdown).
//!
//! - Reads and the Open/Register handshakes are bounded by `[agentx] timeout`; a quiet
//!   master is pinged every `ping_interval` and given up on if it does not answer in time.
//! - The framer caps a PDU at [`DEFAULT_MAX_PAYLOAD`]; a longer one is skipped.
//! - Gets are answered at once from the model; a CommitSet runs in a task of its own so a
//!   slow commit does not hold up other requests, and the master's retransmission of a
//!   PDU (same transaction and packet id, after its agentXTimeout) is either ignored while
//!   the original is being worked on or answered with the original's response: a
//!   retransmitted CommitSet never starts a run twice.
//! - Notifications come from the host's event bus through a bounded queue; while no
//!   session is open it holds at most `notify_queue` of them; past that new ones are
//!   dropped, counted and logged.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agentx::{
    ByteOrder, Close, CloseReason, DEFAULT_MAX_PAYLOAD, DEFAULT_PRIORITY, DecodeError, Framer,
    Notify, Oid, Open, Payload, Pdu, Ping, Register, ResError, Response, VarBind,
};
use crate::host::{EventKind, RecvError};
use crate::mib::{Change, Mib, Principal};
use crate::proto::RunId;

use super::index::SCRIPT_MIB;
use super::set::{self as snmpset, Undo};
use super::settings::{AgentxSettings, MasterAddr};
use super::view::{self, MibSource};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to the AgentX master at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("AgentX master I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the AgentX master did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the AgentX master closed the connection")]
    Eof,
    #[error("the AgentX master closed the session ({0:?})")]
    Closed(CloseReason),
    #[error("the AgentX master refused our {what}: {error:?}")]
    Refused { what: &'static str, error: ResError },
    #[error("AgentX encoding: {0}")]
    Encode(#[from] crate::agentx::EncodeError),
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Our byte order for the whole session (the master answers in it).
const ORDER: ByteOrder = ByteOrder::BigEndian;

/// Recent answers kept to re-send to a retransmitted request.
const ANSWERED: usize = 64;

/// Runs the subagent until `stop` is cancelled. Never returns early: a master that is
/// missing or goes away is retried with backoff.
pub async fn run(mib: Mib, settings: AgentxSettings, stop: CancellationToken) {
    let up = Arc::new(AtomicBool::new(false));
    let (tx, mut notes) = mpsc::channel(settings.notify_queue.max(1));
    let producer = tokio::spawn(produce(mib.clone(), tx, up.clone(), stop.clone()));
    let mut pause = settings.reconnect_min;
    loop {
        let opened = tokio::select! {
            c = open(&settings) => c,
            _ = stop.cancelled() => break,
        };
        match opened {
            Ok(mut conn) => {
                tracing::info!(master = %settings.socket, session = conn.session_id, "AgentX session open, scriptMIB registered");
                pause = settings.reconnect_min;
                up.store(true, Ordering::Release);
                let end = conn.serve(&mib, &settings, &mut notes, &stop).await;
                up.store(false, Ordering::Release);
                match end {
                    Ok(()) => break,
                    Err(e) => tracing::warn!(master = %settings.socket, "AgentX session lost: {e}"),
                }
            }
            Err(e) => tracing::warn!("{e}; retrying in {pause:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => break,
        }
        pause = (pause * 2).min(settings.reconnect_max);
    }
    let _ = producer.await;
}

/// Turns host events into notification varbinds for the session.
async fn produce(
    mib: Mib,
    tx: mpsc::Sender<Vec<VarBind>>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut events = mib.host().subscribe();
    // smRunIndex by RunId, for runs whose row is gone by the time their event is read.
    let mut indexes: HashMap<RunId, u32> = HashMap::new();
    let dropped = AtomicU64::new(0);
    loop {
        let e = tokio::select! {
            e = events.recv() => e,
            _ = stop.cancelled() => return,
        };
        let e = match e {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("AgentX notifications: {n} host events lost (event bus overflow)");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let row = mib.host().run(e.run_id);
        match &e.kind {
            EventKind::Launched { .. } => {
                if let Some(r) = &row {
                    indexes.insert(e.run_id, r.index);
                }
                continue;
            }
            EventKind::Removed => {
                indexes.remove(&e.run_id);
                continue;
            }
            _ => {}
        }
        let Some(index) = row
            .as_ref()
            .map(|r| r.index)
            .or(indexes.get(&e.run_id).copied())
        else {
            continue;
        };
        let end: Option<SystemTime> = row.as_ref().and_then(|r| r.end_time);
        let Some(vbs) = super::notify::varbinds(&e, index, end) else {
            continue;
        };
        if up.load(Ordering::Acquire) {
            // The session reads as fast as it can write: wait for room, lose nothing.
            if tx.send(vbs).await.is_err() {
                return;
            }
        } else if tx.try_send(vbs).is_err() {
            let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                "AgentX master unreachable and notification queue full: notification dropped ({n} so far)"
            );
        }
    }
}

async fn connect(addr: &MasterAddr) -> std::io::Result<(Reader, Writer)> {
    Ok(match addr {
        MasterAddr::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p).await?;
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
        MasterAddr::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a).await?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
    })
}

/// One open session.
struct Conn {
    reader: Reader,
    writer: Writer,
    buf: BytesMut,
    framer: Framer,
    session_id: u32,
    next_packet: u32,
    /// The parseError Response to a PDU that did not decode, to be written.
    parse_error: Option<Pdu>,
}

/// A Set transaction between TestSet and CleanupSet (RFC 2741 7.2.4).
enum Txn {
    Tested(Vec<Change>),
    /// CommitSet is being worked on: a retransmission of it is dropped.
    Committing,
    /// Committed; what an UndoSet would take.
    Committed(Undo),
    /// The commit failed: an UndoSet only frees the transaction.
    Failed,
}

/// A CommitSet's outcome, from its task.
struct Committed {
    request: Pdu,
    result: Result<Undo, (usize, ResError)>,
}

/// Connects, opens a session and registers scriptMIB, all within the timeout.
async fn open(settings: &AgentxSettings) -> Result<Conn, SessionError> {
    let t = settings.timeout;
    let (reader, writer) = tokio::time::timeout(t, connect(&settings.socket))
        .await
        .map_err(|_| SessionError::Timeout(t))?
        .map_err(|source| SessionError::Connect {
            addr: settings.socket.to_string(),
            source,
        })?;
    let mut c = Conn {
        reader,
        writer,
        buf: BytesMut::with_capacity(8192),
        framer: Framer::new(DEFAULT_MAX_PAYLOAD),
        session_id: 0,
        next_packet: 1,
        parse_error: None,
    };
    let open = Payload::Open(Open {
        timeout: u8::try_from(t.as_secs()).unwrap_or(u8::MAX),
        id: Oid::null(),
        descr: b"smx DISMAN-SCRIPT-MIB subagent".to_vec(),
    });
    let r = c.request(open, t).await?;
    if r.1.error != ResError::NoError {
        return Err(SessionError::Refused {
            what: "Open",
            error: r.1.error,
        });
    }
    c.session_id = r.0;
    let reg = Payload::Register(Register {
        context: None,
        timeout: 0,
        priority: DEFAULT_PRIORITY,
        subtree: Oid::new(SCRIPT_MIB).unwrap_or_default(),
        range: None,
        instance_registration: false,
    });
    let (_, r) = c.request(reg, t).await?;
    if r.error != ResError::NoError {
        return Err(SessionError::Refused {
            what: "Register of 1.3.6.1.2.1.64",
            error: r.error,
        });
    }
    Ok(c)
}

impl Conn {
    fn pdu(&mut self, payload: Payload) -> Pdu {
        let packet_id = self.next_packet;
        self.next_packet = self.next_packet.wrapping_add(1).max(1);
        Pdu {
            session_id: self.session_id,
            transaction_id: 0,
            packet_id,
            byte_order: ORDER,
            payload,
        }
    }

    async fn write(&mut self, pdu: &Pdu, t: Duration) -> Result<Vec<u8>, SessionError> {
        let bytes = pdu.to_bytes()?;
        tokio::time::timeout(t, self.writer.write_all(&bytes))
            .await
            .map_err(|_| SessionError::Timeout(t))??;
        Ok(bytes)
    }

    /// The next whole PDU (`None` for one that did not decode: dropped, or its parseError
    /// answer left in `parse_error`). Cancel-safe: it only reads.
    async fn read(&mut self) -> Result<Option<Pdu>, SessionError> {
        loop {
            let next = match self.framer.next_frame(&mut self.buf) {
                Ok(f) => f,
                // The framer skips the refused payload and stays in step.
                Err(e) => {
                    tracing::warn!("AgentX: {e}");
                    continue;
                }
            };
            if let Some(frame) = next {
                return Ok(match Pdu::decode(&frame) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!("AgentX: {e}");
                        if let DecodeError::Payload { header, .. } = e
                            && header.pdu_type != crate::agentx::PduType::Response
                        {
                            let answer = Pdu {
                                session_id: header.session_id,
                                transaction_id: header.transaction_id,
                                packet_id: header.packet_id,
                                byte_order: header.byte_order(),
                                payload: Payload::Response(Response::error(
                                    ResError::ParseError,
                                    0,
                                )),
                            };
                            // Written by the caller: a write here could be cut short by
                            // the caller's select!, leaving half a PDU on the stream.
                            self.parse_error = Some(answer);
                        }
                        None
                    }
                });
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return Err(SessionError::Eof);
            }
        }
    }

    /// Sends a request during the handshake and waits for its Response.
    async fn request(
        &mut self,
        payload: Payload,
        t: Duration,
    ) -> Result<(u32, Response), SessionError> {
        let pdu = self.pdu(payload);
        self.write(&pdu, t).await?;
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = tokio::time::timeout(left, self.read())
                .await
                .map_err(|_| SessionError::Timeout(t))??;
            if let Some(Pdu {
                session_id,
                packet_id,
                payload: Payload::Response(r),
                ..
            }) = got
                && packet_id == pdu.packet_id
            {
                return Ok((session_id, r));
            }
        }
    }

    /// Serves the master until it goes away (`Err`) or `stop` (`Ok`, after a Close).
    async fn serve(
        &mut self,
        mib: &Mib,
        settings: &AgentxSettings,
        notes: &mut mpsc::Receiver<Vec<VarBind>>,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        let t = settings.timeout;
        let mut txns: HashMap<u32, Txn> = HashMap::new();
        let mut answered: VecDeque<((u32, u32), Vec<u8>)> = VecDeque::new();
        let (done_tx, mut done_rx) = mpsc::channel::<Committed>(16);
        let mut last_heard = Instant::now();
        let mut ping: Option<(u32, Instant)> = None;
        loop {
            let idle_at = last_heard + settings.ping_interval;
            let ping_deadline = ping.map(|(_, at)| at);
            tokio::select! {
                got = self.read() => {
                    last_heard = Instant::now();
                    let Some(pdu) = got? else {
                        if let Some(answer) = self.parse_error.take() {
                            self.write(&answer, t).await?;
                        }
                        continue;
                    };
                    if let Payload::Response(r) = &pdu.payload {
                        if ping.is_some_and(|(id, _)| id == pdu.packet_id) {
                            ping = None;
                        } else if r.error != ResError::NoError {
                            tracing::warn!(packet = pdu.packet_id, "AgentX master answered {:?}", r.error);
                        }
                        continue;
                    }
                    let key = (pdu.transaction_id, pdu.packet_id);
                    if let Some((_, bytes)) = answered.iter().find(|(k, _)| *k == key) {
                        tracing::debug!(?key, "AgentX retransmission: answer re-sent");
                        let bytes = bytes.clone();
                        tokio::time::timeout(t, self.writer.write_all(&bytes)).await.map_err(|_| SessionError::Timeout(t))??;
                        continue;
                    }
                    let answer = match &pdu.payload {
                        Payload::Close(c) => return Err(SessionError::Closed(c.reason)),
                        Payload::CommitSet => {
                            match txns.get(&pdu.transaction_id) {
                                Some(Txn::Tested(_)) => {
                                    let Some(Txn::Tested(changes)) = txns.insert(pdu.transaction_id, Txn::Committing) else { unreachable!() };
                                    tokio::spawn(commit(mib.clone(), pdu.clone(), changes, done_tx.clone()));
                                    continue;
                                }
                                Some(Txn::Committing) => {
                                    tracing::debug!(?key, "AgentX retransmitted CommitSet dropped: the commit is under way");
                                    continue;
                                }
                                _ => Response::error(ResError::CommitFailed, 0),
                            }
                        }
                        Payload::CleanupSet => {
                            txns.remove(&pdu.transaction_id);
                            continue;
                        }
                        Payload::UndoSet => {
                            match txns.remove(&pdu.transaction_id) {
                                Some(Txn::Committed(undo)) => match undo.run(mib).await {
                                    Ok(()) => Response::ok(Vec::new()),
                                    Err(_) => Response::error(ResError::UndoFailed, 0),
                                },
                                Some(Txn::Committing) => Response::error(ResError::UndoFailed, 0),
                                _ => Response::ok(Vec::new()),
                            }
                        }
                        Payload::TestSet(ts) => {
                            let r = test(mib, &ts.varbinds);
                            match r {
                                Ok(changes) => {
                                    // One transaction at a time per session, bounded anyway.
                                    if txns.len() >= 16 { txns.clear(); }
                                    txns.insert(pdu.transaction_id, Txn::Tested(changes));
                                    Response::ok(Vec::new())
                                }
                                Err((i, e)) => {
                                    txns.insert(pdu.transaction_id, Txn::Failed);
                                    let (e, idx) = snmpset::failure(i, e);
                                    Response::error(e, idx)
                                }
                            }
                        }
                        p => answer_read(mib, p),
                    };
                    let out = pdu.respond(answer);
                    let bytes = self.write(&out, t).await?;
                    remember(&mut answered, key, bytes);
                }
                Some(c) = done_rx.recv() => {
                    let key = (c.request.transaction_id, c.request.packet_id);
                    let answer = match c.result {
                        Ok(undo) => {
                            txns.insert(key.0, Txn::Committed(undo));
                            Response::ok(Vec::new())
                        }
                        Err((i, e)) => {
                            txns.insert(key.0, Txn::Failed);
                            let (e, idx) = snmpset::failure(i, e);
                            Response::error(e, idx)
                        }
                    };
                    let bytes = self.write(&c.request.respond(answer), t).await?;
                    remember(&mut answered, key, bytes);
                }
                Some(vbs) = notes.recv() => {
                    let pdu = self.pdu(Payload::Notify(Notify { context: None, varbinds: vbs }));
                    self.write(&pdu, t).await?;
                }
                _ = tokio::time::sleep_until(idle_at.into()), if ping.is_none() => {
                    let pdu = self.pdu(Payload::Ping(Ping { context: None }));
                    self.write(&pdu, t).await?;
                    ping = Some((pdu.packet_id, Instant::now() + t));
                }
                _ = async { tokio::time::sleep_until(ping_deadline.unwrap_or_else(Instant::now).into()).await }, if ping_deadline.is_some() => {
                    return Err(SessionError::Timeout(t));
                }
                _ = stop.cancelled() => {
                    let close = self.pdu(Payload::Close(Close { reason: CloseReason::Shutdown }));
                    let _ = self.write(&close, t).await;
                    let _ = tokio::time::timeout(Duration::from_millis(500), self.read()).await;
                    tracing::info!("AgentX session closed (shutdown)");
                    return Ok(());
                }
            }
        }
    }
}

fn remember(answered: &mut VecDeque<((u32, u32), Vec<u8>)>, key: (u32, u32), bytes: Vec<u8>) {
    if answered.len() >= ANSWERED {
        answered.pop_front();
    }
    answered.push_back((key, bytes));
}

/// TestSet: the varbinds as one change set, checked by the model.
fn test(mib: &Mib, varbinds: &[VarBind]) -> Result<Vec<Change>, (usize, ResError)> {
    let changes = snmpset::changes(varbinds)?;
    mib.test(&Principal::Admin, &changes)
        .map_err(|(i, e)| (i, snmpset::res_error(&e)))?;
    Ok(changes)
}

/// CommitSet in a task: applies the change set (all or nothing) and reports back.
async fn commit(mib: Mib, request: Pdu, changes: Vec<Change>, done: mpsc::Sender<Committed>) {
    let mut undo = Undo::capture(&mib, &changes);
    let result = match mib.set(&Principal::Admin, &changes).await {
        Ok(out) => {
            undo.started(out.started.iter().map(|r| r.run_id));
            Ok(undo)
        }
        Err((i, e)) => {
            tracing::info!("CommitSet failed: {e}");
            // The model refused what TestSet accepted: the tables changed in between.
            Err((i, ResError::CommitFailed))
        }
    };
    let _ = done.send(Committed { request, result }).await;
}

/// Get, GetNext, GetBulk (and anything else a master should not send us).
fn answer_read(mib: &Mib, p: &Payload) -> Response {
    let src = MibSource::new(mib);
    match p {
        Payload::Get(g) => {
            Response::ok(g.ranges.iter().map(|r| view::get(&src, &r.start)).collect())
        }
        Payload::GetNext(g) => {
            Response::ok(g.ranges.iter().map(|r| view::get_next(&src, r)).collect())
        }
        Payload::GetBulk(g) => Response::ok(view::get_bulk(&src, g)),
        Payload::Ping(_) => Response::ok(Vec::new()),
        _ => Response::error(ResError::ProcessingError, 0),
    }
}
