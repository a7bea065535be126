//! The shipped runtimes through the host (issue 4, "What it must show"): the Python runtime
//! (`runtimes/python/smx_runtime.py`), the Tcl runtime (`runtimes/tcl/smx_runtime.tcl`) and,
//! where it makes sense, the exec runtime, each driven by a real [`Host`] exactly as an agent
//! would drive it (RFC 3179 section 6.2), with real scripts installed in the host's storage.
//!
//! Every test asserts smRunState, smRunExitCode and the smRunError text (RFC 3165 smRunTable).
//! Octet strings are compared byte for byte: Argument, Result and ErrorMsg are OCTET STRINGs
//! that SMX carries as a QuotedString or a HexString (RFC 3179 section 5.1), so nothing may
//! be lost or re-encoded on the way.

mod common;

use std::time::{Duration, Instant};

use common::*;
use smx::host::{EventKind, Host, RunInfo, Subscriber};
use smx::proto::{ExitCode, Octets, RunId, RunState};
use smx::storage::Storage;

/// A host on the embedded configuration (exec pointed at the real binary by tests/common),
/// with timeouts generous enough for a loaded 2-core machine: a `python3` behind a pyenv
/// shim can take over a second to answer `hello` there, and a late reply to `suspend` would
/// end the run with genericError (RFC 3179 6.2.4 rule 1) instead of showing what we test.
fn rt_host() -> Host {
    let mut c = config("");
    c.host.hello_timeout = Duration::from_secs(15);
    c.host.command_timeout = Duration::from_secs(8);
    Host::new(c, Storage::temporary().expect("temp storage"))
}

/// Installs an executable script for the exec runtime.
async fn install_exec(h: &Host, name: &str, body: &str) -> String {
    install(h, name, body, true)
}

/// Waits until the run's smRunResult is `result`, failing at once if it terminates first.
async fn reach_result(h: &Host, id: RunId, result: &[u8]) -> RunInfo {
    let what = format!("run {id} to report {:?}", String::from_utf8_lossy(result));
    eventually(20, &what, || {
        let r = h.run(id).unwrap();
        assert!(!r.is_terminated(), "run {id} ended before reporting: {r:?}");
        r.result.as_bytes() == result
    })
    .await;
    h.run(id).unwrap()
}

fn launch(h: &Host, script: &str, profile: Option<&str>, arg: &[u8]) -> RunId {
    let mut req = request(script, None);
    req.profile = profile.map(|p| p.parse().expect("profile name"));
    req.argument = Octets::new(arg.to_vec());
    h.launch(req).expect("launch")
}

/// Launches and waits for the final row.
async fn run(h: &Host, script: &str, profile: Option<&str>, arg: &[u8]) -> RunInfo {
    let id = launch(h, script, profile, arg);
    finish(h, id, 30).await
}

/// Asserts a terminated run's ExitCode and that its smRunError starts with `error`
/// (an empty `error` means smRunError must be empty).
#[track_caller]
fn assert_end(r: &RunInfo, exit: ExitCode, error: &str) {
    assert_eq!(
        (r.state, r.exit_code),
        (RunState::Terminated, exit),
        "run {} ({}): error {:?}, result {:?}",
        r.run_id,
        r.script,
        r.error,
        r.result
    );
    if error.is_empty() {
        assert_eq!(r.error, "", "run {} ({})", r.run_id, r.script);
    } else {
        assert!(
            r.error.starts_with(error),
            "run {} ({}): smRunError {:?} does not start with {:?}",
            r.run_id,
            r.script,
            r.error,
            error
        );
    }
}

/// The `Result` events (532: notify false, 533: notify true) published for `run` so far.
fn results(ev: &mut Subscriber, run: RunId) -> Vec<(Vec<u8>, bool)> {
    let mut v = Vec::new();
    while let Ok(e) = ev.try_recv() {
        if let (true, EventKind::Result { result, notify }) = (e.run_id == run, e.kind) {
            v.push((result.into_bytes(), notify));
        }
    }
    v
}

/// The absolute path of a script in the host's storage, as the runtime sees it.
fn abs(h: &Host, script: &str) -> String {
    h.storage().resolve(script).unwrap().display().to_string()
}

/// Arguments that must arrive octet for octet (smLaunchArgument, RFC 3179 6.2.3 `start`).
fn tricky_arguments() -> Vec<Vec<u8>> {
    vec![
        b"two  spaces and a trailing space ".to_vec(),
        b"say \"hi\" and 'bye'".to_vec(),
        b"back\\slash \\n \\\" \\".to_vec(),
        b"line1\nline2\r\nline3\n".to_vec(),
        b"\ttab\x7f del, \x00 NUL, \xff\xfe not UTF-8, \xc3\xa9 UTF-8 \x00".to_vec(),
        "caf\u{e9} \u{65e5}\u{672c} UTF-8 text".as_bytes().to_vec(),
        (0..=255u8).collect(),
    ]
}

/// Launches one run per tricky argument at once and checks each result equals its argument.
async fn check_arguments(h: &Host, script: &str, profile: Option<&str>) {
    let args = tricky_arguments();
    let ids: Vec<RunId> = args.iter().map(|a| launch(h, script, profile, a)).collect();
    for (id, arg) in ids.into_iter().zip(&args) {
        let r = finish(h, id, 30).await;
        assert_end(&r, ExitCode::NoError, "");
        assert_eq!(r.argument.as_bytes(), &arg[..], "smRunArgument");
        assert_eq!(
            r.result.as_bytes(),
            &arg[..],
            "{script}: the argument came back changed"
        );
    }
}

