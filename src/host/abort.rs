//! `abort` (RFC 3179 section 6.2.6): smRunControl `abort` and the end of smRunLifeTime. The
//! run is `aborting` until the runtime answers; the cause decides the ExitCode after a
//! `232` (rule 4), even if a `538` said otherwise meanwhile.

use std::sync::Arc;

use crate::proto::{Command, ExitCode, Reply, RunId};

use super::pending::{Effects, Pending};
use super::table::{AbortCause, ConnId, Table};
use super::{ControlError, Inner, RunInfo};

/// Any run that has not terminated and is not being aborted can be aborted. Returns the
/// connection to send the command on; `None` if the run has not been started on one yet
/// (the start sees the abort and ends the run, see `start::precondition`).
pub(crate) fn precondition(
    t: &mut Table,
    run: RunId,
    cause: AbortCause,
) -> Result<Option<ConnId>, ControlError> {
    if !t.contains(run) {
        return Err(ControlError::NoSuchRun(run));
    }
    t.begin_abort(run, cause)
        .map_err(|state| ControlError::InvalidState {
            run,
            state,
            op: "abort",
        })?;
    Ok(t.bound(run))
}

/// Rules 3 and 4. `232`: the abort's cause decides the ExitCode. A `4yz`: genericError, with
/// the text in smRunError (rule 3 says smRunResult, which would destroy the result), unless
/// the script had already ended on its own (its `538` came first): that outcome stands.
/// With no host abort in progress (a clean-up abort after the host ended the run) nothing
/// changes.
pub(crate) fn on_reply(t: &mut Table, run: RunId, reply: &Reply, who: &str) -> Effects {
    let Some(cause) = t.aborting(run) else {
        return Effects::NONE;
    };
    match reply {
        Reply::Aborted { .. } => t.finish_abort(run, cause.exit_code(), None),
        Reply::Negative { code, .. } => {
            let ended_alone =
                t.state(run) == Some(crate::proto::RunState::Terminated) && t.exit_reported(run);
            match t.exit_code(run) {
                Some(exit) if ended_alone => {
                    tracing::info!(run = %run, "abort answered {code}: the run had already ended with {exit}");
                    t.finish_abort(run, exit, None);
                }
                _ => {
                    let msg = format!("{who} could not abort the script: {code}");
                    t.finish_abort(run, ExitCode::GenericError, Some(&msg));
                }
            }
        }
        _ => {}
    }
    Effects::NONE
}

/// Rule 1: no reply: the run ends with genericError.
pub(crate) fn on_timeout(t: &mut Table, run: RunId, why: &str) -> Effects {
    if t.aborting(run).is_some() {
        tracing::warn!(run = %run, "{why}");
        t.finish_abort(run, ExitCode::GenericError, Some(why));
    }
    Effects::NONE
}

/// The command.
pub(crate) fn command(id: crate::proto::Id, run: RunId) -> Command {
    Command::Abort { id, run }
}

/// Aborts a run and waits for the outcome.
pub(super) async fn abort(
    inner: Arc<Inner>,
    run: RunId,
    cause: AbortCause,
) -> Result<RunInfo, ControlError> {
    let (conn, mut done) = {
        let mut t = inner.table.lock().expect("table lock");
        let done = t.done(run).ok_or(ControlError::NoSuchRun(run))?;
        (precondition(&mut t, run, cause)?, done)
    };
    match conn.and_then(|c| inner.conn(c)) {
        Some(conn) => {
            inner
                .send(&conn, Pending::Abort(run), |id| command(id, run))
                .await
        }
        // Not started yet: the start sees the abort once its runtime is ready.
        None => {
            let config = inner.config();
            let _ = tokio::time::timeout(
                config.host.command_timeout + config.host.hello_timeout,
                done.wait_for(|d| d.is_some()),
            )
            .await;
        }
    }
    inner.snapshot(run)
}
