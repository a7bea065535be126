//! Process containment (issue 11, README "Process containment"): every process a run
//! creates ends with the run, double-forked and `setsid` children included, however the run
//! ends; and a run's result is what its script produced, whatever it left behind.
//!
//! Scripts mark the processes they leave with a unique argv (`exec -a smx-mark-...`); the
//! tests look for the mark in /proc. RFC 3165 smRunState/smRunExitCode, RFC 3179 6.1.2-6.1.6.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use smx::proto::{ExitCode, RunState};

macro_rules! need_root {
    ($why:expr) => {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: {} (run as root, or leave out --include-ignored)",
            $why
        );
    };
}

const CGROUPS: &str = "it needs a writable cgroup v2 hierarchy, which here only root has";

/// A fresh mark: no process of another test or an earlier run carries it.
fn mark() -> String {
    let n: u64 = rand::random();
    format!("smx-mark-{n:016x}")
}

/// The pids whose argv[0] starts with `mark`.
fn marked(mark: &str) -> Vec<i32> {
    smx::contain::processes()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with(mark.as_bytes()))
        })
        .collect()
}

/// A script that leaves three marked processes: one in its process group, one in a new
/// session whose parent exited (a `setsid` double fork), and one that holds its stdout.
/// Then it reports `ready` and, with `end = true`, exits at once, else sleeps.
fn leaver(mark: &str, end: bool) -> String {
    format!(
        "#!/bin/bash\n\
         (exec -a {mark}-group sleep 1000) >/dev/null 2>&1 &\n\
         (setsid bash -c 'exec -a {mark}-setsid sleep 1000' </dev/null >/dev/null 2>&1 &)\n\
         (exec -a {mark}-stdout sleep 1000) &\n\
         while [ \"$(pgrep -fc '^{mark}')\" -lt 3 ]; do sleep 0.02; done\n\
         echo result ready >&3\n\
         {}\n",
        if end {
            "echo done; exit 0"
        } else {
            "exec sleep 1000"
        }
    )
}

async fn wait_marked(mark: &str, n: usize) {
    eventually(10, &format!("{n} processes marked {mark}"), || {
        marked(mark).len() >= n
    })
    .await;
}

