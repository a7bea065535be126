//! The Script MIB (RFC 3165) as the daemon's model: languages, scripts and their code,
//! launch buttons, and runs, exactly as DISMAN-SCRIPT-MIB means them. The control API, the
//! CLI and the AgentX subagent all read and set these objects through [`Mib`]; the run
//! table itself stays the host's (`smx::host`), indexed here by (owner, name, smRunIndex).
//!
//! - `types`: RowStatus, StorageType, DateAndTime and the MIB's enumerations;
//! - `lang`: smLangTable / smExtsnTable from the configuration;
//! - `script`: smScriptTable and smCodeTable rows; `launch`: smLaunchTable rows;
//! - `set`: set processing (stage, then commit) with RFC 2579 RowStatus semantics;
//! - `fetch`: smScriptSource URLs; `store`: rows kept across restarts.

pub mod fetch;
pub mod lang;
pub mod launch;
pub mod script;
pub mod set;
pub mod store;
pub mod types;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::host::{Host, LaunchRequest, RunInfo, TimeInterval};
use crate::proto::RunState;

pub use lang::{ExtsnRow, LangRow};
pub use launch::{LaunchCol, LaunchRow};
pub use script::{CodeCol, CodeRow, ScriptCol, ScriptRow};
pub use set::{Change, Principal, RunCol};
pub use types::{
    Control, LaunchAdmin, LaunchOper, Oid, RowStatus, ScriptAdmin, ScriptOper, SetError,
    StorageType,
};

use set::{Action, RunsView};

/// (owner, name): the index of smScriptTable and smLaunchTable rows.
pub type Key = (String, String);

/// The tables the model owns.
#[derive(Debug, Default)]
pub struct State {
    pub(crate) scripts: BTreeMap<Key, ScriptRow>,
    pub(crate) code: BTreeMap<(String, String, u32), CodeRow>,
    pub(crate) launches: BTreeMap<Key, LaunchRow>,
    /// smLangIndex by runtime name, stable across restarts.
    pub(crate) lang_index: BTreeMap<String, u32>,
}

impl State {
    /// The smCodeTable rows of one script, by smCodeIndex.
    fn code_of<'a>(&'a self, owner: &str, name: &str) -> impl Iterator<Item = &'a CodeRow> {
        self.code
            .range(
                (owner.to_owned(), name.to_owned(), 0)
                    ..=(owner.to_owned(), name.to_owned(), u32::MAX),
            )
            .map(|(_, c)| c)
    }

    /// The runtime of an smLangIndex.
    fn runtime_of(&self, language: u32) -> Option<String> {
        self.lang_index
            .iter()
            .find(|(_, i)| **i == language)
            .map(|(n, _)| n.clone())
    }
}

/// An smLaunchTable row with the columns answered from the run table and the clock.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LaunchView {
    #[serde(flatten)]
    pub row: LaunchRow,
    pub oper_status: LaunchOper,
    /// smLaunchRowExpireTime, remaining centi-seconds.
    pub row_expire_time: TimeInterval,
    /// Runs of this button that have not terminated.
    pub running: u32,
}

/// What a set request started.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct SetOutcome {
    /// The smRunTable rows that smLaunchStart created, as they are right after.
    pub started: Vec<RunInfo>,
}

/// The Script MIB model of one daemon.
#[derive(Clone)]
pub struct Mib {
    inner: Arc<Inner>,
}

struct Inner {
    host: Host,
    state: Mutex<State>,
    store: Option<store::Store>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// The run table as set processing sees it.
struct HostRuns<'a>(&'a Host);

impl RunsView for HostRuns<'_> {
    fn active_of(&self, owner: &str, name: &str) -> u32 {
        self.0.active_of(owner, name)
    }
    fn has_runs(&self, owner: &str, name: &str) -> bool {
        self.0.has_runs(owner, name)
    }
    fn run_state(&self, owner: &str, name: &str, index: u32) -> Option<RunState> {
        self.0.run_at(owner, name, index).map(|r| r.state)
    }
    fn run_states(&self, owner: &str, name: &str) -> Vec<RunState> {
        self.0.states_of(owner, name)
    }
    fn code_quota(&self) -> u64 {
        self.0.config().host.storage_quota
    }
    fn may_run(&self, owner: &str) -> Result<(), String> {
        match self.0.config().owner(owner) {
            Some(_) => Ok(()),
            None => Err(format!(
                "owner {owner:?} is not mapped to an OS profile in the host's configuration"
            )),
        }
    }
}