/// CPU ticks the process `pid` uses over one second.
async fn ticks_in_one_second(pid: u32) -> u64 {
    let t0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cpu_ticks(pid) - t0
}

/// Waits until `pid` has used `ticks` more CPU ticks (it is really running).
async fn burns(pid: u32, ticks: u64, what: &str) {
    let t0 = cpu_ticks(pid);
    eventually(
        20,
        &format!("{what} (pid {pid}) to burn {ticks} CPU ticks"),
        || cpu_ticks(pid) >= t0 + ticks,
    )
    .await;
}

/// RFC 3179 6.2.4/6.2.5 (and issue 4): a busy-looping script that has announced itself with
/// the result "spinning" stops using CPU once suspended, and uses it again after resume.
/// `pid` picks the process whose CPU time to watch from the executing row.
async fn check_suspend_busy(h: &Host, script: &str, pid: impl Fn(&RunInfo) -> u32) {
    let id = launch(h, script, None, b"");
    let r = reach_result(h, id, b"spinning").await;
    assert_eq!(r.state, RunState::Executing);
    let pid = pid(&r);
    burns(pid, 10, "the busy loop").await;

    let s = h.suspend(id).await.unwrap();
    assert_eq!(
        (s.state, s.exit_code),
        (RunState::Suspended, ExitCode::NoError)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let used = ticks_in_one_second(pid).await;
    assert!(
        used <= 2,
        "{script}: suspended, yet the process used {used} CPU ticks in 1 s"
    );
    assert_eq!(h.run(id).unwrap().state, RunState::Suspended);

    let s = h.resume(id).await.unwrap();
    assert_eq!(
        (s.state, s.exit_code),
        (RunState::Executing, ExitCode::NoError)
    );
    burns(pid, 10, "the resumed busy loop").await;
    assert_eq!(h.run(id).unwrap().state, RunState::Executing);

    let r = h.abort(id).await.unwrap();
    assert_end(&r, ExitCode::Halted, "");
}

/// RFC 3179 6.2.6: aborting a sleeping and a busy-looping script (both have reported the
/// result "started") ends both promptly with halted. Returns the final rows.
async fn check_abort(h: &Host, sleeper: &str, spinner: &str) -> Vec<RunInfo> {
    let ids = [launch(h, sleeper, None, b""), launch(h, spinner, None, b"")];
    for id in ids {
        let r = reach_result(h, id, b"started").await;
        assert_eq!(r.state, RunState::Executing);
    }
    // Both aborts at once; each must be answered well within the 8 s command timeout.
    let t = Instant::now();
    let (a, b) = tokio::join!(h.abort(ids[0]), h.abort(ids[1]));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "aborts took {took:?}");
    let rows = vec![a.unwrap(), b.unwrap()];
    for r in &rows {
        assert_end(r, ExitCode::Halted, "");
        assert_eq!(
            r.result.as_bytes(),
            b"started",
            "the last intermediate result stays smRunResult"
        );
    }
    rows
}

// ============================================================================================
// Python (runtimes/python/smx_runtime.py; profiles trusted, restricted; multi-threaded)
// ============================================================================================

/// Issue 4: arguments with spaces, quotes, backslashes, newlines, NUL and non-UTF-8 octets
/// reach the script intact (RFC 3179 6.2.3: `start ... Argument`; 5.1 QuotedString/HexString)
/// and come back intact as its 532 result (6.1.7 item 4). Seven runs at once in one runtime.
#[tokio::test]
async fn python_arguments_arrive_intact() {
    let h = rt_host();
    // `smx.argument` is bytes; `smx.argument_text` must round-trip through surrogateescape.
    let bytes = install(
        &h,
        "echo.py",
        "import smx\nsmx.result(smx.argument)\n",
        false,
    );
    let text = install(
        &h,
        "echo_text.py",
        "import smx\nsmx.result(smx.argument_text)\n",
        false,
    );
    check_arguments(&h, &bytes, None).await;
    check_arguments(&h, &text, Some("restricted")).await;
    h.shutdown().await;
}

/// Issue 4: results with newlines, quotes, CR, NUL and non-UTF-8 octets arrive intact in
/// smRunResult (RFC 3179 6.2.8 rule 3; the last 532 is the result).
#[tokio::test]
async fn python_results_are_binary_safe() {
    let h = rt_host();
    let s = install(
        &h,
        "results.py",
        "import smx\n\
         smx.result('caf\\u00e9 \"quoted\"\\nnext line\\r\\n')\n\
         smx.result(b'bin\\x00\\xff\\xfe \"q\" \\\\ \\n end')\n",
        false,
    );
    let mut ev = h.subscribe();
    let r = run(&h, &s, None, b"").await;
    assert_end(&r, ExitCode::NoError, "");
    let want: &[u8] = b"bin\x00\xff\xfe \"q\" \\ \n end";
    assert_eq!(r.result.as_bytes(), want, "smRunResult is the last 532");
    assert_eq!(
        results(&mut ev, r.run_id),
        [
            (
                "caf\u{e9} \"quoted\"\nnext line\r\n".as_bytes().to_vec(),
                false
            ),
            (want.to_vec(), false)
        ]
    );
    h.shutdown().await;
}

