//! Child-process helpers shared by the host and the exec runtime.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

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
