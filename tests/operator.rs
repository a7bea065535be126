//! smx as an operator meets it on a fresh machine: the daemon on the embedded default, a
//! relative socket, SIGTERM, a daemon and `smx run` that are not root, and temporary files
//! that must not outlive the processes that made them.
//!
//! Where a test is about an unprivileged user and the tests run as root, it runs smx as
//! `nobody` (through setpriv, with nobody's own supplementary groups, as a login would
//! give them); the ones that can only be set up that way are `#[ignore = "needs root"]`.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{children, repo, smx_bin};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! need_root {
    ($why:expr) => {
        assert!(
            is_root(),
            "this test needs root: {} (run as root, or leave out --include-ignored)",
            $why
        )
    };
}

/// The user the unprivileged side runs as: `nobody` under root, else the current user.
fn unprivileged_user() -> nix::unistd::User {
    let u = if is_root() {
        nix::unistd::User::from_name("nobody").unwrap()
    } else {
        nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap()
    };
    u.expect("the user exists")
}

/// `program args` as [`unprivileged_user`], in `dir`, with a clean smx environment and
/// HOME and XDG_RUNTIME_DIR in `dir` (so that the daemon's default socket and storage are
/// there, as they would be in a user's own home).
fn unprivileged(program: &Path, dir: &Path) -> Command {
    let mut c = if is_root() {
        let u = unprivileged_user();
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    c.current_dir(dir)
        .env("HOME", dir)
        .env("XDG_RUNTIME_DIR", dir)
        .env_remove("SMX_SOCKET")
        .env_remove("SMX_CONFIG")
        .env_remove("SMX_RUNTIMES")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// A temporary directory the unprivileged user owns, holding copies of the example
/// scripts and a copy of the smx binary (the build directory need not be readable by
/// `nobody`). The binary is copied with the runtimes next to it (`../lib/smx/runtimes`),
/// so `{runtimes}` points inside too.
struct Sandbox {
    dir: tempfile::TempDir,
    smx: PathBuf,
}

fn sandbox() -> Sandbox {
    let dir = tempfile::Builder::new()
        .prefix("smx-operator-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let u = unprivileged_user();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let smx = bin.join("smx");
    std::fs::copy(smx_bin(), &smx).unwrap();
    let runtimes = dir.path().join("lib/smx/runtimes/python");
    std::fs::create_dir_all(&runtimes).unwrap();
    std::fs::copy(
        repo().join("runtimes/python/smx_runtime.py"),
        runtimes.join("smx_runtime.py"),
    )
    .unwrap();
    for s in ["sysinfo.sh", "loadavg.py"] {
        std::fs::copy(repo().join("scripts").join(s), dir.path().join(s)).unwrap();
    }
    std::fs::write(
        dir.path().join("sleep.sh"),
        "#!/bin/sh\necho 'result started' >&3\nsleep 30\n",
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path().join("sleep.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let o = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", u.uid, u.gid))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "chown: {}", text(&o.stderr));
    Sandbox { dir, smx }
}

/// A daemon in the background, killed when dropped.
struct Bg(Option<Child>);

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Bg {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.as_ref().unwrap().id() as i32)
    }

    /// SIGTERM, then how long the daemon took to exit and how it exited.
    fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        let t = Instant::now();
        let mut c = self.0.take().unwrap();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return (t.elapsed(), st);
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                panic!("the daemon did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The README's promise: on a fresh machine, with no config file, `smx daemon & smx run
/// --daemon SCRIPT` runs the script as the user who asked (as `smx run` does); other
/// owners still need a mapping. Along the way: `smx ps` and `smx status` show no exit
/// code for a run that has not ended, and the daemon exits promptly on SIGTERM.
#[test]
fn daemon_on_the_embedded_default_runs_the_callers_scripts() {
    let sb = sandbox();
    let dir = sb.dir.path();
    let me = unprivileged_user().name;
    // Literally as the README writes it (the client waits for the socket to appear).
    let o = unprivileged(Path::new("sh"), dir)
        .arg("-c")
        .arg(format!(
            "{smx} daemon 2>daemon.log & {smx} run --daemon --argument 1 sysinfo.sh; rc=$?; kill $!; wait $!; exit $rc",
            smx = sb.smx.display()
        ))
        .output()
        .unwrap();
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr: {}\ndaemon: {log}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).starts_with("host ") && text(&o.stdout).contains(&format!("user {me}")),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(
        text(&o.stderr)
            .lines()
            .filter(|l| l.starts_with("smx: result: sample 1/1"))
            .count(),
        1,
        "{}",
        text(&o.stderr)
    );
    assert!(!dir.join("smx.sock").exists(), "SIGTERM removes the socket");

    let mut daemon = Bg(Some(
        unprivileged(&sb.smx, dir)
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let smx = |args: &[&str]| -> Output { unprivileged(&sb.smx, dir).args(args).output().unwrap() };
    // Python through the daemon finds its runtime next to the binary.
    let o = smx(&["run", "--daemon", "--argument", "1", "loadavg.py"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    // Another owner is still refused: the caller may not act for it, and even an admin
    // would need an [[owner]] mapping.
    let o = smx(&["run", "--daemon", "--owner", "noc", "sysinfo.sh"]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("not_permitted") || e.contains("owner_not_mapped"),
        "{e}"
    );

    // A run that has not ended has no exit code yet.
    let mut running = unprivileged(&sb.smx, dir)
        .args(["run", "--daemon", "sleep.sh"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(running.stderr.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "smx: result: started");
    let o = smx(&["ps"]);
    let table = text(&o.stdout);
    let row = table
        .lines()
        .find(|l| l.contains("sleep.sh"))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // Columns: RUNID OWNER LAUNCH INDEX RUNTIME STATE EXIT ...
    assert_eq!(cols[5], "executing", "{table}");
    assert_eq!(cols[6], "-", "EXIT of a running script: {table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("loadavg.py") && l.contains("noError")),
        "{table}"
    );
    let o = smx(&["status", cols[0]]);
    assert!(
        text(&o.stdout).contains("exit_code:   - (not ended)"),
        "{}",
        text(&o.stdout)
    );
    let o = smx(&["abort", cols[0]]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(running.wait().unwrap().code(), Some(12), "halted");
    let o = smx(&["status", cols[0]]);
    assert!(
        text(&o.stdout).contains("exit_code:   halted"),
        "{}",
        text(&o.stdout)
    );

    // Nothing runs now, though runtimes are warm and a subscriber is connected.
    let mut events = unprivileged(&sb.smx, dir)
        .arg("events")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (took, status) = daemon.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
    assert!(events.wait().unwrap().success());
}

#[test]
fn a_relative_socket_works_and_an_idle_daemon_stops_at_once() {
    let sb = sandbox();
    let dir = sb.dir.path();
    let cfg = dir.join("smx.toml");
    std::fs::write(
        &cfg,
        format!(
            "[host]\nstorage = {:?}\n",
            dir.join("storage").display().to_string()
        ),
    )
    .unwrap();
    let mut daemon = Bg(Some(
        unprivileged(&sb.smx, dir)
            .args(["daemon", "--config", "smx.toml", "--socket", "r.sock"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    wait_for("the relative socket", 10, || dir.join("r.sock").exists());
    let o = unprivileged(&sb.smx, dir)
        .args(["ps", "--socket", "r.sock"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with(" RUNID"));
    let (took, status) = daemon.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(1),
        "SIGTERM of an idle daemon took {took:?}"
    );
    assert!(!dir.join("r.sock").exists(), "the socket is removed");
}

/// A daemon that is not root, whose os_profile names its own user (and groups = [], while
/// it has its login groups), runs scripts: there is nothing to switch. It used to fail at
/// `setgroups` with EPERM. So does `smx run --owner` for such a profile.
#[test]
#[ignore = "needs root"]
fn a_non_root_daemon_runs_scripts_of_a_profile_of_its_own_user() {
    need_root!("it runs smx as nobody (setpriv)");
    let sb = sandbox();
    let dir = sb.dir.path();
    std::fs::write(
        dir.join("smx.toml"),
        format!(
            "[host]\nstorage = {:?}\n[[os_profile]]\nname = \"self\"\nuser = \"nobody\"\ngroups = []\n\
             [[owner]]\nname = \"nobody\"\nos_profile = \"self\"\nruntime_profile = \"trusted\"\n",
            dir.join("storage").display().to_string()
        ),
    )
    .unwrap();
    // The check the daemon starts with agrees.
    let o = unprivileged(&sb.smx, dir)
        .args(["config", "check", "smx.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let mut daemon = Bg(Some(
        unprivileged(&sb.smx, dir)
            .args(["daemon", "--config", "smx.toml", "--socket", "s.sock"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    for args in [
        &[
            "run",
            "--daemon",
            "--socket",
            "s.sock",
            "--argument",
            "1",
            "sysinfo.sh",
        ][..],
        &[
            "run",
            "--config",
            "smx.toml",
            "--owner",
            "nobody",
            "--argument",
            "1",
            "sysinfo.sh",
        ],
    ] {
        let o = unprivileged(&sb.smx, dir).args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stdout).contains("user nobody"),
            "{}",
            text(&o.stdout)
        );
    }
    let (_, status) = daemon.terminate();
    assert!(status.success());
}

/// `smx run --owner root` as a user who is not root says that it cannot switch users,
/// before anything is stored or started.
#[test]
#[ignore = "needs root"]
fn smx_run_says_when_it_cannot_switch_users() {
    need_root!("it runs smx as nobody (setpriv)");
    let sb = sandbox();
    let dir = sb.dir.path();
    std::fs::write(
        dir.join("smx.toml"),
        "[[os_profile]]\nname = \"r\"\nuser = \"root\"\n\
         [[owner]]\nname = \"root\"\nos_profile = \"r\"\nruntime_profile = \"trusted\"\n\
         [[os_profile]]\nname = \"wheel\"\nuser = \"nobody\"\ngroups = [\"root\"]\n\
         [[owner]]\nname = \"w\"\nos_profile = \"wheel\"\nruntime_profile = \"trusted\"\n",
    )
    .unwrap();
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let _ = Command::new("chown")
        .args(["nobody", tmp.to_str().unwrap()])
        .output();
    let o = unprivileged(&sb.smx, dir)
        .args([
            "run",
            "--config",
            "smx.toml",
            "--owner",
            "root",
            "sysinfo.sh",
        ])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stderr),
        "smx: cannot run as owner \"root\" (os_profile \"r\"): smx runs as user nobody and \
         cannot switch to user root (uid 0): only root can; run smx as root, or leave out \
         --owner to run the script as yourself\n"
    );
    let o = unprivileged(&sb.smx, dir)
        .args(["run", "--config", "smx.toml", "--owner", "w", "sysinfo.sh"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr)
            .contains("without the supplementary groups 0 and cannot add them: only root can"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "nothing was stored"
    );
}

/// Entries of `dir` whose names start with `prefix`.
fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// `smx run` of `script` with its temp directory in `tmp`, stderr piped; waits for the
/// first progress line.
fn start_run(tmp: &Path, script: &Path) -> (Child, String) {
    let mut c = Command::new(smx_bin())
        .args(["run"])
        .arg(script)
        .env("TMPDIR", tmp)
        .env_remove("SMX_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    // Keep draining stderr so that nothing blocks on it.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    (c, first)
}

#[test]
fn no_temporary_files_outlive_a_killed_python_runtime_or_smx_run() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("slow.py");
    std::fs::write(
        &script,
        "import time, smx\nopen(smx.tmpdir + '/data', 'w').write('x')\nsmx.result('tmp ' + smx.tmpdir)\ntime.sleep(30)\n",
    )
    .unwrap();
    let work = tmp.path().join("t");
    std::fs::create_dir(&work).unwrap();

    // The Python runtime is killed outright while a run has its temp directory.
    let (mut smx, first) = start_run(&work, &script);
    assert!(first.starts_with("smx: result: tmp "), "{first}");
    let run_tmp = PathBuf::from(first.trim_end().trim_start_matches("smx: result: tmp "));
    assert!(run_tmp.join("data").exists());
    assert!(run_tmp.starts_with(&work), "{run_tmp:?}");
    let runtime = children(smx.id())
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("smx_runtime.py"))
        })
        .expect("the python runtime");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runtime as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(smx.wait().unwrap().code(), Some(19), "genericError");
    wait_for("the runtime's temp directories to go", 5, || {
        entries(&work, "smx-run").is_empty()
    });
    assert!(
        entries(&work, "smx-scripts-").is_empty(),
        "smx run removed its storage"
    );

    // smx run itself killed outright: its storage stays until the next one starts.
    let (mut smx, _) = start_run(&work, &script);
    smx.kill().unwrap();
    smx.wait().unwrap();
    wait_for(
        "the runtime to die with smx run, and its temp directory",
        5,
        || entries(&work, "smx-run").is_empty(),
    );
    assert_eq!(entries(&work, "smx-scripts-").len(), 1);
    let sh = tmp.path().join("true.sh");
    std::fs::write(&sh, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new(smx_bin())
        .arg("run")
        .arg(&sh)
        .env("TMPDIR", &work)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        entries(&work, "smx-scripts-").is_empty(),
        "{:?}",
        entries(&work, "")
    );

    // SIGTERM: smx run aborts the run (halted) and cleans up like after Ctrl-C.
    let (mut smx, _) = start_run(&work, &script);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(smx.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(smx.wait().unwrap().code(), Some(12), "halted");
    wait_for("every temporary file to go", 5, || {
        entries(&work, "").is_empty()
    });
}
