//! `resume` (RFC 3179 section 6.2.5), smRunControl `resume`: a suspended run goes to
//! `resuming` until the runtime answers.

use std::sync::Arc;

use crate::proto::{Reply, RunId, RunState};

use super::pending::{Effects, Pending};
use super::suspend::transition;
use super::table::{ConnId, Table};
use super::{ControlError, Inner, RunInfo};

/// A suspended run can be resumed; so can one left `suspending` by a runtime that cannot
/// suspend (6.2.4 rule 3). It becomes `resuming`.
pub(crate) fn precondition(t: &mut Table, run: RunId) -> Result<ConnId, ControlError> {
    let from: &[RunState] = if t.suspend_unsupported(run) {
        &[RunState::Suspended, RunState::Suspending]
    } else {
        &[RunState::Suspended]
    };
    transition(t, run, "resume", from, RunState::Resuming)
}

/// Rules 3 and 4: `231` sets smRunState; a `4yz` means this resume failed: back to
/// `suspended`, or to `executing` when the runtime never could suspend the run.
pub(crate) fn on_reply(t: &mut Table, run: RunId, reply: &Reply, who: &str) -> Effects {
    match reply {
        Reply::Status { state, .. } => t.set_state(run, *state),
        Reply::Negative { code, .. } => {
            if t.state(run) == Some(RunState::Resuming) {
                let back = if t.suspend_unsupported(run) {
                    RunState::Executing
                } else {
                    RunState::Suspended
                };
                t.set_state(run, back);
            }
            tracing::info!(run = %run, "{who} could not resume: {code}");
        }
        _ => {}
    }
    Effects::NONE
}

pub(super) async fn resume(inner: Arc<Inner>, run: RunId) -> Result<RunInfo, ControlError> {
    let conn = precondition(&mut inner.table.lock().expect("table lock"), run)?;
    inner
        .control(conn, Pending::Resume(run), |id| {
            crate::proto::Command::Resume { id, run }
        })
        .await
}
