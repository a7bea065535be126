//! SNMP Sets as the master agent runs them (RFC 2741 section 7.2.4): TestSet turns every
//! varbind of the PDU into one change set of the model and checks it whole; CommitSet
//! applies all of it or none; UndoSet puts back what a commit did (another subagent's
//! part of the same SNMP Set failed); CleanupSet forgets the transaction.
//!
//! The model ([`crate::mib::Mib`]) owns the rules (ranges, lengths, RowStatus, the
//! smLaunchStart checks); this module adds what only the wire can tell: which column a
//! name is, whether it can be written at all (notWritable, noCreation) and whether the
//! value's type is the column's (wrongType).

use crate::agentx::{ResError, Value, VarBind};
use crate::mib::{
    Change, CodeCol, LaunchCol, LaunchView, Mib, Principal, RowStatus, RunCol, ScriptCol,
    ScriptRow, SetError,
};
use crate::proto::RunId;

use super::index;
use super::view::Table;

/// What a column's SYNTAX takes on the wire.
#[derive(Clone, Copy)]
enum Syntax {
    Integer,
    Unsigned,
    Octets,
}

/// The SNMP error-status of a model error.
pub fn res_error(e: &SetError) -> ResError {
    ResError::from_code(e.status() as u16)
}

/// The varbinds of a TestSet as model changes, or the (0-based) varbind and the
/// error-status that refuses it.
pub fn changes(varbinds: &[VarBind]) -> Result<Vec<Change>, (usize, ResError)> {
    varbinds
        .iter()
        .enumerate()
        .map(|(i, vb)| change(vb).map_err(|e| (i, e)))
        .collect()
}

fn change(vb: &VarBind) -> Result<Change, ResError> {
    // RFC 3416 4.2.5 step 2: nothing with this prefix can ever be written.
    let (t, col, idx) = Table::locate(vb.name.subids()).ok_or(ResError::NotWritable)?;
    let syntax = match (t, col) {
        (Table::Script, 3 | 5) | (Table::Code, 2) | (Table::Launch, 3..=5) => Syntax::Octets,
        (Table::Launch, 6 | 7) => Syntax::Unsigned,
        (Table::Script, 4 | 6 | 8 | 9)
        | (Table::Code, 3)
        | (Table::Launch, 8..=12 | 15 | 16 | 19)
        | (Table::Run, 5 | 6 | 9) => Syntax::Integer,
        _ => return Err(ResError::NotWritable),
    };
    // Step 3: the value's type must be the column's.
    let (n, s) = match (syntax, &vb.value) {
        (Syntax::Integer, Value::Integer(n)) => (i64::from(*n), Vec::new()),
        (Syntax::Unsigned, Value::Gauge32(n)) => (i64::from(*n), Vec::new()),
        (Syntax::Octets, Value::OctetString(s)) => (0, s.clone()),
        _ => return Err(ResError::WrongType),
    };
    // Step 7: an instance that could never exist cannot be created.
    let bad = ResError::NoCreation;
    Ok(match t {
        Table::Script => {
            let (owner, name) = index::parse_owner_name(idx).ok_or(bad)?;
            let col = match col {
                3 => ScriptCol::Descr(s),
                4 => ScriptCol::Language(n),
                5 => ScriptCol::Source(s),
                6 => ScriptCol::AdminStatus(n),
                8 => ScriptCol::StorageType(n),
                _ => ScriptCol::RowStatus(n),
            };
            Change::Script { owner, name, col }
        }
        Table::Code => {
            let (owner, name, index) = index::parse_owner_name_n(idx).ok_or(bad)?;
            let col = match col {
                2 => CodeCol::Text(s),
                _ => CodeCol::RowStatus(n),
            };
            Change::Code {
                owner,
                name,
                index,
                col,
            }
        }
        Table::Launch => {
            let (owner, name) = index::parse_owner_name(idx).ok_or(bad)?;
            let col = match col {
                3 => LaunchCol::ScriptOwner(s),
                4 => LaunchCol::ScriptName(s),
                5 => LaunchCol::Argument(s),
                6 => LaunchCol::MaxRunning(n),
                7 => LaunchCol::MaxCompleted(n),
                8 => LaunchCol::LifeTime(n),
                9 => LaunchCol::ExpireTime(n),
                10 => LaunchCol::Start(n),
                11 => LaunchCol::Control(n),
                12 => LaunchCol::AdminStatus(n),
                15 => LaunchCol::StorageType(n),
                16 => LaunchCol::RowStatus(n),
                _ => LaunchCol::RowExpireTime(n),
            };
            Change::Launch { owner, name, col }
        }
        Table::Run => {
            let (owner, name, index) = index::parse_owner_name_n(idx).ok_or(bad)?;
            let col = match col {
                5 => RunCol::LifeTime(n),
                6 => RunCol::ExpireTime(n),
                _ => RunCol::Control(n),
            };
            Change::Run {
                owner,
                name,
                index,
                col,
            }
        }
        Table::Lang | Table::Extsn => return Err(ResError::NotWritable),
    })
}

