//! Set processing over the Script MIB tables, as SNMP means it: all columns of one request
//! are staged together, each row's RowStatus transition is checked with every column the
//! request gives it (RFC 2579's state table), then the checks that span rows (smLaunchStart
//! checks 1-6 of RFC 3165, smLaunchControl, smRunTable columns) run against the staged rows
//! and the run table. A request that passes whole is committed; one that fails changes
//! nothing and names the change that failed. AgentX's TestSet is [`stage`], CommitSet is
//! [`commit`].

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use crate::host::TimeInterval;
use crate::proto::RunState;

use super::launch::{LaunchCol, LaunchRow, control, time_interval};
use super::script::{CodeCol, CodeRow, ScriptCol, ScriptRow};
use super::types::{Control, LaunchOper, RowStatus, ScriptAdmin, ScriptOper, SetError};
use super::{Key, State};

/// One column of one row, as a manager sets it. Integers come as the wire has them (the
/// model checks ranges); strings as octets.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Script {
        owner: String,
        name: String,
        col: ScriptCol,
    },
    Code {
        owner: String,
        name: String,
        index: u32,
        col: CodeCol,
    },
    Launch {
        owner: String,
        name: String,
        col: LaunchCol,
    },
    Run {
        owner: String,
        name: String,
        index: u32,
        col: RunCol,
    },
}

/// A writable smRunTable column.
#[derive(Debug, Clone, PartialEq)]
pub enum RunCol {
    LifeTime(i64),
    ExpireTime(i64),
    Control(i64),
}

/// Who sets. snmpd has applied VACM before a request reaches the subagent; the control API
/// knows its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// May read and set every owner's rows.
    Admin,
    /// May read and set only this owner's rows.
    User(String),
}

impl Principal {
    pub fn may_access(&self, owner: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::User(u) => u == owner,
        }
    }
}

/// What set processing needs to know of the run table and the host.
pub trait RunsView {
    /// Runs of the launch that have not terminated.
    fn active_of(&self, owner: &str, name: &str) -> u32;
    /// Whether the launch has any row in the smRunTable.
    fn has_runs(&self, owner: &str, name: &str) -> bool;
    /// smRunState of (owner, name, index), if the row exists.
    fn run_state(&self, owner: &str, name: &str, index: u32) -> Option<RunState>;
    /// The states of the launch's runs.
    fn run_states(&self, owner: &str, name: &str) -> Vec<RunState>;
    /// Whether scripts can run for this launch owner (it has an OS profile mapping).
    fn may_run(&self, owner: &str) -> Result<(), String>;
    /// Octets of smCodeText one owner may hold in all (0: no limit); `[host]
    /// storage_quota`, like the scripts it becomes.
    fn code_quota(&self) -> u64 {
        0
    }
}

/// What a committed request asks of the host, in request order.
#[derive(Debug, Clone)]
pub enum Action {
    /// Load the script (code, local storage or URL) and make it available.
    Enable { owner: String, name: String },
    /// Make the script's code editable in smCodeTable.
    Edit { owner: String, name: String },
    /// Start a run (smLaunchStart); `index` 0 asks for a fresh smRunIndex. `row` is the
    /// launch button as this request left it: the run takes its argument, lifetime and
    /// script from it, whatever a later request changes meanwhile.
    Start {
        owner: String,
        name: String,
        index: u32,
        row: Box<LaunchRow>,
    },
    /// smLaunchControl, fanned out to the applicable runs.
    LaunchControl {
        owner: String,
        name: String,
        control: Control,
    },
    RunControl {
        owner: String,
        name: String,
        index: u32,
        control: Control,
    },
    RunLifeTime {
        owner: String,
        name: String,
        index: u32,
        value: TimeInterval,
    },
    RunExpireTime {
        owner: String,
        name: String,
        index: u32,
        value: TimeInterval,
    },
    /// smLaunchMaxCompleted changed (or the row was created).
    MaxCompleted {
        owner: String,
        name: String,
        max: u32,
    },
    /// A script row was destroyed: its stored file can go.
    ScriptGone { owner: String, name: String },
    /// A launch row was destroyed.
    LaunchGone { owner: String, name: String },
}

/// The rows a request changes, as they will be (`None`: destroyed), and what it asks.
#[derive(Debug, Default)]
pub struct Staged {
    pub scripts: BTreeMap<Key, Option<ScriptRow>>,
    pub code: BTreeMap<CodeKey, Option<CodeRow>>,
    pub launches: BTreeMap<Key, Option<LaunchRow>>,
    pub actions: Vec<Action>,
}