impl Mib {
    /// The model over `host`, with rows kept in `store` (none: in memory only). Rows and
    /// finished runs saved there come back; runs that were executing when the host went
    /// away end with genericError. Autostart buttons start. Must run inside tokio.
    pub fn new(host: Host, store: Option<store::Store>) -> Result<Mib, store::StoreError> {
        let mut state = State::default();
        let mut restored_runs = Vec::new();
        if let Some(s) = &store {
            let loaded = s.load()?;
            state.lang_index = loaded.lang_indexes;
            for r in loaded.scripts {
                state.scripts.insert((r.owner.clone(), r.name.clone()), r);
            }
            for c in loaded.code {
                state
                    .code
                    .insert((c.owner.clone(), c.name.clone(), c.index), c);
            }
            let now = Instant::now();
            for mut l in loaded.launches {
                l.last_oper = LaunchOper::Disabled;
                l.row_expire.start(now);
                state.launches.insert((l.owner.clone(), l.name.clone()), l);
            }
            restored_runs = loaded.runs;
        }
        if lang::assign_indexes(&host.config(), &mut state.lang_index)
            && let Some(s) = &store
        {
            s.put(store::Op::LangIndexes(state.lang_index.clone()));
        }
        for (key, l) in &state.launches {
            host.set_max_completed(&key.0, &key.1, Some(l.max_completed));
        }
        let mut ended = Vec::new();
        for run in restored_runs {
            let (id, was_running) = (run.run_id, !run.is_terminated());
            if !host.restore(run) {
                tracing::warn!(run = %id, "saved run row not restored: its RunId or smRunIndex is taken");
            } else if was_running {
                ended.push(id);
            }
        }
        if let Some(s) = &store {
            for id in ended {
                if let Some(r) = host.run(id) {
                    s.put(store::Op::PutRun(Box::new(r)));
                }
            }
        }
        // Subscribed before anything runs, so no run row escapes the store.
        let events = store.as_ref().map(|_| host.subscribe());
        let mib = Mib {
            inner: Arc::new(Inner {
                host,
                state: Mutex::new(state),
                store,
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
            }),
        };
        // Scripts saved as enabled load again; autostart buttons then start (RFC 3165
        // smLaunchAdminStatus: "useful for scripts that are to be launched on system start-up").
        let enabled: Vec<Key> = {
            let mut s = mib.inner.state.lock().expect("mib lock");
            s.scripts
                .iter_mut()
                .filter(|(_, r)| {
                    r.row_status == RowStatus::Active && r.admin_status == ScriptAdmin::Enabled
                })
                .map(|(k, r)| {
                    r.oper_status = ScriptOper::Compiling;
                    k.clone()
                })
                .collect()
        };
        let m = mib.clone();
        mib.inner.tasks.spawn(async move {
            for (owner, name) in enabled {
                let _ = m.execute(Action::Enable { owner, name }).await;
            }
            m.reconcile();
        });
        let m = mib.clone();
        mib.inner.tasks.spawn(async move { m.clock().await });
        if let Some(events) = events {
            let m = mib.clone();
            mib.inner
                .tasks
                .spawn(async move { m.save_runs(events).await });
        }
        Ok(mib)
    }

    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    /// smLangTable and smExtsnTable.
    pub fn languages(&self) -> (Vec<LangRow>, Vec<ExtsnRow>) {
        let s = self.inner.state.lock().expect("mib lock");
        lang::tables(&self.inner.host.config(), &s.lang_index)
    }

    /// The host's configuration was reloaded: runtimes new to it get an smLangIndex (the
    /// others keep theirs), saved like the first ones.
    pub fn config_reloaded(&self) {
        let mut s = self.inner.state.lock().expect("mib lock");
        if lang::assign_indexes(&self.inner.host.config(), &mut s.lang_index)
            && let Some(store) = &self.inner.store
        {
            store.put(store::Op::LangIndexes(s.lang_index.clone()));
        }
    }

    /// smScriptTable, in index order.
    pub fn scripts(&self) -> Vec<ScriptRow> {
        let s = self.inner.state.lock().expect("mib lock");
        s.scripts.values().cloned().collect()
    }

    pub fn script(&self, owner: &str, name: &str) -> Option<ScriptRow> {
        let s = self.inner.state.lock().expect("mib lock");
        s.scripts.get(&(owner.to_owned(), name.to_owned())).cloned()
    }

    /// smCodeTable rows of one script (all scripts for `None`), in index order.
    pub fn code(&self, script: Option<(&str, &str)>) -> Vec<CodeRow> {
        let s = self.inner.state.lock().expect("mib lock");
        match script {
            Some((o, n)) => s.code_of(o, n).cloned().collect(),
            None => s.code.values().cloned().collect(),
        }
    }

    /// smLaunchTable, in index order.
    pub fn launches(&self) -> Vec<LaunchView> {
        let s = self.inner.state.lock().expect("mib lock");
        s.launches.values().map(|l| self.view(&s, l)).collect()
    }

    pub fn launch(&self, owner: &str, name: &str) -> Option<LaunchView> {
        let s = self.inner.state.lock().expect("mib lock");
        s.launches
            .get(&(owner.to_owned(), name.to_owned()))
            .map(|l| self.view(&s, l))
    }

    fn view(&self, s: &State, l: &LaunchRow) -> LaunchView {
        let host = &self.inner.host;
        let enabled = script_enabled(s, &l.script_owner, &l.script_name);
        LaunchView {
            oper_status: l.oper(enabled, host.has_runs(&l.owner, &l.name)),
            row_expire_time: l.row_expire.remaining(Instant::now()),
            running: host.active_of(&l.owner, &l.name),
            row: l.clone(),
        }
    }

    /// smLaunchRunIndexNext of a launch button: a fresh unused smRunIndex on every read,
    /// 0 if the button does not exist or no index is left.
    pub fn run_index_next(&self, owner: &str, name: &str) -> u32 {
        let exists = self
            .inner
            .state
            .lock()
            .expect("mib lock")
            .launches
            .contains_key(&(owner.to_owned(), name.to_owned()));
        if !exists {
            return 0;
        }
        self.inner.host.next_run_index(owner, name).unwrap_or(0)
    }

    /// Checks a request as a whole without changing anything (AgentX TestSet).
    pub fn test(&self, who: &Principal, changes: &[Change]) -> Result<(), (usize, SetError)> {
        let s = self.inner.state.lock().expect("mib lock");
        set::stage(
            &s,
            changes,
            who,
            &HostRuns(&self.inner.host),
            SystemTime::now(),
            Instant::now(),
        )
        .map(|_| ())
    }

