//! `status` (RFC 3179 section 6.2.7): asks the runtime for a run's state.

use std::sync::Arc;

use crate::proto::{ExitCode, Reply, RunId};

use super::pending::{Effects, Pending};
use super::table::{ConnId, Table};
use super::{ControlError, Inner, RunInfo};

/// A terminated run, or one not started on a runtime yet, has nothing to ask: `None`.
pub(crate) fn precondition(t: &Table, run: RunId) -> Result<Option<ConnId>, ControlError> {
    let state = t.state(run).ok_or(ControlError::NoSuchRun(run))?;
    Ok(match state {
        crate::proto::RunState::Terminated => None,
        _ => t.bound(run),
    })
}

/// Rules 3 and 4: `231` sets smRunState; a `4yz` is a fatal condition: the run ends with
/// genericError and is aborted.
pub(crate) fn on_reply(t: &mut Table, run: RunId, reply: &Reply, who: &str) -> Effects {
    match reply {
        Reply::Status { state, .. } => {
            t.set_state(run, *state);
            Effects::NONE
        }
        Reply::Negative { code, .. } => {
            let msg = format!("{who} cannot report the script's status: {code}");
            t.terminate(run, Some(ExitCode::GenericError), Some(&msg));
            Effects::CLEANUP_ABORT
        }
        _ => Effects::NONE,
    }
}

pub(super) async fn status(inner: Arc<Inner>, run: RunId) -> Result<RunInfo, ControlError> {
    let conn = precondition(&inner.table.lock().expect("table lock"), run)?;
    match conn {
        Some(conn) => {
            inner
                .control(conn, Pending::Status(run), |id| {
                    crate::proto::Command::Status { id, run }
                })
                .await
        }
        None => inner.snapshot(run),
    }
}
