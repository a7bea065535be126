//! Launch validation (smLaunchStart, RFC 3179 section 6.2.1): a request and the
//! configuration in, a start plan or the reason for refusal out. Nothing here starts a
//! process or changes the run table; it only reads the config and the script storage.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, OsProfileSpec, Registered};
use crate::proto::{Octets, Profile, Script};
use crate::storage::{Storage, StorageError};

use super::clock::TimeInterval;
use super::table::NewRun;

/// A request to run a script (smLaunchStart).
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// smLaunchOwner. `None` runs as the invoking user with no OS profile, which escalates
    /// nothing and is meant for the command line; any owner must be mapped by the config.
    pub owner: Option<String>,
    /// smLaunchName (at most 32 octets).
    pub name: String,
    /// The script, relative to the script storage.
    pub script: String,
    /// The runtime; by default chosen by the script's extension, then `exec` for
    /// executable files.
    pub runtime: Option<String>,
    /// The runtime security profile; only for runs without an owner mapping (an owner's
    /// profile comes from the config and cannot be overridden).
    pub profile: Option<Profile>,
    /// smLaunchArgument.
    pub argument: Octets,
    /// smLaunchLifeTime.
    pub lifetime: TimeInterval,
    /// smLaunchExpireTime.
    pub expire_time: TimeInterval,
    /// The smRunIndex smLaunchStart was set to; `None` (or 0 in the MIB) for a fresh one.
    pub index: Option<u32>,
    /// smLaunchMaxRunning: refuse the launch when this many of its runs are executing.
    pub max_running: Option<u32>,
}

impl LaunchRequest {
    /// A request with the Script MIB's defaults (lifetime and expire time one hour).
    pub fn new(script: impl Into<String>) -> Self {
        let script = script.into();
        LaunchRequest {
            owner: None,
            name: admin_prefix(script.rsplit('/').next().unwrap_or_default(), 32).to_owned(),
            script,
            runtime: None,
            profile: None,
            argument: Octets::default(),
            lifetime: TimeInterval::ONE_HOUR,
            expire_time: TimeInterval::ONE_HOUR,
            index: None,
            max_running: None,
        }
    }
}

/// Why a launch was refused before a run was created.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "owner {0:?} is not mapped to any OS profile in the configuration (add an [[owner]] entry, or a \"*\" entry)"
    )]
    OwnerNotMapped(String),
    #[error("{what} must be at most 32 octets")]
    NameTooLong { what: &'static str },
    #[error("unknown runtime {0:?}")]
    UnknownRuntime(String),
    #[error(
        "no runtime for {0:?}: no runtime is registered for its extension and it is not executable (use --runtime)"
    )]
    NoRuntime(String),
    #[error("runtime {runtime} does not accept profile {profile:?} (it accepts: {accepted})")]
    ProfileNotAccepted {
        runtime: String,
        profile: String,
        accepted: String,
    },
    #[error("owner {owner:?} runs with runtime profile {mapped:?}; it cannot be overridden")]
    ProfileOverride { owner: String, mapped: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("script path {0:?} cannot be sent in SMX (only printable ASCII fits a QuotedString)")]
    UnquotablePath(String),
    #[error("script storage {storage} is not visible inside chroot {chroot} (set chroot_storage)")]
    NotInChroot { storage: String, chroot: String },
    #[error("argument is {0} octets; the limit is 65535")]
    ArgumentTooLong(usize),
    #[error("{0} runs are active, the configured maximum (host.max_active_runs)")]
    TooManyRuns(usize),
    #[error("the host is shutting down")]
    ShuttingDown,
    #[error("smRunIndex {0} is in use or out of range (1..2147483647)")]
    IndexInUse(u32),
    #[error("every smRunIndex of this launch is in use")]
    NoIndexLeft,
    #[error("{0} runs of this launch are executing (smLaunchMaxRunning)")]
    MaxRunning(u32),
}

/// Everything `start` needs, fixed at launch time.
pub(crate) struct StartPlan {
    pub runtime: Arc<Registered>,
    pub os: Option<Arc<OsProfileSpec>>,
    /// smLaunchOwner: runtime processes are not shared across owners (see `pool`).
    pub owner: String,
    pub script: Script,
    pub profile: Profile,
    pub argument: Octets,
}