    /// Applies a request as a whole, or nothing of it (an error names the change that
    /// failed, by its position). Scripts with an empty smScriptSource are loaded before this
    /// returns; URL sources load in the background (smScriptOperStatus `retrieving`). A
    /// failed start after the request was committed is reported as resourceUnavailable and
    /// in smLaunchError.
    pub async fn set(
        &self,
        who: &Principal,
        changes: &[Change],
    ) -> Result<SetOutcome, (usize, SetError)> {
        let actions = {
            let mut s = self.inner.state.lock().expect("mib lock");
            let staged = set::stage(
                &s,
                changes,
                who,
                &HostRuns(&self.inner.host),
                SystemTime::now(),
                Instant::now(),
            )?;
            let touched = touched(&staged, changes);
            let actions = set::commit(&mut s, staged);
            self.persist(&s, &touched);
            actions
        };
        let mut outcome = SetOutcome::default();
        let mut failed = None;
        for a in actions {
            // A URL is retrieved in the background (the request is answered with the row
            // `retrieving`); code from smCodeTable or the storage loads before the answer.
            if let Action::Enable { owner, name } = &a
                && self
                    .script(owner, name)
                    .is_some_and(|r| !r.source.is_empty())
            {
                let m = self.clone();
                self.inner.tasks.spawn(async move {
                    let _ = m.execute(a).await;
                });
                continue;
            }
            let start = matches!(a, Action::Start { .. });
            match self.execute(a).await {
                Ok(Some(run)) => outcome.started.push(run),
                Ok(None) => {}
                Err(e) if start => failed = failed.or(Some(e)),
                Err(_) => {}
            }
        }
        self.reconcile();
        match failed {
            Some(msg) => {
                let at = changes
                    .iter()
                    .position(|c| {
                        matches!(
                            c,
                            Change::Launch {
                                col: LaunchCol::Start(_),
                                ..
                            }
                        )
                    })
                    .unwrap_or(0);
                Err((at, SetError::ResourceUnavailable(msg)))
            }
            None => Ok(outcome),
        }
    }

    /// Waits until every row change so far is in the store.
    pub async fn flush(&self) {
        if let Some(s) = &self.inner.store {
            s.flush().await;
        }
    }

