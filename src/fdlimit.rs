//! The open-file limit (RLIMIT_NOFILE) of smx's own processes.
//!
//! The daemon holds a few descriptors per runtime process and per control connection, and
//! the exec runtime several per live script; the usual soft limit of 1024 is reached long
//! before the hard limit (often far higher, and not raisable without CAP_SYS_RESOURCE). So
//! `smx daemon`, `smx run` and `smx exec-runtime` raise their soft limit to the hard limit
//! at start ([`raise_nofile`]).
//!
//! What children get: a runtime process started by the host gets the soft limit the host
//! itself was started with ([`inherited_soft`]), not the raised one: a third-party runtime
//! may use `select()` (Tcl's notifier does), which breaks on descriptors past 1024, and it
//! should see what it would see without smx. An OS profile's `rlimits.nofile` still sets
//! both limits explicitly. The exec runtime raises its own limit again, because it holds
//! descriptors for each script it runs, and its scripts get the one it started with back
//! (`soft_at_start`, set in the child by `process::spawn`).

use std::io;
use std::sync::OnceLock;

/// The limits at start and after raising.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    /// The soft limit the process was started with.
    pub soft_at_start: u64,
    /// The soft limit now (the hard limit once raised).
    pub soft: u64,
    pub hard: u64,
}

static RAISED: OnceLock<NofileLimits> = OnceLock::new();

fn get() -> io::Result<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok((l.rlim_cur, l.rlim_max))
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit, once; later calls return
/// what the first did. The hard limit is never changed.
pub fn raise_nofile() -> io::Result<NofileLimits> {
    if let Some(l) = RAISED.get() {
        return Ok(*l);
    }
    let (soft, hard) = get()?;
    if soft < hard {
        let l = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    let limits = NofileLimits {
        soft_at_start: soft,
        soft: get()?.0,
        hard,
    };
    tracing::debug!(
        from = limits.soft_at_start,
        to = limits.soft,
        hard,
        "raised the soft open-file limit"
    );
    Ok(*RAISED.get_or_init(|| limits))
}

/// The soft limit a child should get back: the one this process started with, if
/// [`raise_nofile`] raised it; `None` if it was not raised (children inherit it as is).
pub fn inherited_soft() -> Option<u64> {
    RAISED
        .get()
        .filter(|l| l.soft_at_start < l.soft)
        .map(|l| l.soft_at_start)
}

/// In a forked child before exec: sets the soft RLIMIT_NOFILE back to `soft` (from
/// [`inherited_soft`], read in the parent), keeping the hard limit. Async-signal-safe:
/// two system calls, no allocation.
pub fn restore_in_child(soft: u64) -> io::Result<()> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == -1 {
            return Err(io::Error::last_os_error());
        }
        l.rlim_cur = soft.min(l.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &l) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_remembers_the_start() {
        let (_, hard) = get().unwrap();
        let l = raise_nofile().unwrap();
        assert_eq!(l.soft, hard);
        assert_eq!(l.hard, hard);
        assert!(l.soft_at_start <= l.soft);
        assert_eq!(raise_nofile().unwrap(), l, "idempotent");
        assert_eq!(get().unwrap().0, hard);
        assert_eq!(
            inherited_soft(),
            (l.soft_at_start < hard).then_some(l.soft_at_start)
        );
    }
}
