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
