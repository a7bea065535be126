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

/// RFC 3179 6.2.8 rules 2-9, one row each, for a run started on connection #1.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::clock::TimeInterval;
    use crate::host::table::{EventKind, NewRun};
    use crate::proto::ExitCode::*;
    use crate::proto::RunState::*;
    use crate::proto::{Octets, RunId, RunState};
    use std::sync::Arc;

    const RUN: RunId = RunId(5);

    fn table() -> (Table, crate::host::Subscriber) {
        let bus = crate::host::EventBus::new();
        let rx = bus.subscribe();
        let mut t = Table::new(bus, 10);
        t.insert(NewRun {
            run_id: RUN,
            owner: "o".into(),
            name: "n".into(),
            script: "s".into(),
            runtime: "r".into(),
            profile: "p".into(),
            os_profile: None,
            argument: Octets::default(),
            lifetime: TimeInterval::MAX,
            expire_time: TimeInterval::MAX,
            index: None,
            max_running: None,
        })
        .unwrap();
        t.open_conn(ConnId(1), Arc::new(tokio::sync::Notify::new()));
        t.attach(RUN, ConnId(1), None);
        t.bind(RUN, ConnId(1));
        t.set_state(RUN, Executing);
        (t, rx)
    }

    fn decode(line: &str) -> Reply {
        Reply::decode(format!("{line}\r\n").as_bytes()).unwrap()
    }

    struct Row {
        rule: &'static str,
        line: &'static str,
        state: RunState,
        exit: Option<ExitCode>,
        result: &'static str,
        error: &'static str,
        /// The event that asks for a notification (smScriptResult / smScriptException).
        notify: bool,
    }

    #[rustfmt::skip]
    const ROWS: &[Row] = &[
        Row { rule: "rule 2: 531 updates smRunState", line: "531 0 5 4", state: Suspended, exit: None, result: "", error: "", notify: false },
        Row { rule: "rule 3: 532 updates smRunState and smRunResult", line: "532 0 5 2 \"half\"", state: Executing, exit: None, result: "half", error: "", notify: false },
        Row { rule: "rule 4: 533 also generates smScriptResult", line: "533 0 5 2 \"look\"", state: Executing, exit: None, result: "look", error: "", notify: true },
        Row { rule: "rule 5: 534 noError, terminated, smRunResult", line: "534 0 5 \"done\"", state: Terminated, exit: Some(NoError), result: "done", error: "", notify: false },
        Row { rule: "rule 6: 535 terminated, smExitCode and smRunError", line: "535 0 5 6 \"bad\"", state: Terminated, exit: Some(RuntimeError), result: "", error: "bad", notify: false },
        Row { rule: "rule 7: 536 updates smRunState and smRunError", line: "536 0 5 2 \"oops\"", state: Executing, exit: None, result: "", error: "oops", notify: false },
        Row { rule: "rule 8: 537 also generates smScriptException", line: "537 0 5 2 \"alarm\"", state: Executing, exit: None, result: "", error: "alarm", notify: true },
        Row { rule: "rule 9: 538 terminated with smExitCode", line: "538 0 5 5", state: Terminated, exit: Some(LanguageError), result: "", error: "", notify: false },
    ];

    #[test]
    fn notification_rules_of_6_2_8() {
        for row in ROWS {
            let (mut t, mut rx) = table();
            let effects = apply(&mut t, ConnId(1), decode(row.line));
            let r = t.snapshot(RUN).unwrap();
            assert_eq!(r.state, row.state, "{}", row.rule);
            if let Some(x) = row.exit {
                assert_eq!(r.exit_code, x, "{}", row.rule);
            }
            assert_eq!(r.result.as_bytes(), row.result.as_bytes(), "{}", row.rule);
            assert_eq!(r.error, row.error, "{}", row.rule);
            assert_eq!(
                effects.cancel_pending,
                row.state == Terminated,
                "{}",
                row.rule
            );
            let mut notified = false;
            while let Ok(e) = rx.try_recv() {
                notified |= matches!(
                    e.kind,
                    EventKind::Result { notify: true, .. } | EventKind::Error { notify: true, .. }
                );
            }
            assert_eq!(notified, row.notify, "{}", row.rule);
        }
    }

    #[test]
    fn only_a_run_running_in_this_runtime_is_changed() {
        // "Processing stops if there is no running script with the RunId."
        let (mut t, _rx) = table();
        apply(&mut t, ConnId(2), decode("532 0 5 2 \"forged\""));
        assert!(
            t.snapshot(RUN).unwrap().result.is_empty(),
            "another connection's notification"
        );
        apply(&mut t, ConnId(1), decode("532 0 99 2 \"x\""));
        // A 531 terminated still takes the 538 with the ExitCode, and nothing after it.
        apply(&mut t, ConnId(1), decode("531 0 5 7"));
        apply(&mut t, ConnId(1), decode("538 0 5 6"));
        apply(&mut t, ConnId(1), decode("538 0 5 1"));
        apply(&mut t, ConnId(1), decode("532 0 5 2 \"late\""));
        let r = t.snapshot(RUN).unwrap();
        assert_eq!((r.state, r.exit_code), (Terminated, RuntimeError));
        assert!(r.result.is_empty());
    }
}
