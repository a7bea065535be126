//! The control protocol: line-delimited JSON over a Unix socket (docs/control-protocol.md).
//!
//! Each request is one JSON object on one line with an `op` and an optional `id`, which the
//! response repeats. Responses are `{"id":…, "ok":true, "result":…}` or
//! `{"id":…, "ok":false, "error":{"code":…, "message":…}}`. After `subscribe`, event lines
//! `{"event":{…}}` arrive between responses. The server greets every connection with
//! `{"protocol":"smx-control","version":1,…}`.

use serde::{Deserialize, Serialize};

use crate::host::{Event, RunInfo, TimeInterval};
use crate::proto::{Octets, RunId};

/// The protocol name in the greeting.
pub const PROTOCOL: &str = "smx-control";
/// The protocol version; a client should refuse a server with a larger major version.
pub const VERSION: u32 = 2;
/// Longest request line the server accepts (a script sent with `install` must fit).
pub const MAX_REQUEST_LINE: usize = 4 << 20;

/// The first line the server sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Greeting {
    pub protocol: String,
    pub version: u32,
    pub server: String,
}

/// One request: an optional correlation id and the operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    #[serde(flatten)]
    pub op: Op,
}

/// The operations, mapped to the Script MIB.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Who the server thinks you are: user, uid, admin.
    Whoami,
    /// smLangTable: the runtimes (languages) offered.
    Languages,
    /// smScriptTable/smCodeTable: stores a script for an owner.
    Install {
        owner: String,
        name: String,
        content: Octets,
        #[serde(default)]
        executable: bool,
    },
    /// smLaunchStart: runs a stored script.
    Launch(LaunchParams),
    /// smRunTable: all rows the caller may see (optionally one owner's).
    Runs {
        #[serde(default)]
        owner: Option<String>,
    },
    /// One smRunTable row.
    Run { run_id: RunId },
    /// smRunControl suspend.
    Suspend { run_id: RunId },
    /// smRunControl resume.
    Resume { run_id: RunId },
    /// smRunControl abort.
    Abort { run_id: RunId },
    /// Asks the runtime for the run's state (SMX `status`).
    Refresh { run_id: RunId },
    /// smRunLifeTime / smRunExpireTime.
    Set {
        run_id: RunId,
        #[serde(default)]
        lifetime: Option<TimeInterval>,
        #[serde(default)]
        expire_time: Option<TimeInterval>,
    },
    /// Waits until the run has terminated and returns its final row.
    Wait { run_id: RunId },
    /// Streams run events on this connection from now on.
    Subscribe {
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        run_id: Option<RunId>,
    },
    /// Host and daemon counters.
    Stats,
    /// Re-reads the config file (like SIGHUP). Admins only.
    Reload,
    /// smExtsnTable: the language extensions of every language.
    Extensions,
    /// smScriptTable rows (optionally one owner's).
    Scripts {
        #[serde(default)]
        owner: Option<String>,
    },
    /// smCodeTable rows of one script.
    Code { owner: String, name: String },
    /// Creates a script row and enables it (from `content` or a `source` URL).
    ScriptInstall(crate::mib::ScriptSpec),
    /// Disables and destroys a script row.
    ScriptRemove { owner: String, name: String },
    /// smLaunchTable rows (optionally one owner's).
    Launches {
        #[serde(default)]
        owner: Option<String>,
    },
    /// Creates a launch button.
    LaunchAdd(crate::mib::LaunchSpec),
    /// smLaunchStart, optionally after setting smLaunchArgument.
    LaunchStart {
        owner: String,
        name: String,
        /// smRunIndex to use (from `run_index_next`); default: a fresh one.
        #[serde(default)]
        index: Option<u32>,
        #[serde(default)]
        argument: Option<Octets>,
    },
    /// Disables and destroys a launch button.
    LaunchRemove { owner: String, name: String },
    /// smLaunchRunIndexNext.
    RunIndexNext { owner: String, name: String },
    /// Sets columns of the Script MIB tables as one SNMP set request would.
    MibSet { changes: Vec<ColumnSet> },
}

/// One column of a `mib_set` request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnSet {
    /// `script`, `code`, `launch` or `run`.
    pub table: String,
    pub owner: String,
    pub name: String,
    /// smCodeIndex or smRunIndex (code and run tables).
    #[serde(default)]
    pub index: Option<u32>,
    /// The MIB column name, such as `smScriptRowStatus` or `smLaunchStart`.
    pub column: String,
    /// An integer, a string, or `{"hex": "..."}` for octet strings.
    pub value: serde_json::Value,
}