/// Issue 4 / RFC 3179 6.1.3, 6.1.4, 6.2.4, 6.2.5: suspend really stops a busy loop (no CPU
/// while suspended), resume restarts it; smRunState follows.
#[tokio::test]
async fn python_suspend_stops_a_busy_loop_and_resume_restarts_it() {
    let h = rt_host();
    let s = install(
        &h,
        "spin.py",
        "import smx\nsmx.result('spinning')\nn = 0\nwhile True:\n    n += 1\n",
        false,
    );
    // One process serves every Python run: its CPU time is the script's.
    check_suspend_busy(&h, &s, |r| r.runtime_pid.unwrap()).await;
    h.shutdown().await;
}

/// Issue 4 / RFC 3179 6.1.5, 6.2.6: abort stops a sleeping and a busy-looping script promptly
/// with halted; the multi-threaded runtime itself survives and serves the next run.
#[tokio::test]
async fn python_abort_stops_sleeping_and_busy_scripts() {
    let h = rt_host();
    let sleeper = install(
        &h,
        "sleeper.py",
        "import time, smx\nsmx.result('started')\ntime.sleep(60)\nsmx.result('never')\n",
        false,
    );
    let spinner = install(
        &h,
        "spinner.py",
        "import smx\nsmx.result('started')\nwhile True:\n    pass\n",
        false,
    );
    let rows = check_abort(&h, &sleeper, &spinner).await;
    // The runtime survived both aborts: the next run is served by the same process.
    let echo = install(
        &h,
        "echo.py",
        "import smx\nsmx.result(smx.argument)\n",
        false,
    );
    let r = run(&h, &echo, None, b"still here").await;
    assert_end(&r, ExitCode::NoError, "");
    assert_eq!(r.result.as_bytes(), b"still here");
    assert_eq!(r.runtime_pid, rows[0].runtime_pid);
    assert_eq!(r.runtime_pid, rows[1].runtime_pid);
    h.shutdown().await;
}

/// Issue 4 / RFC 3179 section 3 (runtime security profiles): what `restricted` forbids ends
/// the run with securityViolation and a text naming the event and the script line; the same
/// scripts under `trusted` end with noError.
#[tokio::test]
async fn python_restricted_profile_violations_are_security_violations() {
    let h = rt_host();
    let sub = install(
        &h,
        "sub.py",
        "import subprocess, smx\nsubprocess.run(['true'], check=True)\nsmx.result('ran')\n",
        false,
    );
    // Caught by the script, still recorded: the run ends securityViolation.
    let sock = install(
        &h,
        "sock.py",
        "import socket, smx\ntry:\n    socket.socket()\nexcept PermissionError:\n    smx.result('caught')\n",
        false,
    );
    let write = install(
        &h,
        "write.py",
        "open('/tmp/smx-runtimes-test-must-not-exist', 'w')\n",
        false,
    );
    let (a, b, c, d, e) = tokio::join!(
        run(&h, &sub, Some("restricted"), b""),
        run(&h, &sock, Some("restricted"), b""),
        run(&h, &write, Some("restricted"), b""),
        // The same scripts under `trusted` are fine: the profile makes the difference.
        run(&h, &sub, Some("trusted"), b""),
        run(&h, &sock, Some("trusted"), b""),
    );
    assert_end(
        &a,
        ExitCode::SecurityViolation,
        "security violation: profile restricted forbids subprocess.Popen(",
    );
    assert!(a.error.ends_with("(line 2)"), "{}", a.error);
    assert_eq!(a.result.as_bytes(), b"");
    assert_end(
        &b,
        ExitCode::SecurityViolation,
        "security violation: profile restricted forbids socket.__new__(",
    );
    assert!(b.error.ends_with("(line 3)"), "{}", b.error);
    assert_eq!(b.result.as_bytes(), b"caught", "the script went on");
    assert_end(
        &c,
        ExitCode::SecurityViolation,
        "security violation: profile restricted forbids open outside smx.tmpdir: \
         open('/tmp/smx-runtimes-test-must-not-exist', 'w', ",
    );
    assert!(c.error.ends_with("(line 1)"), "{}", c.error);
    assert!(!std::path::Path::new("/tmp/smx-runtimes-test-must-not-exist").exists());
    assert_end(&d, ExitCode::NoError, "");
    assert_eq!(d.result.as_bytes(), b"ran");
    assert_end(&e, ExitCode::NoError, "");
    assert_eq!(e.result.as_bytes(), b"");
    h.shutdown().await;
}

