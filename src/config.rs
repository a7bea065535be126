//! Configuration: the runtime registry, OS security profiles, the owner map and host settings.
//!
//! smx always starts from an embedded default (`src/embedded.toml`); a config file extends it.
//! Values are checked while they are deserialized, so every error carries the file, line,
//! column and key of the offending text.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::proto::Profile;

/// The embedded default configuration.
pub const EMBEDDED: &str = include_str!("embedded.toml");

/// A configuration error, naming where in which file it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {key}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    /// More than one problem, in the order of the text; shown one per line.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// Every single problem (one for `Read` and `Invalid`).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(v) => v.iter().flat_map(|e| e.problems()).collect(),
            e => vec![e],
        }
    }

    /// One error from a list of problems (`None` if there are none), sorted by position.
    fn from_list(mut list: Vec<ConfigError>) -> Option<ConfigError> {
        let pos = |e: &ConfigError| match e {
            ConfigError::Invalid { line, column, .. } => (*line, *column),
            _ => (0, 0),
        };
        list.sort_by_key(pos);
        match list.len() {
            0 => None,
            1 => list.pop(),
            _ => Some(ConfigError::Several(list)),
        }
    }
}

/// How a runtime talks SMX (RFC 3179 section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The runtime's stdin/stdout (section 8.1), the preferred transport.
    Pipe,
    /// The runtime connects back to a loopback listener and proves a cookie (section 8.2).
    Tcp,
}

/// Whether one runtime process serves many runs (RFC 3179 section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Threading {
    Multi,
    Single,
}

/// How a TCP runtime learns its cookie (RFC 3179 section 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CookieDelivery {
    /// A pipe inherited as fd `SMX_COOKIE_FD` holding the hex cookie (the default).
    Fd,
    /// The environment variable `SMX_COOKIE`, for RFC 2593-era runtimes. Other local users
    /// may be able to read a process environment, which is why it is opt-in.
    Env,
}

/// One language runtime the host can start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    pub name: RuntimeName,
    #[serde(default)]
    pub description: String,
    pub command: Argv,
    #[serde(default = "default_transport")]
    pub transport: Transport,
    #[serde(default = "default_threading")]
    pub threading: Threading,
    #[serde(default)]
    pub extensions: Vec<Extension>,
    #[serde(default = "default_profiles")]
    pub profiles: ProfileList,
    #[serde(default)]
    pub cookie: Option<CookieDelivery>,
    /// smLangLanguage: the language's registration OID (`0.0` if unknown).
    #[serde(default)]
    pub language: Option<crate::mib::types::Oid>,
    /// smLangVersion (at most 32 octets).
    #[serde(default)]
    pub version: MibString<32>,
    /// smLangVendor: the implementation's vendor OID (`0.0` if unknown).
    #[serde(default)]
    pub vendor: Option<crate::mib::types::Oid>,
    /// smLangRevision (at most 32 octets).
    #[serde(default)]
    pub revision: MibString<32>,
    /// smExtsnTable: language extensions (packages such as Tnm for Tcl) this runtime offers.
    #[serde(default)]
    pub language_extensions: Vec<LanguageExtension>,
    /// Most runs one process of this runtime serves (multi-threaded runtimes); past it
    /// another process of the same runtime, OS profile and owner is started. Defaults to
    /// `[host] max_runs_per_runtime`.
    #[serde(default)]
    pub max_runs: Option<std::num::NonZeroUsize>,
}

/// A text that must fit an SnmpAdminString column of at most `N` octets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MibString<const N: usize>(pub String);

impl<'de, const N: usize> Deserialize<'de> for MibString<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() > N {
            return Err(serde::de::Error::custom(format!(
                "at most {N} octets (an SnmpAdminString column of the Script MIB), not {}",
                s.len()
            )));
        }
        Ok(MibString(s))
    }
}

/// One smExtsnTable row of a runtime.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageExtension {
    /// smExtsnExtension: the extension's OID.
    pub oid: crate::mib::types::Oid,
    #[serde(default)]
    pub version: MibString<32>,
    #[serde(default)]
    pub vendor: Option<crate::mib::types::Oid>,
    #[serde(default)]
    pub revision: MibString<32>,
    #[serde(default)]
    pub description: MibString<255>,
}

fn default_transport() -> Transport {
    Transport::Pipe
}
fn default_threading() -> Threading {
    Threading::Multi
}
fn default_profiles() -> ProfileList {
    ProfileList(vec!["default".parse().expect("valid profile")])
}

impl RuntimeSpec {
    /// The profile used when nobody names one: the first of `profiles`.
    pub fn default_profile(&self) -> &Profile {
        &self.profiles.0[0]
    }

    pub fn accepts_profile(&self, p: &Profile) -> bool {
        self.profiles.0.contains(p)
    }

    pub fn cookie_delivery(&self) -> CookieDelivery {
        self.cookie.unwrap_or(CookieDelivery::Fd)
    }
}

macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                let check: fn(&str) -> bool = $check;
                if check(&s) {
                    Ok($name(s))
                } else {
                    Err(serde::de::Error::custom(format!(concat!("invalid ", $what, " {:?}"), s)))
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

checked_string!(
    /// A runtime or OS profile name: 1-64 of `A-Z a-z 0-9 - _ .`.
    RuntimeName,
    "name (use 1-64 of A-Z a-z 0-9 - _ .)",
    is_name
);

checked_string!(
    /// A script file extension without the dot, e.g. `py`.
    Extension,
    "extension (letters and digits, without the dot)",
    |s| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_alphanumeric())
);

/// A non-empty argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        if v.is_empty() || v[0].is_empty() {
            return Err(serde::de::Error::custom("command must name a program"));
        }
        if v.iter().any(|a| a.contains('\0')) {
            return Err(serde::de::Error::custom("command must not contain NUL"));
        }
        Ok(Argv(v))
    }
}