impl Op {
    /// Every op name, for telling an unknown op from a malformed known one.
    pub const NAMES: &'static [&'static str] = &[
        "whoami",
        "languages",
        "install",
        "launch",
        "runs",
        "run",
        "suspend",
        "resume",
        "abort",
        "refresh",
        "set",
        "wait",
        "subscribe",
        "stats",
        "reload",
        "extensions",
        "scripts",
        "code",
        "script_install",
        "script_remove",
        "launches",
        "launch_add",
        "launch_start",
        "launch_remove",
        "run_index_next",
        "mib_set",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Op::Whoami => "whoami",
            Op::Languages => "languages",
            Op::Install { .. } => "install",
            Op::Launch(_) => "launch",
            Op::Runs { .. } => "runs",
            Op::Run { .. } => "run",
            Op::Suspend { .. } => "suspend",
            Op::Resume { .. } => "resume",
            Op::Abort { .. } => "abort",
            Op::Refresh { .. } => "refresh",
            Op::Set { .. } => "set",
            Op::Wait { .. } => "wait",
            Op::Subscribe { .. } => "subscribe",
            Op::Stats => "stats",
            Op::Reload => "reload",
            Op::Extensions => "extensions",
            Op::Scripts { .. } => "scripts",
            Op::Code { .. } => "code",
            Op::ScriptInstall(_) => "script_install",
            Op::ScriptRemove { .. } => "script_remove",
            Op::Launches { .. } => "launches",
            Op::LaunchAdd(_) => "launch_add",
            Op::LaunchStart { .. } => "launch_start",
            Op::LaunchRemove { .. } => "launch_remove",
            Op::RunIndexNext { .. } => "run_index_next",
            Op::MibSet { .. } => "mib_set",
        }
    }
}

/// smLaunchTable columns of one launch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LaunchParams {
    /// smLaunchOwner.
    pub owner: String,
    /// smLaunchName; defaults to the script's file name.
    #[serde(default)]
    pub name: Option<String>,
    /// The script, relative to the script storage (as `install` returned it).
    pub script: String,
    #[serde(default)]
    pub runtime: Option<String>,
    /// smLaunchArgument: a string, or `{"hex": "..."}`.
    #[serde(default)]
    pub argument: Octets,
    /// smLaunchLifeTime in centi-seconds (default 360000, one hour).
    #[serde(default = "one_hour")]
    pub lifetime: TimeInterval,
    /// smLaunchExpireTime in centi-seconds (default 360000, one hour).
    #[serde(default = "one_hour")]
    pub expire_time: TimeInterval,
}

fn one_hour() -> TimeInterval {
    TimeInterval::ONE_HOUR
}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a JSON object.
    BadJson,
    /// A known op with missing or invalid fields.
    BadRequest,
    UnknownOp,
    /// The request line exceeds the limit; it was skipped.
    LineTooLong,
    /// The caller may not act for that owner or use that op.
    NotPermitted,
    NoSuchRun,
    /// The run's state does not allow the operation (the MIB's inconsistentValue).
    InvalidState,
    /// The owner has no OS profile mapping.
    OwnerNotMapped,
    /// No runtime for the script, or an unknown runtime.
    NoRuntime,
    /// The runtime profile is not accepted or may not be chosen.
    ProfileRefused,
    /// The script is missing, outside the storage, or not storable.
    BadScript,
    ArgumentTooLong,
    TooManyRuns,
    /// The owner's scripts would exceed `[host] storage_quota`; nothing was written.
    QuotaExceeded,
    ShuttingDown,
    /// The connection already has the maximum number of pending `wait`s (1024).
    Busy,
    /// The daemon has `[control] max_connections` connections, or the peer's uid has
    /// `[control] max_connections_per_uid`; sent instead of the greeting, then closed.
    TooManyConnections,
    /// The connection sent no request within `[control] idle_timeout`; it is closed.
    IdleTimeout,
    /// The config file could not be reloaded.
    ConfigError,
    /// Script MIB sets (RFC 3416 error statuses): the value is outside the column's range.
    WrongValue,
    /// A string is longer or shorter than the column allows.
    WrongLength,
    /// Valid, but not now: RowStatus rules, the smLaunchStart checks 1-6, a launch whose
    /// smLaunchMaxRunning is reached, an smRunIndex in use.
    InconsistentValue,
    /// The row does not exist and the request cannot create it.
    NoCreation,
    /// The column is read-only.
    NotWritable,
    /// The host cannot take it now.
    ResourceUnavailable,
    /// No such script, code fragment or launch button.
    NoSuchRow,
    Internal,
}

/// An error response body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// One line from the server after the greeting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ServerLine {
    Response(Response),
    Event {
        event: Event,
    },
    /// Events were dropped because this subscriber fell behind.
    Lagged {
        lagged: u64,
    },
    /// The daemon is shutting down; the connection closes next.
    Shutdown {
        shutdown: bool,
    },
}

/// A response to one request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    #[serde(default)]
    pub id: Option<serde_json::Value>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// `whoami` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Whoami {
    pub user: String,
    pub uid: u32,
    pub admin: bool,
}

