//! The exec runtime (`smx exec-runtime`, src/exec.rs) through a real host: over TCP, with a
//! cookie from its fd or from SMX_COOKIE (RFC 3179 8.2); how it answers `start` for a file
//! it can read but not execute (6.1.2 items 3-5); a bash syntax error (languageError); and a
//! script that stops itself (suspended, 6.1.7 item 1), which `resume` continues.

mod common;

use std::time::Duration;

use common::*;
use smx::host::{Host, RunInfo};
use smx::proto::{ExitCode, RunState};
use smx::storage::Storage;

/// Generous timeouts for a loaded 2-core machine (see tests/runtimes.rs).
fn exec_host() -> Host {
    let smx = smx_bin().display().to_string();
    let tcp = |name: &str, cookie: &str| {
        format!(
            "[[runtime]]\nname = \"{name}\"\ncommand = [{smx:?}, \"exec-runtime\", \"--grace\", \"1s\"]\n\
             transport = \"tcp\"\n{cookie}extensions = []\nprofiles = [\"trusted\"]\n"
        )
    };
    let extra = format!(
        "{}{}",
        tcp("exec-tcp", ""),
        tcp("exec-tcp-env", "cookie = \"env\"\n")
    );
    let mut c = config(&extra);
    c.host.hello_timeout = Duration::from_secs(15);
    c.host.command_timeout = Duration::from_secs(8);
    Host::new(c, Storage::temporary().expect("temp storage"))
}

async fn run_on(h: &Host, script: &str, runtime: &str) -> RunInfo {
    let id = h.launch(request(script, Some(runtime))).expect("launch");
    finish(h, id, 30).await
}

/// RFC 3179 8.2 (and the README: "all shipped runtimes pass over both transports"): the
/// exec runtime connects back, proves the cookie from SMX_COOKIE_FD or, with
/// `cookie = "env"`, from SMX_COOKIE, and runs scripts; the scripts see neither the cookie
/// nor where it came from.
#[tokio::test]
async fn exec_runtime_serves_over_tcp_with_either_cookie() {
    let h = exec_host();
    let script = install(
        &h,
        "env.sh",
        "#!/bin/sh\necho \"result half\" >&3\nenv | grep -c '^SMX_\\(COOKIE\\|COOKIE_FD\\|HOST\\|PORT\\|TRANSPORT\\)=' || true\n",
        true,
    );
    for runtime in ["exec-tcp", "exec-tcp-env"] {
        let r = run_on(&h, &script, runtime).await;
        assert_eq!(
            (r.state, r.exit_code, r.error.as_str()),
            (RunState::Terminated, ExitCode::NoError, ""),
            "{runtime}: {r:?}"
        );
        assert_eq!(
            r.result.as_bytes(),
            b"0",
            "{runtime}: the script sees no SMX_COOKIE*, SMX_HOST, SMX_PORT, SMX_TRANSPORT"
        );
    }
    // Suspend, resume and abort over TCP too.
    let sleeper = install(&h, "sleep.sh", "#!/bin/sh\nexec sleep 30\n", true);
    let id = h
        .launch(request(&sleeper, Some("exec-tcp")))
        .expect("launch");
    reach(&h, id, RunState::Executing).await;
    assert_eq!(h.suspend(id).await.unwrap().state, RunState::Suspended);
    assert_eq!(h.resume(id).await.unwrap().state, RunState::Executing);
    h.abort(id).await.unwrap();
    let r = finish(&h, id, 10).await;
    assert_eq!(r.exit_code, ExitCode::Halted, "{r:?}");
    h.shutdown().await;
}

/// RFC 3179 6.1.2 items 3-5: a file the runtime can read is a script (no 421), whose
/// profile is then checked (432); one without execute permission then fails to start with
/// a 536 that says so and genericError, as the README's table says, not with a 421 that
/// reads as "no such script".
#[tokio::test]
async fn exec_runtime_says_a_script_is_not_executable() {
    let h = exec_host();
    let script = install(&h, "plain.sh", "#!/bin/sh\necho hello\n", false);
    let r = run_on(&h, &script, "exec").await;
    assert_eq!(
        (r.state, r.exit_code),
        (RunState::Terminated, ExitCode::GenericError),
        "{r:?}"
    );
    assert!(
        r.error.contains("not executable") && r.error.contains("0644"),
        "smRunError names the cause: {:?}",
        r.error
    );
    h.shutdown().await;

    // Straight over the pipe: a readable file with an unknown profile is a 432.
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(smx_bin())
        .arg("exec-runtime")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("exec runtime");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            b"start 1 5 \"/etc/passwd\" nope \"\"\r\nstart 2 5 \"/etc/passwd/\" nope \"\"\r\n",
        )
        .unwrap();
    drop(stdin);
    let lines: Vec<String> = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| l.unwrap())
        .collect();
    let _ = child.wait();
    assert_eq!(lines, ["432 1", "421 2"]);
}