/// Issue 11 / RFC 3179 sections 3 and 9: a restricted script that writes forged `532`,
/// `538` and `533` lines about its neighbour run to every fd below 1024 reaches no SMX
/// channel (the runtime keeps it on high, close-on-exec fds and refuses every fd operation
/// on them), and the neighbour, in the same runtime process, ends as it would have. Device
/// files, FIFOs and set-ID modes are refused too.
#[tokio::test]
async fn python_restricted_scripts_cannot_forge_smx_nor_make_devices() {
    let h = rt_host();
    let victim = install(
        &h,
        "victim.py",
        "import smx, time\nsmx.result('victim alive')\ntime.sleep(3)\nsmx.result('victim done')\n",
        false,
    );
    let forge = install(
        &h,
        "forge.py",
        "import os, smx\nrefused = []\nfor fd in range(1024):\n    for rid in range(max(1, smx.run_id - 3), smx.run_id + 4):\n        if rid == smx.run_id:\n            continue\n        line = b'532 0 %d 2 \"forged\"\\r\\n533 0 %d 2 \"forged\"\\r\\n538 0 %d 9\\r\\n' % (rid, rid, rid)\n        try:\n            os.write(fd, line)\n        except PermissionError:\n            refused.append(fd)\n        except OSError:\n            pass\nsmx.result(' '.join(sorted(set(map(str, refused)))))\n",
        false,
    );
    let devices = [
        (
            "mknod.py",
            "import os, smx\nos.mknod(smx.tmpdir + '/n')\n",
            "os.mknod(",
        ),
        (
            "mkfifo.py",
            "import os, smx\nos.mkfifo(smx.tmpdir + '/f')\n",
            "os.mkfifo(",
        ),
        (
            "suid.py",
            "import os, smx\np = smx.tmpdir + '/x'\nopen(p, 'w').close()\nos.chmod(p, 0o4755)\n",
            "os.chmod to set-user/group-ID mode 4755",
        ),
    ];
    let mut ev = h.subscribe();
    let v = launch(&h, &victim, Some("restricted"), b"");
    let alive = reach_result(&h, v, b"victim alive").await;
    let f = run(&h, &forge, Some("restricted"), b"").await;
    assert_eq!(
        f.runtime_pid, alive.runtime_pid,
        "one process: the same owner and profile"
    );
    assert_end(
        &f,
        ExitCode::SecurityViolation,
        "security violation: profile restricted forbids os.write on the SMX channel (fd ",
    );
    let refused: Vec<u32> = String::from_utf8(f.result.as_bytes().to_vec())
        .unwrap()
        .split(' ')
        .map(|fd| fd.parse().expect("an fd"))
        .collect();
    assert!(
        refused.len() >= 2 && refused.iter().all(|&fd| fd > 200),
        "both pipe ends refused, and high: {refused:?}"
    );
    let v = finish(&h, v, 30).await;
    assert_end(&v, ExitCode::NoError, "");
    assert_eq!(v.result.as_bytes(), b"victim done");
    let forged: Vec<_> = results(&mut ev, v.run_id)
        .into_iter()
        .filter(|(r, _)| r.as_slice() == b"forged")
        .collect();
    assert!(
        forged.is_empty(),
        "forged results reached the host: {forged:?}"
    );
    for (name, body, text) in devices {
        let script = install(&h, name, body, false);
        let r = run(&h, &script, Some("restricted"), b"").await;
        assert_end(
            &r,
            ExitCode::SecurityViolation,
            &format!("security violation: profile restricted forbids {text}"),
        );
    }
    h.shutdown().await;
}

/// Issue 4: a syntax error is languageError, an uncaught exception runtimeError with the
/// exception, the script line and the traceback in smRunError (RFC 3179 6.1.7 items 6, 8:
/// a 536 then the 538), `sys.exit(3)` runtimeError, smx.ArgumentError invalidArgument.
#[tokio::test]
async fn python_syntax_and_runtime_errors() {
    let h = rt_host();
    let syntax = install(&h, "syntax.py", "x = 1\ndef f(:\n    pass\n", false);
    let zero = install(
        &h,
        "zero.py",
        "import smx\nsmx.result('before')\nx = 1 / 0\n",
        false,
    );
    let raise = install(
        &h,
        "raise.py",
        "def check(v):\n    raise ValueError('bad value %r' % v)\n\ncheck(42)\n",
        false,
    );
    let exit3 = install(&h, "exit3.py", "import sys\nsys.exit(3)\n", false);
    let badarg = install(
        &h,
        "badarg.py",
        "import smx\nraise smx.ArgumentError('need a number, got %r' % smx.argument_text)\n",
        false,
    );
    let (a, b, c, d, e) = tokio::join!(
        run(&h, &syntax, None, b""),
        run(&h, &zero, None, b""),
        run(&h, &raise, None, b""),
        run(&h, &exit3, None, b""),
        run(&h, &badarg, None, b"x"),
    );
    assert_end(
        &a,
        ExitCode::LanguageError,
        &format!("SyntaxError: invalid syntax ({}, line 2)", abs(&h, &syntax)),
    );
    assert_end(
        &b,
        ExitCode::RuntimeError,
        "ZeroDivisionError: division by zero (line 3)\nTraceback (most recent call last):\n",
    );
    assert_eq!(b.result.as_bytes(), b"before");
    // "line N" is the innermost line of the script itself (runtimes/python/README.md).
    assert_end(
        &c,
        ExitCode::RuntimeError,
        "ValueError: bad value 42 (line 2)\nTraceback",
    );
    assert_end(&d, ExitCode::RuntimeError, "SystemExit: exit status 3");
    assert_end(&e, ExitCode::InvalidArgument, "need a number, got 'x'");
    h.shutdown().await;
}

/// Issue 4 / RFC 3179 6.1.7 items 4, 5 and 6.2.8 rules 3, 4: `smx.result` is a 532
/// (`notify: false`), `smx.event` a 533 (`notify: true`, smScriptResult), in order.
#[tokio::test]
async fn python_intermediate_results_and_events() {
    let h = rt_host();
    let s = install(
        &h,
        "report.py",
        "import smx\nsmx.result('one')\nsmx.event('two')\nsmx.result(b'\\x00three\\xff')\n",
        false,
    );
    let mut ev = h.subscribe();
    let r = run(&h, &s, None, b"").await;
    assert_end(&r, ExitCode::NoError, "");
    // 532 -> notify false, 533 -> notify true (RFC 3179 6.2.8; smScriptResult for 533).
    assert_eq!(
        results(&mut ev, r.run_id),
        [
            (b"one".to_vec(), false),
            (b"two".to_vec(), true),
            (b"\x00three\xff".to_vec(), false)
        ]
    );
    assert_eq!(r.result.as_bytes(), b"\x00three\xff");
    h.shutdown().await;
}

