//! The host against real runtime processes that misbehave on purpose (RFC 3179 6.2.2-6.2.8),
//! and against the exec runtime with real scripts. Every test asserts RunState, ExitCode and
//! the smRunError text.

mod common;

use std::time::Duration;

use common::*;
use smx::host::{ControlError, EventKind};
use smx::proto::{ExitCode, Octets, RunState};

fn fake_host(flags: &[&str]) -> smx::host::Host {
    host(&fake_runtime("fake", flags))
}

async fn launch_fake(host: &smx::host::Host) -> smx::proto::RunId {
    let s = install(host, "x.fake", "script", false);
    host.launch(request(&s, Some("fake"))).unwrap()
}

fn log_file() -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("log").display().to_string();
    (d, p)
}

async fn log_has(path: &str, prefix: &str) {
    eventually(5, &format!("the runtime to receive `{prefix}`"), || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(prefix))
    })
    .await;
}

// ---- 6.2.2 hello ----

#[tokio::test]
async fn hello_rule1_timeout_ends_runs_with_generic_error() {
    let h = fake_host(&["--hello", "silent"]);
    let run = launch_fake(&h).await;
    let r = finish(&h, run, 10).await;
    assert_eq!(
        (r.state, r.exit_code),
        (RunState::Terminated, ExitCode::GenericError)
    );
    assert!(r.error.contains("no 211 reply to hello"), "{}", r.error);
}