/// None is left: waits a little for SIGKILLed processes to be gone from /proc.
async fn none_left(mark: &str, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = marked(mark);
        let alive: Vec<_> = left
            .iter()
            .filter(|&&p| smx::process::proc_state(p).is_some_and(|s| s != 'Z'))
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {after}, processes of the script survive: {:?}",
            alive
                .iter()
                .map(|&&p| (
                    p,
                    std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_normal_end_ends_everything_the_script_left() {
    let h = host("");
    let m = mark();
    let s = install(&h, "leaver.sh", &leaver(&m, true), true);
    let run = h.launch(request(&s, Some("exec"))).unwrap();
    let info = finish(&h, run, 20).await;
    assert_eq!(info.exit_code, ExitCode::NoError, "{}", info.error);
    // A background child held stdout open: the result is what the script printed, and
    // the run did not wait for that child's EOF.
    assert_eq!(info.result.as_bytes(), b"done");
    none_left(&m, "a normal end").await;
    h.shutdown().await;
}

#[tokio::test]
async fn abort_and_lifetime_end_everything_the_script_left() {
    let h = host("");
    let m = mark();
    let s = install(&h, "leaver.sh", &leaver(&m, false), true);
    let run = h.launch(request(&s, Some("exec"))).unwrap();
    wait_marked(&m, 3).await;
    h.abort(run).await.unwrap();
    let info = finish(&h, run, 20).await;
    assert_eq!(info.exit_code, ExitCode::Halted);
    none_left(&m, "abort").await;

    let m = mark();
    let s = install(&h, "leaver2.sh", &leaver(&m, false), true);
    let mut req = request(&s, Some("exec"));
    req.lifetime = secs(2);
    let run = h.launch(req).unwrap();
    wait_marked(&m, 3).await;
    let info = finish(&h, run, 20).await;
    assert_eq!(info.exit_code, ExitCode::LifeTimeExceeded);
    none_left(&m, "the lifetime ran out").await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_result_is_not_held_up_by_a_background_child() {
    let h = host("");
    let m = mark();
    let s = install(
        &h,
        "bg.sh",
        &format!("#!/bin/bash\necho hello\n(exec -a {m} sleep 1000) &\nexit 0\n"),
        true,
    );
    let run = h.launch(request(&s, Some("exec"))).unwrap();
    let info = finish(&h, run, 20).await;
    assert_eq!(info.exit_code, ExitCode::NoError, "{}", info.error);
    assert_eq!(info.result.as_bytes(), b"hello");
    none_left(&m, "the script exited").await;
    h.shutdown().await;
}

#[tokio::test]
async fn an_unterminated_report_cut_by_a_kill_is_not_a_result() {
    let h = host("");
    let s = install(
        &h,
        "cut.sh",
        "#!/bin/bash\necho 'result good' >&3\nprintf 'result partial' >&3\nexec sleep 1000\n",
        true,
    );
    let run = h.launch(request(&s, Some("exec"))).unwrap();
    eventually(10, "the first result", || {
        h.run(run).is_some_and(|r| r.result.as_bytes() == b"good")
    })
    .await;
    h.abort(run).await.unwrap();
    let info = finish(&h, run, 20).await;
    assert_eq!(info.exit_code, ExitCode::Halted);
    assert_eq!(
        info.result.as_bytes(),
        b"good",
        "the cut line is not the result"
    );
    assert!(
        info.error.contains("output was cut"),
        "smRunError says so: {:?}",
        info.error
    );
    // A script that ends by itself after an unterminated last line has reported it whole.
    let s = install(
        &h,
        "whole.sh",
        "#!/bin/sh\nprintf 'result last' >&3\nexit 0\n",
        true,
    );
    let run = h.launch(request(&s, Some("exec"))).unwrap();
    let info = finish(&h, run, 20).await;
    assert_eq!(info.exit_code, ExitCode::NoError);
    assert_eq!(info.result.as_bytes(), b"last");
    h.shutdown().await;
}

/// The cgroup v2 directory a process is in, if any.
fn cgroup_of(pid: i32) -> Option<PathBuf> {
    smx::contain::cgroup_of(&pid.to_string())
}

#[tokio::test]
#[ignore = "needs root"]
async fn suspend_freezes_the_whole_tree_setsid_children_included() {
    need_root!(CGROUPS);
    let h = host("");
    let m = mark();
    let s = install(&h, "leaver.sh", &leaver(&m, false), true);
    let run = h.launch(request(&s, Some("exec"))).unwrap();
    wait_marked(&m, 3).await;
    let escaped = *marked(&format!("{m}-setsid"))
        .first()
        .expect("setsid child");
    let cg = cgroup_of(escaped).expect("the setsid child is in a cgroup v2");
    assert!(
        cg.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("run-"),
        "the setsid child is in its run's cgroup, not {}",
        cg.display()
    );
    h.suspend(run).await.unwrap();
    reach(&h, run, RunState::Suspended).await;
    let events = cg.join("cgroup.events");
    eventually(10, "the run's cgroup to be frozen", || {
        std::fs::read_to_string(&events).is_ok_and(|e| e.lines().any(|l| l == "frozen 1"))
    })
    .await;
    h.resume(run).await.unwrap();
    reach(&h, run, RunState::Executing).await;
    assert!(
        std::fs::read_to_string(&events)
            .unwrap()
            .lines()
            .any(|l| l == "frozen 0")
    );
    h.abort(run).await.unwrap();
    finish(&h, run, 20).await;
    none_left(&m, "abort of a resumed run").await;
    assert!(!cg.exists(), "the run's cgroup is removed");
    h.shutdown().await;
}

/// `smx run SCRIPT` (an in-process host) started in the background.
fn smx_run(script: &Path, extra: &[&str]) -> Child {
    Command::new(smx_bin())
        .arg("run")
        .args(extra)
        .arg(script)
        .env_remove("SMX_CONFIG")
        .env_remove("SMX_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smx run")
}

fn script_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The pids of the children of `pid` that run `smx exec-runtime`.
fn exec_runtimes_of(pid: u32) -> Vec<i32> {
    children(pid)
        .into_iter()
        .map(|c| c as i32)
        .filter(|c| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .is_ok_and(|l| l.split(|&b| b == 0).any(|a| a == b"exec-runtime"))
        })
        .collect()
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

#[tokio::test]
async fn sigterm_and_sighup_to_smx_run_abort_like_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        let m = mark();
        let script = script_file(dir.path(), "leaver.sh", &leaver(&m, false));
        let child = smx_run(&script, &["--json"]);
        wait_marked(&m, 3).await;
        // The storage `smx run` made for itself, found by the script's path.
        let pid = *marked(&format!("{m}-group")).first().unwrap();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let script_path = env
            .split(|&b| b == 0)
            .find_map(|e| e.strip_prefix(b"SMX_SCRIPT="))
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            .expect("SMX_SCRIPT");
        signal(child.id() as i32, sig);
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status.code(), Some(12), "{sig}: exit 12 (halted)");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{sig}: JSON on stdout ({e}): {:?}", out.stdout));
        assert_eq!(json["exit_code"], "halted");
        none_left(&m, &format!("{sig} to smx run")).await;
        assert!(
            !script_path.exists(),
            "{sig}: the temporary storage is removed ({})",
            script_path.display()
        );
    }
}

#[tokio::test]
#[ignore = "needs root"]
async fn kill_9_of_the_exec_runtime_ends_its_scripts_and_theirs() {
    need_root!(CGROUPS);
    let dir = tempfile::tempdir().unwrap();
    let m = mark();
    let script = script_file(dir.path(), "leaver.sh", &leaver(&m, false));
    let child = smx_run(&script, &["--json"]);
    wait_marked(&m, 3).await;
    let rts = exec_runtimes_of(child.id());
    assert_eq!(rts.len(), 1, "one exec runtime under smx run");
    signal(rts[0], nix::sys::signal::Signal::SIGKILL);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    // The run ends (genericError or runtimeError: its runtime died), and nothing is left.
    assert_ne!(out.status.code(), Some(0));
    none_left(&m, "kill -9 of the exec runtime").await;
}

/// A daemon on a socket in `dir` with the invoking user mapped to run as itself.
fn daemon(dir: &Path) -> Child {
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    let config = dir.join("smx.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nstorage = {:?}\n\n[[runtime]]\nname = \"exec\"\ncommand = [{:?}, \"exec-runtime\", \"--profiles\", \"trusted\", \"--grace\", \"1s\"]\nextensions = [\"sh\"]\nprofiles = [\"trusted\"]\n\n[[os_profile]]\nname = \"self\"\nuser = {me:?}\n\n[[owner]]\nname = {me:?}\nos_profile = \"self\"\nruntime_profile = \"trusted\"\n",
            dir.join("storage").display().to_string(),
            smx_bin().display().to_string(),
        ),
    )
    .unwrap();
    let socket = dir.join("smx.sock");
    let _ = std::fs::remove_file(&socket);
    let mut child = Command::new(smx_bin())
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smx daemon");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "smx daemon exited at start"
        );
        assert!(Instant::now() < deadline, "no daemon socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// `smx run --daemon --json SCRIPT` against the daemon in `dir`, its stderr read in the
/// background until it says the run was launched.
fn smx_run_daemon(dir: &Path, script: &Path) -> Child {
    Command::new(smx_bin())
        .args(["run", "--daemon", "--json", "--socket"])
        .arg(dir.join("smx.sock"))
        .arg(script)
        .env_remove("SMX_CONFIG")
        .env_remove("SMX_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smx run --daemon")
}

#[tokio::test]
#[ignore = "needs root"]
async fn kill_9_of_the_daemon_then_restart_ends_what_it_left() {
    need_root!(CGROUPS);
    let dir = tempfile::tempdir().unwrap();
    let m = mark();
    let script = script_file(dir.path(), "leaver.sh", &leaver(&m, false));
    let mut d = daemon(dir.path());
    let mut client = smx_run_daemon(dir.path(), &script);
    wait_marked(&m, 3).await;
    signal(d.id() as i32, nix::sys::signal::Signal::SIGKILL);
    d.wait().unwrap();
    let _ = client.kill();
    let _ = client.wait();
    // The runtime and the script die with the daemon (parent-death signals); what the
    // script left in other sessions waits in the old cgroups until a daemon starts again.
    let mut d = daemon(dir.path());
    none_left(&m, "kill -9 of the daemon and a restart").await;
    signal(d.id() as i32, nix::sys::signal::Signal::SIGTERM);
    d.wait().unwrap();
}

#[tokio::test]
async fn sigterm_to_smx_run_daemon_aborts_the_run_in_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let m = mark();
    let script = script_file(dir.path(), "leaver.sh", &leaver(&m, false));
    let mut d = daemon(dir.path());
    let mut client = smx_run_daemon(dir.path(), &script);
    let stderr = client.stderr.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
    wait_marked(&m, 3).await;
    signal(client.id() as i32, nix::sys::signal::Signal::SIGTERM);
    let out = tokio::task::spawn_blocking(move || client.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "exit 12 (halted)");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["exit_code"], "halted");
    none_left(&m, "SIGTERM to smx run --daemon").await;
    signal(d.id() as i32, nix::sys::signal::Signal::SIGTERM);
    d.wait().unwrap();
}

