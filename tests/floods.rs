//! Floods against bounded queues (issue "Host and daemon core: every queue bounded"): a peer
//! that writes as fast as it can must meet backpressure, not an ever-growing buffer, and the
//! commands that stop it must still be answered in time.
//!
//! The only timing asserts are the bounds the issue sets; every wait is bounded.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use smx::proto::{ExitCode, RunState};

/// Floods are CPU-heavy: one at a time, so the bounds measure the code, not the neighbours.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// VmRSS of a process in KiB; `None` once it is gone.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let v = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    v.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Issue item 1 (exec runtime output bounded); RFC 3179 6.1.7 item 4 (532 notifications) and
/// 6.1.5 / 6.2.6 (abort). A script flooding fd 3 with 60 kB `result` lines must not grow the
/// exec runtime: its output queue is bounded, so it stops reading fd 3 and the script blocks
/// on its pipe. An abort sent during the flood must be answered within the host's 1 s
/// command timeout (tests/common: `--grace 1s`, `command_timeout = "1s"`), so the run ends
/// halted; a 232 stuck behind queued 532s would end it with genericError.
#[tokio::test]
async fn exec_fd3_flood_stays_small_and_abort_is_answered_in_time() {
    const LIMIT_KIB: u64 = 64 * 1024;
    let _serial = SERIAL.lock().await;
    let h = host("");
    let script = install(
        &h,
        "flood.sh",
        "#!/bin/sh\nline=\"result $(head -c 60000 /dev/zero | tr '\\0' x)\"\n\
         while :; do echo \"$line\" >&3; done\n",
        true,
    );
    let id = h.launch(request(&script, None)).expect("launch");
    eventually(10, "the first flood result", || {
        h.run(id).is_some_and(|r| !r.result.is_empty())
    })
    .await;
    let pid = h.run(id).unwrap().runtime_pid.expect("runtime pid");

    // Sample the runtime's memory for 3 s of flooding; count results to see it flood.
    let mut peak = 0;
    let mut results = 0;
    let mut last: Option<SystemTime> = None;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let rss = rss_kib(pid).expect("the exec runtime is alive");
        peak = peak.max(rss);
        assert!(
            rss < LIMIT_KIB,
            "exec runtime VmRSS {rss} KiB during the fd 3 flood (limit {LIMIT_KIB} KiB)"
        );
        let r = h.run(id).unwrap();
        assert!(
            !r.is_terminated(),
            "the flood ended by itself: {:?} {}",
            r.exit_code,
            r.error
        );
        if r.result_time != last {
            results += 1;
            last = r.result_time;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        results > 1,
        "the script did not flood: {results} results seen"
    );

    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), h.abort(id))
        .await
        .expect("abort returns within 10 s")
        .expect("abort");
    let took = t.elapsed();
    eprintln!(
        "exec fd 3 flood: runtime VmRSS peak {peak} KiB, {results} result changes sampled, \
         abort answered in {took:?}"
    );
    assert_eq!(
        (r.state, r.exit_code),
        (RunState::Terminated, ExitCode::Halted),
        "abort during a flood: {}",
        r.error
    );
    h.shutdown().await;
}

/// Runs `smx conform --timeout TIMEOUT -- python3 flood_runtime.py FLAGS`, sampling its VmRSS;
/// fails (and kills it) past 200 MB or 60 s. Returns the exit code and the report.
fn conform_flood(timeout: &str, flags: &[&str]) -> (Option<i32>, String) {
    const LIMIT_KIB: u64 = 200 * 1024;
    const LIMIT: Duration = Duration::from_secs(60);
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new(smx_bin())
        .args(["conform", "--timeout", timeout, "--", "python3"])
        .arg(fixture("flood_runtime.py"))
        .args(flags)
        .stdin(Stdio::null())
        .stdout(out.reopen().expect("reopen"))
        .stderr(out.reopen().expect("reopen"))
        .spawn()
        .expect("run smx conform");
    let t = Instant::now();
    let mut peak = 0;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        let rss = rss_kib(child.id()).unwrap_or(0);
        peak = peak.max(rss);
        if rss >= LIMIT_KIB || t.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "smx conform at {rss} KiB after {:?} (limits {LIMIT_KIB} KiB, {LIMIT:?}):\n{}",
                t.elapsed(),
                std::fs::read_to_string(out.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "smx conform against a 511 flood {flags:?}: {:?}, VmRSS peak {peak} KiB",
        t.elapsed()
    );
    let report = std::fs::read_to_string(out.path()).expect("report");
    (status.code(), report)
}

#[track_caller]
fn assert_lines(report: &str, lines: &[&str]) {
    for line in lines {
        assert!(report.contains(line), "expected {line:?} in\n{report}");
    }
}