/// A Response's error for a failed varbind `i` (0-based): res.index is 1-based.
pub fn failure(i: usize, e: ResError) -> (ResError, u16) {
    (e, u16::try_from(i + 1).unwrap_or(u16::MAX))
}

/// How to put back what a committed change set did: captured just before the commit.
#[derive(Debug, Default)]
pub struct Undo {
    /// Changes that restore rows which existed before, in order.
    restore: Vec<Change>,
    /// Rows the commit created, to be destroyed again.
    created: Vec<Change>,
    /// Runs the commit started, to be aborted.
    started: Vec<RunId>,
}

impl Undo {
    /// What undoing `changes` would take, given the rows as they are now.
    pub fn capture(mib: &Mib, changes: &[Change]) -> Undo {
        let mut u = Undo::default();
        let mut seen = std::collections::BTreeSet::new();
        for c in changes {
            match c {
                Change::Script { owner, name, col } => match mib.script(owner, name) {
                    Some(old) => u.restore.extend(restore_script(&old, col)),
                    None => {
                        if seen.insert(("s", owner.clone(), name.clone(), 0)) {
                            let s = |col| Change::Script {
                                owner: owner.clone(),
                                name: name.clone(),
                                col,
                            };
                            u.created.push(s(ScriptCol::AdminStatus(2)));
                            u.created.push(s(ScriptCol::RowStatus(6)));
                        }
                    }
                },
                Change::Code {
                    owner, name, index, ..
                } => {
                    let exists = mib
                        .code(Some((owner, name)))
                        .iter()
                        .any(|r| r.index == *index);
                    if !exists && seen.insert(("c", owner.clone(), name.clone(), *index)) {
                        u.created.push(Change::Code {
                            owner: owner.clone(),
                            name: name.clone(),
                            index: *index,
                            col: CodeCol::RowStatus(6),
                        });
                    }
                }
                Change::Launch { owner, name, col } => match mib.launch(owner, name) {
                    Some(old) => u.restore.extend(restore_launch(&old, col)),
                    None => {
                        if seen.insert(("l", owner.clone(), name.clone(), 0)) {
                            let l = |col| Change::Launch {
                                owner: owner.clone(),
                                name: name.clone(),
                                col,
                            };
                            u.created.push(l(LaunchCol::AdminStatus(2)));
                            u.created.push(l(LaunchCol::RowStatus(6)));
                        }
                    }
                },
                Change::Run {
                    owner,
                    name,
                    index,
                    col,
                } => {
                    let Some(r) = mib.host().run_at(owner, name, *index) else {
                        continue;
                    };
                    let col = match col {
                        RunCol::LifeTime(_) => RunCol::LifeTime(r.lifetime.centis().into()),
                        RunCol::ExpireTime(_) => RunCol::ExpireTime(r.expire_time.centis().into()),
                        // An abort, suspend or resume cannot be taken back.
                        RunCol::Control(_) => continue,
                    };
                    u.restore.push(Change::Run {
                        owner: owner.clone(),
                        name: name.clone(),
                        index: *index,
                        col,
                    });
                }
            }
        }
        u
    }

