//! Child-process helpers shared by the host and the exec runtime.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

/// How a process ended, for smRunError texts: `exit status 3`, `killed by SIGSEGV, core dumped`.
pub fn describe_exit(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| sig.to_string());
            if s.core_dumped() {
                format!("killed by {name}, core dumped")
            } else {
                format!("killed by {name}")
            }
        }
        _ => s.to_string(),
    }
}

/// Sends `sig` to the process group led by `pid` (runtimes and scripts lead their own).
pub fn signal_group(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// The state letter of /proc/<pid>/stat (`R`, `S`, `T` for stopped, `Z`, ...).
pub fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// What a child spawned by [`spawn`] does between clone and exec, prepared in the parent:
/// nothing in the child allocates, locks or logs.
pub struct SpawnPlan<'a> {
    pub program: &'a CStr,
    /// argv and envp, each ending with a null pointer.
    pub argv: &'a [*const libc::c_char],
    pub envp: &'a [*const libc::c_char],
    /// `(from, to)`: `from` becomes `to` (close-on-exec cleared); every `from` must be
    /// above every `to`, so no dup2 overwrites a later `from`.
    pub fds: &'a [(RawFd, RawFd)],
    /// A cgroup's `cgroup.procs` to move into first, if any.
    pub cgroup_procs: Option<RawFd>,
    /// RLIMIT_NOFILE to give the child (the one the runtime itself started with).
    pub nofile: Option<libc::rlimit>,
}

/// A spawned child, and whether it joined the cgroup it was given.
pub struct SpawnedChild {
    pub pid: i32,
    pub cgroup_joined: bool,
}

struct ChildArgs<'a> {
    plan: &'a SpawnPlan<'a>,
    parent: libc::pid_t,
    mask: libc::sigset_t,
    /// Written by the child (same memory): the errno of the step that failed.
    err: AtomicI32,
    cgroup_err: AtomicI32,
}

/// Stack of the vfork-style child: it only makes system calls.
const CHILD_STACK: usize = 32 * 1024;

/// Starts a process the way posix_spawn does (clone with CLONE_VM | CLONE_VFORK: no copy
/// of the parent's page tables, so its cost does not grow with the parent's size or its
/// number of children), in its own process group, with SIGKILL as parent-death signal,
/// and the file descriptors, cgroup and fd limit of `plan`. The caller reaps it.
pub fn spawn(plan: &SpawnPlan<'_>) -> std::io::Result<SpawnedChild> {
    assert_eq!(plan.argv.last(), Some(&std::ptr::null()));
    assert_eq!(plan.envp.last(), Some(&std::ptr::null()));
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: plain libc calls; the child runs `child_main` on its own stack, sharing our
    // memory while we are suspended (CLONE_VFORK) until it execs or exits, and touches
    // only `args` (alive until clone returns) through atomics and raw pointers.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut args = ChildArgs {
            plan,
            parent: libc::getpid(),
            mask: std::mem::zeroed(),
            err: AtomicI32::new(0),
            cgroup_err: AtomicI32::new(0),
        };
        // No signal handler of ours may run in the child before it resets them.
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut args.mask);
        let top = stack.as_mut_ptr().add(CHILD_STACK);
        let top = top.sub(top as usize % 16);
        let pid = libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut args).cast(),
        );
        let clone_err = std::io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &args.mask, std::ptr::null_mut());
        if pid == -1 {
            return Err(clone_err);
        }
        let err = args.err.load(Ordering::Acquire);
        if err != 0 {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            return Err(std::io::Error::from_raw_os_error(err));
        }
        Ok(SpawnedChild {
            pid,
            cgroup_joined: plan.cgroup_procs.is_some()
                && args.cgroup_err.load(Ordering::Acquire) == 0,
        })
    }
}

/// The child of [`spawn`]: system calls only, then exec.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive and not used by the parent (suspended).
    let a = unsafe { &*(arg as *const ChildArgs<'_>) };
    let fail = |e: i32| -> libc::c_int {
        a.err.store(e.max(1), Ordering::Release);
        // SAFETY: _exit never returns and runs no destructors or atexit handlers.
        unsafe { libc::_exit(127) }
    };
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(1);
    // SAFETY: async-signal-safe system calls on data the parent prepared.
    unsafe {
        // Handlers of the parent would run here, in its memory: back to the defaults
        // (SIGPIPE too, which the Rust runtime ignores).
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) == -1 {
            return fail(errno());
        }
        if let Some(fd) = a.plan.cgroup_procs
            && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
        {
            a.cgroup_err.store(errno(), Ordering::Release);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
            return fail(errno());
        }
        if libc::getppid() != a.parent {
            return fail(libc::ESRCH);
        }
        if let Some(l) = &a.plan.nofile
            && libc::setrlimit(libc::RLIMIT_NOFILE, l) == -1
        {
            return fail(errno());
        }
        for &(from, to) in a.plan.fds {
            let rc = if from == to {
                libc::fcntl(to, libc::F_SETFD, 0)
            } else {
                libc::dup2(from, to)
            };
            if rc == -1 {
                return fail(errno());
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &a.mask, std::ptr::null_mut());
        libc::execve(
            a.plan.program.as_ptr(),
            a.plan.argv.as_ptr(),
            a.plan.envp.as_ptr(),
        );
        fail(errno())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_exits_and_signals() {
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV)),
            "killed by SIGSEGV"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGABRT | 0x80)),
            "killed by SIGABRT, core dumped"
        );
    }
}
