//! OS security profiles (RFC 3179 sections 3 and 9): the process a runtime runs in.
//!
//! Everything that may allocate or take a lock (user and group lookups, path conversions,
//! the environment) happens in the parent in [`Prepared::new`]. The closure that runs in the
//! forked child between `fork` and `exec` only makes system calls, in the safe order:
//! parent-death signal, fd hygiene, resource limits, chroot + chdir, setgroups, setgid,
//! setuid, a check that uid 0 cannot be regained, no_new_privs, umask.
//!
//! A failure in the child is reported to the parent as a raw OS error that carries the step
//! number next to the errno, so the parent can say exactly which step failed.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::{IdRef, Limit, OsProfileSpec};

/// The default `PATH` of a runtime started in an OS profile.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The fd number a TCP runtime finds its cookie pipe on (`SMX_COOKIE_FD`).
pub const COOKIE_FD: RawFd = 3;

/// Why an OS profile could not be prepared or applied.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("os_profile {profile:?}: unknown user {user}")]
    UnknownUser { profile: String, user: String },
    #[error("os_profile {profile:?}: unknown group {group}")]
    UnknownGroup { profile: String, group: String },
    #[error("os_profile {profile:?}: user or group lookup failed: {source}")]
    Lookup { profile: String, source: nix::Error },
    #[error("os_profile {profile:?}: {what} contains a NUL byte")]
    Nul { profile: String, what: &'static str },
    #[error("os_profile {profile:?}: chroot {path} is not a directory")]
    ChrootMissing { profile: String, path: PathBuf },
    #[error("setting up the runtime process failed at step `{step}`: {errno}")]
    Step {
        step: &'static str,
        errno: nix::Error,
    },
}

/// The user and groups a runtime runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups, exactly these and no others.
    pub groups: Vec<Gid>,
    pub user_name: String,
    pub home: PathBuf,
}

impl Identity {
    /// Whether the host already has exactly this uid, gid and set of supplementary groups
    /// (real, effective and saved).
    pub fn is_current(&self) -> bool {
        let sorted = |mut v: Vec<Gid>| {
            v.sort_by_key(|g| g.as_raw());
            v.dedup();
            v
        };
        let (Ok(u), Ok(g), Ok(groups)) = (
            nix::unistd::getresuid(),
            nix::unistd::getresgid(),
            nix::unistd::getgroups(),
        ) else {
            return false;
        };
        [u.real, u.effective, u.saved]
            .iter()
            .all(|x| *x == self.uid)
            && [g.real, g.effective, g.saved]
                .iter()
                .all(|x| *x == self.gid)
            && sorted(groups) == sorted(self.groups.clone())
    }

    /// Whether a runtime must change its identity to become this one. A host that is
    /// already this user and group but may not change its groups (no CAP_SETGID: not root)
    /// keeps its own supplementary groups, as long as they include every group the profile
    /// names: the runtime then runs with exactly the host's identity, which grants nothing
    /// the host does not have, and setgroups would fail with EPERM.
    pub fn needs_switch(&self) -> bool {
        if self.is_current() {
            return false;
        }
        let Some(current) = Current::get() else {
            return true;
        };
        let keep = current.is_user(self.uid)
            && current.is_group(self.gid)
            && !has_capability(CAP_SETGID)
            && self.groups.iter().all(|g| current.groups.contains(g));
        !keep
    }

    /// Why this process cannot start a runtime with this identity, if it cannot: switching
    /// to another user or group, or adding groups, needs root (CAP_SETUID, CAP_SETGID).
    pub fn switch_refusal(&self) -> Option<String> {
        if !self.needs_switch() {
            return None;
        }
        let current = Current::get()?;
        let me = User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| nix::unistd::geteuid().to_string());
        if !current.is_user(self.uid) && !has_capability(CAP_SETUID) {
            return Some(format!(
                "smx runs as user {me} and cannot switch to user {} (uid {}): only root can",
                self.user_name, self.uid
            ));
        }
        if !has_capability(CAP_SETGID) {
            if !current.is_group(self.gid) {
                return Some(format!(
                    "smx runs as user {me} and cannot switch to group {}: only root can",
                    self.gid
                ));
            }
            let missing: Vec<String> = self
                .groups
                .iter()
                .filter(|g| !current.groups.contains(g))
                .map(|g| g.to_string())
                .collect();
            if !missing.is_empty() {
                return Some(format!(
                    "smx runs as user {me} without the supplementary groups {} and cannot add \
                     them: only root can",
                    missing.join(", ")
                ));
            }
        }
        None
    }
}

/// The identity this process has now.
struct Current {
    uid: nix::unistd::ResUid,
    gid: nix::unistd::ResGid,
    groups: Vec<Gid>,
}