/// A non-empty list of runtime security profile names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileList(pub Vec<Profile>);

impl<'de> Deserialize<'de> for ProfileList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<Profile>::deserialize(d)?;
        if v.is_empty() {
            return Err(serde::de::Error::custom(
                "a runtime needs at least one profile",
            ));
        }
        Ok(ProfileList(v))
    }
}

/// A user or group: a name looked up in the system database, or a numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum IdRef {
    Id(u32),
    Name(String),
}

impl fmt::Display for IdRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdRef::Id(n) => write!(f, "{n}"),
            IdRef::Name(s) => f.write_str(s),
        }
    }
}

/// A resource limit value: a number, a size like `"512M"`, or `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Limit(Some(n))),
            Raw::S(s) => parse_limit(&s).map(Limit).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid limit {s:?}: use a number, a size such as \"512M\", or \"unlimited\""
                ))
            }),
        }
    }
}

fn parse_limit(s: &str) -> Option<Option<u64>> {
    if s == "unlimited" || s == "infinity" {
        return Some(None);
    }
    let (digits, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult).map(Some)
}

/// Resource limits for a runtime process (setrlimit, soft = hard).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimits {
    /// RLIMIT_NOFILE: open files.
    pub nofile: Option<Limit>,
    /// RLIMIT_CPU: CPU seconds.
    pub cpu: Option<Limit>,
    /// RLIMIT_AS: address space in bytes.
    #[serde(rename = "as")]
    pub address_space: Option<Limit>,
    /// RLIMIT_NPROC: processes of the user.
    pub nproc: Option<Limit>,
    /// RLIMIT_CORE: core file size.
    pub core: Option<Limit>,
    /// RLIMIT_FSIZE: largest file the runtime may write.
    pub fsize: Option<Limit>,
    /// RLIMIT_DATA: data segment size.
    pub data: Option<Limit>,
    /// RLIMIT_STACK: stack size.
    pub stack: Option<Limit>,
}

/// An octal file mode creation mask such as `"077"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Umask(pub u32);

impl<'de> Deserialize<'de> for Umask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match u32::from_str_radix(&s, 8) {
            Ok(m) if m <= 0o777 && !s.is_empty() => Ok(Umask(m)),
            _ => Err(serde::de::Error::custom(format!(
                "invalid umask {s:?}: use an octal string such as \"077\""
            ))),
        }
    }
}

/// An operating-system security profile (RFC 3179 section 3).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsProfileSpec {
    pub name: RuntimeName,
    /// The user the runtime runs as. Required: running as the host's own identity must be
    /// said explicitly (for example `user = "root"`).
    pub user: IdRef,
    /// The primary group; defaults to the user's primary group.
    #[serde(default)]
    pub group: Option<IdRef>,
    /// Supplementary groups; default none.
    #[serde(default)]
    pub groups: Vec<IdRef>,
    #[serde(default)]
    pub chroot: Option<AbsPath>,
    /// Where the script storage is visible inside `chroot`, if it is bind-mounted there
    /// rather than lying inside the root.
    #[serde(default)]
    pub chroot_storage: Option<AbsPath>,
    #[serde(default)]
    pub rlimits: Rlimits,
    #[serde(default)]
    pub umask: Option<Umask>,
    /// Environment variables added to the runtime's otherwise clean environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Lets the owners mapped to this profile share runtime processes. By default every
    /// owner (and runtime profile) gets processes of its own: a script can reach anything
    /// its runtime process can (its SMX channel included), so sharing means every owner
    /// of the profile trusts every other one.
    #[serde(default)]
    pub share_runtimes: bool,
}

/// An absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub PathBuf);

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let p = PathBuf::from(&s);
        if !p.is_absolute() || s.contains('\0') {
            return Err(serde::de::Error::custom(format!(
                "{s:?} must be an absolute path"
            )));
        }
        Ok(AbsPath(p))
    }
}

/// The mapping of an smLaunchOwner to its profiles (RFC 3179 section 3).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerSpec {
    /// The smLaunchOwner, or `*` for every owner without an entry of its own.
    pub name: String,
    pub os_profile: String,
    pub runtime_profile: Profile,
}

/// Durations written as `"10s"`, `"500ms"`, `"2m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {s:?} ({e}): use e.g. \"10s\""))
        })
    }
}

/// Host-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// The script storage directory (the agent writes, runtimes read).
    pub storage: Option<PathBuf>,
    /// How long a runtime may take to start and answer `hello` (RFC 3179 section 6.2.2).
    pub hello_timeout: Duration,
    /// How long a runtime may take to answer any other command (sections 6.2.3-6.2.7).
    pub command_timeout: Duration,
    /// How long an idle multi-threaded runtime is kept before its pipe is closed.
    pub idle_timeout: Duration,
    /// How long a runtime has to exit once its connection is closed before it is killed.
    pub shutdown_grace: Duration,
    /// Most runs that may be active (not terminated) at once.
    pub max_active_runs: usize,
    /// Most runs one multi-threaded runtime process serves, unless its `[[runtime]]`
    /// says `max_runs`: past it another process of the same key is started. Sized for
    /// the exec runtime, which holds a few descriptors per script: 4096 of them fit the
    /// usual hard RLIMIT_NOFILE.
    pub max_runs_per_runtime: std::num::NonZeroUsize,
    /// Most terminated runs kept; beyond it the oldest are removed before their expire time.
    pub max_finished_runs: usize,
    /// Where the Script MIB's rows are kept across restarts (`smx.db` inside); `None` keeps
    /// everything in memory.
    pub state_dir: Option<PathBuf>,
    /// How long pulling a script from its smScriptSource URL may take.
    pub fetch_timeout: Duration,
    /// Largest script pulled from a URL.
    pub fetch_max_octets: u64,
    /// Octets one owner's scripts may take in the script storage (0: no limit).
    pub storage_quota: u64,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            storage: None,
            hello_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            max_active_runs: 1024,
            max_runs_per_runtime: std::num::NonZeroUsize::new(4096).expect("not zero"),
            max_finished_runs: 100_000,
            state_dir: None,
            fetch_timeout: Duration::from_secs(30),
            fetch_max_octets: crate::storage::MAX_SCRIPT_OCTETS,
            storage_quota: crate::storage::DEFAULT_QUOTA,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSection {
    storage: Option<AbsPath>,
    hello_timeout: Option<Dur>,
    command_timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
    shutdown_grace: Option<Dur>,
    max_active_runs: Option<usize>,
    max_runs_per_runtime: Option<std::num::NonZeroUsize>,
    max_finished_runs: Option<usize>,
    state_dir: Option<AbsPath>,
    fetch_timeout: Option<Dur>,
    fetch_max_octets: Option<u64>,
    storage_quota: Option<u64>,
}