// ============================================================================================
// Tcl (runtimes/tcl/smx_runtime.tcl; profiles trusted, safe, restricted; single-threaded)
// ============================================================================================

/// Issue 4: the tricky arguments reach a safe Tcl interpreter intact (`smx argument`) and
/// come back intact (`smx result -binary`); one tclsh runtime per run, seven at once.
#[tokio::test]
async fn tcl_arguments_arrive_intact() {
    let h = rt_host();
    let s = install(
        &h,
        "echo.tcl",
        "smx result -binary [smx argument]\nreturn\n",
        false,
    );
    check_arguments(&h, &s, Some("safe")).await;
    h.shutdown().await;
}

/// Issue 4: a binary result and a text return value (UTF-8, with quotes, CR, LF) arrive
/// intact as 532s; the return value is the final smRunResult.
#[tokio::test]
async fn tcl_results_are_binary_safe() {
    let h = rt_host();
    // A -binary result, then the script's return value (sent as UTF-8) as the final 532.
    let s = install(
        &h,
        "results.tcl",
        "smx result -binary \"bin\\x00\\xff\\xfe \\\"q\\\" \\\\ \\n end\"\n\
         return \"caf\\u00e9 \\\"quoted\\\"\\nnext line\\r\\n\"\n",
        false,
    );
    let mut ev = h.subscribe();
    let r = run(&h, &s, Some("safe"), b"").await;
    assert_end(&r, ExitCode::NoError, "");
    let last = "caf\u{e9} \"quoted\"\nnext line\r\n".as_bytes();
    assert_eq!(r.result.as_bytes(), last);
    assert_eq!(
        results(&mut ev, r.run_id),
        [
            (b"bin\x00\xff\xfe \"q\" \\ \n end".to_vec(), false),
            (last.to_vec(), false)
        ]
    );
    h.shutdown().await;
}

/// Issue 4 / RFC 3179 6.1.3, 6.1.4, 6.2.4, 6.2.5: `while 1 {incr n}` stops using CPU while
/// suspended and runs again after resume.
#[tokio::test]
async fn tcl_suspend_stops_a_busy_loop_and_resume_restarts_it() {
    let h = rt_host();
    let s = install(
        &h,
        "spin.tcl",
        "smx result spinning\nset n 0\nwhile 1 {incr n}\n",
        false,
    );
    // threading = "single": the runtime process runs only this script.
    check_suspend_busy(&h, &s, |r| r.runtime_pid.unwrap()).await;
    h.shutdown().await;
}

/// Issue 4 / RFC 3179 6.1.5, 6.2.6: abort stops `after 60000` and `while 1 {...}` promptly
/// with halted, and each single-threaded runtime process exits afterwards.
#[tokio::test]
async fn tcl_abort_stops_sleeping_and_busy_scripts() {
    let h = rt_host();
    let sleeper = install(
        &h,
        "sleeper.tcl",
        "smx result started\nafter 60000\nsmx result never\n",
        false,
    );
    let spinner = install(
        &h,
        "spinner.tcl",
        "smx result started\nwhile 1 {incr n}\n",
        false,
    );
    let rows = check_abort(&h, &sleeper, &spinner).await;
    // One process per run; each exits once its run is over.
    assert_ne!(rows[0].runtime_pid, rows[1].runtime_pid);
    for r in &rows {
        let pid = r.runtime_pid.unwrap();
        eventually(10, "the Tcl runtime to exit", || !alive(pid)).await;
    }
    h.shutdown().await;
}

/// Issue 4 / RFC 3179 section 3 ("For Tcl, the runtime security profile maps to the
/// interpreter's security profile"): a command the safe interpreter hides (`exec`, `open`,
/// `socket`) ends the run with securityViolation; `trusted` allows them.
#[tokio::test]
async fn tcl_safe_profile_violations_are_security_violations() {
    let h = rt_host();
    let exec = install(&h, "exec.tcl", "smx result before\nexec true\n", false);
    let open = install(
        &h,
        "open.tcl",
        "set f [open /proc/loadavg]\nread $f\n",
        false,
    );
    let sock = install(
        &h,
        "socket.tcl",
        "smx result before\nsocket localhost 9\n",
        false,
    );
    // A violation the script catches still ends the run with securityViolation.
    let caught = install(
        &h,
        "caught.tcl",
        "catch {exec true} err\nsmx result \"caught: $err\"\n",
        false,
    );
    let (a, b, c, d, e, f) = tokio::join!(
        run(&h, &exec, Some("safe"), b""),
        run(&h, &open, Some("safe"), b""),
        run(&h, &sock, Some("restricted"), b""),
        // `trusted` has the full interpreter: the same scripts work.
        run(&h, &exec, Some("trusted"), b""),
        run(&h, &open, Some("trusted"), b""),
        run(&h, &caught, Some("safe"), b""),
    );
    assert_end(
        &f,
        ExitCode::SecurityViolation,
        "invalid command name \"exec\" (not allowed in profile safe)",
    );
    assert_eq!(
        f.result.as_bytes(),
        b"caught: invalid command name \"exec\""
    );
    assert_end(
        &a,
        ExitCode::SecurityViolation,
        "invalid command name \"exec\" (not allowed in profile safe)\n    invoked from within\n\"exec true\"",
    );
    assert_eq!(a.result.as_bytes(), b"before");
    assert_end(
        &b,
        ExitCode::SecurityViolation,
        "invalid command name \"open\" (not allowed in profile safe)",
    );
    assert_end(
        &c,
        ExitCode::SecurityViolation,
        "invalid command name \"socket\" (not allowed in profile restricted)",
    );
    assert_eq!(c.result.as_bytes(), b"before");
    assert_end(&d, ExitCode::NoError, "");
    // `exec true` returns "", and an empty return value sends no final 532.
    assert_eq!(d.result.as_bytes(), b"before");
    assert_end(&e, ExitCode::NoError, "");
    let load = String::from_utf8(e.result.into_bytes()).unwrap();
    assert_eq!(load.split(' ').count(), 5, "/proc/loadavg: {load:?}");
    h.shutdown().await;
}

