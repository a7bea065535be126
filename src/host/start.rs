//! `start` (RFC 3179 section 6.2.3): find or start the runtime, bind the run to it, send
//! the command; `231` puts the run into the state it names, a `4yz` ends it with
//! genericError, no reply within the command timeout ends it the same way (rule 1).

use std::sync::Arc;

use crate::proto::{Command, ExitCode, Id, Octets, Profile, Reply, RunId, Script};

use super::Inner;
use super::conn::Conn;
use super::launch::StartPlan;
use super::pending::{Effects, Pending};
use super::table::{ConnId, Table};

/// The precondition, checked under the connection's write lock just before `start` is
/// written: a run aborted while its runtime was starting ends here (halted or
/// lifeTimeExceeded) and nothing is sent; otherwise the run is bound to the connection, so
/// a later command for it can only be written after this `start`.
pub(crate) fn precondition(t: &mut Table, run: RunId, conn: ConnId) -> bool {
    if let Some(cause) = t.aborting(run) {
        t.finish_abort(run, cause.exit_code(), None);
        return false;
    }
    if t.bind(run, conn) {
        return true;
    }
    // Gone, or ended without ever being started: nothing holds it on the connection.
    t.force_settle(run);
    false
}

/// The command.
pub(crate) fn command(
    id: Id,
    run: RunId,
    script: Script,
    profile: Profile,
    argument: Octets,
) -> Command {
    Command::Start {
        id,
        run,
        script,
        profile,
        argument,
    }
}

/// Rules 3 and 4: `231` sets smRunState; a `4yz` means the script was not started.
pub(crate) fn on_reply(t: &mut Table, run: RunId, reply: &Reply, who: &str) -> Effects {
    match reply {
        Reply::Status { state, .. } => t.set_state(run, *state),
        Reply::Negative { code, .. } => {
            let msg = format!("{who} refused to start the script: {code}");
            t.terminate(run, Some(ExitCode::GenericError), Some(&msg));
        }
        _ => {}
    }
    Effects::NONE
}

/// Finds or starts the runtime (6.2.1), then sends `start`.
pub(super) async fn drive(inner: Arc<Inner>, run: RunId, plan: StartPlan) {
    // The futures of finding a runtime and of sending are boxed: a run waits here for
    // admission (see START_WINDOW), and 10,000 waiting runs should each hold only what
    // they need while waiting, not room for the largest step.
    let conn: Arc<Conn> = match Box::pin(inner.clone().conn_for(run, &plan)).await {
        Ok(c) => c,
        Err(e) => {
            let mut t = inner.table.lock().expect("table lock");
            match t.aborting(run) {
                Some(cause) => t.finish_abort(run, cause.exit_code(), None),
                None => {
                    t.terminate(run, Some(e.exit), Some(&e.message));
                    tracing::warn!(run = %run, "{}", e.message);
                }
            }
            return;
        }
    };
    let StartPlan {
        script,
        profile,
        argument,
        ..
    } = plan;
    // Admission (see START_WINDOW): wait for a place, then the command's timeout starts.
    let Ok(_place) = conn.starts.clone().acquire_owned().await else {
        return;
    };
    let id = conn.id;
    let check = || precondition(&mut inner.table.lock().expect("table lock"), run, id);
    Box::pin(inner.send_if(&conn, Pending::Start(run), check, |id| {
        command(id, run, script, profile, argument)
    }))
    .await;
}