/// Settings of the daemon's control socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSettings {
    #[serde(default)]
    pub socket: Option<AbsPath>,
    /// Members of this group may act for any owner, like root.
    #[serde(default)]
    pub admin_group: Option<IdRef>,
    /// Group that owns the socket (mode 0660), so non-admin local users can connect.
    #[serde(default)]
    pub socket_group: Option<IdRef>,
    /// Most control connections open at once. Every connection costs a file descriptor
    /// and some memory; past the cap a new one is told so and closed, so that the daemon
    /// never runs out of descriptors for its runtimes.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "positive_count"
    )]
    pub max_connections: usize,
    /// Most control connections one user (peer uid) may have open at once, so that one
    /// local user cannot use up `max_connections` for everyone else. Root and the
    /// daemon's own user are bound by `max_connections` only.
    #[serde(
        default = "default_max_connections_per_uid",
        deserialize_with = "positive_count"
    )]
    pub max_connections_per_uid: usize,
    /// How long a connection may stay open without sending its first request. A
    /// connection that has sent one (a subscriber, say) is never closed for being idle.
    #[serde(
        default = "default_control_idle",
        deserialize_with = "positive_duration"
    )]
    pub idle_timeout: Duration,
}

fn default_max_connections() -> usize {
    256
}
fn default_max_connections_per_uid() -> usize {
    64
}
fn default_control_idle() -> Duration {
    Duration::from_secs(30)
}

fn positive_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

fn positive_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Dur::deserialize(d)?.0 {
        Duration::ZERO => Err(serde::de::Error::custom("must be longer than 0s")),
        t => Ok(t),
    }
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            socket: None,
            admin_group: None,
            socket_group: None,
            max_connections: default_max_connections(),
            max_connections_per_uid: default_max_connections_per_uid(),
            idle_timeout: default_control_idle(),
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file that extended the embedded default, if any.
    pub source: Option<PathBuf>,
    pub host: HostSettings,
    /// Runtimes in registry order (embedded first, replaced in place, then new ones).
    pub runtimes: Vec<Arc<Registered>>,
    pub os_profiles: BTreeMap<String, Arc<OsProfileSpec>>,
    pub owners: BTreeMap<String, OwnerSpec>,
    pub control: ControlSettings,
    /// `[agentx]`: serve DISMAN-SCRIPT-MIB through an SNMP master agent (none: no subagent).
    pub agentx: Option<crate::snmp::AgentxSettings>,
    /// Where each runtime was defined (`file:line:column`), for messages.
    origins: BTreeMap<String, String>,
}

/// A runtime as registered, with the directory its placeholders refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub spec: RuntimeSpec,
    /// `{config_dir}`: the directory of the file that defined it (`None` if embedded).
    pub config_dir: Option<PathBuf>,
}

impl std::ops::Deref for Registered {
    type Target = RuntimeSpec;
    fn deref(&self) -> &RuntimeSpec {
        &self.spec
    }
}

impl Config {
    /// The embedded default alone.
    pub fn embedded() -> Config {
        let mut c = Config {
            source: None,
            host: HostSettings::default(),
            runtimes: Vec::new(),
            os_profiles: BTreeMap::new(),
            owners: BTreeMap::new(),
            control: ControlSettings::default(),
            agentx: None,
            origins: BTreeMap::new(),
        };
        c.extend(EMBEDDED, "<embedded>", None)
            .expect("the embedded configuration is valid");
        c
    }