/// Issue 11 / RFC 3179 section 3: a safe interpreter has no fd access. It sees no channel
/// but the ones the runtime shares (stdout and stderr, which are not SMX once SMX has moved
/// off fds 0/1), cannot name another channel by its fd (`file0`...`file1023`), and cannot open
/// `/proc/self/fd/N` (`open` is hidden).
#[tokio::test]
async fn tcl_safe_interpreter_has_no_fd_access() {
    let h = rt_host();
    let probe = install(
        &h,
        "fds.tcl",
        "set reached {}\nfor {set i 0} {$i < 1024} {incr i} {\n    if {![catch {puts file$i {532 0 1 2 \"forged\"}}]} {\n        lappend reached file$i\n    }\n}\nsmx result \"[lsort [chan names]] | $reached\"\nopen /proc/self/fd/0\n",
        false,
    );
    let r = run(&h, &probe, Some("safe"), b"").await;
    assert_end(
        &r,
        ExitCode::SecurityViolation,
        "invalid command name \"open\" (not allowed in profile safe)",
    );
    // `file2` is the shared stderr's own channel name (fd 2, which smx logs): the only fd a
    // safe script can write, and not SMX.
    assert_eq!(r.result.as_bytes(), b"stderr stdout | file2");
    h.shutdown().await;
}

/// Issue 4: a syntax error is languageError (with the line), an uncaught error runtimeError
/// with the message and errorInfo, `exit 3` runtimeError, `smx invalid-argument`
/// invalidArgument.
#[tokio::test]
async fn tcl_syntax_and_runtime_errors() {
    let h = rt_host();
    let syntax = install(&h, "syntax.tcl", "set x 1\nset y {\nputs $x\n", false);
    let boom = install(
        &h,
        "boom.tcl",
        "smx result before\nproc check {v} {error \"bad value $v\"}\ncheck 42\n",
        false,
    );
    let unknown = install(&h, "unknown.tcl", "no_such_command 1 2\n", false);
    let exit3 = install(&h, "exit3.tcl", "exit 3\n", false);
    let badarg = install(
        &h,
        "badarg.tcl",
        "smx invalid-argument \"need a number, got [smx argument]\"\n",
        false,
    );
    let (a, b, c, d, e) = tokio::join!(
        run(&h, &syntax, Some("safe"), b""),
        run(&h, &boom, Some("safe"), b""),
        run(&h, &unknown, Some("trusted"), b""),
        run(&h, &exit3, Some("safe"), b""),
        run(&h, &badarg, Some("safe"), b"x"),
    );
    assert_end(
        &a,
        ExitCode::LanguageError,
        &format!("missing close-brace (line 2 of {})", abs(&h, &syntax)),
    );
    assert_end(
        &b,
        ExitCode::RuntimeError,
        "bad value 42\n    while executing\n\"error \"bad value $v\"\"\n    (procedure \"check\" line 1)",
    );
    assert_eq!(b.result.as_bytes(), b"before");
    assert_end(
        &c,
        ExitCode::RuntimeError,
        "invalid command name \"no_such_command\"",
    );
    assert_eq!(d.error, "script called exit 3");
    assert_end(&d, ExitCode::RuntimeError, "script called exit 3");
    assert_end(&e, ExitCode::InvalidArgument, "need a number, got x");
    h.shutdown().await;
}

/// Issue 4 / RFC 3179 6.1.7 items 4, 5 and 6.2.8 rules 3, 4: `smx result` is a 532,
/// `smx event` a 533.
#[tokio::test]
async fn tcl_intermediate_results_and_events() {
    let h = rt_host();
    let s = install(
        &h,
        "report.tcl",
        "smx result one\nsmx event two\nsmx result -binary \"\\x00three\\xff\"\nreturn\n",
        false,
    );
    let mut ev = h.subscribe();
    let r = run(&h, &s, Some("safe"), b"").await;
    assert_end(&r, ExitCode::NoError, "");
    assert_eq!(
        results(&mut ev, r.run_id),
        [
            (b"one".to_vec(), false),
            (b"two".to_vec(), true),
            (b"\x00three\xff".to_vec(), false)
        ]
    );
    assert_eq!(r.result.as_bytes(), b"\x00three\xff");
    h.shutdown().await;
}