/// A script's stdout at its exit is its result (RFC 3165 smRunResult), however soon after
/// the output the exit comes: the exit drain must read the pipe itself, not wait for the
/// reactor to notice it is readable. 400 scripts that print and exit at once, 50 at a
/// time; every result is there (the old drain lost some under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_printed_just_before_exit_is_never_lost() {
    use smx::proto::Octets;
    let h = host("");
    let s = install(&h, "at-exit.sh", "#!/bin/sh\necho \"r$1\"\n", true);
    let mut lost = Vec::new();
    for batch in 0..8 {
        let runs: Vec<_> = (0..50)
            .map(|i| {
                let mut r = request(&s, None);
                r.argument = Octets::from(format!("{batch}-{i}"));
                (format!("r{batch}-{i}"), h.launch(r).unwrap())
            })
            .collect();
        for (want, run) in runs {
            let r = finish(&h, run, 30).await;
            assert_eq!(r.exit_code, ExitCode::NoError, "{}", r.error);
            if r.result.as_str() != Some(want.as_str()) {
                lost.push((want, r.result.as_str().map(str::to_owned)));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} results lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    h.shutdown().await;
}

/// A script whose `setsid` double-forked child moves itself from the run's cgroup up into
/// the runtime's (delegated to the same user, so the kernel allows it) or into a cgroup it
/// makes there, and clears its environment; the script prints where the child went. The
/// child must still end with its run (RFC 3165 smRunState `terminated`), while the
/// runtime lives on.
fn cgroup_escaper(mark: &str, how: &str) -> String {
    format!(
        "#!/bin/bash\n\
         mnt=$(grep -m1 ' - cgroup2 ' /proc/self/mountinfo | cut -d' ' -f5)\n\
         cg=$(sed -n 's/^0:://p' /proc/self/cgroup)\n\
         up=\"$mnt${{cg%/*}}\"\n\
         {how}\n\
         (setsid bash -c \"echo \\$\\$ > '$dest/cgroup.procs' && exec env -i bash -c 'exec -a {mark} sleep 1000'\" </dev/null >/dev/null 2>&1 &)\n\
         while ! pgrep -f '^{mark}' >/dev/null; do sleep 0.02; done\n\
         sed -n 's/^0:://p' /proc/$(pgrep -f '^{mark}')/cgroup\n"
    )
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_child_that_moves_out_of_its_run_cgroup_still_ends_with_the_run() {
    need_root!(CGROUPS);
    let h = host("");
    for (name, how) in [
        ("up.sh", "dest=$up"),
        ("sibling.sh", "dest=$up/evil-$$; mkdir \"$dest\""),
    ] {
        let m = mark();
        let s = install(&h, name, &cgroup_escaper(&m, how), true);
        let run = h.launch(request(&s, Some("exec"))).unwrap();
        let info = finish(&h, run, 20).await;
        assert_eq!(info.exit_code, ExitCode::NoError, "{name}: {}", info.error);
        // The script printed the cgroup its child had moved to.
        let moved = String::from_utf8_lossy(info.result.as_bytes()).into_owned();
        let last = moved.rsplit('/').next().unwrap_or_default();
        assert!(
            !moved.is_empty() && !last.starts_with("run-"),
            "{name}: the child left its run's cgroup: {moved:?}"
        );
        none_left(&m, &format!("{name}: a normal end, the runtime still up")).await;
    }
    h.shutdown().await;
}

/// A daemon whose socket file went (a tmp cleaner, an operator's `rm`) is still alive, and
/// its runs with it: a second daemon started on the same path must not take it for a dead
/// predecessor and kill its runtimes and scripts through their cgroups; it refuses to start.
#[tokio::test]
#[ignore = "needs root"]
async fn a_second_daemon_on_the_same_socket_leaves_the_live_first_ones_runs_alone() {
    need_root!(CGROUPS);
    let dir = tempfile::tempdir().unwrap();
    let m = mark();
    let script = script_file(
        dir.path(),
        "sleeper.sh",
        &format!("#!/bin/bash\nexec -a {m} sleep 1000\n"),
    );
    let mut first = daemon(dir.path());
    let mut client = smx_run_daemon(dir.path(), &script);
    wait_marked(&m, 1).await;
    std::fs::remove_file(dir.path().join("smx.sock")).unwrap();
    let config = dir.path().join("smx.toml");
    let second = Command::new(smx_bin())
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("smx.sock"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second smx daemon");
    let out = tokio::task::spawn_blocking(move || second.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let alive = marked(&m)
        .into_iter()
        .filter(|&p| smx::process::proc_state(p).is_some_and(|s| s != 'Z'))
        .count();
    let _ = client.kill();
    let _ = client.wait();
    signal(first.id() as i32, nix::sys::signal::Signal::SIGTERM);
    first.wait().unwrap();
    assert_eq!(
        alive, 1,
        "the first daemon's script survives a second daemon's start"
    );
    assert!(!out.status.success(), "the second daemon refuses to start");
    assert!(stderr.contains("still running"), "it says why: {stderr}");
    none_left(&m, "the first daemon's SIGTERM").await;
}

/// An exec runtime killed outright leaves its `smx-exec-<pid>` cgroup tree, and in it
/// whatever had escaped its runs' process groups. The next exec runtime to start in the
/// same cgroup ends those processes and removes the tree; a live runtime's tree is not
/// touched (RFC 3179 section 3: a script's processes end with its run).
#[test]
#[ignore = "needs root"]
fn an_exec_runtime_ends_what_a_dead_one_left_in_its_cgroups() {
    need_root!(CGROUPS);
    let own = smx::contain::own_cgroup().expect("a cgroup v2 hierarchy");
    let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dead = own.join(format!("smx-exec-{}", pid_max + 1));
    let run_cg = dead.join("run-1");
    std::fs::create_dir_all(&run_cg).expect("cgroups writable");
    let m = mark();
    let mut leftover = Command::new("bash")
        .args(["-c", &format!("exec -a {m}-left sleep 1000")])
        .spawn()
        .unwrap();
    std::fs::write(run_cg.join("cgroup.procs"), leftover.id().to_string()).unwrap();
    let mut rt = Command::new(smx_bin())
        .arg("exec-runtime")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = rt.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"hello 1\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(rt.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("211 1"), "{line}");
    let mine = own.join(format!("smx-exec-{}", rt.id()));
    let t = Instant::now();
    while (dead.exists() || !marked(&m).is_empty()) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = leftover.try_wait();
    assert!(!dead.exists(), "{} removed", dead.display());
    assert!(marked(&m).is_empty(), "the leftover process was ended");
    assert!(
        mine.is_dir(),
        "the live runtime's own {} stays",
        mine.display()
    );
    drop(stdin);
    let _ = rt.wait();
    let _ = leftover.wait();
}

/// A daemon killed with SIGKILL and never started again on its socket path leaves an empty
/// `smx-daemon-*` cgroup base; the next daemon (on any socket) removes such bases once no
/// live daemon holds them and they are older than a few seconds, and leaves alone one
/// that a live process holds and one just made.
#[tokio::test]
#[ignore = "needs root"]
async fn a_daemon_removes_empty_bases_that_dead_daemons_left() {
    use std::os::fd::AsRawFd;
    need_root!(CGROUPS);
    let own = smx::contain::own_cgroup().expect("a cgroup v2 hierarchy");
    let tag: u64 = rand::random();
    let make = |what: &str, aged: bool| {
        let p = own.join(format!("smx-daemon-test-{what}-{tag:016x}"));
        std::fs::create_dir_all(p.join("rt-1")).expect("cgroups writable");
        if aged {
            let ok = Command::new("touch")
                .args(["-d", "1 hour ago"])
                .arg(&p)
                .status()
                .unwrap()
                .success();
            assert!(ok, "touch -d {}", p.display());
        }
        p
    };
    let abandoned = make("abandoned", true);
    let fresh = make("fresh", false);
    let held = make("held", true);
    let lock = std::fs::File::open(&held).unwrap();
    // SAFETY: flock(2) on an fd we own.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    let t = Instant::now();
    while abandoned.exists() && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (abandoned_gone, fresh_kept, held_kept) =
        (!abandoned.exists(), fresh.exists(), held.exists());
    signal(d.id() as i32, nix::sys::signal::Signal::SIGTERM);
    d.wait().unwrap();
    drop(lock);
    for p in [&fresh, &held] {
        let _ = std::fs::remove_dir(p.join("rt-1"));
        let _ = std::fs::remove_dir(p);
    }
    assert!(abandoned_gone, "{} removed", abandoned.display());
    assert!(fresh_kept, "a base made a moment ago is kept");
    assert!(held_kept, "a base a live process holds is kept");
}
