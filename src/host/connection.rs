//! A runtime connection's task: reads lines and applies them in arrival order, notices the
//! process exiting, closes the connection when it is idle, and on the way out reaps the
//! process and ends the runs it still had.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::watch;

use crate::framing::{Frame, LineReader};
use crate::proto::{Reply, RunId};

use super::Inner;
use super::conn::{BoxRead, Conn};
use super::notify;
use super::pending::{Effects, Pending};

/// How long the lines a runtime wrote before it exited (its last `538`s) are still read.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

pub(super) async fn serve(
    inner: Arc<Inner>,
    conn: Arc<Conn>,
    mut reader: LineReader<BoxRead>,
    mut child: Child,
    finished: watch::Sender<bool>,
) {
    let mut idle_since: Option<Instant> = None;
    let mut exited: Option<std::process::ExitStatus> = None;
    let mut unreadable = 0u64;
    let why = loop {
        if conn.is_closed() {
            break None;
        }
        let idle = inner.table.lock().expect("table lock").runs_on(conn.id) == 0;
        idle_since = if idle {
            Some(idle_since.unwrap_or_else(Instant::now))
        } else {
            None
        };
        if let Some(t) = idle_since
            && inner.close_if_idle(&conn, t.elapsed())
        {
            break None;
        }
        let idle_timeout = inner.config().host.idle_timeout;
        let idle_check = async {
            match idle_since {
                Some(t) => tokio::time::sleep_until((t + idle_timeout).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = reader.next() => match frame {
                Ok(Some(Frame::Line(l))) => on_line(&inner, &conn, &l, &mut unreadable),
                Ok(Some(Frame::Overlong)) => tracing::warn!(runtime = %conn.runtime, "ignoring over-long line (RFC 3179 6.2.x rule 2)"),
                Ok(None) => break Some("closed the SMX connection".to_owned()),
                Err(e) => break Some(format!("SMX connection failed: {e}")),
            },
            status = child.wait(), if exited.is_none() => {
                exited = status.ok();
                let drain = async {
                    while let Ok(Some(f)) = reader.next().await {
                        if let Frame::Line(l) = f {
                            on_line(&inner, &conn, &l, &mut unreadable);
                        }
                    }
                };
                let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, drain).await;
                break Some("exited".to_owned());
            }
            _ = idle_check => {}
            _ = conn.wake.notified() => {}
        }
    };
    // Closing our end of the pipe is how the host shuts a runtime down (RFC 3179 5.2).
    conn.close();
    let config = inner.config();
    conn.shutdown_writer(config.host.command_timeout).await;
    let grace = config.host.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    if exited.is_none() {
        // Whatever the runtime still says while it shuts down is applied, up to its EOF.
        loop {
            tokio::select! {
                frame = reader.next() => match frame {
                    Ok(Some(Frame::Line(l))) => on_line(&inner, &conn, &l, &mut unreadable),
                    Ok(Some(Frame::Overlong)) => {}
                    _ => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        exited = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                tracing::warn!(runtime = %conn.runtime, pid = ?conn.pid, "runtime did not exit within {grace:?} of its pipe closing: killing it");
                if let Some(pid) = conn.pid {
                    crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = child.kill().await;
                child.wait().await.ok()
            }
        };
    }
    if let Some(pid) = conn.pid {
        // The runtime is gone: nothing it left (its group, its cgroup, orphans) lingers.
        crate::contain::runtime_ended(pid).await;
    }
    let status = exited
        .map(crate::process::describe_exit)
        .unwrap_or_else(|| "unknown status".into());
    let last = conn.last_stderr.lock().expect("stderr lock").clone();
    let reason = match why {
        Some(w) => {
            let mut m = format!("{} {w} ({status})", conn.describe());
            if !last.is_empty() {
                m.push_str("; last stderr: ");
                m.extend(last.chars().take(120));
            }
            m
        }
        None => format!("{} was shut down ({status})", conn.describe()),
    };
    tracing::info!(runtime = %conn.runtime, pid = ?conn.pid, "{reason}");
    on_closed(&inner, &conn, &reason);
    finished.send_replace(true);
}

/// Unreadable lines of one connection logged at WARN, before only every thousandth is.
const UNREADABLE_WARNINGS: u64 = 10;

/// Applies one line from a runtime (RFC 3179 6.2.3-6.2.8); `unreadable` counts the lines of
/// this connection that could not be read.
fn on_line(inner: &Arc<Inner>, conn: &Arc<Conn>, line: &[u8], unreadable: &mut u64) {
    let reply = match Reply::decode(line) {
        Ok(r) => r,
        Err(why) => return on_unreadable(inner, conn, line, why, unreadable),
    };
    match reply.id() {
        Some(id) => match conn.take_pending(id, &reply) {
            Some((what, tx)) => {
                let who = conn.describe();
                let effects =
                    what.apply(&mut inner.table.lock().expect("table lock"), &reply, &who);
                apply_effects(inner, conn, what.run(), effects);
                let _ = tx.send(reply);
            }
            None => {
                tracing::debug!(runtime = %conn.runtime, code = reply.code(), %id, "discarding reply that matches no command (rule 5)")
            }
        },
        None => {
            if let Reply::Message { text } = &reply {
                // 6.2.8 rule 1: logged, and nothing else.
                tracing::info!(runtime = %conn.runtime, pid = ?conn.pid, "511: {text}");
                return;
            }
            let Some(run) = reply.run() else { return };
            let effects =
                notify::apply(&mut inner.table.lock().expect("table lock"), conn.id, reply);
            apply_effects(inner, conn, run, effects);
        }
    }
}

/// Rule 2 of 6.2.3-6.2.8: a message that cannot be analyzed is ignored; but not silently.
/// It is counted and logged (boundedly: a runtime may send nothing else), and if it was a
/// result for a run of this connection, smRunError says that a result was lost.
fn on_unreadable(
    inner: &Arc<Inner>,
    conn: &Arc<Conn>,
    line: &[u8],
    why: crate::proto::Malformed,
    unreadable: &mut u64,
) {
    inner.unreadable_replies.fetch_add(1, Ordering::Relaxed);
    *unreadable += 1;
    let (code, run) = salvage(line);
    let n = *unreadable;
    if n <= UNREADABLE_WARNINGS || n.is_multiple_of(1000) {
        let shown = String::from_utf8_lossy(&line[..line.len().min(120)]);
        let run = run.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        tracing::warn!(runtime = %conn.runtime, pid = ?conn.pid, run = %run, "unreadable line ignored ({why}; {n} so far from this runtime): {shown:?}");
    }
    if let (Some(code @ 532..=534), Some(run)) = (code, run) {
        let text = format!(
            "a result from runtime {} could not be read ({code} line: {why}); smRunResult does not hold it",
            conn.runtime
        );
        inner
            .table
            .lock()
            .expect("table lock")
            .result_unreadable(run, conn.id, &text);
    }
}

/// What an unreadable line still says, read leniently: its reply code and, for a
/// notification (`5yz 0 RunId ...`), the run.
fn salvage(line: &[u8]) -> (Option<u16>, Option<RunId>) {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut fields = line.split(|&b| b == b' ' || b == b'\t');
    let code = fields
        .next()
        .filter(|c| c.len() == 3 && c.iter().all(u8::is_ascii_digit))
        .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u16>().ok());
    let run = match code {
        Some(c) if (531..=538).contains(&c) => fields.nth(1).and_then(RunId::parse),
        _ => None,
    };
    (code, run)
}

/// Carries out what a rule asked for that needs the connection.
pub(super) fn apply_effects(inner: &Arc<Inner>, conn: &Arc<Conn>, run: RunId, e: Effects) {
    if e.cancel_pending {
        conn.cancel_for(run);
    }
    if e.cleanup_abort {
        // The host already ended the run; the runtime may still run it. Its reply changes
        // nothing (no host abort is in progress in the table).
        let (inner2, conn) = (inner.clone(), conn.clone());
        inner.spawn(async move {
            let timeout = inner2.command_timeout();
            let _ = conn
                .request(
                    Pending::Abort(run),
                    |id| super::abort::command(id, run),
                    timeout,
                )
                .await;
        });
    }
}

/// The connection ended: its runs end, its slot and entry go.
fn on_closed(inner: &Arc<Inner>, conn: &Arc<Conn>, why: &str) {
    conn.close();
    conn.fail_pending();
    let mut pool = inner.pool.lock().expect("pool lock");
    pool.unslot(conn);
    pool.conns.remove(&conn.id);
    let ended = inner
        .table
        .lock()
        .expect("table lock")
        .close_conn(conn.id, why);
    for run in ended {
        tracing::warn!(run = %run, "{why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvage_reads_code_and_run_of_what_does_not_parse() {
        let cases: [(&[u8], Option<u16>, Option<u64>); 7] = [
            (b"532 0 7 2 \"a\rb\"\r\n", Some(532), Some(7)),
            (b"533\t0\t8\t2\t\"\x01\"\n", Some(533), Some(8)),
            (b"534 0 9\r\n", Some(534), Some(9)),
            (b"538 0 x 1\r\n", Some(538), None),
            (b"231 1 9\r\n", Some(231), None),
            (b"garbage 1\r\n", None, None),
            (b"", None, None),
        ];
        for (line, code, run) in cases {
            assert_eq!(
                salvage(line),
                (code, run.map(RunId)),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