/// The longest prefix of `s` of at most `max` octets that ends at a character boundary
/// (SnmpAdminString columns count octets, names are UTF-8).
pub fn admin_prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Checks a launch request against the configuration and the storage and fixes what the
/// run will be: its row (`run_id` still to be filled in) and its start plan. `invoker` owns
/// runs launched without an owner.
pub(crate) fn plan(
    config: &Config,
    storage: &Storage,
    req: LaunchRequest,
    invoker: &str,
) -> Result<(NewRun, StartPlan), LaunchError> {
    if req.name.len() > 32 {
        return Err(LaunchError::NameTooLong {
            what: "smLaunchName",
        });
    }
    if req.argument.len() > crate::proto::MAX_RESULT_OCTETS {
        return Err(LaunchError::ArgumentTooLong(req.argument.len()));
    }
    let (owner, mapped) = match &req.owner {
        Some(o) => {
            if o.len() > 32 {
                return Err(LaunchError::NameTooLong {
                    what: "smLaunchOwner",
                });
            }
            let (spec, os) = config
                .owner(o)
                .ok_or_else(|| LaunchError::OwnerNotMapped(o.clone()))?;
            (o.clone(), Some((spec.runtime_profile.clone(), os.clone())))
        }
        None => (invoker.to_owned(), None),
    };

    let path = storage.resolve(&req.script)?;
    let runtime = match &req.runtime {
        Some(name) => config
            .runtime(name)
            .cloned()
            .ok_or_else(|| LaunchError::UnknownRuntime(name.clone()))?,
        None => match config.runtime_for_extension(&path) {
            Some(r) => r.clone(),
            None if is_executable(&path) => config
                .runtime("exec")
                .cloned()
                .ok_or_else(|| LaunchError::UnknownRuntime("exec".into()))?,
            None => return Err(LaunchError::NoRuntime(req.script.clone())),
        },
    };

    let (profile, os) = match mapped {
        Some((mapped_profile, os)) => {
            if let Some(p) = &req.profile
                && *p != mapped_profile
            {
                return Err(LaunchError::ProfileOverride {
                    owner,
                    mapped: mapped_profile.to_string(),
                });
            }
            (mapped_profile, Some(os))
        }
        None => (
            req.profile
                .clone()
                .unwrap_or_else(|| runtime.default_profile().clone()),
            None,
        ),
    };
    if !runtime.accepts_profile(&profile) {
        return Err(LaunchError::ProfileNotAccepted {
            runtime: runtime.name.0.clone(),
            profile: profile.to_string(),
            accepted: runtime
                .profiles
                .0
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }

    let seen = path_in_root(storage, &path, os.as_deref())?;
    let script = Script::new(seen.as_bytes().to_vec())
        .map_err(|_| LaunchError::UnquotablePath(seen.clone()))?;
    let row = NewRun {
        run_id: crate::proto::RunId(0),
        owner,
        name: req.name,
        script: req.script,
        runtime: runtime.name.0.clone(),
        profile: profile.to_string(),
        os_profile: os.as_ref().map(|o| o.name.0.clone()),
        argument: req.argument.clone(),
        lifetime: req.lifetime,
        expire_time: req.expire_time,
        index: req.index,
        max_running: req.max_running,
    };
    let plan = StartPlan {
        owner: row.owner.clone(),
        runtime,
        os,
        script,
        profile,
        argument: req.argument,
    };
    Ok((row, plan))
}

/// The script path as the runtime sees it (inside its chroot, if any).
fn path_in_root(
    storage: &Storage,
    path: &Path,
    os: Option<&OsProfileSpec>,
) -> Result<String, LaunchError> {
    let Some(root) = os.and_then(|o| o.chroot.as_ref()) else {
        return Ok(path.display().to_string());
    };
    let inside = match os.and_then(|o| o.chroot_storage.as_ref()) {
        Some(mounted) => {
            let rel = path
                .strip_prefix(storage.root())
                .expect("resolved inside storage");
            mounted.0.join(rel)
        }
        None => match path.strip_prefix(&root.0) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => {
                return Err(LaunchError::NotInChroot {
                    storage: storage.root().display().to_string(),
                    chroot: root.0.display().to_string(),
                });
            }
        },
    };
    Ok(inside.display().to_string())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The invoking user's name (the owner of runs launched without one).
pub fn invoking_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| nix::unistd::getuid().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_names_are_cut_to_32_octets_at_a_character_boundary() {
        // smLaunchName is SnmpAdminString (SIZE(0..32)): octets, not characters.
        let name = "é".repeat(17) + ".sh";
        let r = LaunchRequest::new(format!("u/{name}"));
        assert!(r.name.len() <= 32, "{} octets", r.name.len());
        assert_eq!(r.name, "é".repeat(16));
        assert_eq!(LaunchRequest::new("u/short.sh").name, "short.sh");
        assert_eq!(admin_prefix("abc", 2), "ab");
    }
}