    /// The embedded default extended by the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, false)
    }

    /// The embedded default, extended by `path` if given.
    pub fn load_optional(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::load(p),
            None => Ok(Config::embedded()),
        }
    }

    /// The configuration as `smx daemon` loads it (at start, on SIGHUP, and for `smx config
    /// check`): [`Config::load_optional`], and also checked against this system: every
    /// os_profile's user and groups exist, its chroot is a directory, and the control
    /// groups exist. Every problem is reported, each with its file, line and column.
    pub fn load_checked(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::load_with(p, true),
            None => Ok(Config::embedded()),
        }
    }

    fn load_with(path: &Path, system: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut c = Config::embedded();
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned()));
        let problems = c.extend_checked(&text, &path.display().to_string(), dir, system);
        if let Some(e) = ConfigError::from_list(problems) {
            return Err(e);
        }
        c.source = Some(path.to_owned());
        Ok(c)
    }

    /// Extends this configuration with the TOML `text` from `origin`. Every problem of the
    /// text is reported (syntax errors alone if there are any); on error this
    /// configuration may be partly extended and should be dropped.
    pub fn extend(
        &mut self,
        text: &str,
        origin: &str,
        config_dir: Option<PathBuf>,
    ) -> Result<(), ConfigError> {
        match ConfigError::from_list(self.extend_checked(text, origin, config_dir, false)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// [`Config::extend`] returning every problem; with `system`, users, groups and chroot
    /// directories are looked up too.
    fn extend_checked(
        &mut self,
        text: &str,
        origin: &str,
        config_dir: Option<PathBuf>,
        system: bool,
    ) -> Vec<ConfigError> {
        let mut p = Problems {
            text,
            origin,
            list: Vec::new(),
        };
        let (doc, syntax) = toml::de::DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            for e in syntax {
                p.at(e.span(), e.message());
            }
            return p.list;
        }
        let mut sections: BTreeMap<&'static str, Item<'_>> = BTreeMap::new();
        for (key, value) in doc.into_inner() {
            let known = [
                "runtime",
                "os_profile",
                "owner",
                "host",
                "control",
                "agentx",
            ]
            .into_iter()
            .find(|k| *k == key.get_ref().as_ref());
            match known {
                Some(k) => {
                    sections.insert(k, value);
                }
                None => p.at(
                    Some(key.span()),
                    format!(
                        "unknown field `{}`, expected one of `runtime`, `os_profile`, `owner`, \
                         `host`, `control`, `agentx`",
                        key.get_ref()
                    ),
                ),
            }
        }
        let mut take = |k: &str| sections.remove(k);
        let runtimes = take("runtime")
            .map(|v| p.tables("runtime", v))
            .unwrap_or_default();
        let os_profiles = take("os_profile")
            .map(|v| p.tables("os_profile", v))
            .unwrap_or_default();
        let owners = take("owner")
            .map(|v| p.tables("owner", v))
            .unwrap_or_default();
        let host = take("host");
        let control = take("control");
        let agentx = take("agentx");

        self.extend_runtimes(&mut p, runtimes, config_dir);
        self.extend_os_profiles(&mut p, os_profiles, system);
        self.extend_owners(&mut p, owners);
        if let Some(h) = host {
            self.extend_host(&mut p, h, system);
        }
        if let Some(c) = control {
            self.extend_control(&mut p, c, system);
        }
        if let Some(a) = agentx
            && let Some(a) = p.de::<crate::snmp::AgentxSettings>(a)
        {
            self.agentx = Some(a);
        }
        p.list
    }

    fn extend_runtimes(
        &mut self,
        p: &mut Problems,
        items: Vec<Item<'_>>,
        config_dir: Option<PathBuf>,
    ) {
        // Where each extension of a runtime defined here is written.
        let mut ext_spans: BTreeMap<(String, String), Span> = BTreeMap::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for item in items {
            let span = item.span();
            let commands = strings(field(&item, "command"));
            let extensions = strings(field(&item, "extensions"));
            let Some(spec) = p.de::<RuntimeSpec>(item) else {
                continue;
            };
            let name = spec.name.0.clone();
            if let Some(first) = seen.get(&name) {
                let first = p.line_of(first);
                p.at(
                    Some(span),
                    format!("runtime {name:?} is defined twice (first at line {first})"),
                );
                continue;
            }
            seen.insert(name.clone(), span.clone());
            if spec.cookie.is_some() && spec.transport != Transport::Tcp {
                p.at(
                    Some(span.clone()),
                    "`cookie` only applies to transport = \"tcp\"",
                );
            }
            for (arg, at) in &commands {
                for ph in placeholders(arg) {
                    if !PLACEHOLDERS.contains(&ph) {
                        p.at(
                            Some(at.clone()),
                            format!(
                                "unknown placeholder {{{ph}}} in command (known: {})",
                                PLACEHOLDERS.map(|k| format!("{{{k}}}")).join(", ")
                            ),
                        );
                    }
                }
            }
            for (ext, at) in extensions {
                ext_spans.insert((name.clone(), ext.to_ascii_lowercase()), at);
            }
            self.origins.insert(name.clone(), p.place(&span));
            let reg = Arc::new(Registered {
                spec,
                config_dir: config_dir.clone(),
            });
            match self.runtimes.iter_mut().find(|x| x.name == reg.name) {
                Some(slot) => *slot = reg,
                None => self.runtimes.push(reg),
            }
        }

        // An extension selects the first runtime (in registry order) that lists it; a
        // second one would silently never get those scripts.
        let mut claimed: BTreeMap<String, String> = BTreeMap::new();
        for r in &self.runtimes {
            for e in &r.extensions {
                let ext = e.0.to_ascii_lowercase();
                let Some(first) = claimed.get(&ext) else {
                    claimed.insert(ext, r.name.0.clone());
                    continue;
                };
                if *first == r.name.0 {
                    continue;
                }
                let here = ext_spans.get(&(r.name.0.clone(), ext.clone()));
                let there = ext_spans.get(&(first.clone(), ext.clone()));
                let (at, this, other) = match (here, there) {
                    (Some(at), _) => (at, &r.name.0, first),
                    (None, Some(at)) => (at, first, &r.name.0),
                    (None, None) => continue,
                };
                let where_other = self.origins.get(other).cloned().unwrap_or_default();
                p.at(
                    Some(at.clone()),
                    format!(
                        "extension {ext:?} of runtime {this:?} is also registered by runtime \
                         {other:?} ({where_other}); .{ext} scripts would only ever go to {first:?}. \
                         Remove it from one of them (a [[runtime]] named {other:?} replaces that one)"
                    ),
                );
            }
        }
    }

    fn extend_os_profiles(&mut self, p: &mut Problems, items: Vec<Item<'_>>, system: bool) {
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for item in items {
            let span = item.span();
            let user_at = field(&item, "user").map(|v| v.span());
            let group_at = field(&item, "group").map(|v| v.span());
            let groups_at: Vec<Span> = field(&item, "groups")
                .and_then(|v| v.get_ref().as_array())
                .map(|a| a.iter().map(|v| v.span()).collect())
                .unwrap_or_default();
            let chroot_at = field(&item, "chroot").map(|v| v.span());
            let Some(spec) = p.de::<OsProfileSpec>(item) else {
                continue;
            };
            let name = spec.name.0.clone();
            if let Some(first) = seen.get(&name) {
                let first = p.line_of(first);
                p.at(
                    Some(span),
                    format!("os_profile {name:?} is defined twice (first at line {first})"),
                );
                continue;
            }
            seen.insert(name.clone(), span.clone());
            if spec.chroot_storage.is_some() && spec.chroot.is_none() {
                p.at(Some(span.clone()), "`chroot_storage` needs `chroot`");
            }
            if system {
                if let Some(why) = missing_user(&spec.user) {
                    p.at(
                        user_at.or(Some(span.clone())),
                        format!("os_profile {name:?}: {why}"),
                    );
                }
                let groups = spec.group.iter().map(|g| (g, group_at.clone())).chain(
                    spec.groups
                        .iter()
                        .enumerate()
                        .map(|(i, g)| (g, groups_at.get(i).cloned())),
                );
                for (g, at) in groups {
                    if let Some(why) = missing_group(g) {
                        p.at(
                            at.or(Some(span.clone())),
                            format!("os_profile {name:?}: {why}"),
                        );
                    }
                }
                if let Some(root) = &spec.chroot
                    && !root.0.is_dir()
                {
                    p.at(
                        chroot_at.or(Some(span.clone())),
                        format!(
                            "os_profile {name:?}: chroot {} is not a directory",
                            root.0.display()
                        ),
                    );
                }
            }
            if self.os_profiles.contains_key(&name) {
                p.at(
                    Some(span),
                    format!("os_profile {name:?} is already defined by the embedded default"),
                );
                continue;
            }
            self.os_profiles.insert(name, Arc::new(spec));
        }
    }

    fn extend_owners(&mut self, p: &mut Problems, items: Vec<Item<'_>>) {
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for item in items {
            let span = item.span();
            let name_at = field(&item, "name").map(|v| v.span());
            let profile_at = field(&item, "os_profile").map(|v| v.span());
            let Some(spec) = p.de::<OwnerSpec>(item) else {
                continue;
            };
            if spec.name.is_empty() || spec.name.len() > 32 {
                p.at(
                    name_at.or(Some(span.clone())),
                    "owner name must be 1-32 octets (smLaunchOwner)",
                );
                continue;
            }
            if let Some(first) = seen.get(&spec.name) {
                let first = p.line_of(first);
                p.at(
                    name_at.or(Some(span)),
                    format!(
                        "owner {:?} is defined twice (first at line {first}); each smLaunchOwner \
                         maps to one os_profile",
                        spec.name
                    ),
                );
                continue;
            }
            seen.insert(spec.name.clone(), span.clone());
            if !self.os_profiles.contains_key(&spec.os_profile) {
                p.at(
                    profile_at.or(Some(span)),
                    format!(
                        "owner {:?} names unknown os_profile {:?}",
                        spec.name, spec.os_profile
                    ),
                );
                continue;
            }
            self.owners.insert(spec.name.clone(), spec);
        }
    }

    fn extend_host(&mut self, p: &mut Problems, item: Item<'_>, system: bool) {
        let active_at = field(&item, "max_active_runs").map(|v| v.span());
        let fetch_at = field(&item, "fetch_timeout").map(|v| v.span());
        let state_at = field(&item, "state_dir").map(|v| v.span());
        let Some(h) = p.de::<HostSection>(item) else {
            return;
        };
        let d = &mut self.host;
        if let Some(v) = h.storage {
            d.storage = Some(v.0);
        }
        for (src, dst) in [
            (h.hello_timeout, &mut d.hello_timeout),
            (h.command_timeout, &mut d.command_timeout),
            (h.idle_timeout, &mut d.idle_timeout),
            (h.shutdown_grace, &mut d.shutdown_grace),
            (h.fetch_timeout, &mut d.fetch_timeout),
        ] {
            if let Some(v) = src {
                *dst = v.0;
            }
        }
        match h.max_active_runs {
            Some(0) => p.at(
                active_at,
                "must be at least 1 (with 0 every launch would be refused)",
            ),
            Some(v) => d.max_active_runs = v,
            None => {}
        }
        if let Some(v) = h.max_runs_per_runtime {
            d.max_runs_per_runtime = v;
        }
        if let Some(v) = h.max_finished_runs {
            d.max_finished_runs = v;
        }
        if d.fetch_timeout.is_zero() {
            p.at(
                fetch_at,
                "must be more than 0s (with 0 every smScriptSource retrieval would time out at once)",
            );
        }
        if let Some(v) = h.state_dir {
            if system && let Some(why) = unusable_dir(&v.0) {
                p.at(state_at, why);
            }
            d.state_dir = Some(v.0);
        }
        if let Some(v) = h.fetch_max_octets {
            d.fetch_max_octets = v;
        }
        if let Some(v) = h.storage_quota {
            d.storage_quota = v;
        }
    }

    fn extend_control(&mut self, p: &mut Problems, item: Item<'_>, system: bool) {
        let admin_at = field(&item, "admin_group").map(|v| v.span());
        let socket_at = field(&item, "socket_group").map(|v| v.span());
        let Some(c) = p.de::<ControlSettings>(item) else {
            return;
        };
        if system {
            for (g, at) in [(&c.admin_group, admin_at), (&c.socket_group, socket_at)] {
                if let Some(why) = g.as_ref().and_then(missing_group) {
                    p.at(at, why);
                }
            }
        }
        if c != ControlSettings::default() {
            self.control = c;
        }
    }

    pub fn runtime(&self, name: &str) -> Option<&Arc<Registered>> {
        self.runtimes.iter().find(|r| r.name.0 == name)
    }

    /// The runtime registered for the extension of `script`, if any.
    pub fn runtime_for_extension(&self, script: &Path) -> Option<&Arc<Registered>> {
        let ext = script.extension()?.to_str()?;
        self.runtimes
            .iter()
            .find(|r| r.extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)))
    }

    /// The profiles an owner maps to: its own entry, else the `*` entry, else none.
    pub fn owner(&self, owner: &str) -> Option<(&OwnerSpec, &Arc<OsProfileSpec>)> {
        let o = self.owners.get(owner).or_else(|| self.owners.get("*"))?;
        Some((o, self.os_profiles.get(&o.os_profile)?))
    }
}