    /// Ends the model's tasks (the host is shut down separately).
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tasks.wait()).await;
        if let Some(s) = &self.inner.store {
            s.flush().await;
        }
    }

    /// Carries out one action of a committed request. A start returns its run.
    async fn execute(&self, a: Action) -> Result<Option<RunInfo>, String> {
        let host = &self.inner.host;
        match a {
            Action::Enable { owner, name } => {
                self.enable(&owner, &name).await;
                Ok(None)
            }
            Action::Edit { owner, name } => {
                self.edit(&owner, &name);
                Ok(None)
            }
            Action::Start {
                owner,
                name,
                index,
                row,
            } => self.start(&owner, &name, index, Some(&row)).map(Some),
            Action::LaunchControl {
                owner,
                name,
                control,
            } => {
                for r in host.runs_of(&owner, &name) {
                    if set::control_allowed(control, r.state) {
                        self.run_control(r.run_id, control);
                    }
                }
                Ok(None)
            }
            Action::RunControl {
                owner,
                name,
                index,
                control,
            } => {
                if let Some(r) = host.run_at(&owner, &name, index) {
                    self.run_control(r.run_id, control);
                }
                Ok(None)
            }
            Action::RunLifeTime {
                owner,
                name,
                index,
                value,
            } => {
                if let Some(r) = host.run_at(&owner, &name, index) {
                    host.set_lifetime(r.run_id, value)
                        .map_err(|e| e.to_string())?;
                }
                Ok(None)
            }
            Action::RunExpireTime {
                owner,
                name,
                index,
                value,
            } => {
                if let Some(r) = host.run_at(&owner, &name, index) {
                    host.set_expire_time(r.run_id, value)
                        .map_err(|e| e.to_string())?;
                }
                Ok(None)
            }
            Action::MaxCompleted { owner, name, max } => {
                host.set_max_completed(&owner, &name, Some(max));
                Ok(None)
            }
            Action::ScriptGone { owner, name } => {
                let rel = crate::storage::Storage::mib_path(&owner, &name);
                let storage = host.storage();
                if let Err(e) = storage.remove(&rel)
                    && !matches!(e, crate::storage::StorageError::NotFound(_))
                {
                    tracing::warn!(owner, name, "stored script not removed: {e}");
                }
                Ok(None)
            }
            Action::LaunchGone { owner, name } => {
                host.set_max_completed(&owner, &name, None);
                Ok(None)
            }
        }
    }

    /// smRunControl on one run, in the background: an SNMP set answers at once.
    fn run_control(&self, run: crate::proto::RunId, control: Control) {
        let host = self.inner.host.clone();
        self.inner.tasks.spawn(async move {
            let r = match control {
                Control::Abort => host.abort(run).await,
                Control::Suspend => host.suspend(run).await,
                Control::Resume => host.resume(run).await,
                Control::Nop => return,
            };
            if let Err(e) = r {
                tracing::info!(run = %run, "{control}: {e}");
            }
        });
    }

    /// smLaunchStart: creates the run row (state initializing) and starts it.
    /// smLaunchStart with the button's columns as `committed` has them (a set request), or
    /// as they are now (autostart).
    fn start(
        &self,
        owner: &str,
        name: &str,
        index: u32,
        committed: Option<&LaunchRow>,
    ) -> Result<RunInfo, String> {
        let key = (owner.to_owned(), name.to_owned());
        let req = {
            let mut s = self.inner.state.lock().expect("mib lock");
            let live = match s.launches.get_mut(&key) {
                Some(l) => {
                    // "reset ... when a new attempt to launch a script is started"
                    l.error.clear();
                    l.clone()
                }
                None => return Err("the launch button is gone".into()),
            };
            let l = committed.unwrap_or(&live);
            let (script_owner, script_name) = (l.script_owner.clone(), l.script_name.clone());
            let script = s
                .scripts
                .get(&(script_owner.clone(), script_name.clone()))
                .cloned();
            let runtime = script.as_ref().and_then(|sc| s.runtime_of(sc.language));
            let stored = script.and_then(|sc| sc.stored);
            match (stored, runtime) {
                (Some(path), Some(runtime)) => {
                    let mut req = LaunchRequest::new(path);
                    req.owner = Some(owner.to_owned());
                    req.name = name.to_owned();
                    req.runtime = Some(runtime);
                    req.argument = l.argument.clone();
                    req.lifetime = l.lifetime;
                    req.expire_time = l.expire_time;
                    req.index = (index != 0).then_some(index);
                    req.max_running = Some(l.max_running);
                    Ok(req)
                }
                _ => Err(format!(
                    "script {script_owner}/{script_name} is not available"
                )),
            }
        };
        let result = req.and_then(|req| {
            let host = &self.inner.host;
            host.launch(req)
                .map_err(|e| e.to_string())
                .and_then(|id| host.run(id).ok_or_else(|| "the run disappeared".into()))
        });
        let mut s = self.inner.state.lock().expect("mib lock");
        if let Some(l) = s.launches.get_mut(&key) {
            match &result {
                Ok(run) => l.start = run.index,
                Err(e) => {
                    tracing::warn!(owner, name, "smLaunchStart failed: {e}");
                    l.error = crate::host::admin_string(e.as_bytes());
                }
            }
            // smLaunchStart and smLaunchError as read after a restart: the row was saved
            // by the request, before the start.
            if l.storage_type == StorageType::NonVolatile {
                self.persist(&s, &[Touched::Launch(key)]);
            }
        }
        result
    }

    /// Loads a script and makes it available (smScriptAdminStatus set to enabled).
    async fn enable(&self, owner: &str, name: &str) {
        let key = (owner.to_owned(), name.to_owned());
        let (source, language, stored, storage_type) = {
            let s = self.inner.state.lock().expect("mib lock");
            let Some(r) = s.scripts.get(&key) else { return };
            (
                r.source.clone(),
                r.language,
                r.stored.clone(),
                r.storage_type,
            )
        };
        let runtime = {
            let s = self.inner.state.lock().expect("mib lock");
            s.runtime_of(language)
                .filter(|n| self.inner.host.config().runtime(n).is_some())
        };
        if runtime.is_none() {
            let msg = format!("smScriptLanguage {language} is not a language of this host");
            return self.finish_enable(&key, Err((ScriptOper::WrongLanguage, msg)), None);
        }
        let content = if source.is_empty() {
            let code: Vec<u8> = {
                let s = self.inner.state.lock().expect("mib lock");
                s.code_of(owner, name)
                    .filter(|c| c.row_status == RowStatus::Active)
                    .flat_map(|c| c.text.iter().copied())
                    .collect()
            };
            match (code.is_empty(), stored, storage_type) {
                (false, _, _) => Ok(code),
                // "loaded from non-volatile storage" (smScriptSource empty, nonVolatile).
                (true, Some(rel), StorageType::NonVolatile) => self
                    .inner
                    .host
                    .storage()
                    .read(&rel)
                    .map_err(|e| (ScriptOper::NoSuchScript, e.to_string())),
                _ => Err((
                    ScriptOper::NoSuchScript,
                    "no code: smScriptSource is empty and smCodeTable has no active row".into(),
                )),
            }
        } else {
            let config = self.inner.host.config();
            let os = config.owner(owner).map(|(_, os)| os.clone());
            let limits = fetch::Limits {
                max_octets: config.host.fetch_max_octets,
                timeout: config.host.fetch_timeout,
            };
            let url = source.clone();
            let fetched =
                tokio::task::spawn_blocking(move || fetch::fetch(&url, os.as_deref(), &limits))
                    .await
                    .unwrap_or_else(|e| Err(fetch::FetchError::Other(e.to_string())));
            {
                let mut s = self.inner.state.lock().expect("mib lock");
                if let Some(r) = s.scripts.get_mut(&key) {
                    r.oper_status = ScriptOper::Compiling;
                }
            }
            fetched.map_err(|e| (e.oper_status(), e.to_string()))
        };
        let installed = match content {
            Ok(bytes) => {
                let host = self.inner.host.clone();
                let (o, n) = (owner.to_owned(), name.to_owned());
                tokio::task::spawn_blocking(move || host.storage().install_mib(&o, &n, &bytes))
                    .await
                    .map_err(|e| (ScriptOper::GenericError, e.to_string()))
                    .and_then(|r| r.map_err(|e| (ScriptOper::NoResourcesLeft, e.to_string())))
            }
            Err(e) => Err(e),
        };
        match installed {
            Ok(rel) => self.finish_enable(&key, Ok(()), Some(rel)),
            Err(e) => self.finish_enable(&key, Err(e), None),
        }
    }

    fn finish_enable(
        &self,
        key: &Key,
        r: Result<(), (ScriptOper, String)>,
        stored: Option<String>,
    ) {
        {
            let mut s = self.inner.state.lock().expect("mib lock");
            let Some(row) = s.scripts.get_mut(key) else {
                return;
            };
            // Disabled or edited meanwhile: that decision stands.
            if !matches!(
                row.oper_status,
                ScriptOper::Retrieving | ScriptOper::Compiling
            ) {
                return;
            }
            match r {
                Ok(()) => {
                    row.oper_status = ScriptOper::Enabled;
                    if stored.is_some() {
                        row.stored = stored;
                    }
                }
                Err((oper, msg)) => {
                    tracing::warn!(
                        owner = key.0,
                        name = key.1,
                        "script not enabled: {oper}: {msg}"
                    );
                    row.oper_status = oper;
                    row.error = crate::host::admin_string(msg.as_bytes());
                }
            }
            let touched = vec![Touched::Script(key.clone())];
            self.persist(&s, &touched);
        }
        self.reconcile();
    }

    /// smScriptAdminStatus set to editing: the code becomes readable and writable in
    /// smCodeTable; a script loaded from elsewhere is copied there first (RFC 3165 7.3).
    fn edit(&self, owner: &str, name: &str) {
        let key = (owner.to_owned(), name.to_owned());
        let mut s = self.inner.state.lock().expect("mib lock");
        let has_code = s.code_of(owner, name).next().is_some();
        let Some(rel) = s.scripts.get(&key).and_then(|r| r.stored.clone()) else {
            return;
        };
        if has_code {
            return;
        }
        match self.inner.host.storage().read(&rel) {
            Ok(bytes) => {
                for (i, frag) in script::fragments(&bytes).enumerate() {
                    let mut c = CodeRow::new(owner, name, i as u32 + 1);
                    c.text = frag.to_vec();
                    c.row_status = RowStatus::Active;
                    s.code
                        .insert((owner.to_owned(), name.to_owned(), i as u32 + 1), c);
                }
                let touched = vec![Touched::Script(key)];
                self.persist(&s, &touched);
            }
            Err(e) => tracing::warn!(owner, name, "cannot copy the script into smCodeTable: {e}"),
        }
    }

    /// Notices launch buttons that became operational (autostart starts them) and removes
    /// expired ones whose runs are gone.
    fn reconcile(&self) {
        let host = &self.inner.host;
        let mut autostart = Vec::new();
        let mut gone = Vec::new();
        {
            let mut s = self.inner.state.lock().expect("mib lock");
            let enabled: BTreeMap<Key, bool> = s
                .scripts
                .iter()
                .map(|(k, r)| {
                    (
                        k.clone(),
                        r.row_status == RowStatus::Active && r.oper_status == ScriptOper::Enabled,
                    )
                })
                .collect();
            for (key, l) in s.launches.iter_mut() {
                let has_runs = host.has_runs(&key.0, &key.1);
                let on = enabled
                    .get(&(l.script_owner.clone(), l.script_name.clone()))
                    .copied()
                    .unwrap_or(false);
                let oper = l.oper(on, has_runs);
                if l.last_oper != LaunchOper::Enabled
                    && oper == LaunchOper::Enabled
                    && l.admin_status == LaunchAdmin::Autostart
                {
                    autostart.push(key.clone());
                }
                if l.expired && !has_runs {
                    gone.push(key.clone());
                }
                l.last_oper = oper;
            }
            for key in &gone {
                s.launches.remove(key);
                tracing::info!(owner = key.0, name = key.1, "expired launch button removed");
            }
            if !gone.is_empty() {
                let touched: Vec<Touched> = gone.iter().cloned().map(Touched::Launch).collect();
                self.persist(&s, &touched);
            }
        }
        for (owner, name) in autostart {
            tracing::info!(owner, name, "autostart");
            if let Err(e) = self.start(&owner, &name, 0, None) {
                tracing::warn!(owner, name, "autostart failed: {e}");
            }
        }
    }

    /// smLaunchRowExpireTime: rows whose time ran out go, or become expired while they
    /// still have runs.
    async fn clock(&self) {
        loop {
            let now = Instant::now();
            let mut next = now + Duration::from_secs(1);
            let mut removed = Vec::new();
            {
                let host = &self.inner.host;
                let mut s = self.inner.state.lock().expect("mib lock");
                for (key, l) in s.launches.iter_mut() {
                    match l.row_expire.deadline() {
                        Some(d) if d <= now && !l.expired => {
                            if !host.has_runs(&key.0, &key.1) {
                                removed.push(key.clone());
                            } else {
                                tracing::info!(
                                    owner = key.0,
                                    name = key.1,
                                    "smLaunchRowExpireTime reached 0: expired"
                                );
                                l.expired = true;
                            }
                        }
                        Some(d) if !l.expired => next = next.min(d),
                        _ => {}
                    }
                }
                for key in &removed {
                    s.launches.remove(key);
                    tracing::info!(
                        owner = key.0,
                        name = key.1,
                        "smLaunchRowExpireTime reached 0: row removed"
                    );
                }
                if !removed.is_empty() {
                    let touched: Vec<Touched> = removed.into_iter().map(Touched::Launch).collect();
                    self.persist(&s, &touched);
                }
            }
            self.reconcile();
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = self.inner.stop.cancelled() => return,
            }
        }
    }

    /// Keeps the store's run rows in step with the run table: a row when it is created and
    /// when its termination is final, gone when it is removed. A lagged subscription is
    /// repaired by writing every row again.
    async fn save_runs(&self, mut events: crate::host::Subscriber) {
        use crate::host::RecvError;
        let Some(store) = &self.inner.store else {
            return;
        };
        let host = &self.inner.host;
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = self.inner.stop.cancelled() => {
                    // What happened before the stop (the host's shutdown) is still saved.
                    while let Ok(e) = events.try_recv() {
                        self.save_run(store, e);
                    }
                    return;
                }
            };
            match ev {
                Ok(e) => self.save_run(store, e),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("run store lagged {n} events: saving every run row again");
                    for r in host.runs() {
                        store.put(store::Op::PutRun(Box::new(r)));
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn save_run(&self, store: &store::Store, e: crate::host::Event) {
        use crate::host::EventKind;
        match e.kind {
            EventKind::Launched { .. } | EventKind::Terminated { .. } => {
                if let Some(r) = self.inner.host.run(e.run_id) {
                    store.put(store::Op::PutRun(Box::new(r)));
                }
            }
            EventKind::Removed => store.put(store::Op::DeleteRun(e.run_id.0)),
            _ => {}
        }
    }

    /// Writes the touched rows that are (or were) non-volatile.
    fn persist(&self, s: &State, touched: &[Touched]) {
        let Some(store) = &self.inner.store else {
            return;
        };
        for t in touched {
            match t {
                Touched::Script(k) => match s.scripts.get(k) {
                    Some(r) if r.storage_type == StorageType::NonVolatile => {
                        let code: Vec<CodeRow> = s.code_of(&k.0, &k.1).cloned().collect();
                        store.put(store::Op::PutScript(Box::new(r.clone()), code));
                    }
                    _ => store.put(store::Op::DeleteScript(k.clone())),
                },
                Touched::Launch(k) => match s.launches.get(k) {
                    Some(l) if l.storage_type == StorageType::NonVolatile => {
                        store.put(store::Op::PutLaunch(Box::new(l.clone())));
                    }
                    _ => store.put(store::Op::DeleteLaunch(k.clone())),
                },
            }
        }
    }
}

/// A row a request changed, for the store.
#[derive(Debug, Clone)]
enum Touched {
    Script(Key),
    Launch(Key),
}

fn touched(st: &set::Staged, changes: &[Change]) -> Vec<Touched> {
    let mut v: Vec<Touched> = st.scripts.keys().cloned().map(Touched::Script).collect();
    for (o, n, _) in st.code.keys() {
        let k = (o.clone(), n.clone());
        if !st.scripts.contains_key(&k) {
            v.push(Touched::Script(k));
        }
    }
    // smLaunchStart and smLaunchControl act on runs and leave the row as it is (a start
    // saves smLaunchStart itself, once it knows the index): no write for them.
    let changed = |k: &Key| {
        changes.iter().any(|c| {
            matches!(c, Change::Launch { owner, name, col }
                if (owner, name) == (&k.0, &k.1)
                    && !matches!(col, LaunchCol::Start(_) | LaunchCol::Control(_)))
        })
    };
    v.extend(
        st.launches
            .keys()
            .filter(|k| changed(k))
            .cloned()
            .map(Touched::Launch),
    );
    v
}

fn script_enabled(s: &State, owner: &str, name: &str) -> bool {
    s.scripts
        .get(&(owner.to_owned(), name.to_owned()))
        .is_some_and(|r| r.row_status == RowStatus::Active && r.oper_status == ScriptOper::Enabled)
}

/// `Option<SystemTime>` as RFC 3339 text or null (the daemon's time format).
pub(crate) mod opt_time {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let s = <Option<String> as serde::Deserialize>::deserialize(d)?;
        s.map(|s| humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Code fragments as the daemon shows octet strings: text if UTF-8, else `{"hex": ...}`.
pub(crate) mod octets_text {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&crate::proto::Octets::new(v.to_vec()), s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let o = <crate::proto::Octets as serde::Deserialize>::deserialize(d)?;
        Ok(o.as_bytes().to_vec())
    }
}

/// A launch button as `launch_add` (and `smx launch add`) creates it.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, Serialize)]
pub struct LaunchSpec {
    pub owner: String,
    pub name: String,
    pub script_owner: String,
    pub script_name: String,
    #[serde(default)]
    pub argument: Option<crate::proto::Octets>,
    #[serde(default)]
    pub max_running: Option<u32>,
    #[serde(default)]
    pub max_completed: Option<u32>,
    #[serde(default)]
    pub lifetime: Option<TimeInterval>,
    #[serde(default)]
    pub expire_time: Option<TimeInterval>,
    #[serde(default)]
    pub storage_type: Option<StorageType>,
    /// enabled (the default here), disabled or autostart.
    #[serde(default)]
    pub admin_status: Option<LaunchAdmin>,
    #[serde(default)]
    pub row_expire_time: Option<TimeInterval>,
}

/// A script as `script_install` (and `smx script install`) stores it.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, Serialize)]
pub struct ScriptSpec {
    pub owner: String,
    pub name: String,
    /// The code; empty with `source`.
    #[serde(default)]
    pub content: crate::proto::Octets,
    /// smScriptSource: a URL to pull the script from instead of `content`.
    #[serde(default)]
    pub source: Option<String>,
    /// A runtime name or an smLangIndex; default: by the name's extension, else `exec`.
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub descr: Option<String>,
    #[serde(default)]
    pub storage_type: Option<StorageType>,
}

/// A refused convenience operation: the MIB's answer and which column it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MibError {
    #[error("{column}: {error}")]
    Set {
        column: &'static str,
        error: SetError,
    },
    #[error("no such {0}")]
    NoSuchRow(&'static str),
    #[error("{0}")]
    BadRequest(String),
}

impl MibError {
    /// The error of change `i` of a request, named by its column.
    pub fn at(changes: &[Change], (i, error): (usize, SetError)) -> MibError {
        let column = match changes.get(i) {
            Some(Change::Script { col, .. }) => col.name(),
            Some(Change::Code { col, .. }) => match col {
                CodeCol::Text(_) => "smCodeText",
                CodeCol::RowStatus(_) => "smCodeRowStatus",
            },
            Some(Change::Launch { col, .. }) => col.name(),
            Some(Change::Run { col, .. }) => match col {
                RunCol::LifeTime(_) => "smRunLifeTime",
                RunCol::ExpireTime(_) => "smRunExpireTime",
                RunCol::Control(_) => "smRunControl",
            },
            None => "request",
        };
        MibError::Set { column, error }
    }
}

impl Mib {
    /// The smLangIndex for a runtime name or an index given as text.
    pub fn language_index(&self, language: &str) -> Option<u32> {
        let s = self.inner.state.lock().expect("mib lock");
        match language.parse::<u32>() {
            Ok(i) => s.lang_index.values().any(|v| *v == i).then_some(i),
            Err(_) => s.lang_index.get(language).copied(),
        }
    }

    /// Creates (or replaces a disabled) script and enables it: RFC 3165 7.1 (code) or 7.2
    /// (URL) in one call. Returns the row once enabled (with code) or retrieving (URL).
    pub async fn install_script(
        &self,
        who: &Principal,
        spec: ScriptSpec,
    ) -> Result<ScriptRow, MibError> {
        let lang = match &spec.language {
            Some(l) => self.language_index(l).ok_or_else(|| {
                MibError::BadRequest(format!("unknown language {l:?} (see `smx runtimes`)"))
            })?,
            None => {
                let config = self.inner.host.config();
                let rt = config
                    .runtime_for_extension(std::path::Path::new(&spec.name))
                    .map(|r| r.name.0.clone())
                    .unwrap_or_else(|| "exec".into());
                self.language_index(&rt).ok_or_else(|| {
                    MibError::BadRequest(format!("no language for {:?}", spec.name))
                })?
            }
        };
        let (o, n) = (spec.owner.as_str(), spec.name.as_str());
        let s = |col| Change::Script {
            owner: o.into(),
            name: n.into(),
            col,
        };
        let mut create = vec![
            s(ScriptCol::RowStatus(RowStatus::CreateAndWait.number())),
            s(ScriptCol::Language(lang as i64)),
            s(ScriptCol::Descr(
                spec.descr.unwrap_or_default().into_bytes(),
            )),
        ];
        if let Some(st) = spec.storage_type {
            create.push(s(ScriptCol::StorageType(st.number())));
        }
        match &spec.source {
            Some(url) => create.push(s(ScriptCol::Source(url.clone().into_bytes()))),
            None => {
                if spec.content.is_empty() {
                    return Err(MibError::BadRequest("the script is empty".into()));
                }
                for (i, frag) in script::fragments(spec.content.as_bytes()).enumerate() {
                    let c = |col| Change::Code {
                        owner: o.into(),
                        name: n.into(),
                        index: i as u32 + 1,
                        col,
                    };
                    create.push(c(CodeCol::RowStatus(RowStatus::CreateAndGo.number())));
                    create.push(c(CodeCol::Text(frag.to_vec())));
                }
            }
        }
        // A replacement that cannot go through leaves the old script as it is: the new row
        // is checked as if the old one were gone, and the old one must be removable.
        self.test_fresh(who, &create)
            .map_err(|e| MibError::at(&create, e))?;
        if let Some(old) = self.script(o, n) {
            self.removable(o, n)?;
            let mut changes = Vec::new();
            if old.oper_status == ScriptOper::Enabled {
                changes.push(s(ScriptCol::AdminStatus(ScriptAdmin::Disabled.number())));
                self.set(who, &changes)
                    .await
                    .map_err(|e| MibError::at(&changes, e))?;
                changes.clear();
            }
            changes.push(s(ScriptCol::RowStatus(RowStatus::Destroy.number())));
            self.set(who, &changes)
                .await
                .map_err(|e| MibError::at(&changes, e))?;
        }
        self.set(who, &create)
            .await
            .map_err(|e| MibError::at(&create, e))?;
        let enable = [
            s(ScriptCol::RowStatus(RowStatus::Active.number())),
            s(ScriptCol::AdminStatus(ScriptAdmin::Enabled.number())),
        ];
        self.set(who, &enable)
            .await
            .map_err(|e| MibError::at(&enable, e))?;
        self.script(o, n).ok_or(MibError::NoSuchRow("script"))
    }

    /// Checks `changes` (that create the script row they name) as if no rows existed yet.
    fn test_fresh(&self, who: &Principal, changes: &[Change]) -> Result<(), (usize, SetError)> {
        let fresh = State {
            lang_index: self
                .inner
                .state
                .lock()
                .expect("mib lock")
                .lang_index
                .clone(),
            ..State::default()
        };
        set::stage(
            &fresh,
            changes,
            who,
            &HostRuns(&self.inner.host),
            SystemTime::now(),
            Instant::now(),
        )
        .map(|_| ())
    }

    /// Whether the script (owner, name) may be disabled and destroyed now: the check that
    /// destroy makes (RFC 3165 7.4), made before the row is disabled, so that a refusal
    /// leaves it enabled.
    fn removable(&self, owner: &str, name: &str) -> Result<(), MibError> {
        let running = self
            .launches()
            .into_iter()
            .find(|l| l.row.script_owner == owner && l.row.script_name == name && l.running > 0);
        match running {
            Some(l) => Err(MibError::Set {
                column: "smScriptRowStatus",
                error: SetError::InconsistentValue(format!(
                    "scripts launched from this row are still running (launch button {}/{})",
                    l.row.owner, l.row.name
                )),
            }),
            None => Ok(()),
        }
    }

    /// Disables and destroys a script row (RFC 3165 7.4).
    pub async fn remove_script(
        &self,
        who: &Principal,
        owner: &str,
        name: &str,
    ) -> Result<(), MibError> {
        if self.script(owner, name).is_none() {
            return Err(MibError::NoSuchRow("script"));
        }
        self.removable(owner, name)?;
        let s = |col| Change::Script {
            owner: owner.into(),
            name: name.into(),
            col,
        };
        self.set_each(
            who,
            [
                s(ScriptCol::AdminStatus(ScriptAdmin::Disabled.number())),
                s(ScriptCol::RowStatus(RowStatus::Destroy.number())),
            ],
        )
        .await
    }

    /// Sets each change in a request of its own, in order (disable, then destroy: RFC 3165
    /// 7.4), stopping at the first refusal.
    async fn set_each(
        &self,
        who: &Principal,
        changes: impl IntoIterator<Item = Change>,
    ) -> Result<(), MibError> {
        for c in changes {
            let one = [c];
            self.set(who, &one)
                .await
                .map_err(|e| MibError::at(&one, e))?;
        }
        Ok(())
    }

    /// Creates a launch button in one request (createAndGo with its columns).
    pub async fn add_launch(
        &self,
        who: &Principal,
        spec: LaunchSpec,
    ) -> Result<LaunchView, MibError> {
        let (o, n) = (spec.owner.as_str(), spec.name.as_str());
        let l = |col| Change::Launch {
            owner: o.into(),
            name: n.into(),
            col,
        };
        let mut changes = vec![
            l(LaunchCol::RowStatus(RowStatus::CreateAndGo.number())),
            l(LaunchCol::ScriptOwner(
                spec.script_owner.clone().into_bytes(),
            )),
            l(LaunchCol::ScriptName(spec.script_name.clone().into_bytes())),
            l(LaunchCol::AdminStatus(
                spec.admin_status.unwrap_or(LaunchAdmin::Enabled).number(),
            )),
        ];
        if let Some(a) = spec.argument {
            changes.push(l(LaunchCol::Argument(a.as_bytes().to_vec())));
        }
        if let Some(v) = spec.max_running {
            changes.push(l(LaunchCol::MaxRunning(v.into())));
        }
        if let Some(v) = spec.max_completed {
            changes.push(l(LaunchCol::MaxCompleted(v.into())));
        }
        if let Some(v) = spec.lifetime {
            changes.push(l(LaunchCol::LifeTime(v.centis().into())));
        }
        if let Some(v) = spec.expire_time {
            changes.push(l(LaunchCol::ExpireTime(v.centis().into())));
        }
        if let Some(v) = spec.storage_type {
            changes.push(l(LaunchCol::StorageType(v.number())));
        }
        if let Some(v) = spec.row_expire_time {
            changes.push(l(LaunchCol::RowExpireTime(v.centis().into())));
        }
        self.set(who, &changes)
            .await
            .map_err(|e| MibError::at(&changes, e))?;
        self.launch(o, n)
            .ok_or(MibError::NoSuchRow("launch button"))
    }

    /// smLaunchStart: sets the argument first if one is given, then starts a run at `index`
    /// (0 or `None`: a fresh one). Returns the new row.
    pub async fn start_launch(
        &self,
        who: &Principal,
        owner: &str,
        name: &str,
        index: Option<u32>,
        argument: Option<crate::proto::Octets>,
    ) -> Result<RunInfo, MibError> {
        if self.launch(owner, name).is_none() {
            return Err(MibError::NoSuchRow("launch button"));
        }
        let l = |col| Change::Launch {
            owner: owner.into(),
            name: name.into(),
            col,
        };
        let mut changes = Vec::new();
        if let Some(a) = argument {
            changes.push(l(LaunchCol::Argument(a.as_bytes().to_vec())));
        }
        changes.push(l(LaunchCol::Start(index.unwrap_or(0).into())));
        let out = self
            .set(who, &changes)
            .await
            .map_err(|e| MibError::at(&changes, e))?;
        out.started
            .into_iter()
            .next()
            .ok_or(MibError::NoSuchRow("run"))
    }

    /// Whether the control API's `launch` op may run a file under the button (owner,
    /// name): only if there is none, or it is one that op made.
    pub fn may_launch_file(&self, owner: &str, name: &str) -> Result<(), MibError> {
        match self.launch(owner, name) {
            Some(l) if !l.row.implicit => Err(MibError::Set {
                column: "smLaunchName",
                error: SetError::InconsistentValue(format!(
                    "launch button {owner}/{name} exists in smLaunchTable: use launch_start (or another name)"
                )),
            }),
            _ => Ok(()),
        }
    }

    /// Disables and destroys a launch button.
    pub async fn remove_launch(
        &self,
        who: &Principal,
        owner: &str,
        name: &str,
    ) -> Result<(), MibError> {
        if self.launch(owner, name).is_none() {
            return Err(MibError::NoSuchRow("launch button"));
        }
        let l = |col| Change::Launch {
            owner: owner.into(),
            name: name.into(),
            col,
        };
        self.set_each(
            who,
            [
                l(LaunchCol::AdminStatus(LaunchAdmin::Disabled.number())),
                l(LaunchCol::RowStatus(RowStatus::Destroy.number())),
            ],
        )
        .await
    }

    /// The implicit launch button of the control API's `launch` op and `smx run --daemon`,
    /// for a run the host started from a file in the storage: a volatile script row for the
    /// file and a volatile launch button (owner, name) without limits, created or updated,
    /// so the run has its launch button in smLaunchTable like any other.
    pub fn adopt(&self, run: &RunInfo) -> Result<(), MibError> {
        let Some(lang) = self.language_index(&run.runtime) else {
            return Err(MibError::BadRequest(format!(
                "unknown runtime {:?}",
                run.runtime
            )));
        };
        let (owner, name) = (run.owner.as_str(), run.name.as_str());
        let script_name =
            types::cut(run.script.rsplit('/').next().unwrap_or(&run.script), 32).to_owned();
        {
            let mut s = self.inner.state.lock().expect("mib lock");
            let key = (owner.to_owned(), name.to_owned());
            if let Some(l) = s.launches.get(&key)
                && !l.implicit
            {
                return Err(MibError::BadRequest(format!(
                    "launch button {owner}/{name} belongs to the Script MIB; this run has no button of its own"
                )));
            }
            let skey = (owner.to_owned(), script_name.clone());
            let row = s
                .scripts
                .entry(skey)
                .or_insert_with(|| ScriptRow::new(owner, &script_name));
            if row.storage_type == StorageType::Volatile {
                row.language = lang;
                row.language_set = true;
                row.row_status = RowStatus::Active;
                row.admin_status = ScriptAdmin::Enabled;
                row.oper_status = ScriptOper::Enabled;
                row.stored = Some(run.script.clone());
            }
            let l = s
                .launches
                .entry(key)
                .or_insert_with(|| LaunchRow::new(owner, name, Instant::now()));
            l.implicit = true;
            l.script_owner = owner.to_owned();
            l.script_name = script_name;
            l.script_owner_set = true;
            l.row_status = RowStatus::Active;
            l.admin_status = LaunchAdmin::Enabled;
            l.max_running = u32::MAX;
            l.max_completed = u32::MAX;
            l.argument = run.argument.clone();
            l.lifetime = run.lifetime;
            l.expire_time = run.expire_time;
            l.start = run.index;
            l.last_oper = LaunchOper::Enabled;
        }
        self.inner.host.set_max_completed(owner, name, None);
        Ok(())
    }
}