#[tokio::test]
async fn hello_rule2_unanalyzable_reply_closes_connection() {
    let h = fake_host(&["--hello", "garbage", "--stderr", "booting the fake runtime"]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(r.error.contains("cannot be analyzed"), "{}", r.error);
    assert!(
        r.error.contains("booting the fake runtime"),
        "stderr tail in the error: {}",
        r.error
    );
}

#[tokio::test]
async fn hello_rule3_wrong_id_and_wrong_version() {
    let h = fake_host(&["--hello", "wrong-id"]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(r.error.contains("211 carries Id 8"), "{}", r.error);

    let h = fake_host(&["--hello", "wrong-version"]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(r.error.contains("SMX/1.0"), "{}", r.error);
}

#[tokio::test]
async fn hello_rule4_other_messages_are_discarded() {
    let h = fake_host(&["--hello", "discard-first", "--start", "finish"]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(
        (r.exit_code, r.result.as_str()),
        (ExitCode::NoError, Some("done"))
    );
}

#[tokio::test]
async fn runtime_that_exits_during_hello() {
    let h = fake_host(&["--hello", "exit"]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(
        r.error
            .contains("closed the connection before replying to hello"),
        "{}",
        r.error
    );
}

#[tokio::test]
async fn missing_runtime_program_is_reported() {
    let h = host("[[runtime]]\nname = \"ghost\"\ncommand = [\"/nonexistent/runtime\"]\n");
    let s = install(&h, "x", "", false);
    let r = finish(&h, h.launch(request(&s, Some("ghost"))).unwrap(), 5).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(r.error.contains("not found"), "{}", r.error);
}

// ---- 6.2.3 start ----

#[tokio::test]
async fn start_rule1_timeout_aborts_and_ends_generic_error() {
    let (_d, log) = log_file();
    let h = fake_host(&["--start", "silent", "--log", &log]);
    let run = launch_fake(&h).await;
    let r = finish(&h, run, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(r.error.contains("no reply to `start`"), "{}", r.error);
    log_has(&log, &format!("abort 3 {run}")).await;
}

#[tokio::test]
async fn start_rule2_garbage_is_ignored_until_the_reply() {
    let h = fake_host(&["--start", "garbage-then-ok"]);
    let run = launch_fake(&h).await;
    let r = reach(&h, run, RunState::Executing).await;
    assert_eq!(r.exit_code, ExitCode::NoError);
    h.shutdown().await;
}

#[tokio::test]
async fn start_rule3_4yz_ends_generic_error() {
    let h = fake_host(&["--start", "refuse"]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(
        r.error.contains("421 (unknown or illegal Script)"),
        "{}",
        r.error
    );
}

#[tokio::test]
async fn start_rule5_reply_with_wrong_id_is_discarded() {
    let h = fake_host(&["--start", "wrong-id"]);
    let run = launch_fake(&h).await;
    let r = finish(&h, run, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(r.error.contains("no reply to `start`"), "{}", r.error);
}

#[tokio::test]
async fn error_before_running_536_and_538_without_231() {
    let (_d, log) = log_file();
    let h = fake_host(&["--start", "fail-before-running", "--log", &log]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert_eq!(r.error, "cannot load");
    // The 538 settled the start: no timeout, no clean-up abort afterwards.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(!seen.contains("abort"), "{seen}");
    assert_eq!(h.run(r.run_id).unwrap().error, "cannot load");
}

#[tokio::test]
async fn replies_are_matched_by_id_not_order() {
    // The first start is answered 0.5 s late, after the second one's reply.
    let (_d, log) = log_file();
    let h = fake_host(&["--start", "delay=0.5", "--log", &log]);
    let s = install(&h, "x.fake", "script", false);
    let a = h.launch(request(&s, Some("fake"))).unwrap();
    log_has(&log, &format!("start 2 {a} ")).await;
    let b = h.launch(request(&s, Some("fake"))).unwrap();
    let rb = reach(&h, b, RunState::Executing).await;
    assert_eq!(h.run(a).unwrap().state, RunState::Initializing);
    let ra = reach(&h, a, RunState::Executing).await;
    assert_eq!(
        ra.runtime_pid, rb.runtime_pid,
        "one multi-threaded runtime serves both"
    );
    h.shutdown().await;
}

// ---- crashes ----

#[tokio::test]
async fn runtime_crash_mid_run_ends_runs_and_next_start_spawns_fresh() {
    let h = fake_host(&["--die-after", "0.3", "--stderr", "about to crash"]);
    let run = launch_fake(&h).await;
    let first = reach(&h, run, RunState::Executing)
        .await
        .runtime_pid
        .unwrap();
    let r = finish(&h, run, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(r.error.contains("exit status 3"), "{}", r.error);
    let run2 = launch_fake(&h).await;
    let second = reach(&h, run2, RunState::Executing)
        .await
        .runtime_pid
        .unwrap();
    assert_ne!(first, second);
    assert!(!alive(first), "the crashed runtime was reaped");
    h.shutdown().await;
}

#[tokio::test]
async fn runtime_that_exits_on_start() {
    let h = fake_host(&["--start", "crash"]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(r.error.contains("exit status 3"), "{}", r.error);
}

// ---- 6.2.8 notifications ----

#[tokio::test]
async fn flood_of_notifications_keeps_the_last_result() {
    let h = fake_host(&["--start", "flood=20000"]);
    let r = finish(&h, launch_fake(&h).await, 30).await;
    assert_eq!(
        (r.exit_code, r.result.as_str()),
        (ExitCode::NoError, Some("r19999"))
    );
}

#[tokio::test]
async fn every_notification_updates_the_row() {
    let h = fake_host(&["--start", "notify-all"]);
    let mut ev = h.subscribe();
    let run = launch_fake(&h).await;
    let mut seen = Vec::new();
    let collect = async {
        while seen.len() < 4 {
            let e = ev.recv().await.unwrap();
            if e.run_id != run {
                continue;
            }
            match e.kind {
                EventKind::Result { result, notify } => {
                    seen.push(format!("result {result} {notify}"))
                }
                EventKind::Error { error, notify } => seen.push(format!("error {error} {notify}")),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), collect)
        .await
        .unwrap();
    assert_eq!(
        seen,
        [
            "result event! true",
            "error exception! true",
            "error error! false",
            "result FF00 false"
        ]
    );
    let r = h.run(run).unwrap();
    assert_eq!(r.result, Octets::new(vec![0xff, 0]));
    assert_eq!(r.error, "error!");
    assert!(r.result_time.is_some() && r.error_time.is_some());
    assert_eq!(
        r.state,
        RunState::Executing,
        "the 531 for an unknown run changed nothing"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn terminated_state_then_538_sets_the_exit_code() {
    let h = fake_host(&["--start", "terminated-then-538"]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(r.exit_code, ExitCode::RuntimeError);
}

/// Regression: a single-threaded runtime's connection closes when its run ends; the 538
/// that follows a 531 reporting `terminated` must still decide the ExitCode.
#[tokio::test]
async fn single_runtime_exit_code_arrives_after_terminated_state() {
    let extra = fake_runtime("fake1", &["--start", "terminated-then-538"])
        .replace("extensions = []", "extensions = []\nthreading = \"single\"");
    let h = host(&extra);
    let s = install(&h, "x.fake", "script", false);
    for _ in 0..5 {
        let r = finish(&h, h.launch(request(&s, Some("fake1"))).unwrap(), 10).await;
        assert_eq!(r.exit_code, ExitCode::RuntimeError);
    }
}

#[tokio::test]
async fn deprecated_534_and_535() {
    let h = fake_host(&["--start", "deprecated=534"]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(
        (r.exit_code, r.result.as_str()),
        (ExitCode::NoError, Some("old style"))
    );
    let h = fake_host(&["--start", "deprecated=535"]);
    let r = finish(&h, launch_fake(&h).await, 10).await;
    assert_eq!(
        (r.exit_code, r.error.as_str()),
        (ExitCode::SecurityViolation, "denied")
    );
}

// ---- 6.2.4 / 6.2.5 suspend and resume ----

#[tokio::test]
async fn suspend_and_resume_update_state() {
    let h = fake_host(&[]);
    let run = launch_fake(&h).await;
    reach(&h, run, RunState::Executing).await;
    assert_eq!(h.suspend(run).await.unwrap().state, RunState::Suspended);
    assert!(matches!(
        h.suspend(run).await,
        Err(ControlError::InvalidState {
            state: RunState::Suspended,
            ..
        })
    ));
    assert_eq!(h.resume(run).await.unwrap().state, RunState::Executing);
    assert!(matches!(
        h.resume(run).await,
        Err(ControlError::InvalidState { .. })
    ));
    h.shutdown().await;
}

#[tokio::test]
async fn suspend_rule3_unsupported_stays_suspending_until_resume() {
    let h = fake_host(&["--suspend", "unsupported", "--resume", "unsupported"]);
    let run = launch_fake(&h).await;
    reach(&h, run, RunState::Executing).await;
    assert_eq!(h.suspend(run).await.unwrap().state, RunState::Suspending);
    assert_eq!(h.resume(run).await.unwrap().state, RunState::Executing);
    h.shutdown().await;
}

#[tokio::test]
async fn suspend_refused_goes_back_to_executing() {
    let h = fake_host(&["--suspend", "refuse"]);
    let run = launch_fake(&h).await;
    reach(&h, run, RunState::Executing).await;
    assert_eq!(h.suspend(run).await.unwrap().state, RunState::Executing);
    h.shutdown().await;
}

#[tokio::test]
async fn suspend_and_resume_rule1_timeouts() {
    let (_d, log) = log_file();
    let h = fake_host(&["--suspend", "silent", "--log", &log]);
    let run = launch_fake(&h).await;
    reach(&h, run, RunState::Executing).await;
    let r = h.suspend(run).await.unwrap();
    assert_eq!(
        (r.state, r.exit_code),
        (RunState::Terminated, ExitCode::GenericError)
    );
    assert!(r.error.contains("no reply to `suspend`"), "{}", r.error);
    log_has(&log, "abort").await;

    let h = fake_host(&["--resume", "silent"]);
    let run = launch_fake(&h).await;
    reach(&h, run, RunState::Executing).await;
    h.suspend(run).await.unwrap();
    let r = h.resume(run).await.unwrap();
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(r.error.contains("no reply to `resume`"), "{}", r.error);
}

// ---- 6.2.6 abort ----

#[tokio::test]
async fn abort_rule4_manager_abort_is_halted_whatever_the_order() {
    for mode in ["ok", "232-first"] {
        let h = fake_host(&["--abort", mode]);
        let run = launch_fake(&h).await;
        reach(&h, run, RunState::Executing).await;
        let r = h.abort(run).await.unwrap();
        assert_eq!(
            (r.state, r.exit_code),
            (RunState::Terminated, ExitCode::Halted),
            "{mode}"
        );
        assert!(matches!(
            h.abort(run).await,
            Err(ControlError::InvalidState { .. })
        ));
    }
}

#[tokio::test]
async fn abort_rule3_refusal_and_rule1_timeout() {
    let h = fake_host(&["--abort", "refuse"]);
    let run = launch_fake(&h).await;
    reach(&h, run, RunState::Executing).await;
    let r = h.abort(run).await.unwrap();
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(
        r.error.contains("could not abort the script: 434"),
        "{}",
        r.error
    );

    let h = fake_host(&["--abort", "silent"]);
    let run = launch_fake(&h).await;
    reach(&h, run, RunState::Executing).await;
    let r = h.abort(run).await.unwrap();
    assert_eq!(
        (r.state, r.exit_code),
        (RunState::Terminated, ExitCode::GenericError)
    );
    assert!(r.error.contains("no reply to `abort`"), "{}", r.error);
}

#[tokio::test]
async fn lifetime_abort_is_lifetime_exceeded() {
    let h = fake_host(&[]);
    let s = install(&h, "x.fake", "script", false);
    let mut req = request(&s, Some("fake"));
    req.lifetime = smx::host::TimeInterval::from_centis(50).unwrap();
    let run = h.launch(req).unwrap();
    let r = finish(&h, run, 10).await;
    assert_eq!(
        (r.exit_code, r.lifetime.centis()),
        (ExitCode::LifeTimeExceeded, 0)
    );
}

// ---- 6.2.7 status ----

#[tokio::test]
async fn status_rules() {
    let h = fake_host(&[]);
    let run = launch_fake(&h).await;
    reach(&h, run, RunState::Executing).await;
    assert_eq!(h.refresh(run).await.unwrap().state, RunState::Executing);
    h.shutdown().await;

    let (_d, log) = log_file();
    let h = fake_host(&["--status", "refuse", "--log", &log]);
    let run = launch_fake(&h).await;
    reach(&h, run, RunState::Executing).await;
    let r = h.refresh(run).await.unwrap();
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(
        r.error.contains("cannot report the script's status: 431"),
        "{}",
        r.error
    );
    log_has(&log, "abort").await;

    let h = fake_host(&["--status", "silent"]);
    let run = launch_fake(&h).await;
    reach(&h, run, RunState::Executing).await;
    let r = h.refresh(run).await.unwrap();
    assert!(r.error.contains("no reply to `status`"), "{}", r.error);
}

// ---- the run table ----

#[tokio::test]
async fn expire_time_removes_terminated_rows() {
    let h = fake_host(&["--start", "finish"]);
    let s = install(&h, "x.fake", "script", false);
    let mut req = request(&s, Some("fake"));
    req.expire_time = smx::host::TimeInterval::from_centis(30).unwrap();
    let run = h.launch(req).unwrap();
    let r = finish(&h, run, 10).await;
    assert!(r.expire_time.centis() <= 30);
    eventually(5, "the row to expire", || h.run(run).is_none()).await;
}

#[tokio::test]
async fn run_ids_are_unique_and_indexes_count_per_launch_name() {
    let h = fake_host(&["--start", "finish"]);
    let s = install(&h, "x.fake", "script", false);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(h.launch(request(&s, Some("fake"))).unwrap());
    }
    for id in &ids {
        finish(&h, *id, 10).await;
    }
    let rows = h.runs();
    let idx: Vec<u32> = ids
        .iter()
        .map(|i| rows.iter().find(|r| r.run_id == *i).unwrap().index)
        .collect();
    assert_eq!(idx, [1, 2, 3]);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

// ---- the exec runtime with real scripts ----

const SLEEPER: &str = "#!/bin/sh\necho \"result started\" >&3\nsleep 30\necho never\n";

#[tokio::test]
async fn exec_suspend_resume_abort_of_a_sleeping_script() {
    let h = host("");
    let s = install(&h, "sleeper.sh", SLEEPER, true);
    let run = h.launch(request(&s, None)).unwrap();
    let r = reach(&h, run, RunState::Executing).await;
    assert_eq!(r.runtime, "exec");
    let runtime = r.runtime_pid.unwrap();
    eventually(5, "the script to start", || !children(runtime).is_empty()).await;
    let script = children(runtime)[0];

    assert_eq!(h.suspend(run).await.unwrap().state, RunState::Suspended);
    assert_eq!(
        proc_state(script),
        Some('T'),
        "SIGSTOP really stopped the script"
    );
    assert_eq!(h.resume(run).await.unwrap().state, RunState::Executing);
    assert_ne!(proc_state(script), Some('T'));

    let r = h.abort(run).await.unwrap();
    assert_eq!(
        (r.state, r.exit_code),
        (RunState::Terminated, ExitCode::Halted)
    );
    eventually(5, "the script to be gone", || !alive(script)).await;
    h.shutdown().await;
}

#[tokio::test]
async fn exec_lifetime_exceeded_kills_the_script() {
    let h = host("");
    let s = install(&h, "sleeper.sh", SLEEPER, true);
    let mut req = request(&s, None);
    req.lifetime = smx::host::TimeInterval::from_centis(60).unwrap();
    let run = h.launch(req).unwrap();
    let r = finish(&h, run, 10).await;
    assert_eq!(r.exit_code, ExitCode::LifeTimeExceeded);
    assert_eq!(
        r.result.as_str(),
        Some("started"),
        "the intermediate result stays"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn exec_concurrent_runs_share_one_multi_runtime() {
    let h = host("");
    let s = install(
        &h,
        "quick.sh",
        "#!/bin/sh\nsleep 0.3\necho \"ok $1\"\n",
        true,
    );
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let mut r = request(&s, None);
            r.argument = Octets::from(format!("n{i}"));
            h.launch(r).unwrap()
        })
        .collect();
    let mut pids = std::collections::HashSet::new();
    for (i, run) in runs.iter().enumerate() {
        let r = finish(&h, *run, 20).await;
        assert_eq!(
            (r.exit_code, r.result.as_str()),
            (ExitCode::NoError, Some(format!("ok n{i}").as_str()))
        );
        pids.insert(r.runtime_pid.unwrap());
    }
    assert_eq!(pids.len(), 1, "one exec runtime process for all runs");
    assert_eq!(h.stats().runtime_processes.len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn single_threaded_runtime_gets_one_process_per_run() {
    let exec = smx_bin().display().to_string();
    let h = host(&format!(
        "[[runtime]]\nname = \"exec1\"\ncommand = [{exec:?}, \"exec-runtime\"]\nthreading = \"single\"\nprofiles = [\"trusted\"]\n"
    ));
    let s = install(&h, "quick.sh", "#!/bin/sh\nsleep 0.2\n", true);
    let runs: Vec<_> = (0..3)
        .map(|_| h.launch(request(&s, Some("exec1"))).unwrap())
        .collect();
    let mut pids = std::collections::HashSet::new();
    for run in runs {
        let r = finish(&h, run, 20).await;
        assert_eq!(r.exit_code, ExitCode::NoError);
        pids.insert(r.runtime_pid.unwrap());
    }
    assert_eq!(pids.len(), 3);
    for pid in pids {
        eventually(5, "the single-run runtime to exit after its run", || {
            !alive(pid)
        })
        .await;
    }
}

#[tokio::test]
async fn exec_exit_codes_and_error_texts() {
    let h = host("");
    let cases = [
        ("#!/bin/sh\necho fine\n", ExitCode::NoError, ""),
        (
            "#!/bin/sh\necho 'bad thing happened' >&2\nexit 3\n",
            ExitCode::RuntimeError,
            "bad thing happened (exit status 3)",
        ),
        (
            "#!/bin/sh\nexit 64\n",
            ExitCode::InvalidArgument,
            "exit status 64",
        ),
        (
            "#!/bin/sh\nexit 77\n",
            ExitCode::SecurityViolation,
            "exit status 77",
        ),
        (
            "#!/bin/sh\nif then\n",
            ExitCode::LanguageError,
            "Syntax error",
        ),
        (
            "#!/bin/sh\nkill -SEGV $$\n",
            ExitCode::RuntimeError,
            "killed by SIGSEGV",
        ),
        (
            "no shebang, not a binary\n",
            ExitCode::LanguageError,
            "Exec format error",
        ),
    ];
    for (i, (body, code, err)) in cases.into_iter().enumerate() {
        let s = install(&h, &format!("case{i}.sh"), body, true);
        let r = finish(&h, h.launch(request(&s, None)).unwrap(), 10).await;
        assert_eq!(r.exit_code, code, "case {i}: {}", r.error);
        assert!(
            r.error.contains(err),
            "case {i}: {:?} lacks {err:?}",
            r.error
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn exec_argument_results_and_reports_are_binary_safe() {
    let h = host("");
    let body = "#!/bin/sh\n\
        echo \"result first\" >&3\n\
        echo \"event-hex 00FF\" >&3\n\
        echo \"exception careful\" >&3\n\
        cat\n";
    let s = install(&h, "echo.sh", body, true);
    let mut ev = h.subscribe();
    let mut req = request(&s, None);
    let arg: Vec<u8> = vec![0, 1, 2, b'"', b'\\', b'\n', 0xff, b' '];
    req.argument = Octets::new(arg.clone());
    let run = h.launch(req).unwrap();
    let r = finish(&h, run, 10).await;
    assert_eq!(r.exit_code, ExitCode::NoError);
    assert_eq!(
        r.result.as_bytes(),
        &arg[..arg.len()],
        "stdin carried the argument octet for octet"
    );
    let mut kinds = Vec::new();
    while let Ok(e) = ev.try_recv() {
        match e.kind {
            EventKind::Result { result, notify } => {
                kinds.push((result.as_bytes().to_vec(), notify))
            }
            EventKind::Error {
                error,
                notify: true,
            } => assert_eq!(error, "careful"),
            _ => {}
        }
    }
    assert_eq!(kinds[0], (b"first".to_vec(), false));
    assert_eq!(kinds[1], (vec![0, 0xff], true));
    h.shutdown().await;
}

#[tokio::test]
async fn launch_refusals() {
    let h = host("");
    let s = install(&h, "plain.txt", "not executable", false);
    assert!(matches!(
        h.launch(request(&s, None)),
        Err(smx::host::LaunchError::NoRuntime(_))
    ));
    assert!(matches!(
        h.launch(request(&s, Some("nope"))),
        Err(smx::host::LaunchError::UnknownRuntime(_))
    ));
    assert!(matches!(
        h.launch(request("../etc/passwd", None)),
        Err(smx::host::LaunchError::Storage(_))
    ));
    let mut r = request(&s, Some("exec"));
    r.profile = Some("restricted".parse().unwrap());
    assert!(matches!(
        h.launch(r),
        Err(smx::host::LaunchError::ProfileNotAccepted { .. })
    ));
    let mut r = request(&s, Some("exec"));
    r.owner = Some("noc".into());
    assert!(matches!(
        h.launch(r),
        Err(smx::host::LaunchError::OwnerNotMapped(_))
    ));
}

/// Regression: a runtime forked while a script was being written kept a copy of the
/// script's write fd until its exec, so executing the fresh script failed with ETXTBSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_installed_while_runtimes_fork_never_hit_text_file_busy() {
    let exec = smx_bin().display().to_string();
    let h = host(&format!(
        "[[runtime]]\nname = \"exec1\"\ncommand = [{exec:?}, \"exec-runtime\"]\nthreading = \"single\"\nprofiles = [\"trusted\"]\n"
    ));
    let quick = install(&h, "quick.sh", "#!/bin/sh\n", true);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forkers: Vec<_> = (0..3)
        .map(|_| {
            let (h, quick, stop) = (h.clone(), quick.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let run = h.launch(request(&quick, Some("exec1"))).unwrap();
                    h.wait(run).await;
                }
            })
        })
        .collect();
    let mut busy = Vec::new();
    for i in 0..200 {
        let s = install(&h, &format!("fresh{i}.sh"), "#!/bin/sh\nexit 0\n", true);
        let r = finish(&h, h.launch(request(&s, None)).unwrap(), 20).await;
        if r.exit_code != ExitCode::NoError {
            busy.push(r.error);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in forkers {
        let _ = f.await;
    }
    assert!(
        busy.is_empty(),
        "{} of 200 fresh scripts failed: {:?}",
        busy.len(),
        busy.first()
    );
    h.shutdown().await;
}

// ---- the core cannot be wedged (issue: every write bounded, one owner of run state) ----

/// RFC 3179 6.2.3 rule 1 when the runtime stops reading: a `start` with a 65,535-octet
/// Argument (131 KB of hex, twice a pipe buffer) cannot be written. The command timeout
/// bounds the write too: the run ends genericError, the connection closes, and an abort
/// sent meanwhile and the host's shutdown both end (they waited for the writer forever).
#[tokio::test]
async fn a_runtime_that_stops_reading_cannot_wedge_start_abort_or_shutdown() {
    let host = fake_host(&["--hello", "ok-then-deaf"]);
    let s = install(&host, "x.fake", "script", false);
    let mut big = request(&s, Some("fake"));
    big.argument = Octets::new(vec![0xA5; 65535]);
    let run = host.launch(big).unwrap();
    let r = finish(&host, run, 5).await;
    assert_eq!(r.exit_code, ExitCode::GenericError, "{r:?}");
    assert!(r.error.contains("did not read `start`"), "{}", r.error);

    // The same with an abort waiting behind the stuck write.
    let mut big = request(&s, Some("fake"));
    big.argument = Octets::new(vec![0x5A; 65535]);
    let run = host.launch(big).unwrap();
    eventually(5, "the start to be on its way", || {
        host.run(run).is_some_and(|r| r.runtime_pid.is_some())
    })
    .await;
    let aborted = tokio::time::timeout(Duration::from_secs(5), host.abort(run)).await;
    assert!(aborted.is_ok(), "abort returned within the command timeout");
    let r = finish(&host, run, 10).await;
    assert!(r.is_terminated(), "{r:?}");
    tokio::time::timeout(Duration::from_secs(10), host.shutdown())
        .await
        .expect("shutdown within 10 s");
}

/// A row evicted by `max_finished_runs` (here 0: rows go as soon as they settle) leaves
/// its connection, so its single-threaded runtime is closed; a `wait` already pending
/// gets the final row.
#[tokio::test]
async fn eviction_by_max_finished_runs_closes_the_runtime() {
    let mut c = config(&format!(
        "{}threading = \"single\"\n",
        fake_runtime("fake", &["--start", "finish"])
    ));
    c.host.max_finished_runs = 0;
    let host = smx::host::Host::new(c, smx::storage::Storage::temporary().unwrap());
    for _ in 0..3 {
        let run = launch_fake(&host).await;
        let r = tokio::time::timeout(Duration::from_secs(5), host.wait(run))
            .await
            .expect("run ends")
            .expect("a pending wait gets the final row");
        assert_eq!(
            (r.exit_code, r.result.as_bytes()),
            (ExitCode::NoError, &b"done"[..])
        );
        assert!(host.run(run).is_none(), "evicted");
    }
    eventually(5, "every runtime process to be closed", || {
        host.stats().runtime_processes.is_empty()
    })
    .await;
    host.shutdown().await;
}

/// RFC 3179 section 3 / issue "isolation": owners never share a runtime process, even when
/// mapped to the same OS profile, unless that profile says `share_runtimes`; one owner's
/// runs do share one (a multi-threaded runtime serves many runs).
#[tokio::test]
async fn runtime_processes_are_per_owner_unless_the_profile_shares_them() {
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    for share in [false, true] {
        let host = host(&format!(
            "[[os_profile]]\nname = \"self\"\nuser = {me:?}\nshare_runtimes = {share}\n\
             [[owner]]\nname = \"*\"\nos_profile = \"self\"\nruntime_profile = \"trusted\"\n"
        ));
        let s = install(&host, "sleep.sh", "#!/bin/sh\nsleep 30\n", true);
        let mut pids = Vec::new();
        for owner in ["alice", "bob", "alice"] {
            let mut r = request(&s, None);
            r.owner = Some(owner.into());
            let run = host.launch(r).unwrap();
            eventually(10, "executing", || {
                host.run(run)
                    .is_some_and(|r| r.state == RunState::Executing)
            })
            .await;
            pids.push(host.run(run).unwrap().runtime_pid.unwrap());
        }
        assert_eq!(pids[0], pids[2], "one owner's runs share a process");
        if share {
            assert_eq!(pids[0], pids[1], "share_runtimes = true: shared");
        } else {
            assert_ne!(pids[0], pids[1], "two owners never share a runtime process");
        }
        host.shutdown().await;
    }
}

/// Admission (issue "scale"): a burst of 2,000 launches on a runtime that answers each
/// `start` only after 2 ms, in turn, ends with every run executing. Written all at once,
/// the last of them would wait 4 s for its 231 and miss the 1 s command timeout (RFC 3179
/// 6.2.3 rule 1); the host keeps at most a window of starts in flight and the rest wait in
/// `initializing`, each timed from when it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_launches_on_a_slow_runtime_fails_none() {
    let mut c = config(&fake_runtime("fake", &["--start", "slow=0.002"]));
    c.host.max_active_runs = 4000;
    let host = smx::host::Host::new(c, smx::storage::Storage::temporary().unwrap());
    let s = install(&host, "x.fake", "script", false);
    let runs: Vec<_> = (0..2000)
        .map(|_| host.launch(request(&s, Some("fake"))).unwrap())
        .collect();
    eventually(60, "every run executing", || {
        runs.iter().all(|r| {
            host.run(*r)
                .is_some_and(|r| r.state == RunState::Executing || r.is_terminated())
        })
    })
    .await;
    let failed: Vec<_> = runs
        .iter()
        .filter_map(|r| host.run(*r))
        .filter(|r| r.is_terminated())
        .map(|r| r.error)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    host.shutdown().await;
}

// ---- scale: more than one runtime process per pool key ----

/// RFC 3179 6.2.1 reuses a running runtime; a full one (at `max_runs_per_runtime`) is a
/// reason to start another process of the same runtime, OS profile and owner, never to
/// fail or hold the run. A run launched once there is room again goes to a process that
/// has room rather than to a third one.
#[tokio::test]
async fn a_full_runtime_process_is_a_reason_to_start_another() {
    let mut c = config("");
    c.host.max_runs_per_runtime = std::num::NonZeroUsize::new(2).unwrap();
    let host = smx::host::Host::new(c, smx::storage::Storage::temporary().unwrap());
    let s = install(&host, "sleep.sh", "#!/bin/sh\nexec sleep 600\n", true);
    let runs: Vec<_> = (0..3)
        .map(|_| host.launch(request(&s, Some("exec"))).unwrap())
        .collect();
    let mut pids = Vec::new();
    for r in &runs {
        let info = reach(&host, *r, RunState::Executing).await;
        pids.push(info.runtime_pid.expect("a runtime pid"));
    }
    let mut distinct = pids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "3 runs at 2 per process: {pids:?}");
    let mut per: Vec<usize> = host
        .stats()
        .runtime_processes
        .iter()
        .map(|p| p.runs)
        .collect();
    per.sort();
    assert_eq!(per, [1, 2], "{:?}", host.stats().runtime_processes);

    // Room again in the first process: the next run goes there, no third process.
    let full = pids
        .iter()
        .copied()
        .find(|p| pids.iter().filter(|q| *q == p).count() == 2)
        .unwrap();
    let leaving = runs[pids.iter().position(|p| *p == full).unwrap()];
    host.abort(leaving).await.unwrap();
    finish(&host, leaving, 10).await;
    let next = host.launch(request(&s, Some("exec"))).unwrap();
    let info = reach(&host, next, RunState::Executing).await;
    assert!(
        distinct.contains(&info.runtime_pid.unwrap()),
        "{:?} not one of {distinct:?}",
        info.runtime_pid
    );
    assert_eq!(host.stats().runtime_processes.len(), 2);
    assert_eq!(host.stats().runtimes_started, 2);
    host.shutdown().await;
}