type Failure = (usize, SetError);

/// smCodeTable's index: (owner, name, smCodeIndex).
type CodeKey = (String, String, u32);

/// The RowStatus value of a request, checked: notReady cannot be set (RFC 2579).
fn row_status(i: usize, v: i64, what: &str) -> Result<RowStatus, Failure> {
    match RowStatus::from_number(v) {
        Some(RowStatus::NotReady) | None => Err((
            i,
            SetError::WrongValue(format!(
                "{what} is set to active(1), notInService(2), createAndGo(4), createAndWait(5) or destroy(6)"
            )),
        )),
        Some(rs) => Ok(rs),
    }
}

/// A conceptual row with a RowStatus column.
trait Conceptual {
    fn status(&mut self) -> &mut RowStatus;
    /// The required column still missing for `active`.
    fn missing(&self) -> Option<&'static str>;
}

impl Conceptual for ScriptRow {
    fn status(&mut self) -> &mut RowStatus {
        &mut self.row_status
    }
    fn missing(&self) -> Option<&'static str> {
        ScriptRow::missing(self)
    }
}

impl Conceptual for CodeRow {
    fn status(&mut self) -> &mut RowStatus {
        &mut self.row_status
    }
    fn missing(&self) -> Option<&'static str> {
        CodeRow::missing(self)
    }
}

impl Conceptual for LaunchRow {
    fn status(&mut self) -> &mut RowStatus {
        &mut self.row_status
    }
    fn missing(&self) -> Option<&'static str> {
        LaunchRow::missing(self)
    }
}

/// RFC 2579's state table for one row and the columns one request gives it. `apply` sets
/// the other columns; `take_down` says whether an existing row may leave `active`.
fn transition<R: Conceptual + Clone>(
    existing: Option<&R>,
    rs: Option<(usize, RowStatus)>,
    first: usize,
    what: &str,
    create: impl FnOnce() -> R,
    take_down: impl Fn(&R) -> Result<(), SetError>,
    apply: impl FnOnce(&mut R) -> Result<(), Failure>,
) -> Result<Option<R>, Failure> {
    use RowStatus::*;
    let mut row = match (existing, rs) {
        (None, None) => {
            return Err((
                first,
                SetError::NoCreation(format!(
                    "no such {what} row; create it with its RowStatus (createAndGo or createAndWait)"
                )),
            ));
        }
        (None, Some((_, CreateAndGo | CreateAndWait))) => create(),
        // Destroying what does not exist succeeds (RFC 2579 state A).
        (None, Some((_, Destroy))) => return Ok(None),
        (None, Some((i, _))) => {
            return Err((
                i,
                SetError::InconsistentValue(format!("no such {what} row to activate")),
            ));
        }
        (Some(_), Some((i, CreateAndGo | CreateAndWait))) => {
            return Err((
                i,
                SetError::InconsistentValue(format!("the {what} row exists already")),
            ));
        }
        (Some(r), Some((i, Destroy))) => {
            take_down(r).map_err(|e| (i, e))?;
            return Ok(None);
        }
        (Some(r), _) => r.clone(),
    };
    apply(&mut row)?;
    let missing = row.missing();
    match rs {
        Some((i, CreateAndGo | Active)) => {
            if let Some(m) = missing {
                return Err((
                    i,
                    SetError::InconsistentValue(format!(
                        "{m} must be set before the row is active"
                    )),
                ));
            }
            *row.status() = Active;
        }
        Some((_, CreateAndWait)) => {
            *row.status() = if missing.is_some() {
                NotReady
            } else {
                NotInService
            };
        }
        Some((i, NotInService)) => {
            if let Some(m) = missing {
                return Err((i, SetError::InconsistentValue(format!("{m} is not set"))));
            }
            if *row.status() == Active {
                take_down(&row).map_err(|e| (i, e))?;
            }
            *row.status() = NotInService;
        }
        _ => {
            if *row.status() == NotReady && missing.is_none() {
                *row.status() = NotInService;
            }
        }
    }
    Ok(Some(row))
}