/// Issue item 2 (`smx conform` reader bounded); RFC 3179 6.1.7 (a runtime may send 511 at any
/// time) and section 5 (every line is checked). Against a runtime that floods 511 lines and
/// answers (wrongly, with 401) between them, `smx conform` must read with backpressure and
/// keep a bounded window of stray lines: it ends within 60 s with its FAILs, below 200 MB,
/// and still judges every line of the flood.
#[test]
fn conform_against_a_511_flood_ends_and_stays_small() {
    let _serial = SERIAL.blocking_lock();
    let (code, report) = conform_flood("2s", &[]);
    assert_eq!(code, Some(1), "FAILs expected:\n{report}");
    assert_lines(
        &report,
        &[
            "PASS  6.1.1   runtime starts and answers hello with 211",
            "PASS  6.1.1   a later hello is answered with its own Id",
            "FAIL  6.1     unknown command word gives 402",
            "PASS  5       every message is well-formed and ends with CRLF",
            "PASS  5.2     closing the connection terminates the runtime",
        ],
    );
}

/// Issue item 2, the same flood from a runtime that answers nothing after hello: every
/// check must still end at its own timeout (a queue that never runs dry must not keep a
/// wait going), so the run ends within 60 s, below 200 MB.
#[test]
fn conform_against_a_silent_511_flood_ends_and_stays_small() {
    let _serial = SERIAL.blocking_lock();
    let (code, report) = conform_flood("1s", &["--silent"]);
    assert_eq!(code, Some(1), "FAILs expected:\n{report}");
    assert_lines(
        &report,
        &[
            "PASS  6.1.1   runtime starts and answers hello with 211",
            "FAIL  6.1.1   a later hello is answered with its own Id",
            "PASS  5       every message is well-formed and ends with CRLF",
        ],
    );
}

/// Issue item 1 (per-run control queues bounded); RFC 3179 6.1 (any command may fail with a
/// 4yz) and 6.1.5. A burst of 40 aborts for one flooding run, sent to `smx exec-runtime` over
/// raw pipes in one write: those that find the run's control queue full are answered with
/// 434, the others with 232 once the run has ended (halted), and every Id exactly once.
#[test]
fn exec_runtime_answers_every_abort_of_a_burst_once() {
    use smx::proto::{Id, Negative, Reply};
    use std::io::{BufRead, Write};

    let _serial = SERIAL.blocking_lock();
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("flood.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nwhile :; do echo 'result flood flood flood flood' >&3; done\n",
    )
    .expect("write script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut rt = Command::new(smx_bin())
        .args(["exec-runtime", "--profiles", "trusted", "--grace", "1s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smx exec-runtime");
    let mut stdin = rt.stdin.take().unwrap();
    let stdout = rt.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(stdout);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            // Results are read and dropped here, so the flood never waits on the test.
            if !line.starts_with(b"532 ") && tx.send(std::mem::take(&mut line)).is_err() {
                break;
            }
            line.clear();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let next = || {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx
            .recv_timeout(left)
            .expect("a line from the runtime in time");
        Reply::decode(&l).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&l)))
    };
    write!(
        stdin,
        "hello 1\r\nstart 2 7 \"{}\" trusted \"\"\r\n",
        script.display()
    )
    .unwrap();
    stdin.flush().unwrap();
    while !matches!(next(), Reply::Status { id: Id(2), .. }) {}
    let burst: String = (100..140).map(|i| format!("abort {i} 7\r\n")).collect();
    stdin.write_all(burst.as_bytes()).unwrap();
    stdin.flush().unwrap();

    let mut answered = std::collections::BTreeMap::new();
    let mut exit = None;
    while answered.len() < 40 || exit.is_none() {
        match next() {
            Reply::Aborted { id } => {
                assert!(exit.is_some(), "232 {id} before the 538");
                assert!(answered.insert(id.0, 232).is_none(), "{id} answered twice");
            }
            Reply::Negative {
                id,
                code: Negative::CannotChange,
            } => {
                assert!(answered.insert(id.0, 434).is_none(), "{id} answered twice");
            }
            Reply::Terminated { exit: e, .. } => exit = Some(e),
            _ => {}
        }
    }
    let full = answered.values().filter(|&&c| c == 434).count();
    eprintln!(
        "abort burst: {} answered 232, {full} answered 434",
        40 - full
    );
    assert_eq!(
        answered.keys().copied().collect::<Vec<_>>(),
        (100..140).collect::<Vec<u64>>()
    );
    assert_eq!(exit, Some(ExitCode::Halted));
    assert!(full < 40, "at least the first abort is taken");
    // Closing stdin ends the runtime (RFC 3179 5.2); bounded like every wait here.
    drop(stdin);
    let until = Instant::now() + Duration::from_secs(10);
    while rt.try_wait().expect("try_wait").is_none() {
        if Instant::now() > until {
            let _ = rt.kill();
            panic!("smx exec-runtime still running 10 s after its stdin closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