/// One smLangTable row, with the runtime's host-side settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Language {
    /// smLangIndex: stable across restarts and reloads (kept by runtime name, in the state
    /// database with `[host] state_dir`); the first runtimes get 1, 2, ... in config order.
    pub index: u32,
    /// The runtime's name.
    pub name: String,
    /// smLangDescr.
    pub description: String,
    /// Script file extensions (host-internal: how a runtime is chosen).
    pub extensions: Vec<String>,
    pub profiles: Vec<String>,
    pub transport: crate::config::Transport,
    pub threading: crate::config::Threading,
    /// smLangLanguage (`0.0` if unknown).
    #[serde(default = "crate::mib::Oid::zero_dot_zero")]
    pub language: crate::mib::Oid,
    /// smLangVersion.
    #[serde(default)]
    pub version: String,
    /// smLangVendor (`0.0` if unknown).
    #[serde(default = "crate::mib::Oid::zero_dot_zero")]
    pub vendor: crate::mib::Oid,
    /// smLangRevision.
    #[serde(default)]
    pub revision: String,
}

/// `install` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Installed {
    pub script: String,
}

/// `launch` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Launched {
    pub run_id: RunId,
    /// smRunIndex.
    pub index: u32,
}

/// `runs` result.
pub type Runs = Vec<RunInfo>;

impl ColumnSet {
    /// The model's change, or why this is not one (unknown table or column, a value of the
    /// wrong type: SNMP's wrongType).
    pub fn to_change(&self) -> Result<crate::mib::Change, String> {
        use crate::mib::{Change, CodeCol, LaunchCol, RunCol, ScriptCol};
        let int = || {
            self.value
                .as_i64()
                .ok_or_else(|| format!("{} takes an integer", self.column))
        };
        let octets = || -> Result<Vec<u8>, String> {
            serde_json::from_value::<Octets>(self.value.clone())
                .map(|o| o.as_bytes().to_vec())
                .map_err(|_| format!("{} takes a string or {{\"hex\": ...}}", self.column))
        };
        let index = || {
            self.index
                .ok_or_else(|| format!("{} needs an index", self.column))
        };
        let (owner, name) = (self.owner.clone(), self.name.clone());
        let unknown = || format!("no column {} in the {} table", self.column, self.table);
        Ok(match self.table.as_str() {
            "script" => Change::Script {
                owner,
                name,
                col: match self.column.as_str() {
                    "smScriptDescr" => ScriptCol::Descr(octets()?),
                    "smScriptLanguage" => ScriptCol::Language(int()?),
                    "smScriptSource" => ScriptCol::Source(octets()?),
                    "smScriptAdminStatus" => ScriptCol::AdminStatus(int()?),
                    "smScriptStorageType" => ScriptCol::StorageType(int()?),
                    "smScriptRowStatus" => ScriptCol::RowStatus(int()?),
                    _ => return Err(unknown()),
                },
            },
            "code" => Change::Code {
                owner,
                name,
                index: index()?,
                col: match self.column.as_str() {
                    "smCodeText" => CodeCol::Text(octets()?),
                    "smCodeRowStatus" => CodeCol::RowStatus(int()?),
                    _ => return Err(unknown()),
                },
            },
            "launch" => Change::Launch {
                owner,
                name,
                col: match self.column.as_str() {
                    "smLaunchScriptOwner" => LaunchCol::ScriptOwner(octets()?),
                    "smLaunchScriptName" => LaunchCol::ScriptName(octets()?),
                    "smLaunchArgument" => LaunchCol::Argument(octets()?),
                    "smLaunchMaxRunning" => LaunchCol::MaxRunning(int()?),
                    "smLaunchMaxCompleted" => LaunchCol::MaxCompleted(int()?),
                    "smLaunchLifeTime" => LaunchCol::LifeTime(int()?),
                    "smLaunchExpireTime" => LaunchCol::ExpireTime(int()?),
                    "smLaunchStart" => LaunchCol::Start(int()?),
                    "smLaunchControl" => LaunchCol::Control(int()?),
                    "smLaunchAdminStatus" => LaunchCol::AdminStatus(int()?),
                    "smLaunchStorageType" => LaunchCol::StorageType(int()?),
                    "smLaunchRowStatus" => LaunchCol::RowStatus(int()?),
                    "smLaunchRowExpireTime" => LaunchCol::RowExpireTime(int()?),
                    _ => return Err(unknown()),
                },
            },
            "run" => Change::Run {
                owner,
                name,
                index: index()?,
                col: match self.column.as_str() {
                    "smRunLifeTime" => RunCol::LifeTime(int()?),
                    "smRunExpireTime" => RunCol::ExpireTime(int()?),
                    "smRunControl" => RunCol::Control(int()?),
                    _ => return Err(unknown()),
                },
            },
            t => return Err(format!("no table {t:?} (script, code, launch or run)")),
        })
    }
}