fn key_ok(i: usize, what: &str, owner: &str, name: &str, name_min: usize) -> Result<(), Failure> {
    let bad = owner.len() > 32 || name.len() < name_min || name.len() > 32;
    if bad {
        return Err((
            i,
            SetError::NoCreation(format!(
                "{what}: owner is 0..32 octets and name {name_min}..32 octets"
            )),
        ));
    }
    Ok(())
}

/// Whether a script (as staged, else as it is) is active and enabled.
fn script_enabled(state: &State, st: &Staged, owner: &str, name: &str) -> bool {
    let key = (owner.to_owned(), name.to_owned());
    let row = match st.scripts.get(&key) {
        Some(staged) => staged.as_ref(),
        None => state.scripts.get(&key),
    };
    row.is_some_and(|s| s.row_status == RowStatus::Active && s.oper_status == ScriptOper::Enabled)
}

/// Stages a request: checks it whole against the tables and the run table.
pub fn stage(
    state: &State,
    changes: &[Change],
    who: &Principal,
    runs: &dyn RunsView,
    now: SystemTime,
    at: Instant,
) -> Result<Staged, Failure> {
    let mut st = Staged::default();
    // Every row's changes, with the index of each change in the request.
    let mut scripts: BTreeMap<Key, Vec<(usize, &ScriptCol)>> = BTreeMap::new();
    let mut code: BTreeMap<CodeKey, Vec<(usize, &CodeCol)>> = BTreeMap::new();
    let mut launches: BTreeMap<Key, Vec<(usize, &LaunchCol)>> = BTreeMap::new();
    let mut run_changes = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let owner = match c {
            Change::Script { owner, .. }
            | Change::Code { owner, .. }
            | Change::Launch { owner, .. }
            | Change::Run { owner, .. } => owner,
        };
        if !who.may_access(owner) {
            return Err((
                i,
                SetError::NoCreation(format!("rows of owner {owner:?} are not accessible")),
            ));
        }
        match c {
            Change::Script { owner, name, col } => {
                key_ok(i, "smScriptTable", owner, name, 1)?;
                scripts
                    .entry((owner.clone(), name.clone()))
                    .or_default()
                    .push((i, col));
            }
            Change::Code {
                owner,
                name,
                index,
                col,
            } => {
                key_ok(i, "smCodeTable", owner, name, 1)?;
                if *index == 0 {
                    return Err((
                        i,
                        SetError::NoCreation("smCodeIndex is 1..4294967295".into()),
                    ));
                }
                code.entry((owner.clone(), name.clone(), *index))
                    .or_default()
                    .push((i, col));
            }
            Change::Launch { owner, name, col } => {
                key_ok(i, "smLaunchTable", owner, name, 1)?;
                launches
                    .entry((owner.clone(), name.clone()))
                    .or_default()
                    .push((i, col));
            }
            Change::Run {
                owner,
                name,
                index,
                col,
            } => run_changes.push((i, owner, name, *index, col)),
        }
    }

    for (key, cols) in &scripts {
        let rs = cols
            .iter()
            .find_map(|(i, c)| match c {
                ScriptCol::RowStatus(v) => {
                    Some(row_status(*i, *v, "smScriptRowStatus").map(|r| (*i, r)))
                }
                _ => None,
            })
            .transpose()?;
        let row = transition(
            state.scripts.get(key),
            rs,
            cols[0].0,
            "smScriptTable",
            || ScriptRow::new(&key.0, &key.1),
            |r| {
                r.may_take_down()?;
                let used = state.launches.values().any(|l| {
                    l.script_owner == key.0
                        && l.script_name == key.1
                        && runs.active_of(&l.owner, &l.name) > 0
                });
                if used {
                    return Err(SetError::InconsistentValue(
                        "scripts launched from this row are still running".into(),
                    ));
                }
                Ok(())
            },
            |r| {
                for (i, c) in cols {
                    if !matches!(c, ScriptCol::RowStatus(_)) {
                        r.set(c, now).map_err(|e| (*i, e))?;
                    }
                }
                Ok(())
            },
        )?;
        if row.is_none() && state.scripts.contains_key(key) {
            st.actions.push(Action::ScriptGone {
                owner: key.0.clone(),
                name: key.1.clone(),
            });
        }
        st.scripts.insert(key.clone(), row);
    }

    for (key, cols) in &code {
        let skey = (key.0.clone(), key.1.clone());
        let script = match st.scripts.get(&skey) {
            Some(s) => s.clone(),
            None => state.scripts.get(&skey).cloned(),
        };
        let first = cols[0].0;
        let Some(script) = script else {
            return Err((
                first,
                SetError::NoCreation("no smScriptTable row for this code".into()),
            ));
        };
        // Code is modified only while the script is being edited (RFC 3165 5.3), or set
        // up before the script row is active (7.1).
        let editable = script.oper_status == ScriptOper::Editing
            || script.admin_status == ScriptAdmin::Editing
            || script.row_status != RowStatus::Active;
        if !editable {
            return Err((
                first,
                SetError::InconsistentValue(format!(
                    "smCodeTable can be changed only while the script is editing (it is {})",
                    script.oper_status
                )),
            ));
        }
        let rs = cols
            .iter()
            .find_map(|(i, c)| match c {
                CodeCol::RowStatus(v) => {
                    Some(row_status(*i, *v, "smCodeRowStatus").map(|r| (*i, r)))
                }
                _ => None,
            })
            .transpose()?;
        let row = transition(
            state.code.get(key),
            rs,
            first,
            "smCodeTable",
            || CodeRow::new(&key.0, &key.1, key.2),
            |_| Ok(()),
            |r| {
                for (i, c) in cols {
                    if let CodeCol::Text(t) = c {
                        r.set_text(t).map_err(|e| (*i, e))?;
                    }
                }
                Ok(())
            },
        )?;
        st.code.insert(key.clone(), row);
    }
    // smCodeTable is script storage too: an owner's fragments count against its quota.
    let quota = runs.code_quota();
    if quota > 0 {
        let owners: std::collections::BTreeSet<&String> = code.keys().map(|k| &k.0).collect();
        for owner in owners {
            let kept: u64 = state
                .code
                .iter()
                .filter(|(k, _)| &k.0 == owner && !st.code.contains_key(*k))
                .map(|(_, c)| c.text.len() as u64)
                .sum();
            let staged: u64 = st
                .code
                .iter()
                .filter(|(k, _)| &k.0 == owner)
                .filter_map(|(_, c)| c.as_ref().map(|c| c.text.len() as u64))
                .sum();
            if kept + staged > quota {
                let first = code
                    .iter()
                    .find(|(k, _)| &k.0 == owner)
                    .map_or(0, |(_, cols)| cols[0].0);
                return Err((
                    first,
                    SetError::ResourceUnavailable(format!(
                        "owner {owner:?} would hold {} octets of smCodeText; the quota is {quota} ([host] storage_quota)",
                        kept + staged
                    )),
                ));
            }
        }
    }

    for (key, cols) in &launches {
        let rs = cols
            .iter()
            .find_map(|(i, c)| match c {
                LaunchCol::RowStatus(v) => {
                    Some(row_status(*i, *v, "smLaunchRowStatus").map(|r| (*i, r)))
                }
                _ => None,
            })
            .transpose()?;
        let existing = state.launches.get(key);
        // smLaunchStart check 4 must hold whenever the button starts, autostart included
        // (which has no principal): a principal may point a button only at scripts it may
        // read.
        for (i, c) in cols {
            if let LaunchCol::ScriptOwner(o) = c
                && !who.may_access(&String::from_utf8_lossy(o))
            {
                return Err((
                    *i,
                    SetError::InconsistentValue(format!(
                        "no read access to the scripts of owner {:?} (smLaunchStart check 4)",
                        String::from_utf8_lossy(o)
                    )),
                ));
            }
        }
        let has_runs = runs.has_runs(&key.0, &key.1);
        let row = transition(
            existing,
            rs,
            cols[0].0,
            "smLaunchTable",
            || LaunchRow::new(&key.0, &key.1, at),
            |r| {
                let enabled = script_enabled(state, &st, &r.script_owner, &r.script_name);
                r.may_take_down(r.oper(enabled, has_runs))
            },
            |r| {
                for (i, c) in cols {
                    match c {
                        LaunchCol::RowStatus(_) | LaunchCol::Start(_) | LaunchCol::Control(_) => {}
                        c => r.set(c, now, at).map_err(|e| (*i, e))?,
                    }
                }
                Ok(())
            },
        )?;
        if let Some(r) = &row {
            let changed = existing.is_none_or(|e| e.max_completed != r.max_completed);
            if changed {
                st.actions.push(Action::MaxCompleted {
                    owner: key.0.clone(),
                    name: key.1.clone(),
                    max: r.max_completed,
                });
            }
        } else if existing.is_some() {
            st.actions.push(Action::LaunchGone {
                owner: key.0.clone(),
                name: key.1.clone(),
            });
        }
        st.launches.insert(key.clone(), row);
    }

    // smLaunchStart and smLaunchControl act on the staged rows.
    let mut starts: BTreeMap<Key, u32> = BTreeMap::new();
    for (key, cols) in &launches {
        for (i, c) in cols {
            match c {
                LaunchCol::Start(v) => {
                    let index = u32::try_from(*v)
                        .ok()
                        .filter(|v| *v <= i32::MAX as u32)
                        .ok_or_else(|| {
                            (
                                *i,
                                SetError::WrongValue("smLaunchStart is 0..2147483647".into()),
                            )
                        })?;
                    let launch = st.launches[key].as_ref().ok_or_else(|| {
                        (
                            *i,
                            SetError::InconsistentValue("the launch row is being destroyed".into()),
                        )
                    })?;
                    start_checks(state, &st, launch, index, who, runs, &starts)
                        .map_err(|e| (*i, e))?;
                    *starts.entry(key.clone()).or_default() += 1;
                    st.actions.push(Action::Start {
                        owner: key.0.clone(),
                        name: key.1.clone(),
                        index,
                        row: Box::new(launch.clone()),
                    });
                }
                LaunchCol::Control(v) => {
                    let c = control("smLaunchControl", *v).map_err(|e| (*i, e))?;
                    if c == Control::Nop {
                        continue;
                    }
                    let applicable = runs
                        .run_states(&key.0, &key.1)
                        .into_iter()
                        .any(|s| control_allowed(c, s));
                    if !applicable {
                        return Err((
                            *i,
                            SetError::InconsistentValue(format!(
                                "no run of this launch button is in a state that allows {c}"
                            )),
                        ));
                    }
                    st.actions.push(Action::LaunchControl {
                        owner: key.0.clone(),
                        name: key.1.clone(),
                        control: c,
                    });
                }
                _ => {}
            }
        }
    }

    for (i, owner, name, index, col) in run_changes {
        let Some(state_now) = runs.run_state(owner, name, index) else {
            return Err((i, SetError::NoCreation("no such smRunTable row".into())));
        };
        let (owner, name) = (owner.clone(), name.clone());
        let action = match col {
            RunCol::LifeTime(v) => {
                let value = time_interval("smRunLifeTime", *v).map_err(|e| (i, e))?;
                if state_now == RunState::Terminated {
                    return Err((
                        i,
                        SetError::InconsistentValue("the run has terminated".into()),
                    ));
                }
                Action::RunLifeTime {
                    owner,
                    name,
                    index,
                    value,
                }
            }
            RunCol::ExpireTime(v) => Action::RunExpireTime {
                owner,
                name,
                index,
                value: time_interval("smRunExpireTime", *v).map_err(|e| (i, e))?,
            },
            RunCol::Control(v) => {
                let control = control("smRunControl", *v).map_err(|e| (i, e))?;
                if control == Control::Nop {
                    continue;
                }
                if !control_allowed(control, state_now) {
                    return Err((
                        i,
                        SetError::InconsistentValue(format!(
                            "the run is {state_now}: cannot {control}"
                        )),
                    ));
                }
                Action::RunControl {
                    owner,
                    name,
                    index,
                    control,
                }
            }
        };
        st.actions.push(action);
    }
    Ok(st)
}

