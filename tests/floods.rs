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

/// Issue item 2 (`smx conform` reader bounded); RFC 3179 6.1.7 (a runtime may send 511 at any
/// time) and section 5 (every line is checked). Against a runtime that floods 511 lines
/// (tests/fixtures/flood_runtime.py, which answers everything but hello with 401),
/// `smx conform` must read with backpressure and keep a bounded window of stray lines: it
/// ends within 60 s with its FAILs, below 200 MB, and still judges the flood well-formed.
#[test]
fn conform_against_a_511_flood_ends_and_stays_small() {
    const LIMIT_KIB: u64 = 200 * 1024;
    const LIMIT: Duration = Duration::from_secs(60);
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new(smx_bin())
        .args(["conform", "--timeout", "2s", "--", "python3"])
        .arg(fixture("flood_runtime.py"))
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
    let took = t.elapsed();
    let report = std::fs::read_to_string(out.path()).expect("report");
    eprintln!("smx conform against a 511 flood: {took:?}, VmRSS peak {peak} KiB");
    assert_eq!(status.code(), Some(1), "FAILs expected:\n{report}");
    for line in [
        "PASS  6.1.1   runtime starts and answers hello with 211",
        "FAIL  6.1     unknown command word gives 402",
        "PASS  5       every message is well-formed and ends with CRLF",
        "PASS  5.2     closing the connection terminates the runtime",
    ] {
        assert!(report.contains(line), "expected {line:?} in\n{report}");
    }
}