// ============================================================================================
// exec (`smx exec-runtime`; scripts are child processes, one process group each)
// ============================================================================================

/// Issue 4: the tricky arguments reach an exec script intact on stdin, and as `$1` when they
/// have no NUL (README, "The exec runtime").
#[tokio::test]
async fn exec_arguments_arrive_intact() {
    let h = rt_host();
    // stdin carries the argument octet for octet; report it in hex so that nothing (not even
    // a trailing newline, which the stdout result would lose) is changed on the way back.
    // $1 carries it too unless it is empty or has a NUL: sent as a 533 when present.
    let s = install_exec(
        &h,
        "echo.sh",
        "#!/bin/sh\n\
         if [ $# -gt 0 ]; then\n\
           echo \"event-hex $(printf '%s' \"$1\" | od -An -v -tx1 | tr -d ' \\n')\" >&3\n\
         fi\n\
         echo \"result-hex $(od -An -v -tx1 | tr -d ' \\n')\" >&3\n",
    )
    .await;
    let mut ev = h.subscribe();
    let args = tricky_arguments();
    let ids: Vec<RunId> = args.iter().map(|a| launch(&h, &s, None, a)).collect();
    for (id, arg) in ids.into_iter().zip(&args) {
        let r = finish(&h, id, 30).await;
        assert_end(&r, ExitCode::NoError, "");
        assert_eq!(r.result.as_bytes(), &arg[..], "stdin");
    }
    let mut per_run: std::collections::HashMap<RunId, Vec<(Vec<u8>, bool)>> = Default::default();
    while let Ok(e) = ev.try_recv() {
        if let EventKind::Result { result, notify } = e.kind {
            per_run
                .entry(e.run_id)
                .or_default()
                .push((result.into_bytes(), notify));
        }
    }
    for (i, arg) in args.iter().enumerate() {
        let id = RunId(i as u64 + 1);
        let mut want = Vec::new();
        if !arg.contains(&0) {
            want.push((arg.clone(), true));
        }
        want.push((arg.clone(), false));
        assert_eq!(per_run[&id], want, "argument {i}: $1 then stdin");
    }
    h.shutdown().await;
}

/// Issue 4: a result with NUL, non-UTF-8 octets, quotes, backslash and newline (the script's
/// stdout) arrives intact.
#[tokio::test]
async fn exec_results_are_binary_safe() {
    let h = rt_host();
    let s = install_exec(
        &h,
        "results.sh",
        "#!/bin/sh\nprintf 'bin\\000\\377\\376 \"q\" \\\\ \\n end\\n'\n",
    )
    .await;
    let r = run(&h, &s, None, b"").await;
    assert_end(&r, ExitCode::NoError, "");
    // stdout, one trailing newline removed (README, "The exec runtime").
    assert_eq!(r.result.as_bytes(), b"bin\x00\xff\xfe \"q\" \\ \n end");
    h.shutdown().await;
}

/// Issue 4 / RFC 3179 6.2.4, 6.2.5: SIGSTOP/SIGCONT hold and release a busy shell loop.
#[tokio::test]
async fn exec_suspend_stops_a_busy_loop_and_resume_restarts_it() {
    let h = rt_host();
    let s = install_exec(
        &h,
        "spin.sh",
        "#!/bin/sh\necho 'result spinning' >&3\nwhile :; do :; done\n",
    )
    .await;
    // The script is a child of the exec runtime; SIGSTOP/SIGCONT act on it.
    check_suspend_busy(&h, &s, |r| {
        let kids = children(r.runtime_pid.unwrap());
        assert_eq!(kids.len(), 1, "one script child: {kids:?}");
        kids[0]
    })
    .await;
    h.shutdown().await;
}

/// Issue 4 / RFC 3179 6.2.6: abort ends a sleeping and a busy shell script with halted, and
/// their processes are gone.
#[tokio::test]
async fn exec_abort_stops_sleeping_and_busy_scripts() {
    let h = rt_host();
    let sleeper = install_exec(
        &h,
        "sleeper.sh",
        "#!/bin/sh\necho 'result started' >&3\nsleep 60\necho never\n",
    )
    .await;
    let spinner = install_exec(
        &h,
        "spinner.sh",
        "#!/bin/sh\necho 'result started' >&3\nwhile :; do :; done\n",
    )
    .await;
    let rows = check_abort(&h, &sleeper, &spinner).await;
    let runtime = rows[0].runtime_pid.unwrap();
    assert_eq!(rows[1].runtime_pid, Some(runtime));
    eventually(5, "the script processes to be gone", || {
        children(runtime).is_empty()
    })
    .await;
    h.shutdown().await;
}

