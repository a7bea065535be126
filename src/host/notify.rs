//! Asynchronous notifications (RFC 3179 section 6.2.8): `5yz` lines with Id 0 that report
//! a run's state changes, results, errors and termination.

use crate::proto::{ExitCode, Reply};

use super::pending::Effects;
use super::table::{ConnId, Table};

/// Applies a notification that arrived on `conn`. The host "checks whether a running
/// script with the given RunId exists in the runtime system": the run must have been
/// started on this connection and not have ended, except that a run reported terminated
/// (by a `531`) still takes the `538` with its ExitCode. Anything else is ignored.
pub(crate) fn apply(t: &mut Table, conn: ConnId, reply: Reply) -> Effects {
    let Some(run) = reply.run() else {
        return Effects::NONE;
    };
    let Some(state) = t.state(run) else {
        tracing::debug!(run = %run, code = reply.code(), "notification for unknown run ignored");
        return Effects::NONE;
    };
    let ends = matches!(
        reply,
        Reply::Terminated { .. } | Reply::Completed { .. } | Reply::Failed { .. }
    );
    let terminated = state == crate::proto::RunState::Terminated;
    let open = !terminated || (ends && !t.exit_reported(run));
    if t.bound(run) != Some(conn) || !open {
        tracing::debug!(run = %run, code = reply.code(), "notification for a run not running in this runtime ignored");
        return Effects::NONE;
    }
    match reply {
        // Rule 2 (531): the new state.
        Reply::StateChange { state, .. } => t.set_state(run, state),
        // Rules 3-4 (532, 533): an intermediate result; 533 asks for smScriptResult.
        Reply::Result { state, result, .. } => {
            t.set_result(run, result, false);
            t.set_state(run, state);
        }
        Reply::ResultEvent { state, result, .. } => {
            t.set_result(run, result, true);
            t.set_state(run, state);
        }
        // Rule 5 (534): completed with a result.
        Reply::Completed { result, .. } => {
            t.set_result(run, result, false);
            t.report_exit(run, ExitCode::NoError);
        }
        // Rule 6 (535): failed with an error.
        Reply::Failed { exit, error, .. } => {
            t.set_error(run, error.as_bytes(), false);
            t.report_exit(run, exit);
        }
        // Rules 7-8 (536, 537): an error; 537 asks for smScriptException.
        Reply::Error { state, error, .. } => {
            t.set_error(run, error.as_bytes(), false);
            t.set_state(run, state);
        }
        Reply::ErrorEvent { state, error, .. } => {
            t.set_error(run, error.as_bytes(), true);
            t.set_state(run, state);
        }
        // Rule 9 (538): the ExitCode.
        Reply::Terminated { exit, .. } => t.report_exit(run, exit),
        _ => {}
    }
    Effects {
        cleanup_abort: false,
        // A run may end before its start was answered (6.1.2): nothing is owed now.
        cancel_pending: t.state(run) == Some(crate::proto::RunState::Terminated),
    }
}