impl Current {
    fn get() -> Option<Current> {
        Some(Current {
            uid: nix::unistd::getresuid().ok()?,
            gid: nix::unistd::getresgid().ok()?,
            groups: nix::unistd::getgroups().ok()?,
        })
    }

    fn is_user(&self, uid: Uid) -> bool {
        [self.uid.real, self.uid.effective, self.uid.saved]
            .iter()
            .all(|x| *x == uid)
    }

    fn is_group(&self, gid: Gid) -> bool {
        [self.gid.real, self.gid.effective, self.gid.saved]
            .iter()
            .all(|x| *x == gid)
    }
}

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;

/// Whether this process has capability `cap` in its effective set (`CapEff` of
/// /proc/self/status); without /proc, whether it is root.
fn has_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .map_or_else(
            || nix::unistd::geteuid().is_root(),
            |eff| eff & (1 << cap) != 0,
        )
}

/// An OS profile resolved in the parent, ready to be applied in the child.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The profile name (`None`: the invoking user, nothing is changed).
    pub name: Option<String>,
    pub identity: Option<Identity>,
    pub chroot: Option<PathBuf>,
    chroot_c: Option<CString>,
    rlimits: Vec<(nix::sys::resource::Resource, u64)>,
    umask: Option<libc::mode_t>,
    /// The complete environment of the runtime (it starts clean).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory (inside the root when chrooted).
    workdir: CString,
}

/// Step numbers carried in the high bits of the errno the child reports.
const STEPS: [&str; 12] = [
    "",
    "prctl(PR_SET_PDEATHSIG)",
    "parent died before exec",
    "dup2(cookie fd)",
    "close inherited fds",
    "setrlimit",
    "chroot",
    "setgroups",
    "setgid",
    "setuid",
    "verify privilege drop (setuid(0) succeeded)",
    "prctl(PR_SET_NO_NEW_PRIVS)",
];
const STEP_SHIFT: i32 = 16;

/// Decodes a spawn error produced by the child's setup closure.
pub fn describe_spawn_error(e: &io::Error) -> Option<ProfileError> {
    let code = e.raw_os_error()?;
    let step = (code >> STEP_SHIFT) as usize;
    if step == 0 || step >= STEPS.len() {
        return None;
    }
    let errno = code & ((1 << STEP_SHIFT) - 1);
    Some(ProfileError::Step {
        step: STEPS[step],
        errno: nix::Error::from_raw(errno),
    })
}

fn lookup_user(profile: &str, r: &IdRef) -> Result<User, ProfileError> {
    let found = match r {
        IdRef::Id(n) => User::from_uid(Uid::from_raw(*n)),
        IdRef::Name(s) => User::from_name(s),
    };
    match found {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(ProfileError::UnknownUser {
            profile: profile.into(),
            user: r.to_string(),
        }),
        Err(source) => Err(ProfileError::Lookup {
            profile: profile.into(),
            source,
        }),
    }
}

fn lookup_group(profile: &str, r: &IdRef) -> Result<Gid, ProfileError> {
    // A numeric gid need not exist in /etc/group.
    if let IdRef::Id(n) = r {
        return Ok(Gid::from_raw(*n));
    }
    match Group::from_name(&r.to_string()) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(ProfileError::UnknownGroup {
            profile: profile.into(),
            group: r.to_string(),
        }),
        Err(source) => Err(ProfileError::Lookup {
            profile: profile.into(),
            source,
        }),
    }
}

fn cstring(profile: &str, what: &'static str, p: &Path) -> Result<CString, ProfileError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| ProfileError::Nul {
        profile: profile.into(),
        what,
    })
}

/// Environment variables passed through from the host to a runtime that runs as the
/// invoking user (there is no identity change, so nothing is exposed that the user could
/// not read anyway; anything else is left behind to keep runtimes reproducible).
const INVOKER_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "TCLLIBPATH",
];

impl Prepared {
    /// The invoking user's own identity: nothing changes but the environment, which is reduced
    /// to a short allowlist, and the process group and parent-death signal.
    pub fn invoker() -> Prepared {
        let env = INVOKER_ENV
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
            .collect();
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        Prepared {
            name: None,
            identity: None,
            chroot: None,
            chroot_c: None,
            rlimits: Vec::new(),
            umask: None,
            env,
            workdir: cstring("", "working directory", &cwd).unwrap_or_else(|_| c"/".into()),
        }
    }