/// The directory holding the runtimes that ship with smx (`{runtimes}` in a command):
/// `$SMX_RUNTIMES`, else `<prefix>/lib/smx/runtimes` next to the executable (the package
/// layout: `/usr/bin/smx`, `/usr/lib/smx/runtimes`; also where a package unpacked with
/// `dpkg -x` finds its own), else `<prefix>/share/smx/runtimes` (older installs), else the
/// `runtimes/` directory of the source tree the executable was built from (`cargo run`).
pub fn runtimes_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SMX_RUNTIMES") {
        return PathBuf::from(d);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(prefix) = exe.parent().and_then(Path::parent)
    {
        for installed in ["lib/smx/runtimes", "share/smx/runtimes"] {
            let d = prefix.join(installed);
            if d.is_dir() {
                return d;
            }
        }
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/runtimes"))
}

/// The placeholders a runtime's `command` may use.
pub const PLACEHOLDERS: [&str; 3] = ["smx", "runtimes", "config_dir"];

/// The `{name}` placeholders in `arg` (a name is a letter or `_` then letters, digits or
/// `_`; other text in braces, such as awk's `{print $1}`, is left alone).
fn placeholders(arg: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(['{', '}']) else {
            break;
        };
        let name = &rest[..close];
        if rest[close..].starts_with('}')
            && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            found.push(name);
        }
        rest = &rest[close..];
    }
    found
}

