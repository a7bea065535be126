//! `smx suspend` (smRunControl suspend, RFC 3179 6.2.4) says when the runtime could not
//! suspend the run (`434`: the run goes back to executing, README "How smx reads RFC
//! 3179") and exits non-zero, instead of printing "executing" and exiting 0 as if all went
//! well.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use smx::control::proto::LaunchParams;
use smx::host::TimeInterval;
use smx::proto::{Octets, RunId, RunState};

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("current user has a name")
        .name
}

/// `smx daemon` with two fake runtimes: one that suspends, one that answers 434.
struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("smx.sock");
        let config = dir.path().join("smx.toml");
        let fake = |name: &str, suspend: &str, resume: &str| {
            format!(
                "[[runtime]]\nname = {name:?}\ncommand = [\"python3\", {:?}, \"--suspend\", {suspend:?}, \"--resume\", {resume:?}]\n\
                 extensions = []\nprofiles = [\"trusted\"]\n",
                fixture("fake_runtime.py")
            )
        };
        std::fs::write(
            &config,
            format!(
                "[host]\nstorage = {:?}\nhello_timeout = \"10s\"\ncommand_timeout = \"5s\"\n\
                 {}{}{}\
                 [[os_profile]]\nname = \"self\"\nuser = {me:?}\n\
                 [[owner]]\nname = {me:?}\nos_profile = \"self\"\nruntime_profile = \"trusted\"\n",
                dir.path().join("storage").display().to_string(),
                fake("suspends", "ok", "ok"),
                fake("refuses", "refuse", "ok"),
                fake("stays-suspended", "ok", "refuse"),
                me = me(),
            ),
        )
        .unwrap();
        let child = Command::new(smx_bin())
            .args(["daemon", "--config"])
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smx daemon");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "no daemon socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon {
            child,
            socket,
            _dir: dir,
        }
    }

    async fn executing_run(&self, runtime: &str) -> RunId {
        let mut c = smx::client::Client::connect(&self.socket).await.unwrap();
        let script = c.install(&me(), "x", b"", false).await.unwrap();
        let run = c
            .launch(LaunchParams {
                owner: me(),
                name: None,
                script,
                runtime: Some(runtime.into()),
                argument: Octets::default(),
                lifetime: TimeInterval::ONE_HOUR,
                expire_time: TimeInterval::ONE_HOUR,
            })
            .await
            .unwrap()
            .run_id;
        let deadline = Instant::now() + Duration::from_secs(15);
        while c.run(run).await.unwrap().state != RunState::Executing {
            assert!(Instant::now() < deadline, "run {run} never executing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        run
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn smx_suspend(socket: &Path, run: RunId) -> std::process::Output {
    smx_control("suspend", socket, run)
}

fn smx_control(verb: &str, socket: &Path, run: RunId) -> std::process::Output {
    Command::new(smx_bin())
        .args([verb, &run.to_string(), "--socket"])
        .arg(socket)
        .env_remove("SMX_SOCKET")
        .output()
        .expect("smx suspend")
}

#[tokio::test]
#[ignore = "needs root: every daemon owner maps to an OS profile, whose identity change (setgroups) only root may make"]
async fn smx_suspend_says_when_the_runtime_answers_434() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (run as root, or leave out --include-ignored)"
    );
    let d = Daemon::start();

    let run = d.executing_run("suspends").await;
    let o = smx_suspend(&d.socket, run);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("run {run}: suspended\n")
    );

    let run = d.executing_run("refuses").await;
    let o = smx_suspend(&d.socket, run);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        err.contains(&format!("run {run}"))
            && err.contains("could not suspend")
            && err.contains("434")
            && err.contains("executing"),
        "{err}"
    );
}

/// RFC 3179 6.2.5: a runtime that answers `resume` with 434 leaves the run suspended;
/// `smx resume` says so and exits 1, as `smx suspend` does for its 434.
#[tokio::test]
#[ignore = "needs root: every daemon owner maps to an OS profile, whose identity change (setgroups) only root may make"]
async fn smx_resume_says_when_the_runtime_answers_434() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (run as root, or leave out --include-ignored)"
    );
    let d = Daemon::start();
    let run = d.executing_run("stays-suspended").await;
    let o = smx_suspend(&d.socket, run);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = smx_control("resume", &d.socket, run);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        err.contains(&format!("run {run}"))
            && err.contains("could not resume")
            && err.contains("434")
            && err.contains("suspended"),
        "{err}"
    );
}