    /// Resolves users, groups and paths of `spec` now, in the parent.
    pub fn new(spec: &OsProfileSpec) -> Result<Prepared, ProfileError> {
        use nix::sys::resource::Resource;
        let name = spec.name.0.as_str();
        let user = lookup_user(name, &spec.user)?;
        let gid = match &spec.group {
            Some(g) => lookup_group(name, g)?,
            None => user.gid,
        };
        let groups = spec
            .groups
            .iter()
            .map(|g| lookup_group(name, g))
            .collect::<Result<Vec<_>, _>>()?;
        let chroot_c = match &spec.chroot {
            Some(root) => {
                if !root.0.is_dir() {
                    return Err(ProfileError::ChrootMissing {
                        profile: name.into(),
                        path: root.0.clone(),
                    });
                }
                Some(cstring(name, "chroot", &root.0)?)
            }
            None => None,
        };
        let l = &spec.rlimits;
        let rlimits = [
            (Resource::RLIMIT_NOFILE, l.nofile),
            (Resource::RLIMIT_CPU, l.cpu),
            (Resource::RLIMIT_AS, l.address_space),
            (Resource::RLIMIT_NPROC, l.nproc),
            (Resource::RLIMIT_CORE, l.core),
            (Resource::RLIMIT_FSIZE, l.fsize),
            (Resource::RLIMIT_DATA, l.data),
            (Resource::RLIMIT_STACK, l.stack),
        ]
        .into_iter()
        .filter_map(|(r, v)| v.map(|Limit(v)| (r, v.unwrap_or(libc::RLIM_INFINITY))))
        .collect();

        let home = if spec.chroot.is_some() {
            PathBuf::from("/")
        } else {
            user.dir.clone()
        };
        let mut env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), home.clone().into_os_string()),
            ("USER".into(), user.name.clone().into()),
            ("LOGNAME".into(), user.name.clone().into()),
        ];
        for (k, v) in &spec.env {
            let k = OsString::from(k);
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v.into()));
        }
        Ok(Prepared {
            name: Some(name.to_owned()),
            identity: Some(Identity {
                uid: user.uid,
                gid,
                groups,
                user_name: user.name,
                home,
            }),
            chroot: spec.chroot.as_ref().map(|c| c.0.clone()),
            chroot_c,
            rlimits,
            umask: spec.umask.map(|u| u.0 as libc::mode_t),
            env,
            workdir: c"/".into(),
        })
    }

    /// The value of `key` in the runtime's environment.
    pub fn env_var(&self, key: &str) -> Option<&OsString> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Configures `cmd`: clean environment, own process group, and the setup closure.
    /// `cookie` is dup'ed to fd [`COOKIE_FD`] in the child; every other fd above 2 is
    /// closed on exec.
    pub fn apply(&self, cmd: &mut tokio::process::Command, cookie: Option<OwnedFd>) {
        cmd.env_clear();
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.process_group(0);
        cmd.kill_on_drop(true);
        let plan = ChildPlan {
            parent: std::process::id() as libc::pid_t,
            cookie,
            rlimits: self.rlimits.clone(),
            // The soft open-file limit the host started with, unless the profile sets one
            // (see crate::fdlimit: runtimes do not inherit the host's raised limit).
            nofile_soft: crate::fdlimit::inherited_soft().filter(|_| {
                !self
                    .rlimits
                    .iter()
                    .any(|(r, _)| *r == nix::sys::resource::Resource::RLIMIT_NOFILE)
            }),
            chroot: self.chroot_c.clone(),
            // Switching to the identity the host already has changes nothing, and an
            // unprivileged host could not do it (setgroups needs CAP_SETGID): skip it.
            identity: self.identity.clone().filter(Identity::needs_switch),
            no_new_privs: self.identity.is_some(),
            umask: self.umask,
            workdir: self.workdir.clone(),
        };
        // SAFETY: the closure only makes async-signal-safe system calls on data prepared
        // above; it does not allocate, lock or log.
        unsafe {
            cmd.pre_exec(move || child_setup(&plan));
        }
    }
}

/// Everything the child needs between fork and exec, prepared in the parent.
struct ChildPlan {
    /// The host's pid, to notice it dying before the parent-death signal was armed.
    parent: libc::pid_t,
    cookie: Option<OwnedFd>,
    rlimits: Vec<(nix::sys::resource::Resource, u64)>,
    /// A soft RLIMIT_NOFILE to set (the hard limit stays).
    nofile_soft: Option<u64>,
    chroot: Option<CString>,
    /// The identity to switch to, `None` to keep the current one.
    identity: Option<Identity>,
    no_new_privs: bool,
    umask: Option<libc::mode_t>,
    workdir: CString,
}

fn step_err(step: usize, errno: i32) -> io::Error {
    io::Error::from_raw_os_error(((step as i32) << STEP_SHIFT) | (errno & 0xffff))
}

fn check(step: usize, rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(step_err(step, nix::errno::Errno::last_raw()))
    } else {
        Ok(())
    }
}

