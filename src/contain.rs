//! Process containment: every process a run creates ends with the run (README, "Process
//! containment").
//!
//! Three mechanisms, each covering what the one before cannot:
//! - **process groups**: every runtime and every script leads its own group, and a group is
//!   killed as a whole; a child that calls `setsid` leaves it;
//! - **child subreapers** (`PR_SET_CHILD_SUBREAPER`): orphans come back to the exec runtime
//!   (from its scripts) and to the host (from a runtime that died), which kill them;
//! - **cgroup v2**, where this process sits in a writable v2 hierarchy: the host gives each
//!   runtime process a cgroup of its own (delegated to the runtime's user), the exec runtime
//!   gives each run one inside it; `cgroup.kill` ends everything in one, `setsid` or not,
//!   and `cgroup.freeze` suspends a whole run. The host's cgroups are named after its
//!   socket, so a daemon restarted after `kill -9` finds its predecessor's and ends them.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The cgroup this process is in, as a directory of the first cgroup v2 mount, if there
/// is one (a hybrid or pure v2 machine; a v1-only one has none).
pub fn own_cgroup() -> Option<PathBuf> {
    cgroup_of("self")
}

/// The cgroup v2 directory of process `pid` (a number, or `self`), as [`own_cgroup`].
pub fn cgroup_of(pid: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split(' ').next()? == "cgroup2").then(|| pre.split(' ').nth(4).map(PathBuf::from))?
    })?;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// One cgroup v2 directory this process created and removes.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup `path` (its parent must exist and be writable).
    pub fn create(path: PathBuf) -> io::Result<Cgroup> {
        std::fs::create_dir(&path)?;
        Ok(Cgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cgroup.procs` opened for writing (close-on-exec): a process that writes `0` to it
    /// moves itself in, which a child can do between fork and exec.
    pub fn procs(&self) -> io::Result<OwnedFd> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))?;
        Ok(f.into())
    }

    /// Freezes (`true`) or thaws the whole cgroup, descendants included.
    pub fn freeze(&self, frozen: bool) -> io::Result<()> {
        write_file(
            &self.path.join("cgroup.freeze"),
            if frozen { b"1" } else { b"0" },
        )
    }

    /// Whether no process is in the cgroup or below (`cgroup.events`).
    pub fn is_empty(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .is_ok_and(|e| e.lines().any(|l| l == "populated 0"))
    }

    /// SIGKILL to every process in the cgroup and below.
    pub fn kill(&self) {
        kill_tree(&self.path);
    }

    /// Kills what is left and removes the cgroup, waiting (asynchronously, bounded) for the
    /// killed processes to leave it.
    pub async fn remove(self) {
        remove_tree_async(&self.path).await;
    }
}

fn write_file(path: &Path, what: &[u8]) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(what)
}

/// SIGKILL to every process in the cgroup `path` and its descendants: `cgroup.kill`
/// (Linux 5.14), else each pid of each `cgroup.procs` below it.
pub fn kill_tree(path: &Path) {
    if write_file(&path.join("cgroup.kill"), b"1").is_ok() {
        return;
    }
    for dir in subtree(path) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// `path` and every cgroup below it, deepest first (the order they can be removed in).
fn subtree(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        out.push(dir);
    }
    out.reverse();
    out
}

/// One attempt: kill everything, remove every empty cgroup; true once `path` is gone.
fn try_remove_tree(path: &Path) -> bool {
    kill_tree(path);
    for dir in subtree(path) {
        let _ = std::fs::remove_dir(&dir);
    }
    !path.exists()
}

/// Kills and removes the cgroup tree at `path`, blocking up to about two seconds.
pub fn remove_tree(path: &Path) -> bool {
    for _ in 0..400 {
        if try_remove_tree(path) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::warn!(cgroup = %path.display(), "cgroup still populated after kill; left in place");
    false
}

async fn remove_tree_async(path: &Path) {
    for _ in 0..400 {
        if try_remove_tree(path) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::warn!(cgroup = %path.display(), "cgroup still populated after kill; left in place");
}

/// Makes this process a child subreaper: orphaned descendants are reparented to it
/// instead of to init.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The pids of this process's children (all threads'), from `/proc/self/task/*/children`,
/// else from a scan of `/proc` for processes whose parent is this one.
pub fn own_children() -> Vec<i32> {
    let mut out = Vec::new();
    let mut found = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                found = true;
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    if !found {
        let me = std::process::id() as i32;
        out = processes()
            .filter(|&p| stat_field(p, 1) == Some(me))
            .collect();
    }
    out
}

/// Every pid in /proc.
pub fn processes() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
}

/// Field `n` after the state letter of /proc/<pid>/stat: 1 is the parent, 2 the process
/// group, 3 the session.
pub fn stat_field(pid: i32, n: usize) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n)?
        .parse()
        .ok()
}

/// Whether `pid`'s environment has `name=value` (readable for our own user's processes).
pub fn environ_has(pid: i32, entry: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry))
}

/// The host's containment: its cgroup base (if any) and which children it spawned on
/// purpose (any other child is an orphan it adopted as subreaper).
struct HostContainment {
    base: Option<PathBuf>,
    /// The base's directory, open and `flock`ed for as long as this process lives: how a
    /// later instance with the same key tells a live predecessor from a dead one.
    _lock: Option<std::fs::File>,
    /// The base was locked by a live instance with the same key: left alone.
    taken: Option<PathBuf>,
    next: AtomicU64,
    /// Runtime pid -> its cgroup.
    runtimes: Mutex<HashMap<u32, PathBuf>>,
}

static HOST: OnceLock<HostContainment> = OnceLock::new();

/// Children the host spawned itself; held while spawning, so the orphan reaper never
/// takes a child that is being registered for an orphan.
static SPAWNED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// Orphans the host adopted, and when it first saw each.
static ORPHANS: Mutex<Option<HashMap<i32, std::time::Instant>>> = Mutex::new(None);

/// Kills and removes every cgroup `<prefix><pid>` in `parent` whose pid is gone: what a
/// host or exec runtime killed with SIGKILL left (its escaped processes included). A
/// live pid's cgroup is left alone, even if the pid was reused by another process.
pub fn sweep_dead(parent: &Path, prefix: &str) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(cgroup = %e.path().display(), "removing what a dead instance left");
            remove_tree(&e.path());
        }
    }
}

/// How long an orphan of a dead runtime may finish by itself before it is killed: a
/// runtime's own watchdog (the Python runtime's removes its temp directories when the
/// runtime is gone) needs a moment, a script's leftover gets no more than that.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// What the host's containment amounts to on this machine, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostLevel {
    /// Per-runtime and per-run cgroups under this directory.
    Cgroups(PathBuf),
    /// Process groups and subreapers only.
    Groups,
    /// Another live process holds the cgroup base of this key (a daemon on the same socket
    /// path whose socket file was removed): it is left alone, and this one must not run.
    Taken(PathBuf),
}

/// Sets up the host's containment, once per process: subreaper, orphan registry, and a
/// cgroup base `smx-KEY` next to this process's own cgroup. A base left by an earlier
/// instance with the same key (a daemon killed with SIGKILL) is ended and removed first,
/// and so are bases of `smx run` processes that no longer exist.
pub fn init_host(key: &str) -> HostLevel {
    let h = HOST.get_or_init(|| {
        if let Err(e) = become_subreaper() {
            tracing::warn!("PR_SET_CHILD_SUBREAPER failed: {e}; orphans go to init");
        }
        *SPAWNED.lock().expect("spawned lock") = Some(HashSet::new());
        let (base, lock, taken) = match own_cgroup().map(|own| make_base(&own, key)) {
            Some(Ok(Some((base, lock)))) => (Some(base), Some(lock), None),
            Some(Err(taken)) => (None, None, Some(taken)),
            Some(Ok(None)) | None => (None, None, None),
        };
        HostContainment {
            base,
            _lock: lock,
            taken,
            next: AtomicU64::new(1),
            runtimes: Mutex::new(HashMap::new()),
        }
    });
    match (&h.base, &h.taken) {
        (_, Some(t)) => HostLevel::Taken(t.clone()),
        (Some(b), None) => HostLevel::Cgroups(b.clone()),
        (None, None) => HostLevel::Groups,
    }
}

/// Opens the directory `path` (close-on-exec, so no child holds it) and takes an exclusive
/// `flock` on it without waiting: `Ok(None)` if another process holds one.
fn lock_dir(path: &Path) -> io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd as _;
    let dir = std::fs::File::open(path)?;
    // SAFETY: flock(2) on an fd we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == -1 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(dir))
}

/// The base `smx-KEY` in `own`, made and locked: `Ok(None)` without a writable hierarchy,
/// `Err(base)` if a live instance with the same key holds it (nothing is touched then).
fn make_base(own: &Path, key: &str) -> Result<Option<(PathBuf, std::fs::File)>, PathBuf> {
    let base = own.join(format!("smx-{key}"));
    if base.exists() {
        // Held for the length of the cleanup: a third instance waits its turn.
        let _old = match lock_dir(&base) {
            Ok(Some(l)) => Some(l),
            Ok(None) => return Err(base),
            Err(e) => {
                tracing::warn!(cgroup = %base.display(), "cannot lock: {e}");
                None
            }
        };
        let n = count_procs(&base);
        tracing::warn!(cgroup = %base.display(), processes = n, "ending what an earlier instance left");
        remove_tree(&base);
    }
    // `smx run` hosts that died without cleaning up.
    sweep_dead(own, "smx-run-");
    if let Err(e) = std::fs::create_dir(&base) {
        tracing::info!(cgroup = %own.display(), "no writable cgroup v2 ({e}): containment by process groups and subreapers only");
        return Ok(None);
    }
    match lock_dir(&base) {
        Ok(Some(lock)) => {
            sweep_abandoned_bases(own, &base);
            Ok(Some((base, lock)))
        }
        // Made by us a moment ago and locked by another already: theirs.
        Ok(None) => Err(base),
        Err(e) => {
            tracing::warn!(cgroup = %base.display(), "cannot lock: {e}; containment by process groups and subreapers only");
            let _ = std::fs::remove_dir(&base);
            Ok(None)
        }
    }
}

/// Removes the empty daemon bases (`smx-daemon-*`) that no live daemon holds and that are
/// older than a few seconds: daemons killed with SIGKILL and never started again on their
/// socket path would otherwise leave one empty cgroup each, for good. A base with
/// processes in it is left for a daemon on its own socket path to end (it logs them).
fn sweep_abandoned_bases(own: &Path, ours: &Path) {
    const MIN_AGE: Duration = Duration::from_secs(10);
    let Ok(rd) = std::fs::read_dir(own) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let old_enough = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= MIN_AGE));
        if path == ours
            || !e.file_name().to_string_lossy().starts_with("smx-daemon-")
            || !old_enough
            || count_procs(&path) > 0
        {
            continue;
        }
        // Held while it is removed; a live daemon holds its own for its whole life.
        if let Ok(Some(_held)) = lock_dir(&path) {
            for dir in subtree(&path) {
                let _ = std::fs::remove_dir(&dir);
            }
            tracing::debug!(cgroup = %path.display(), "removed an abandoned daemon cgroup base");
        }
    }
}

fn count_procs(path: &Path) -> usize {
    subtree(path)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .map(|s| s.lines().count())
        .sum()
}

/// A key for a daemon's cgroup base from its socket path: the same socket, the same key.
pub fn key_for(socket: &Path) -> String {
    // FNV-1a: short, stable across builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in socket.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("daemon-{h:016x}")
}

/// Ends everything in the host's cgroups and removes them (at a clean exit).
pub fn shutdown_host() {
    if let Some(base) = HOST.get().and_then(|h| h.base.as_ref()) {
        remove_tree(base);
    }
}

/// A cgroup made for one runtime process, before it is started.
pub struct RuntimeCgroup {
    pub path: PathBuf,
    /// Its `cgroup.procs`, for the child to move itself in before exec.
    pub procs: OwnedFd,
}

/// A fresh cgroup for a runtime process, delegated to `owner` (uid, gid) when given so that
/// the runtime can make a cgroup per run inside it; `None` without host cgroups.
pub fn runtime_cgroup(owner: Option<(u32, u32)>) -> Option<RuntimeCgroup> {
    let h = HOST.get()?;
    let base = h.base.as_ref()?;
    let n = h.next.fetch_add(1, Ordering::Relaxed);
    let cg = match Cgroup::create(base.join(format!("rt-{n}"))) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot create a runtime cgroup: {e}");
            return None;
        }
    };
    if let Some((uid, gid)) = owner {
        // The delegation files of cgroup-v2.rst: the directory, procs, threads, subtree_control.
        for f in [
            "",
            "cgroup.procs",
            "cgroup.threads",
            "cgroup.subtree_control",
        ] {
            let p = cg.path.join(f);
            if let Err(e) = std::os::unix::fs::chown(&p, Some(uid), Some(gid)) {
                tracing::warn!(cgroup = %p.display(), "cannot delegate: {e}");
            }
        }
    }
    let procs = cg.procs().ok()?;
    Some(RuntimeCgroup {
        path: cg.path,
        procs,
    })
}

/// The runtime `pid` was started in `cg`: remembered if it really is in it.
pub fn runtime_started(pid: u32, cg: RuntimeCgroup) {
    let Some(h) = HOST.get() else { return };
    let inside = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|s| {
        let name = cg
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        s.lines().filter_map(|l| l.strip_prefix("0::")).any(|p| {
            name.as_deref()
                .is_some_and(|n| p.ends_with(&format!("/{n}")))
        })
    });
    if !inside {
        tracing::warn!(pid, cgroup = %cg.path.display(), "runtime did not join its cgroup; contained by process group only");
        let _ = std::fs::remove_dir(&cg.path);
        return;
    }
    h.runtimes
        .lock()
        .expect("runtimes lock")
        .insert(pid, cg.path);
}

/// The runtime `pid` is gone or going: everything left in its process group is killed,
/// and what is left in its cgroup (its scripts' orphans, its own watchdogs) once it is
/// empty or [`ORPHAN_GRACE`] has passed; then the cgroup is removed.
pub async fn runtime_ended(pid: u32) {
    crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    let path = HOST
        .get()
        .and_then(|h| h.runtimes.lock().expect("runtimes lock").remove(&pid));
    if let Some(p) = path {
        let until = tokio::time::Instant::now() + ORPHAN_GRACE;
        while count_procs(&p) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        remove_tree_async(&p).await;
    }
    reap_orphans();
}

/// Spawns a child the host means to have (a runtime, a helper), registered so that the
/// orphan reaper leaves it alone.
pub fn spawn_tracked<T>(
    spawn: impl FnOnce() -> io::Result<T>,
    pid: impl Fn(&T) -> Option<u32>,
) -> io::Result<T> {
    let mut reg = SPAWNED.lock().unwrap_or_else(|e| e.into_inner());
    let child = spawn()?;
    if let (Some(set), Some(p)) = (reg.as_mut(), pid(&child)) {
        set.insert(p);
    }
    Ok(child)
}

/// Reaps the host's children it did not spawn itself: orphans of runtimes that died,
/// reparented to the host as subreaper; one still alive [`ORPHAN_GRACE`] after it was
/// first seen is killed. Children it spawned are left to their owners (tokio reaps them
/// by pid). Returns whether orphans are still waiting.
pub fn reap_orphans() -> bool {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let mut reg = SPAWNED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(set) = reg.as_mut() else {
        return false;
    };
    let mut orphans = ORPHANS.lock().unwrap_or_else(|e| e.into_inner());
    let orphans = orphans.get_or_insert_with(HashMap::new);
    let children = own_children();
    // Registered children that are no longer children were reaped by their owners.
    set.retain(|p| children.contains(&(*p as i32)));
    orphans.retain(|p, _| children.contains(p));
    let now = std::time::Instant::now();
    for pid in children {
        if set.contains(&(pid as u32)) {
            continue;
        }
        let p = nix::unistd::Pid::from_raw(pid);
        if !matches!(
            waitpid(p, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        ) {
            orphans.remove(&pid);
            continue;
        }
        let seen = *orphans.entry(pid).or_insert(now);
        if now.duration_since(seen) >= ORPHAN_GRACE {
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            tracing::info!(pid, "ended an orphan adopted from a runtime");
        }
    }
    !orphans.is_empty()
}

/// Runs [`reap_orphans`] on every SIGCHLD (and every few seconds, in case one was
/// coalesced away) for as long as the tokio runtime lives.
pub fn spawn_orphan_reaper() {
    let mut sig = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("no SIGCHLD stream: orphans are reaped every 5 s only: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let mut waiting = false;
        loop {
            let tick = if waiting {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(5)
            };
            let _ = tokio::time::timeout(tick, sig.recv()).await;
            waiting = reap_orphans();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_differ_per_socket() {
        assert_eq!(
            key_for(Path::new("/run/smx/smx.sock")),
            key_for(Path::new("/run/smx/smx.sock"))
        );
        assert_ne!(key_for(Path::new("/a.sock")), key_for(Path::new("/b.sock")));
    }

    #[test]
    fn stat_fields_of_self() {
        let me = std::process::id() as i32;
        assert_eq!(stat_field(me, 1), Some(nix::unistd::getppid().as_raw()));
        assert_eq!(stat_field(me, 2), Some(nix::unistd::getpgrp().as_raw()));
    }
}
