//! A command awaiting its reply, and what its reply or its timeout does to the run table.
//!
//! The rules live in one file per command (`start.rs` ... `status.rs`); this file only
//! routes a reply to its command's rule and names the effects that need IO, which the
//! connection task carries out. Everything here is pure over the [`Table`].

use crate::proto::{ExitCode, Reply, RunId};

use super::table::Table;
use super::{abort, resume, start, status, suspend};

/// What a pending command was, so its reply can be applied (RFC 3179 6.2.3-6.2.7). An
/// abort's cause is the table's (`Table::aborting`): an abort sent for a run the host has
/// already ended (a clean-up after a timeout) finds none, and its reply changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    Start(RunId),
    Suspend(RunId),
    Resume(RunId),
    Abort(RunId),
    Status(RunId),
}

/// What a rule asks of the connection after changing the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    /// Send `abort` for the run: the host has ended it, the runtime may still run it.
    pub cleanup_abort: bool,
    /// Drop the run's pending commands other than an abort: the run has ended.
    pub cancel_pending: bool,
}

impl Effects {
    pub const NONE: Effects = Effects {
        cleanup_abort: false,
        cancel_pending: false,
    };
    pub const CLEANUP_ABORT: Effects = Effects {
        cleanup_abort: true,
        cancel_pending: false,
    };
}

impl Pending {
    pub fn run(self) -> RunId {
        match self {
            Pending::Start(r)
            | Pending::Suspend(r)
            | Pending::Resume(r)
            | Pending::Abort(r)
            | Pending::Status(r) => r,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Pending::Start(_) => "start",
            Pending::Suspend(_) => "suspend",
            Pending::Resume(_) => "resume",
            Pending::Abort(_) => "abort",
            Pending::Status(_) => "status",
        }
    }

    /// Whether `reply` answers this command; anything else with the same Id is discarded
    /// (rule 5 of sections 6.2.3-6.2.7).
    pub fn accepts(self, reply: &Reply) -> bool {
        match (self, reply) {
            (_, Reply::Negative { .. }) => true,
            (Pending::Abort(_), Reply::Aborted { .. }) => true,
            (Pending::Abort(_), _) => false,
            (_, Reply::Status { .. }) => true,
            _ => false,
        }
    }

    /// Applies the reply to the run (rules 3 and 4 of 6.2.3-6.2.7). `who` names the runtime
    /// in error texts.
    pub fn apply(self, t: &mut Table, reply: &Reply, who: &str) -> Effects {
        match self {
            Pending::Start(run) => start::on_reply(t, run, reply, who),
            Pending::Suspend(run) => suspend::on_reply(t, run, reply, who),
            Pending::Resume(run) => resume::on_reply(t, run, reply, who),
            Pending::Abort(run) => abort::on_reply(t, run, reply, who),
            Pending::Status(run) => status::on_reply(t, run, reply, who),
        }
    }

    /// Applies a missing reply (rule 1 of 6.2.3-6.2.7); `why` says what happened.
    pub fn timed_out(self, t: &mut Table, why: &str) -> Effects {
        match self {
            Pending::Abort(run) => abort::on_timeout(t, run, why),
            _ => terminate_for_timeout(t, self.run(), why),
        }
    }
}

/// Rule 1 of 6.2.3, 6.2.4, 6.2.5 and 6.2.7: "the agent aborts the script and sets the
/// smRunExitCode to genericError": the run ends now, and `abort` is still sent so the
/// runtime stops it.
pub(crate) fn terminate_for_timeout(t: &mut Table, run: RunId, why: &str) -> Effects {
    if t.terminate(run, Some(ExitCode::GenericError), Some(why)) {
        tracing::warn!(run = %run, "{why}");
    }
    Effects::CLEANUP_ABORT
}