/// Runs in the forked child. Async-signal-safe system calls only.
fn child_setup(plan: &ChildPlan) -> io::Result<()> {
    let ChildPlan {
        parent,
        ref cookie,
        ref rlimits,
        nofile_soft,
        ref chroot,
        ref identity,
        no_new_privs,
        umask,
        ref workdir,
    } = *plan;
    let cookie = cookie.as_ref().map(|f| f.as_raw_fd());
    let chroot = chroot.as_deref();
    let identity = identity.as_ref();
    // SAFETY (whole function): plain system calls on valid pointers to data owned by the
    // closure, which lives until exec.
    unsafe {
        // Die with the host: a runtime must never outlive the process that supervises it.
        check(
            1,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
        )?;
        if libc::getppid() != parent {
            return Err(step_err(2, libc::ESRCH));
        }
        let mut first_closed = 3;
        if let Some(fd) = cookie {
            if fd == COOKIE_FD {
                // dup2 onto itself would keep FD_CLOEXEC set; clear it instead.
                check(3, libc::fcntl(fd, libc::F_SETFD, 0))?;
            } else {
                check(3, libc::dup2(fd, COOKIE_FD))?;
            }
            first_closed = COOKIE_FD as libc::c_uint + 1;
        }
        // Only fds 0-2 (and the cookie) may cross exec, whatever the host inherited.
        let rc = libc::syscall(
            libc::SYS_close_range,
            first_closed,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if rc == -1 {
            for fd in first_closed as RawFd..65536 {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags != -1 && flags & libc::FD_CLOEXEC == 0 {
                    check(4, libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
                }
            }
        }
        for &(res, v) in rlimits {
            let lim = libc::rlimit {
                rlim_cur: v as libc::rlim_t,
                rlim_max: v as libc::rlim_t,
            };
            check(5, libc::setrlimit(res as _, &lim))?;
        }
        if let Some(soft) = nofile_soft {
            crate::fdlimit::restore_in_child(soft)
                .map_err(|e| step_err(5, e.raw_os_error().unwrap_or(libc::EINVAL)))?;
        }
        if let Some(root) = chroot {
            check(6, libc::chroot(root.as_ptr()))?;
            check(6, libc::chdir(c"/".as_ptr()))?;
        }
        if let Some(id) = identity {
            let groups: &[Gid] = &id.groups;
            check(
                7,
                libc::setgroups(groups.len() as _, groups.as_ptr() as *const libc::gid_t),
            )?;
            let gid = id.gid.as_raw();
            check(8, libc::setresgid(gid, gid, gid))?;
            let uid = id.uid.as_raw();
            check(9, libc::setresuid(uid, uid, uid))?;
            if uid != 0 && libc::setuid(0) == 0 {
                return Err(step_err(10, libc::EPERM));
            }
        }
        if no_new_privs {
            check(11, libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        if let Some(m) = umask {
            libc::umask(m);
        }
        if chroot.is_none() {
            // Best effort: a workdir the new identity cannot enter falls back to "/".
            if libc::chdir(workdir.as_ptr()) == -1 {
                check(6, libc::chdir(c"/".as_ptr()))?;
            }
        }
    }
    Ok(())
}

/// Finds `program` the way exec would, searching `path` when it has no slash. With a
/// `root`, the search happens inside it and the returned path is the one seen inside.
pub fn resolve_program(program: &str, path: &str, root: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let outside = |p: &Path| match root {
        Some(r) => r.join(p.strip_prefix("/").unwrap_or(p)),
        None => p.to_owned(),
    };
    let executable = |p: &Path| {
        std::fs::metadata(outside(p))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        let p = if p.is_absolute() || root.is_some() {
            p
        } else {
            std::env::current_dir().ok()?.join(p)
        };
        return executable(&p).then_some(p);
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_errors_round_trip() {
        let e = step_err(9, libc::EPERM);
        match describe_spawn_error(&e) {
            Some(ProfileError::Step { step, errno }) => {
                assert_eq!(step, "setuid");
                assert_eq!(errno, nix::Error::EPERM);
            }
            other => panic!("{other:?}"),
        }
        assert!(describe_spawn_error(&io::Error::from_raw_os_error(libc::ENOENT)).is_none());
    }

    #[test]
    fn resolves_programs_on_path() {
        assert_eq!(
            resolve_program("sh", DEFAULT_PATH, None)
                .unwrap()
                .file_name()
                .unwrap(),
            "sh"
        );
        assert!(resolve_program("no-such-program-smx", DEFAULT_PATH, None).is_none());
        assert_eq!(
            resolve_program("/bin/sh", "", None),
            Some(PathBuf::from("/bin/sh"))
        );
    }
}
