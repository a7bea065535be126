//! `suspend` (RFC 3179 section 6.2.4), smRunControl `suspend`: an executing run goes to
//! `suspending` until the runtime answers.

use std::sync::Arc;

use crate::proto::{Negative, Reply, RunId, RunState};

use super::pending::{Effects, Pending};
use super::table::{ConnId, Table};
use super::{ControlError, Inner, RunInfo};

/// Only an executing run that a runtime serves can be suspended; it becomes `suspending`.
pub(crate) fn precondition(t: &mut Table, run: RunId) -> Result<ConnId, ControlError> {
    transition(
        t,
        run,
        "suspend",
        &[RunState::Executing],
        RunState::Suspending,
    )
}

/// Checks that the run is in one of `from` and started on a connection, then sets `to`.
pub(crate) fn transition(
    t: &mut Table,
    run: RunId,
    op: &'static str,
    from: &[RunState],
    to: RunState,
) -> Result<ConnId, ControlError> {
    let state = t.state(run).ok_or(ControlError::NoSuchRun(run))?;
    match t.bound(run) {
        Some(conn) if from.contains(&state) => {
            t.set_state(run, to);
            Ok(conn)
        }
        _ => Err(ControlError::InvalidState { run, state, op }),
    }
}

/// Rules 3 and 4: `231` sets smRunState. 401/402/431 mean the runtime cannot suspend: the
/// run stays `suspending` (RFC 3165 smRunState) until resumed or terminated. Any other
/// `4yz` means this suspend failed: back to `executing`.
pub(crate) fn on_reply(t: &mut Table, run: RunId, reply: &Reply, who: &str) -> Effects {
    match reply {
        Reply::Status { state, .. } => t.set_state(run, *state),
        Reply::Negative { code, .. } => match code {
            Negative::Syntax | Negative::UnknownCommand | Negative::IllegalRunId => {
                t.set_suspend_unsupported(run);
                tracing::info!(run = %run, "{who} cannot suspend ({code})");
            }
            _ => {
                if t.state(run) == Some(RunState::Suspending) {
                    t.set_state(run, RunState::Executing);
                }
            }
        },
        _ => {}
    }
    Effects::NONE
}

pub(super) async fn suspend(inner: Arc<Inner>, run: RunId) -> Result<RunInfo, ControlError> {
    let conn = precondition(&mut inner.table.lock().expect("table lock"), run)?;
    inner
        .control(conn, Pending::Suspend(run), |id| {
            crate::proto::Command::Suspend { id, run }
        })
        .await
}