/// The rules of RFC 3179 sections 6.2.3-6.2.7, one row each, applied to a run started on
/// connection #1. A row without a reply line is the rule-1 timeout.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::clock::TimeInterval;
    use crate::host::table::{AbortCause, ConnId, NewRun};
    use crate::proto::RunState::{self, *};
    use crate::proto::{ExitCode::*, Octets};
    use std::sync::Arc;

    const RUN: RunId = RunId(1);

    /// What the run is doing when the reply arrives.
    #[derive(Clone, Copy)]
    enum Before {
        /// `start` sent, no reply yet.
        Starting,
        /// A control command moved it to this transient state.
        In(RunState),
        /// Resuming a run whose runtime could not suspend (6.2.4 rule 3 happened before).
        ResumingUnsupported,
        /// An abort with this cause is in progress.
        Aborting(AbortCause),
        /// The script's own `538` with this code came before the abort's reply.
        AbortingAfterExit(AbortCause, ExitCode),
        /// Ended by the host (a timeout); a clean-up abort was sent.
        EndedByHost,
    }

    struct Row {
        rule: &'static str,
        pending: fn(RunId) -> Pending,
        before: Before,
        /// The reply line; `None`: the command timed out.
        reply: Option<&'static str>,
        state: RunState,
        /// Checked once terminated.
        exit: ExitCode,
        error: &'static str,
        effects: Effects,
    }

    fn table(before: Before) -> Table {
        let mut t = Table::new(crate::host::EventBus::new(), 10);
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
        t.attach(RUN, ConnId(1), Some(9));
        t.bind(RUN, ConnId(1));
        match before {
            Before::Starting => {}
            Before::In(s) => {
                t.set_state(RUN, Executing);
                t.set_state(RUN, s);
            }
            Before::ResumingUnsupported => {
                t.set_state(RUN, Suspending);
                t.set_suspend_unsupported(RUN);
                t.set_state(RUN, Resuming);
            }
            Before::Aborting(cause) => {
                t.set_state(RUN, Executing);
                t.begin_abort(RUN, cause).unwrap();
            }
            Before::AbortingAfterExit(cause, exit) => {
                t.set_state(RUN, Executing);
                t.begin_abort(RUN, cause).unwrap();
                t.report_exit(RUN, exit);
            }
            Before::EndedByHost => {
                t.set_state(RUN, Executing);
                t.terminate(RUN, Some(GenericError), Some("no reply to `status`"));
            }
        }
        t
    }

    #[rustfmt::skip]
    const ROWS: &[Row] = &[
        // 6.2.3 start
        Row { rule: "6.2.3 rule 1: timeout aborts, genericError", pending: Pending::Start, before: Before::Starting, reply: None, state: Terminated, exit: GenericError, error: "no reply", effects: Effects::CLEANUP_ABORT },
        Row { rule: "6.2.3 rule 3: 4yz, script cannot be started", pending: Pending::Start, before: Before::Starting, reply: Some("421 2"), state: Terminated, exit: GenericError, error: "refused to start the script: 421", effects: Effects::NONE },
        Row { rule: "6.2.3 rule 4: 231 updates smRunState", pending: Pending::Start, before: Before::Starting, reply: Some("231 2 2"), state: Executing, exit: NoError, error: "", effects: Effects::NONE },
        // 6.2.4 suspend
        Row { rule: "6.2.4 rule 1: timeout aborts, genericError", pending: Pending::Suspend, before: Before::In(Suspending), reply: None, state: Terminated, exit: GenericError, error: "no reply", effects: Effects::CLEANUP_ABORT },
        Row { rule: "6.2.4 rule 3: 401, no suspend capability, processing stops", pending: Pending::Suspend, before: Before::In(Suspending), reply: Some("401 2"), state: Suspending, exit: NoError, error: "", effects: Effects::NONE },
        Row { rule: "6.2.4 rule 3: 402, no suspend capability", pending: Pending::Suspend, before: Before::In(Suspending), reply: Some("402 2"), state: Suspending, exit: NoError, error: "", effects: Effects::NONE },
        Row { rule: "6.2.4 rule 3: 431, no suspend capability", pending: Pending::Suspend, before: Before::In(Suspending), reply: Some("431 2"), state: Suspending, exit: NoError, error: "", effects: Effects::NONE },
        Row { rule: "6.2.4 (RFC 3165 smRunState): 434, suspend failed, back to executing", pending: Pending::Suspend, before: Before::In(Suspending), reply: Some("434 2"), state: Executing, exit: NoError, error: "", effects: Effects::NONE },
        Row { rule: "6.2.4 rule 4: 231 updates smRunState", pending: Pending::Suspend, before: Before::In(Suspending), reply: Some("231 2 4"), state: Suspended, exit: NoError, error: "", effects: Effects::NONE },
        // 6.2.5 resume
        Row { rule: "6.2.5 rule 1: timeout aborts, genericError", pending: Pending::Resume, before: Before::In(Resuming), reply: None, state: Terminated, exit: GenericError, error: "no reply", effects: Effects::CLEANUP_ABORT },
        Row { rule: "6.2.5 rule 3: 431, resume stops, still suspended", pending: Pending::Resume, before: Before::In(Resuming), reply: Some("431 2"), state: Suspended, exit: NoError, error: "", effects: Effects::NONE },
        Row { rule: "6.2.5 rule 3: never suspended (6.2.4 rule 3), so executing", pending: Pending::Resume, before: Before::ResumingUnsupported, reply: Some("402 2"), state: Executing, exit: NoError, error: "", effects: Effects::NONE },
        Row { rule: "6.2.5 rule 4: 231 updates smRunState", pending: Pending::Resume, before: Before::In(Resuming), reply: Some("231 2 2"), state: Executing, exit: NoError, error: "", effects: Effects::NONE },
        // 6.2.6 abort
        Row { rule: "6.2.6 rule 1: timeout, genericError", pending: Pending::Abort, before: Before::Aborting(AbortCause::Manager), reply: None, state: Terminated, exit: GenericError, error: "no reply", effects: Effects::NONE },
        Row { rule: "6.2.6 rule 3: 4yz, cannot be aborted, genericError", pending: Pending::Abort, before: Before::Aborting(AbortCause::Manager), reply: Some("434 2"), state: Terminated, exit: GenericError, error: "could not abort the script: 434", effects: Effects::NONE },
        Row { rule: "6.2.6 rule 3: 431 after the script's own 538: its outcome stands", pending: Pending::Abort, before: Before::AbortingAfterExit(AbortCause::Manager, RuntimeError), reply: Some("431 2"), state: Terminated, exit: RuntimeError, error: "", effects: Effects::NONE },
        Row { rule: "6.2.6 rule 4: 232 to a manager abort: halted", pending: Pending::Abort, before: Before::Aborting(AbortCause::Manager), reply: Some("232 2"), state: Terminated, exit: Halted, error: "", effects: Effects::NONE },
        Row { rule: "6.2.6 rule 4: 232 to a lifetime abort: lifeTimeExceeded", pending: Pending::Abort, before: Before::Aborting(AbortCause::LifeTime), reply: Some("232 2"), state: Terminated, exit: LifeTimeExceeded, error: "", effects: Effects::NONE },
        Row { rule: "6.2.6 rule 4: 232 decides even after a 538", pending: Pending::Abort, before: Before::AbortingAfterExit(AbortCause::LifeTime, Halted), reply: Some("232 2"), state: Terminated, exit: LifeTimeExceeded, error: "", effects: Effects::NONE },
        Row { rule: "6.2.6 (clean-up after rule 1 elsewhere): 232 changes nothing", pending: Pending::Abort, before: Before::EndedByHost, reply: Some("232 2"), state: Terminated, exit: GenericError, error: "no reply to `status`", effects: Effects::NONE },
        Row { rule: "6.2.6 (clean-up): its timeout changes nothing", pending: Pending::Abort, before: Before::EndedByHost, reply: None, state: Terminated, exit: GenericError, error: "no reply to `status`", effects: Effects::NONE },
        // 6.2.7 status
        Row { rule: "6.2.7 rule 1: timeout aborts, genericError", pending: Pending::Status, before: Before::In(Executing), reply: None, state: Terminated, exit: GenericError, error: "no reply", effects: Effects::CLEANUP_ABORT },
        Row { rule: "6.2.7 rule 3: 4yz is fatal: abort, genericError", pending: Pending::Status, before: Before::In(Executing), reply: Some("431 2"), state: Terminated, exit: GenericError, error: "cannot report the script's status: 431", effects: Effects::CLEANUP_ABORT },
        Row { rule: "6.2.7 rule 4: 231 updates smRunState", pending: Pending::Status, before: Before::In(Executing), reply: Some("231 2 4"), state: Suspended, exit: NoError, error: "", effects: Effects::NONE },
    ];

    #[test]
    fn reply_rules_of_6_2_3_to_6_2_7() {
        for row in ROWS {
            let mut t = table(row.before);
            let what = (row.pending)(RUN);
            let effects = match row.reply {
                Some(line) => {
                    let reply = Reply::decode(format!("{line}\r\n").as_bytes()).unwrap();
                    assert!(what.accepts(&reply), "{}: not accepted", row.rule);
                    what.apply(&mut t, &reply, "runtime r (pid 9)")
                }
                None => what.timed_out(&mut t, "no reply to `x` from runtime r (pid 9) within 1s"),
            };
            let r = t.snapshot(RUN).unwrap();
            assert_eq!(r.state, row.state, "{}", row.rule);
            if r.state == Terminated {
                assert_eq!(r.exit_code, row.exit, "{}", row.rule);
                assert!(t.is_settled(RUN), "{}: settled", row.rule);
                assert_eq!(t.runs_on(ConnId(1)), 0, "{}: left its connection", row.rule);
            }
            assert!(
                r.error.contains(row.error),
                "{}: error {:?}",
                row.rule,
                r.error
            );
            assert_eq!(effects, row.effects, "{}", row.rule);
        }
    }

    #[test]
    fn rule_5_replies_of_the_wrong_kind_are_discarded() {
        let decode = |l: &str| Reply::decode(format!("{l}\r\n").as_bytes()).unwrap();
        for what in [
            Pending::Start(RUN),
            Pending::Suspend(RUN),
            Pending::Resume(RUN),
            Pending::Status(RUN),
        ] {
            assert!(!what.accepts(&decode("232 2")), "{what:?} takes no 232");
            assert!(what.accepts(&decode("231 2 2")));
            assert!(what.accepts(&decode("434 2")));
        }
        assert!(
            !Pending::Abort(RUN).accepts(&decode("231 2 2")),
            "abort takes no 231"
        );
        assert!(Pending::Abort(RUN).accepts(&decode("232 2")));
        assert!(!Pending::Abort(RUN).accepts(&decode("211 2 SMX/1.1")));
    }
}