/// Whether smRunControl `c` applies to a run in state `s` (RFC 3165 smRunControl).
pub fn control_allowed(c: Control, s: RunState) -> bool {
    match c {
        Control::Abort => !matches!(s, RunState::Aborting | RunState::Terminated),
        Control::Suspend => s == RunState::Executing,
        // `suspending' too: a runtime without suspend support stays there (RFC 3165 9).
        Control::Resume => matches!(s, RunState::Suspended | RunState::Suspending),
        Control::Nop => true,
    }
}

/// smLaunchStart checks 1-6 (RFC 3165 smLaunchStart); each failure is inconsistentValue.
fn start_checks(
    state: &State,
    st: &Staged,
    l: &LaunchRow,
    index: u32,
    who: &Principal,
    runs: &dyn RunsView,
    starts: &BTreeMap<Key, u32>,
) -> Result<(), SetError> {
    let bad = |m: String| Err(SetError::InconsistentValue(m));
    let skey = (l.script_owner.clone(), l.script_name.clone());
    let script = match st.scripts.get(&skey) {
        Some(s) => s.as_ref(),
        None => state.scripts.get(&skey),
    };
    // 1) smLaunchOperStatus is enabled.
    let enabled = script
        .is_some_and(|s| s.row_status == RowStatus::Active && s.oper_status == ScriptOper::Enabled);
    let oper = l.oper(enabled, runs.has_runs(&l.owner, &l.name));
    if oper != LaunchOper::Enabled {
        // Say why, most specific first.
        return match script {
            // 2) the script row exists.
            None => bad(format!(
                "check 2: no script {}/{} in smScriptTable",
                l.script_owner, l.script_name
            )),
            // 3) it is enabled.
            Some(s)
                if s.oper_status != ScriptOper::Enabled || s.row_status != RowStatus::Active =>
            {
                bad(format!(
                    "check 3: script {}/{} is {}",
                    l.script_owner, l.script_name, s.oper_status
                ))
            }
            _ => bad(format!(
                "check 1: the launch button is {oper} (smLaunchAdminStatus {}, row {})",
                l.admin_status, l.row_status
            )),
        };
    }
    // 4) the principal may read the script.
    if !who.may_access(&l.script_owner) {
        return bad(format!(
            "check 4: no read access to the scripts of owner {:?}",
            l.script_owner
        ));
    }
    // 5) a given index is unused (0: one is generated).
    if index != 0 && runs.run_state(&l.owner, &l.name, index).is_some() {
        return bad(format!("check 5: smRunIndex {index} is in use"));
    }
    // 6) fewer than smLaunchMaxRunning are executing (counting starts in this request).
    let pending = starts
        .get(&(l.owner.clone(), l.name.clone()))
        .copied()
        .unwrap_or(0);
    if runs.active_of(&l.owner, &l.name) + pending >= l.max_running {
        return bad(format!(
            "check 6: {} runs are executing, smLaunchMaxRunning is {}",
            runs.active_of(&l.owner, &l.name) + pending,
            l.max_running
        ));
    }
    runs.may_run(&l.owner)
        .map_err(SetError::InconsistentValue)?;
    Ok(())
}