/// README ("exit 2 with \"syntax error\" on stderr (shells) | languageError"): bash writes
/// its syntax error on the line before last (the last one quotes the offending line), and
/// that is still a languageError, with that line in smRunError.
#[tokio::test]
async fn exec_runtime_bash_syntax_error_is_a_language_error() {
    if !std::path::Path::new("/bin/bash").exists() {
        eprintln!("no /bin/bash: nothing to test");
        return;
    }
    let h = exec_host();
    let script = install(&h, "syntax.sh", "#!/bin/bash\necho ok\nif then\nfi\n", true);
    let r = run_on(&h, &script, "exec").await;
    assert_eq!(r.exit_code, ExitCode::LanguageError, "{r:?}");
    assert!(
        r.error.contains("syntax error near unexpected token")
            && r.error.ends_with("(exit status 2)"),
        "{:?}",
        r.error
    );
    // Not every exit 2 is one: a script that prints the words earlier and fails later.
    let late = install(
        &h,
        "late.sh",
        "#!/bin/bash\necho 'syntax error' >&2\necho one >&2\necho two >&2\nexit 2\n",
        true,
    );
    let r = run_on(&h, &late, "exec").await;
    assert_eq!(r.exit_code, ExitCode::RuntimeError, "{r:?}");
    h.shutdown().await;
}

/// RFC 3179 6.1.7 item 1 ("if a change of the status of a running script is observed by the
/// runtime system, a 531 reply is sent"): a script that stops itself (SIGSTOP) is reported
/// suspended, and `resume` (6.1.4 item 3) continues it to its end; one that someone else
/// continues is reported executing.
#[tokio::test]
async fn exec_runtime_reports_a_script_that_stops_itself() {
    let h = exec_host();
    let script = install(
        &h,
        "stop.sh",
        "#!/bin/sh\necho 'result before' >&3\nkill -STOP $$\necho after\n",
        true,
    );
    let id = h.launch(request(&script, Some("exec"))).expect("launch");
    let r = reach(&h, id, RunState::Suspended).await;
    assert_eq!(r.result.as_bytes(), b"before", "{r:?}");
    let pid = r.runtime_pid.expect("runtime pid");
    let script_pid = children(pid)[0];
    assert_eq!(proc_state(script_pid), Some('T'));
    let r = h.resume(id).await.unwrap();
    assert_ne!(r.state, RunState::Suspended, "{r:?}");
    let r = finish(&h, id, 10).await;
    assert_eq!(
        (r.exit_code, r.result.as_bytes(), r.error.as_str()),
        (ExitCode::NoError, &b"after"[..], ""),
        "{r:?}"
    );

    // Continued by someone else (kill -CONT), it is reported executing again.
    let script = install(
        &h,
        "stop2.sh",
        "#!/bin/sh
kill -STOP $$
echo 'result going' >&3
sleep 1
",
        true,
    );
    let id = h.launch(request(&script, Some("exec"))).expect("launch");
    let r = reach(&h, id, RunState::Suspended).await;
    let script_pid = children(r.runtime_pid.expect("runtime pid"))[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(script_pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let r = reach(&h, id, RunState::Executing).await;
    assert!(!r.is_terminated(), "{r:?}");
    assert_eq!(finish(&h, id, 10).await.exit_code, ExitCode::NoError);
    h.shutdown().await;
}

/// The runtime's own suspends and resumes are no self-stops: however their SIGCHLD reports
/// interleave with the commands, each suspend leaves the run suspended and each resume
/// executing, and nothing reported late turns it back.
#[tokio::test]
async fn exec_runtime_suspend_resume_cycles_stay_what_they_said() {
    let h = exec_host();
    let sleeper = install(&h, "sleep.sh", "#!/bin/sh\nexec sleep 60\n", true);
    let id = h.launch(request(&sleeper, Some("exec"))).expect("launch");
    reach(&h, id, RunState::Executing).await;
    for i in 0..40 {
        assert_eq!(
            h.suspend(id).await.unwrap().state,
            RunState::Suspended,
            "cycle {i}"
        );
        assert_eq!(
            h.resume(id).await.unwrap().state,
            RunState::Executing,
            "cycle {i}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.run(id).unwrap().state, RunState::Executing);
    h.abort(id).await.unwrap();
    h.shutdown().await;
}