type Span = std::ops::Range<usize>;
type Item<'i> = Spanned<toml::de::DeValue<'i>>;

/// The problems found in one text.
struct Problems<'a> {
    text: &'a str,
    origin: &'a str,
    list: Vec<ConfigError>,
}

impl Problems<'_> {
    fn at(&mut self, span: Option<Span>, message: impl Into<String>) {
        self.list
            .push(located(self.text, self.origin, span, message.into()));
    }

    /// The line a span starts on.
    fn line_of(&self, span: &Span) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// `origin:line:column` of a span.
    fn place(&self, span: &Span) -> String {
        match located(self.text, self.origin, Some(span.clone()), String::new()) {
            ConfigError::Invalid {
                origin,
                line,
                column,
                ..
            } => format!("{origin}:{line}:{column}"),
            _ => self.origin.to_owned(),
        }
    }

    /// The elements of an array of tables (`[[key]]`).
    fn tables<'i>(&mut self, key: &str, v: Item<'i>) -> Vec<Item<'i>> {
        let span = v.span();
        match v.into_inner() {
            toml::de::DeValue::Array(a) => a.into_iter().collect(),
            _ => {
                self.at(
                    Some(span),
                    format!("`{key}` must be an array of tables, written [[{key}]]"),
                );
                Vec::new()
            }
        }
    }

    /// Deserializes one item, recording its error (located at the offending value).
    fn de<T: serde::de::DeserializeOwned>(&mut self, item: Item<'_>) -> Option<T> {
        let span = item.span();
        match T::deserialize(toml::de::ValueDeserializer::from(item)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.at(e.span().or(Some(span)), e.message().to_owned());
                None
            }
        }
    }
}

/// The value of `key` in a table item.
fn field<'a, 'i>(item: &'a Item<'i>, key: &str) -> Option<&'a Item<'i>> {
    item.get_ref().as_table()?.get(key)
}

/// The strings of an array value, each with its span.
fn strings(v: Option<&Item<'_>>) -> Vec<(String, Span)> {
    v.and_then(|v| v.get_ref().as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.get_ref().as_str().map(|s| (s.to_owned(), x.span())))
                .collect()
        })
        .unwrap_or_default()
}

/// Why `dir` cannot be a directory the daemon keeps files in (state_dir), if that can be
/// told cheaply: it is something else, or the nearest part of it that exists is not a
/// directory (so it cannot be created). Permissions are the daemon's business at start.
fn unusable_dir(dir: &Path) -> Option<String> {
    for (i, p) in dir.ancestors().enumerate() {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => return None,
            Ok(_) if i == 0 => {
                return Some(format!("{} exists and is not a directory", dir.display()));
            }
            Ok(_) => {
                return Some(format!(
                    "{} cannot be created: {} is not a directory",
                    dir.display(),
                    p.display()
                ));
            }
            // A missing part, or one below a file (ENOTDIR): the ancestors tell.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(e) => return Some(format!("{}: {e}", p.display())),
        }
    }
    None
}

/// Why `user` cannot be used, if it does not exist on this system.
fn missing_user(user: &IdRef) -> Option<String> {
    let found = match user {
        IdRef::Id(n) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*n)),
        IdRef::Name(s) => nix::unistd::User::from_name(s),
    };
    match (found, user) {
        (Ok(Some(_)), _) => None,
        (Ok(None), IdRef::Id(n)) => Some(format!("no user has uid {n}")),
        (Ok(None), IdRef::Name(s)) => Some(format!("user {s:?} does not exist")),
        (Err(e), _) => Some(format!("looking up user {user} failed: {e}")),
    }
}

/// Why `group` cannot be used, if it is a name that does not exist on this system (a
/// numeric gid need not be in the group database).
fn missing_group(group: &IdRef) -> Option<String> {
    let IdRef::Name(s) = group else {
        return None;
    };
    match nix::unistd::Group::from_name(s) {
        Ok(Some(_)) => None,
        Ok(None) => Some(format!("group {s:?} does not exist")),
        Err(e) => Some(format!("looking up group {s:?} failed: {e}")),
    }
}