/// Commits a staged request: the rows take their new values, and scripts whose row or
/// admin status changed get their new oper status (`Enable`/`Edit` actions are added for
/// the ones that must load or open their code). Returns the actions in order.
pub fn commit(state: &mut State, mut st: Staged) -> Vec<Action> {
    let mut follow = Vec::new();
    for (key, row) in std::mem::take(&mut st.scripts) {
        match row {
            None => {
                state.scripts.remove(&key);
                state.code.retain(|k, _| {
                    (k.0.as_str(), k.1.as_str()) != (key.0.as_str(), key.1.as_str())
                });
            }
            Some(mut r) => {
                let active = r.row_status == RowStatus::Active;
                match (active, r.admin_status) {
                    (true, ScriptAdmin::Enabled) => {
                        if !matches!(
                            r.oper_status,
                            ScriptOper::Enabled | ScriptOper::Retrieving | ScriptOper::Compiling
                        ) {
                            // "reset to a zero-length string when a new attempt starts"
                            r.error.clear();
                            r.oper_status = if r.source.is_empty() {
                                ScriptOper::Compiling
                            } else {
                                ScriptOper::Retrieving
                            };
                            follow.push(Action::Enable {
                                owner: key.0.clone(),
                                name: key.1.clone(),
                            });
                        }
                    }
                    (true, ScriptAdmin::Editing) => {
                        if r.oper_status != ScriptOper::Editing {
                            r.oper_status = ScriptOper::Editing;
                            follow.push(Action::Edit {
                                owner: key.0.clone(),
                                name: key.1.clone(),
                            });
                        }
                    }
                    _ => r.oper_status = ScriptOper::Disabled,
                }
                state.scripts.insert(key, r);
            }
        }
    }
    for (key, row) in std::mem::take(&mut st.code) {
        match row {
            None => {
                state.code.remove(&key);
            }
            Some(r) => {
                state.code.insert(key, r);
            }
        }
    }
    for (key, row) in std::mem::take(&mut st.launches) {
        match row {
            None => {
                state.launches.remove(&key);
            }
            Some(r) => {
                state.launches.insert(key, r);
            }
        }
    }
    // Scripts load before runs start from them.
    follow.extend(st.actions);
    follow
}
