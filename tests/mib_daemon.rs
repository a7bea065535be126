//! The Script MIB through a real `smx daemon`: the binary started as a subprocess, driven by
//! `smx::client` over its socket and by the `smx` command line, killed with SIGKILL and
//! started again on the same `[host] state_dir`. Object names are RFC 3165's.
//!
//! Tests that run scripts need root (every daemon owner maps to an OS profile, and the
//! identity change only root may make) and are `#[ignore = "needs root"]`; the URL test
//! creates the user `smxt-mibguest` and leaves it in place. Every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::smx_bin;
use serde_json::{Value, json};
use smx::client::{Client, ClientError};
use smx::control::proto::{ColumnSet, ErrorCode};
use smx::host::RunInfo;
use smx::mib::{LaunchSpec, ScriptOper, ScriptRow, ScriptSpec, StorageType};
use smx::proto::{ExitCode, Octets, RunState};

macro_rules! need_root {
    () => {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it runs scripts through the daemon, and every daemon owner \
             maps to an OS profile, whose identity change (setgroups) only root may make \
             (run as root, or leave out --include-ignored)"
        )
    };
}

/// The longest any one answer from the daemon may take.
const ANSWER: Duration = Duration::from_secs(20);

/// Awaits `f`, failing the test if the daemon does not answer within [`ANSWER`].
async fn t<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(ANSWER, f)
        .await
        .expect("the daemon answered in time")
}

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("current user has a name")
        .name
}

// ---------------------------------------------------------------------------------------
// The daemon under test.

/// A running `smx daemon` whose files (config, socket, storage, state) live in `dir`;
/// killed when dropped. Another one can be started on the same `dir` once it is gone.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    log: Arc<Mutex<String>>,
}

/// The config: short timeouts, storage and (with `state`) the state database in `dir`, the
/// exec runtime of the binary under test, every owner mapped to the invoking user.
fn config_text(dir: &Path, state: bool, host_extra: &str, extra: &str) -> String {
    format!(
        r#"[host]
storage = {storage:?}
{state}
hello_timeout = "5s"
command_timeout = "5s"
shutdown_grace = "2s"
{host_extra}

[[runtime]]
name = "exec"
command = [{bin:?}, "exec-runtime", "--profiles", "trusted", "--grace", "1s"]
extensions = ["sh"]
profiles = ["trusted"]

[[os_profile]]
name = "self"
user = {me:?}

[[owner]]
name = "*"
os_profile = "self"
runtime_profile = "trusted"
{extra}
"#,
        storage = dir.join("storage").display().to_string(),
        state = if state {
            format!("state_dir = {:?}", dir.join("state").display().to_string())
        } else {
            String::new()
        },
        bin = smx_bin().display().to_string(),
        me = me(),
    )
}

impl Daemon {
    fn start(dir: &Path, state: bool, host_extra: &str, extra: &str) -> Daemon {
        Daemon::start_text(dir, &config_text(dir, state, host_extra, extra))
    }