/// Issue 4: shell syntax error -> languageError, failing script -> runtimeError with its last
/// stderr line; `result`/`event` lines on fd 3 are 532/533 (RFC 3179 6.2.8 rules 3, 4).
#[tokio::test]
async fn exec_syntax_and_runtime_errors_and_events() {
    let h = rt_host();
    let syntax = install_exec(&h, "syntax.sh", "#!/bin/sh\nif then\n").await;
    let fail = install_exec(
        &h,
        "fail.sh",
        "#!/bin/sh\necho 'result before' >&3\necho 'disk on fire' >&2\nexit 3\n",
    )
    .await;
    let report = install_exec(&h, "report.sh",
        "#!/bin/sh\necho 'result one' >&3\necho 'event two' >&3\necho 'result-hex 007468726565FF' >&3\n").await;
    let mut ev = h.subscribe();
    let (a, b, c) = tokio::join!(
        run(&h, &syntax, None, b""),
        run(&h, &fail, None, b""),
        run(&h, &report, None, b""),
    );
    // The shell's own message (its last stderr line), then the exit status 2 of shells.
    assert_end(
        &a,
        ExitCode::LanguageError,
        &format!("{}: ", abs(&h, &syntax)),
    );
    assert!(
        a.error.to_lowercase().contains("syntax error") && a.error.ends_with("(exit status 2)"),
        "{}",
        a.error
    );
    assert_end(&b, ExitCode::RuntimeError, "disk on fire (exit status 3)");
    assert_eq!(b.result.as_bytes(), b"before");
    assert_end(&c, ExitCode::NoError, "");
    assert_eq!(c.result.as_bytes(), b"\x00three\xff");
    assert_eq!(
        results(&mut ev, c.run_id),
        [
            (b"one".to_vec(), false),
            (b"two".to_vec(), true),
            (b"\x00three\xff".to_vec(), false)
        ]
    );
    h.shutdown().await;
}

// ============================================================================================
// The example scripts in scripts/, each once, with the profile its header asks for.
// ============================================================================================

/// Issue 4: every example script in scripts/ runs once with a small argument and the
/// profile its header comment asks for, and ends with noError and the documented result;
/// the profiles the headers rule out give what the headers say.
#[tokio::test]
async fn example_scripts_run_without_error() {
    let h = rt_host();
    let body = |name: &str| std::fs::read_to_string(repo().join("scripts").join(name)).unwrap();
    let inst = |name: &str| install(&h, name, &body(name), false);
    let watched_dir = tempfile::tempdir().unwrap();
    let watched = watched_dir.path().join("watched file");
    std::fs::write(&watched, "one\n").unwrap();
    let watched = watched.display().to_string();

    let loadavg = inst("loadavg.py");
    let netdev = inst("netdev.py");
    let watchfile = inst("watchfile.py");
    let countdown = inst("countdown.tcl");
    let ifcounters = inst("ifcounters.tcl");
    let uptime = inst("uptime.tcl");
    let sysinfo = install_exec(&h, "sysinfo.sh", &body("sysinfo.sh")).await;

    let mut ev = h.subscribe();
    // watchfile: one change, checked every 50 ms, with a short lifetime as a safety net.
    let mut req = request(&watchfile, None);
    req.profile = Some("restricted".parse().unwrap());
    req.argument = Octets::from(format!("'{watched}' 1 0.05"));
    req.lifetime = secs(20);
    let watch = h.launch(req).unwrap();
    let change = async {
        eventually(20, "watchfile to report its initial state", || {
            h.run(watch).is_some_and(|r| !r.result.is_empty())
        })
        .await;
        std::fs::write(&watched, "one\ntwo\n").unwrap();
        finish(&h, watch, 30).await
    };
    let (w, la, nd, cd, ifc, up, si) = tokio::join!(
        change,
        // 1 sample, no interval, threshold 1000 so the sample is a plain result (532).
        run(&h, &loadavg, Some("restricted"), b"1 0 1000"),
        run(&h, &netdev, Some("restricted"), b"lo"),
        run(&h, &countdown, Some("safe"), b"1"),
        run(&h, &ifcounters, Some("trusted"), b"lo"),
        run(&h, &uptime, Some("trusted"), b""),
        run(&h, &sysinfo, Some("trusted"), b"1"),
    );
    for r in [&w, &la, &nd, &cd, &ifc, &up, &si] {
        assert_end(r, ExitCode::NoError, "");
    }
    let text = |r: &RunInfo| String::from_utf8(r.result.as_bytes().to_vec()).unwrap();
    assert!(
        text(&w).starts_with(&format!("modified {watched} size=8 mtime=")),
        "{}",
        text(&w)
    );
    assert!(text(&la).starts_with("load1="), "{}", text(&la));
    assert!(text(&la).contains(" uptime="), "{}", text(&la));
    assert!(text(&nd).starts_with("lo rx_bytes="), "{}", text(&nd));
    assert_eq!(text(&cd), "countdown from 1 finished");
    assert!(text(&ifc).starts_with("lo rx "), "{}", text(&ifc));
    assert!(text(&up).starts_with("up "), "{}", text(&up));
    assert!(text(&si).starts_with("host "), "{}", text(&si));
    assert_eq!(
        results(&mut ev, cd.run_id),
        [
            (b"1".to_vec(), false),
            (b"countdown from 1 finished".to_vec(), true)
        ]
    );

    // The headers' claims about the other profiles hold too.
    let (u, i, c) = tokio::join!(
        run(&h, &uptime, Some("safe"), b""),
        run(&h, &ifcounters, Some("restricted"), b"lo"),
        run(&h, &countdown, Some("safe"), b"0"),
    );
    assert_end(
        &u,
        ExitCode::SecurityViolation,
        "invalid command name \"open\"",
    );
    assert_end(
        &i,
        ExitCode::SecurityViolation,
        "invalid command name \"open\"",
    );
    assert_end(
        &c,
        ExitCode::InvalidArgument,
        "expected a whole number from 1 to 3600, got \"0\"",
    );
    h.shutdown().await;
}