/// Builds an error that names the file, line, column and the key at `span`.
fn located(
    text: &str,
    origin: &str,
    span: Option<std::ops::Range<usize>>,
    message: String,
) -> ConfigError {
    let at = span.map_or(0, |s| s.start.min(text.len()));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    ConfigError::Invalid {
        origin: origin.to_owned(),
        line,
        column,
        key: key_at(text, at),
        message,
    }
}

/// The dotted key at byte offset `at`: the last table header above it plus the key on its line.
fn key_at(text: &str, at: usize) -> String {
    let mut table = String::new();
    let mut key = String::new();
    let mut offset = 0;
    for raw in text.split_inclusive('\n') {
        let line = raw.trim();
        if offset > at {
            break;
        }
        if line.starts_with('[') {
            table = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            key.clear();
        } else if let Some((k, _)) = line.split_once('=') {
            if !line.starts_with('#') {
                key = k.trim().trim_matches('"').to_owned();
            }
        } else if offset + raw.len() <= at {
            key.clear();
        }
        offset += raw.len();
    }
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(top level)".to_owned(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extend(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::embedded();
        c.extend(text, "test.toml", None).map(|()| c)
    }

    #[test]
    fn embedded_config_is_valid() {
        let c = Config::embedded();
        assert_eq!(
            c.runtime("exec").unwrap().default_profile().as_str(),
            "trusted"
        );
        assert_eq!(
            c.runtime_for_extension(Path::new("x.PY")).unwrap().name.0,
            "python"
        );
    }

    #[test]
    fn file_replaces_runtime_of_same_name_and_keeps_others() {
        let c = extend(
            "[[runtime]]\nname = \"python\"\ncommand = [\"/opt/py\"]\nextensions = [\"py\"]\n\n\
             [[runtime]]\nname = \"lua\"\ncommand = [\"lua\"]\n",
        )
        .unwrap();
        assert_eq!(c.runtime("python").unwrap().command.0, vec!["/opt/py"]);
        assert!(c.runtime("exec").is_some());
        assert_eq!(
            c.runtime("lua").unwrap().default_profile().as_str(),
            "default"
        );
        assert_eq!(
            c.runtimes.iter().filter(|r| r.name.0 == "python").count(),
            1
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = extend("[[runtime]]\nname = \"x\"\ncommand = [\"a\"]\ntransport = \"tpc\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:4:"), "{e}");
        assert!(e.contains("runtime.transport"), "{e}");

        let e = extend("[[runtime]]\nname = \"x\"\ncommand = [\"a\"]\ncolour = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:4:") && e.contains("colour"), "{e}");

        let e = extend("[host]\ncommand_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml:2:") && e.contains("host.command_timeout"),
            "{e}"
        );

        let e =
            extend("[[owner]]\nname = \"noc\"\nos_profile = \"nope\"\nruntime_profile = \"r\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("unknown os_profile"), "{e}");

        let e = extend("[[runtime]]\nname = \"x\"\ncommand = [\"a\"]\nprofiles = [\"a b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid profile name") && e.contains("runtime.profiles"),
            "{e}"
        );
    }

    fn problems(text: &str) -> Vec<String> {
        let mut c = Config::embedded();
        ConfigError::from_list(c.extend_checked(text, "test.toml", None, true))
            .map(|e| e.problems().iter().map(|p| p.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let text = "[host]\nmax_active_runs = 0\n\n\
                    [[runtime]]\nname = \"a\"\ncommand = [\"x\"]\nthreading = \"many\"\n\n\
                    [[runtime]]\nname = \"b\"\ncommand = [\"x\"]\ncolour = 1\n";
        let e = extend(text).unwrap_err();
        let all: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(all.len(), 3, "{all:#?}");
        assert!(
            all[0].starts_with("test.toml:2:19: host.max_active_runs: must be at least 1"),
            "{all:#?}"
        );
        assert!(
            all[1].starts_with("test.toml:7:13: runtime.threading:"),
            "{all:#?}"
        );
        assert!(
            all[2].starts_with("test.toml:12:1: runtime.colour: unknown field `colour`"),
            "{all:#?}"
        );
        assert_eq!(e.to_string().lines().count(), 3);
        // Syntax errors alone, when there are any.
        let all = problems("[host\nmax_active_runs = 0\n");
        assert!(
            !all.is_empty() && all.iter().all(|p| p.starts_with("test.toml:1:")),
            "{all:#?}"
        );
    }

    #[test]
    fn unknown_placeholders_are_errors() {
        let all = problems(
            "[[runtime]]\nname = \"x\"\ncommand = [\"{smx}\", \"{runtime}/a\", \"awk {print $1}\", \"{config_dir}\"]\n",
        );
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(
            all[0].starts_with("test.toml:3:21: runtime.command: unknown placeholder {runtime}"),
            "{all:#?}"
        );
        assert!(
            all[0].contains("{smx}, {runtimes}, {config_dir}"),
            "{all:#?}"
        );
        assert_eq!(placeholders("{a}{b_1}{1x}{ c}{}"), ["a", "b_1"]);
    }

    #[test]
    fn an_extension_registered_twice_is_an_error() {
        let all = problems(
            "[[runtime]]\nname = \"py2\"\ncommand = [\"python2\"]\nextensions = [\"txt\", \"PY\"]\n",
        );
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(
            all[0].starts_with("test.toml:4:22: runtime.extensions:"),
            "{all:#?}"
        );
        assert!(
            all[0].contains(
                "\"py\" of runtime \"py2\" is also registered by runtime \"python\" (<embedded>:"
            ),
            "{all:#?}"
        );
        // Replacing the built-in runtime, or taking the extension away from it, is fine.
        assert!(
            problems("[[runtime]]\nname = \"python\"\ncommand = [\"p\"]\nextensions = [\"py\"]\n")
                .is_empty()
        );
        assert!(
            problems(
                "[[runtime]]\nname = \"py2\"\ncommand = [\"p\"]\nextensions = [\"py\"]\n\
             [[runtime]]\nname = \"python\"\ncommand = [\"p\"]\nextensions = []\n"
            )
            .is_empty()
        );
        // A replaced built-in that takes another built-in's extension is named at its line.
        let all = problems(
            "[[runtime]]\nname = \"exec\"\ncommand = [\"e\"]\nextensions = [\"sh\", \"tcl\"]\n",
        );
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(
            all[0].starts_with("test.toml:4:21:") && all[0].contains("runtime \"tcl\""),
            "{all:#?}"
        );
    }

    #[test]
    fn duplicates_say_which_and_where() {
        let profile = "[[os_profile]]\nname = \"p\"\nuser = 0\n";
        let owner =
            "[[owner]]\nname = \"noc\"\nos_profile = \"p\"\nruntime_profile = \"trusted\"\n";
        let all = problems(&format!("{profile}{owner}{owner}{profile}"));
        assert_eq!(all.len(), 2, "{all:#?}");
        assert!(
            all[0].starts_with(
                "test.toml:9:8: owner.name: owner \"noc\" is defined twice (first at line 4)"
            ),
            "{all:#?}"
        );
        assert!(
            all[1].starts_with(
                "test.toml:12:1: os_profile: os_profile \"p\" is defined twice (first at line 1)"
            ),
            "{all:#?}"
        );
    }

    #[test]
    fn users_and_groups_are_looked_up_for_the_daemon() {
        let text = "[[os_profile]]\nname = \"p\"\nuser = \"smx-no-such-user\"\n\
                    group = \"smx-no-such-group\"\ngroups = [0, \"root\", \"smx-no-such-2\"]\n\
                    chroot = \"/nonexistent/root\"\n\
                    [control]\nadmin_group = \"smx-no-such-admin\"\nsocket_group = 0\n";
        // Not by `smx run` and `extend`: only what the text itself says is checked there.
        assert!(extend(text).is_ok());
        let all = problems(text);
        assert_eq!(all.len(), 5, "{all:#?}");
        assert!(all[0].starts_with("test.toml:3:8: os_profile.user: os_profile \"p\": user \"smx-no-such-user\" does not exist"), "{all:#?}");
        assert!(
            all[1].starts_with("test.toml:4:9: os_profile.group:")
                && all[1].contains("group \"smx-no-such-group\" does not exist"),
            "{all:#?}"
        );
        assert!(
            all[2].starts_with("test.toml:5:22: os_profile.groups:")
                && all[2].contains("\"smx-no-such-2\""),
            "{all:#?}"
        );
        assert!(
            all[3].starts_with("test.toml:6:10: os_profile.chroot:")
                && all[3].contains("is not a directory"),
            "{all:#?}"
        );
        assert!(
            all[4].starts_with(
                "test.toml:8:15: control.admin_group: group \"smx-no-such-admin\" does not exist"
            ),
            "{all:#?}"
        );
        assert!(
            problems("[[os_profile]]\nname = \"p\"\nuser = 4294967000\n")[0]
                .contains("no user has uid 4294967000")
        );
    }

    #[test]
    fn control_connection_limits() {
        let c = Config::embedded();
        assert_eq!(c.control.max_connections, 256);
        assert_eq!(c.control.max_connections_per_uid, 64);
        assert_eq!(c.control.idle_timeout, Duration::from_secs(30));

        let c = extend(
            "[control]\nmax_connections = 10\nmax_connections_per_uid = 2\nidle_timeout = \"1500ms\"\n",
        )
        .unwrap();
        assert_eq!(c.control.max_connections, 10);
        assert_eq!(c.control.max_connections_per_uid, 2);
        assert_eq!(c.control.idle_timeout, Duration::from_millis(1500));

        let c = extend("[control]\nsocket = \"/run/x.sock\"\n").unwrap();
        assert_eq!(
            (c.control.max_connections, c.control.max_connections_per_uid),
            (256, 64),
            "a [control] section without the keys keeps the defaults"
        );

        for (text, key) in [
            (
                "[control]\nmax_connections = 0\n",
                "control.max_connections",
            ),
            (
                "[control]\nmax_connections = -1\n",
                "control.max_connections",
            ),
            (
                "[control]\nmax_connections = \"many\"\n",
                "control.max_connections",
            ),
            (
                "[control]\nmax_connections_per_uid = 0\n",
                "control.max_connections_per_uid",
            ),
            ("[control]\nidle_timeout = \"0s\"\n", "control.idle_timeout"),
            (
                "[control]\nidle_timeout = \"soon\"\n",
                "control.idle_timeout",
            ),
            ("[control]\nidle_timeout = 30\n", "control.idle_timeout"),
        ] {
            let e = extend(text).unwrap_err().to_string();
            assert!(e.starts_with("test.toml:2:"), "{text:?}: {e}");
            assert!(e.contains(key), "{text:?}: {e}");
        }
        let e = extend("[control]\nmax_conections = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml:2:") && e.contains("max_conections"),
            "{e}"
        );
    }

    #[test]
    fn os_profile_limits_and_umask() {
        let c = extend(
            "[[os_profile]]\nname = \"ops\"\nuser = \"nobody\"\numask = \"027\"\n\
             rlimits = { nofile = 256, as = \"512M\", cpu = \"unlimited\" }\n",
        )
        .unwrap();
        let p = &c.os_profiles["ops"];
        assert_eq!(p.umask, Some(Umask(0o27)));
        assert_eq!(p.rlimits.address_space, Some(Limit(Some(512 << 20))));
        assert_eq!(p.rlimits.cpu, Some(Limit(None)));
        assert!(
            extend("[[os_profile]]\nname = \"x\"\nuser = 1\nrlimits = { nofile = \"lots\" }\n")
                .is_err()
        );
        assert!(
            extend("[[os_profile]]\nname = \"x\"\n").is_err(),
            "user is required"
        );
    }
}