    fn start_text(dir: &Path, config_text: &str) -> Daemon {
        let config = dir.join("smx.toml");
        let socket = dir.join("smx.sock");
        std::fs::write(&config, config_text).unwrap();
        let mut child = Command::new(smx_bin())
            .args(["-v", "daemon", "--config"])
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .env_remove("SMX_SOCKET")
            .env_remove("SMX_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start smx daemon");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines() {
                let Ok(l) = l else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let mut d = Daemon {
            child: Some(child),
            dir: dir.to_owned(),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("smx daemon exited at start ({st}):\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon's socket did not appear:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits (at most `secs`) for the daemon to exit.
    fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {secs}s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9`: no shutdown, no flush, nothing.
    fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let st = self.wait_exit(10);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    }

    /// SIGTERM, and the daemon's orderly shutdown.
    fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(self.wait_exit(20).success(), "{}", self.log());
    }

    async fn client(&self) -> Client {
        t(Client::connect(&self.socket)).await.expect("connect")
    }

    /// Waits until the daemon's log contains `needle`.
    async fn wait_log(&self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "daemon log never showed {needle:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("smx-mibd-test-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Kills a process (a script orphaned by a `kill -9` of the daemon) when dropped.
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Talking to the daemon as a manager does.

fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn content_spec(owner: &str, name: &str, body: &str, storage: StorageType) -> ScriptSpec {
    ScriptSpec {
        owner: owner.into(),
        name: name.into(),
        content: Octets::from(body),
        storage_type: Some(storage),
        ..Default::default()
    }
}

fn url_spec(owner: &str, name: &str, url: &str) -> ScriptSpec {
    ScriptSpec {
        owner: owner.into(),
        name: name.into(),
        source: Some(url.into()),
        language: Some("exec".into()),
        ..Default::default()
    }
}

fn button(owner: &str, name: &str, script: (&str, &str)) -> LaunchSpec {
    LaunchSpec {
        owner: owner.into(),
        name: name.into(),
        script_owner: script.0.into(),
        script_name: script.1.into(),
        ..Default::default()
    }
}

async fn script_row(c: &mut Client, owner: &str, name: &str) -> Option<ScriptRow> {
    t(c.scripts(Some(owner)))
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.name == name)
}

/// Polls smScriptOperStatus until it leaves retrieving/compiling (at most `secs`).
async fn settled(c: &mut Client, owner: &str, name: &str, secs: u64) -> ScriptRow {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = script_row(c, owner, name)
            .await
            .unwrap_or_else(|| panic!("no script {owner}/{name}"));
        if !matches!(
            r.oper_status,
            ScriptOper::Retrieving | ScriptOper::Compiling
        ) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{owner}/{name} still {} after {secs}s",
            r.oper_status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_run(c: &mut Client, r: &RunInfo) -> RunInfo {
    t(c.wait(r.run_id)).await.unwrap()
}

/// The runs of launch button (owner, name), by smRunIndex.
async fn runs_of(c: &mut Client, owner: &str, name: &str) -> Vec<RunInfo> {
    let mut v: Vec<RunInfo> = t(c.runs(Some(owner)))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.name == name)
        .collect();
    v.sort_by_key(|r| r.index);
    v
}

/// Polls the runs of a button until `f` holds for them (at most `secs`).
async fn runs_until(
    c: &mut Client,
    owner: &str,
    name: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&[RunInfo]) -> bool,
) -> Vec<RunInfo> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let runs = runs_of(c, owner, name).await;
        if f(&runs) {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "{owner}/{name}: never {what}: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// smLangIndex by runtime name, from the `languages` op.
async fn lang_indexes(c: &mut Client) -> BTreeMap<String, u32> {
    t(c.languages())
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.name, l.index))
        .collect()
}

/// One `mib_set` column.
fn col(table: &str, owner: &str, name: &str, column: &str, value: Value) -> ColumnSet {
    ColumnSet {
        table: table.into(),
        owner: owner.into(),
        name: name.into(),
        index: None,
        column: column.into(),
        value,
    }
}

fn indexed(mut c: ColumnSet, index: u32) -> ColumnSet {
    c.index = Some(index);
    c
}

// ---------------------------------------------------------------------------------------
// The state database, read behind the daemon's back (WAL readers do not disturb it).

/// The run rows the database holds: RunId -> (state, the row as JSON).
fn saved_runs(state_dir: &Path) -> BTreeMap<u64, Value> {
    let db = state_dir.join("smx.db");
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return BTreeMap::new();
    };
    let Ok(mut q) = conn.prepare("SELECT run_id, row FROM run") else {
        return BTreeMap::new();
    };
    q.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .map(|rows| {
            rows.filter_map(Result::ok)
                .map(|(id, row)| (id as u64, serde_json::from_str(&row).unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

fn saved_lang(state_dir: &Path) -> BTreeMap<String, u32> {
    let db = state_dir.join("smx.db");
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return BTreeMap::new();
    };
    let Ok(mut q) = conn.prepare("SELECT runtime, idx FROM lang") else {
        return BTreeMap::new();
    };
    q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// Waits until `f` holds for what the database has committed (at most `secs`).
async fn committed(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "the state database never had {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The command line.

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `smx ARGS` against `socket` (through SMX_SOCKET unless `None`), at most 30 s.
fn smx(args: &[&str], socket: Option<&Path>) -> Out {
    let mut cmd = Command::new(smx_bin());
    cmd.args(args)
        .env_remove("SMX_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = socket {
        cmd.env("SMX_SOCKET", s);
    }
    let child = cmd.spawn().expect("spawn smx");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let o = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("smx {args:?} did not finish within 30 s");
        }
    };
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[track_caller]
fn ok_out(o: &Out) -> &str {
    assert_eq!(o.code, Some(0), "{o:#?}");
    &o.stdout
}

/// Fails with exit status 1, a message on stderr containing every one of `words`, and
/// nothing on stdout.
#[track_caller]
fn fails(o: &Out, words: &[&str]) {
    assert_eq!(o.code, Some(1), "{o:#?}");
    assert!(o.stdout.is_empty(), "{o:#?}");
    assert!(o.stderr.starts_with("smx: "), "{o:#?}");
    for w in words {
        assert!(o.stderr.contains(w), "{w:?} in {o:#?}");
    }
}

fn file(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// Reports its pid as an intermediate result, then sleeps until aborted.
const SLEEPER: &str = "#!/bin/sh\necho \"result pid $$\" >&3\nexec sleep 600\n";
const HELLO: &str = "#!/bin/sh\necho \"hello $1\"\n";

// =======================================================================================
// Persistence: nonVolatile rows and finished runs across a `kill -9`.

/// A `[[runtime]]` that is never started, to give smLangTable rows of its own.
fn lang_runtime(name: &str, oid: &str) -> String {
    format!(
        "[[runtime]]\nname = {name:?}\ncommand = [\"/bin/false\"]\nextensions = [{name:?}]\n\
         profiles = [\"trusted\"]\nlanguage = {oid:?}\nversion = \"5.4\"\nrevision = \"r1\"\n\
         description = \"{name} for tests\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn nonvolatile_rows_and_finished_runs_survive_kill_9() {
    need_root!();
    let tmp = tempdir();
    let dir = tmp.path();
    let state = dir.join("state");
    let mut d = Daemon::start(dir, true, "", &lang_runtime("lua1", "1.3.6.1.4.1.99.1"));
    let mut c = d.client().await;

    // smLangTable: one row per runtime; smLangLanguage and the rest from the config.
    let langs = t(c.languages()).await.unwrap();
    let lua1 = langs.iter().find(|l| l.name == "lua1").unwrap();
    assert_eq!(
        (
            lua1.language.to_string().as_str(),
            lua1.version.as_str(),
            lua1.revision.as_str()
        ),
        ("1.3.6.1.4.1.99.1", "5.4", "r1")
    );
    assert_eq!(
        langs.iter().find(|l| l.name == "exec").unwrap().language,
        smx::mib::Oid::zero_dot_zero(),
        "smLangLanguage {{0 0}} when unknown"
    );
    // A runtime added by a reload gets a fresh smLangIndex at once.
    std::fs::write(
        dir.join("smx.toml"),
        config_text(
            dir,
            true,
            "",
            &format!(
                "{}{}",
                lang_runtime("lua1", "1.3.6.1.4.1.99.1"),
                lang_runtime("lua2", "1.3.6.1.4.1.99.2")
            ),
        ),
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("configuration reloaded", 10).await;
    let before = lang_indexes(&mut c).await;
    assert_eq!(before.len(), 5, "{before:?}");
    assert_eq!(before["lua2"], before.values().copied().max().unwrap());
    let lua2 = t(c.script_install(ScriptSpec {
        language: Some("lua2".into()),
        ..content_spec("ops", "x.lua2", "x", StorageType::Volatile)
    }))
    .await
    .unwrap();
    assert_eq!(
        lua2.language, before["lua2"],
        "smScriptLanguage is the smLangIndex"
    );

    // nonVolatile: a script, a button with finished runs, a button with an executing run.
    t(c.script_install(content_spec(
        "ops",
        "hello.sh",
        HELLO,
        StorageType::NonVolatile,
    )))
    .await
    .unwrap();
    t(c.script_install(content_spec(
        "ops",
        "sleeper.sh",
        SLEEPER,
        StorageType::NonVolatile,
    )))
    .await
    .unwrap();
    t(c.launch_add(LaunchSpec {
        max_completed: Some(10),
        storage_type: Some(StorageType::NonVolatile),
        ..button("ops", "keep", ("ops", "hello.sh"))
    }))
    .await
    .unwrap();
    t(c.launch_add(LaunchSpec {
        storage_type: Some(StorageType::NonVolatile),
        ..button("ops", "slow", ("ops", "sleeper.sh"))
    }))
    .await
    .unwrap();
    // Volatile: a script and a button (on the nonVolatile script), with a finished run.
    t(c.script_install(content_spec("ops", "tmp.sh", HELLO, StorageType::Volatile)))
        .await
        .unwrap();
    t(c.launch_add(LaunchSpec {
        max_completed: Some(10),
        ..button("ops", "gone", ("ops", "hello.sh"))
    }))
    .await
    .unwrap();

    let mut finished = Vec::new();
    for (arg, index) in [("one", None), ("two", Some(42)), ("three", None)] {
        let r = t(c.launch_start("ops", "keep", index, Some(Octets::from(arg))))
            .await
            .unwrap();
        if let Some(i) = index {
            assert_eq!(r.index, i, "a manager-chosen smRunIndex");
        }
        let done = wait_run(&mut c, &r).await;
        assert_eq!(done.result.as_bytes(), format!("hello {arg}").as_bytes());
        finished.push(done);
    }
    let g = t(c.launch_start("ops", "gone", None, Some(Octets::from("v"))))
        .await
        .unwrap();
    let gone_run = wait_run(&mut c, &g).await;
    let slow = t(c.launch_start("ops", "slow", None, None)).await.unwrap();
    let slow_now = runs_until(&mut c, "ops", "slow", 15, "reported its pid", |rs| {
        rs.iter().any(|r| r.result.to_string().starts_with("pid "))
    })
    .await;
    let orphan = KillOnDrop(slow_now[0].result.to_string()["pid ".len()..].parse().ok());
    assert_eq!(slow_now[0].state, RunState::Executing);
    let keep_before = runs_of(&mut c, "ops", "keep").await;
    assert_eq!(
        keep_before.iter().map(|r| r.index).collect::<Vec<_>>(),
        [1, 2, 42],
        "smRunIndex: generated 1, chosen 42, generated 2"
    );

    // Everything a manager saw is committed (the writer batches for up to 20 ms): then kill.
    let ids: Vec<u64> = finished.iter().map(|r| r.run_id.0).collect();
    committed("the finished runs and the executing one", 10, || {
        let saved = saved_runs(&state);
        ids.iter()
            .all(|id| saved.get(id).is_some_and(|r| r["state"] == "terminated"))
            && saved.contains_key(&slow.run_id.0)
            && saved.contains_key(&gone_run.run_id.0)
    })
    .await;
    committed("lua2's smLangIndex", 10, || {
        saved_lang(&state).contains_key("lua2")
    })
    .await;
    drop(c);
    d.kill9();
    drop(d);

    // Restart on the same state_dir, with lua1 gone and lua3 new (listed before lua2).
    let extra = format!(
        "{}{}",
        lang_runtime("lua3", "1.3.6.1.4.1.99.3"),
        lang_runtime("lua2", "1.3.6.1.4.1.99.2")
    );
    let d = Daemon::start(dir, true, "", &extra);
    let mut c = d.client().await;

    // smLangIndex: the same for every runtime still there; lua1's is not given away.
    let after = lang_indexes(&mut c).await;
    for (name, i) in &before {
        if name != "lua1" {
            assert_eq!(after.get(name), Some(i), "{name}: {before:?} -> {after:?}");
        }
    }
    assert_eq!(after["lua3"], before.values().copied().max().unwrap() + 1);

    // smScriptTable: the nonVolatile scripts are back (and enabled again), the volatile ones
    // are gone.
    let scripts = t(c.scripts(None)).await.unwrap();
    let names: Vec<&str> = scripts.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["hello.sh", "sleeper.sh"], "{scripts:#?}");
    for s in ["hello.sh", "sleeper.sh"] {
        let r = settled(&mut c, "ops", s, 10).await;
        assert_eq!(r.oper_status, ScriptOper::Enabled, "{r:#?}");
        assert_eq!(r.storage_type, StorageType::NonVolatile);
    }
    // smLaunchTable: the nonVolatile buttons are back, the volatile one is gone.
    let launches = t(c.launches(None)).await.unwrap();
    let names: Vec<&str> = launches.iter().map(|l| l.row.name.as_str()).collect();
    assert_eq!(names, ["keep", "slow"]);
    assert_eq!(launches[0].row.max_completed, 10);
    assert_eq!(
        launches[0].row.start, 2,
        "smLaunchStart reads the last index"
    );

    // smRunTable: the finished runs with the same smRunIndex values and results.
    let keep_after = runs_of(&mut c, "ops", "keep").await;
    assert_eq!(keep_after.len(), 3);
    for (a, b) in keep_before.iter().zip(&keep_after) {
        assert_eq!(
            (a.run_id, a.index, &a.argument, &a.result, a.exit_code),
            (b.run_id, b.index, &b.argument, &b.result, b.exit_code)
        );
        assert_eq!((a.start_time, a.end_time), (b.start_time, b.end_time));
        assert_eq!(b.state, RunState::Terminated);
    }
    // The run that was executing at the kill: terminated, genericError, and why.
    let slow_after = runs_of(&mut c, "ops", "slow").await;
    assert_eq!(slow_after.len(), 1);
    let s = &slow_after[0];
    assert_eq!(
        (s.run_id, s.index, s.state, s.exit_code),
        (
            slow.run_id,
            slow.index,
            RunState::Terminated,
            ExitCode::GenericError
        )
    );
    assert!(s.error.starts_with("the host restarted"), "{s:#?}");
    assert!(s.end_time.is_some() && s.runtime_pid.is_none());
    // Run rows have no StorageType: the volatile button's finished run is kept too (its
    // result is not lost), though its button is gone.
    let g_after = runs_of(&mut c, "ops", "gone").await;
    assert_eq!(
        g_after
            .iter()
            .map(|r| (r.run_id, &r.result))
            .collect::<Vec<_>>(),
        [(gone_run.run_id, &gone_run.result)]
    );

    // The buttons work: new runs get fresh indexes and RunIds, the script loads from storage.
    let next = t(c.run_index_next("ops", "keep")).await.unwrap();
    assert!(
        next > 42,
        "smLaunchRunIndexNext after the restored 42: {next}"
    );
    let r = t(c.launch_start("ops", "keep", None, Some(Octets::from("again"))))
        .await
        .unwrap();
    assert!(r.run_id.0 > slow.run_id.0 && ![1, 2, 42].contains(&r.index));
    assert_eq!(wait_run(&mut c, &r).await.result.as_bytes(), b"hello again");
    drop(orphan);
}

// =======================================================================================
// smScriptSource URLs through the daemon.

/// A tiny HTTP/1.1 server on 127.0.0.1 for smScriptSource: `/ok.sh` answers 200 with
/// `body`, `/big.sh` 200 with `big` octets, `/hang.sh` reads the request and never
/// answers, anything else 404. It stops (and lets go of hanging connections) when dropped.
struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Requests seen, by path.
    seen: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    fn start(body: &'static str, big: usize) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (st, sn) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (st, sn) = (st.clone(), sn.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
                        match conn.read(&mut b) {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    sn.lock().unwrap().push(path.clone());
                    let (status, body) = match path.as_str() {
                        "/ok.sh" => ("200 OK", body.as_bytes().to_vec()),
                        "/big.sh" => ("200 OK", vec![b'#'; big]),
                        "/hang.sh" => {
                            let until = Instant::now() + Duration::from_secs(60);
                            while !st.load(Ordering::Relaxed) && Instant::now() < until {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            return;
                        }
                        _ => ("404 Not Found", b"not here\n".to_vec()),
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(&body);
                });
            }
        });
        HttpServer { addr, stop, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn script_sources_file_http_and_unknown_schemes() {
    need_root!();
    let (guest_uid, _) = common::user("smxt-mibguest", &[]);
    let tmp = tempdir();
    let dir = tmp.path();
    // The unprivileged user may traverse the directory; what it may read is per file.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let public = file(dir, "public.sh", HELLO, 0o644);
    let secret = file(dir, "secret.sh", HELLO, 0o600);
    let http = HttpServer::start(HELLO, 5000);
    let d = Daemon::start(
        dir,
        false,
        "fetch_timeout = \"1s\"\nfetch_max_octets = 1000",
        "[[os_profile]]\nname = \"guest\"\nuser = \"smxt-mibguest\"\n\
         [[owner]]\nname = \"guest\"\nos_profile = \"guest\"\nruntime_profile = \"trusted\"\n",
    );
    let mut c = d.client().await;
    let file_url = |p: &Path| format!("file://{}", p.display());

    // Each source as a manager sets it: the row answers at once, smScriptOperStatus tells
    // the outcome later.
    let cases: Vec<(&str, &str, String, ScriptOper)> = vec![
        ("ops", "file-ok", file_url(&public), ScriptOper::Enabled),
        (
            "guest",
            "file-public",
            file_url(&public),
            ScriptOper::Enabled,
        ),
        (
            "guest",
            "file-secret",
            file_url(&secret),
            ScriptOper::AccessDenied,
        ),
        ("ops", "file-secret", file_url(&secret), ScriptOper::Enabled),
        (
            "ops",
            "file-missing",
            file_url(&dir.join("missing.sh")),
            ScriptOper::NoSuchScript,
        ),
        ("ops", "http-ok", http.url("/ok.sh"), ScriptOper::Enabled),
        (
            "ops",
            "http-404",
            http.url("/missing.sh"),
            ScriptOper::NoSuchScript,
        ),
        (
            "ops",
            "http-big",
            http.url("/big.sh"),
            ScriptOper::NoResourcesLeft,
        ),
        (
            "ops",
            "ftp",
            format!("ftp://{}/x.sh", http.addr),
            ScriptOper::UnknownProtocol,
        ),
    ];
    for (owner, name, url, want) in &cases {
        let row = t(c.script_install(url_spec(owner, name, url)))
            .await
            .unwrap();
        assert_eq!(&row.source, url);
        let got = settled(&mut c, owner, name, 10).await;
        assert_eq!(got.oper_status, *want, "{owner}/{name} {url}: {got:#?}");
        if *want == ScriptOper::Enabled {
            assert!(got.error.is_empty(), "{got:#?}");
        } else {
            assert!(!got.error.is_empty(), "smScriptError says why: {got:#?}");
        }
    }
    let secret_row = script_row(&mut c, "guest", "file-secret").await.unwrap();
    assert!(
        secret_row.error.contains(&secret.display().to_string()),
        "{secret_row:#?}"
    );
    assert!(
        http.seen.lock().unwrap().iter().any(|p| p == "/ok.sh"),
        "the daemon asked the test's server"
    );

    // A server that never answers: retrieving while it waits, protocolFailure after
    // fetch_timeout; the set itself is answered at once.
    let asked = Instant::now();
    let row = t(c.script_install(url_spec("ops", "http-hang", &http.url("/hang.sh"))))
        .await
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_millis(900),
        "script_install waited for the retrieval ({:?})",
        asked.elapsed()
    );
    assert_eq!(row.oper_status, ScriptOper::Retrieving);
    assert_eq!(
        script_row(&mut c, "ops", "http-hang")
            .await
            .unwrap()
            .oper_status,
        ScriptOper::Retrieving
    );
    let got = settled(&mut c, "ops", "http-hang", 10).await;
    let took = asked.elapsed();
    assert_eq!(got.oper_status, ScriptOper::ProtocolFailure, "{got:#?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "fetch_timeout is 1s: {took:?}"
    );

    // What was pulled runs: a button over the http script and one over the file script.
    for name in ["http-ok", "file-ok"] {
        t(c.launch_add(LaunchSpec {
            argument: Some(Octets::from(name)),
            ..button("ops", name, ("ops", name))
        }))
        .await
        .unwrap();
        let r = t(c.launch_start("ops", name, None, None)).await.unwrap();
        assert_eq!(
            wait_run(&mut c, &r).await.result.to_string(),
            format!("hello {name}")
        );
    }
    // A failed script cannot be launched (smLaunchStart check 3).
    t(c.launch_add(button("ops", "nope", ("ops", "http-404"))))
        .await
        .unwrap();
    let (code, msg) = refused(t(c.launch_start("ops", "nope", None, None)).await);
    assert_eq!(code, ErrorCode::InconsistentValue);
    assert!(
        msg.contains("check 3") && msg.contains("noSuchScript"),
        "{msg}"
    );
    // The guest's file: URL was read as the guest, not as the daemon (root).
    assert_ne!(guest_uid, 0);
}