    /// The runs the commit started (they are aborted by an undo).
    pub fn started(&mut self, runs: impl IntoIterator<Item = RunId>) {
        self.started.extend(runs);
    }

    /// Puts things back, each step a request of its own (a row must be disabled before
    /// it is destroyed). `Err` if some step was refused: the answer is undoFailed.
    pub async fn run(self, mib: &Mib) -> Result<(), SetError> {
        let mut failed = None;
        // An abort waits for the runtime's answer (up to the command timeout): in the
        // background, so the UndoSet is answered before the master gives up on us.
        for id in self.started {
            let host = mib.host().clone();
            tokio::spawn(async move {
                if let Err(e) = host.abort(id).await {
                    tracing::info!(run = %id, "UndoSet: abort: {e}");
                }
            });
        }
        for c in self.restore.into_iter().rev().chain(self.created) {
            if let Err((_, e)) = mib.set(&Principal::Admin, std::slice::from_ref(&c)).await {
                tracing::warn!(?c, "UndoSet: {e}");
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

fn restore_script(old: &ScriptRow, col: &ScriptCol) -> Option<Change> {
    let col = match col {
        ScriptCol::Descr(_) => ScriptCol::Descr(old.descr.clone().into_bytes()),
        ScriptCol::Language(_) => ScriptCol::Language(old.language.into()),
        ScriptCol::Source(_) => ScriptCol::Source(old.source.clone().into_bytes()),
        ScriptCol::AdminStatus(_) => ScriptCol::AdminStatus(old.admin_status.number()),
        ScriptCol::StorageType(_) => ScriptCol::StorageType(old.storage_type.number()),
        ScriptCol::RowStatus(_) => match old.row_status {
            RowStatus::Active | RowStatus::NotInService => {
                ScriptCol::RowStatus(old.row_status.number())
            }
            _ => return None,
        },
    };
    Some(Change::Script {
        owner: old.owner.clone(),
        name: old.name.clone(),
        col,
    })
}

fn restore_launch(old: &LaunchView, col: &LaunchCol) -> Option<Change> {
    let r = &old.row;
    let col = match col {
        LaunchCol::ScriptOwner(_) => LaunchCol::ScriptOwner(r.script_owner.clone().into_bytes()),
        LaunchCol::ScriptName(_) => LaunchCol::ScriptName(r.script_name.clone().into_bytes()),
        LaunchCol::Argument(_) => LaunchCol::Argument(r.argument.as_bytes().to_vec()),
        LaunchCol::MaxRunning(_) => LaunchCol::MaxRunning(r.max_running.into()),
        LaunchCol::MaxCompleted(_) => LaunchCol::MaxCompleted(r.max_completed.into()),
        LaunchCol::LifeTime(_) => LaunchCol::LifeTime(r.lifetime.centis().into()),
        LaunchCol::ExpireTime(_) => LaunchCol::ExpireTime(r.expire_time.centis().into()),
        LaunchCol::AdminStatus(_) => LaunchCol::AdminStatus(r.admin_status.number()),
        LaunchCol::StorageType(_) => LaunchCol::StorageType(r.storage_type.number()),
        LaunchCol::RowExpireTime(_) => {
            LaunchCol::RowExpireTime(old.row_expire_time.centis().into())
        }
        LaunchCol::RowStatus(_) => match r.row_status {
            RowStatus::Active | RowStatus::NotInService => {
                LaunchCol::RowStatus(r.row_status.number())
            }
            _ => return None,
        },
        // Started runs are aborted instead; a control cannot be taken back.
        LaunchCol::Start(_) | LaunchCol::Control(_) => return None,
    };
    Some(Change::Launch {
        owner: r.owner.clone(),
        name: r.name.clone(),
        col,
    })
}
