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

// =======================================================================================
// mib_set: SNMP set requests over the control socket.

async fn exec_index(c: &mut Client) -> i64 {
    lang_indexes(c).await["exec"] as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn mib_set_creates_rows_refuses_bad_sets_starts_and_fans_out() {
    need_root!();
    let tmp = tempdir();
    let d = Daemon::start(tmp.path(), false, "", "");
    let mut c = d.client().await;
    let lang = exec_index(&mut c).await;

    // One request: a script row and a launch button row, createAndWait with several
    // columns each, and the script's code in two smCodeTable rows (one given in hex).
    let s = |column: &str, v: Value| col("script", "ops", "ms.sh", column, v);
    let code = |i: u32, column: &str, v: Value| indexed(col("code", "ops", "ms.sh", column, v), i);
    let l = |column: &str, v: Value| col("launch", "ops", "msl", column, v);
    let out = t(c.mib_set(vec![
        s("smScriptRowStatus", json!(5)),
        s("smScriptLanguage", json!(lang)),
        s("smScriptDescr", json!("pushed over mib_set")),
        s("smScriptStorageType", json!(2)),
        code(1, "smCodeRowStatus", json!(4)),
        code(1, "smCodeText", json!("#!/bin/sh\n")),
        code(2, "smCodeRowStatus", json!(4)),
        code(
            2,
            "smCodeText",
            json!({"hex": hex::encode("echo \"ms $1\"\n")}),
        ),
        l("smLaunchRowStatus", json!(5)),
        l("smLaunchScriptOwner", json!("ops")),
        l("smLaunchScriptName", json!("ms.sh")),
        l("smLaunchArgument", json!("arg1")),
        l("smLaunchMaxRunning", json!(3)),
        l("smLaunchMaxCompleted", json!(5)),
        l("smLaunchLifeTime", json!(6000)),
        l("smLaunchExpireTime", json!(30000)),
    ]))
    .await
    .unwrap();
    assert!(out.started.is_empty());
    let script = script_row(&mut c, "ops", "ms.sh").await.unwrap();
    assert_eq!(
        (
            script.row_status.as_str(),
            script.oper_status.as_str(),
            script.descr.as_str(),
            script.language as i64
        ),
        ("notInService", "disabled", "pushed over mib_set", lang)
    );
    let code_rows = t(c.code("ops", "ms.sh")).await.unwrap();
    assert_eq!(
        code_rows.iter().map(|r| r.index).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(code_rows[1].text, b"echo \"ms $1\"\n");
    let b = t(c.launches(Some("ops"))).await.unwrap();
    assert_eq!(b.len(), 1);
    let lr = &b[0].row;
    assert_eq!(
        (
            lr.row_status.as_str(),
            b[0].oper_status.as_str(),
            lr.argument.to_string(),
            lr.max_running,
            lr.max_completed,
            lr.lifetime.centis(),
            lr.expire_time.centis()
        ),
        (
            "notInService",
            "disabled",
            "arg1".to_owned(),
            3,
            5,
            6000,
            30000
        )
    );
    // Second request: both rows active and enabled.
    t(c.mib_set(vec![
        s("smScriptRowStatus", json!(1)),
        s("smScriptAdminStatus", json!(1)),
        l("smLaunchRowStatus", json!(1)),
        l("smLaunchAdminStatus", json!(1)),
    ]))
    .await
    .unwrap();
    assert_eq!(
        script_row(&mut c, "ops", "ms.sh")
            .await
            .unwrap()
            .oper_status,
        ScriptOper::Enabled,
        "code from smCodeTable is loaded before the answer"
    );
    assert_eq!(
        t(c.launches(Some("ops"))).await.unwrap()[0]
            .oper_status
            .as_str(),
        "enabled"
    );

    // smLaunchRunIndexNext, then smLaunchStart with that value.
    let next = t(c.run_index_next("ops", "msl")).await.unwrap();
    let again = t(c.run_index_next("ops", "msl")).await.unwrap();
    assert!(next != 0 && again != 0 && next != again, "{next} {again}");
    assert_eq!(t(c.run_index_next("ops", "nosuch")).await.unwrap(), 0);
    let out = t(c.mib_set(vec![l("smLaunchStart", json!(next))]))
        .await
        .unwrap();
    assert_eq!(out.started.len(), 1);
    let run = &out.started[0];
    assert_eq!(
        (run.owner.as_str(), run.name.as_str(), run.index, run.state),
        ("ops", "msl", next, RunState::Initializing),
        "the row exists right after the set, state initializing"
    );
    let done = wait_run(&mut c, run).await;
    assert_eq!(
        (done.result.to_string(), done.exit_code),
        ("ms arg1".to_owned(), ExitCode::NoError)
    );
    assert_eq!(t(c.launches(Some("ops"))).await.unwrap()[0].row.start, next);

    // Every error status of a bad set, naming the change; nothing of the request happens
    // (change 0 would create ops/half).
    let half = || col("script", "ops", "half", "smScriptRowStatus", json!(5));
    let in_use = format!("smRunIndex {next} is in use");
    let in_use_words = ["change 1", "smLaunchStart", in_use.as_str()];
    let bad: Vec<(Vec<ColumnSet>, ErrorCode, &[&str])> = vec![
        (
            vec![
                half(),
                col("script", "ops", "half", "smScriptAdminStatus", json!(9)),
            ],
            ErrorCode::WrongValue,
            &["change 1", "smScriptAdminStatus", "wrongValue"],
        ),
        (
            vec![
                half(),
                col(
                    "script",
                    "ops",
                    "half",
                    "smScriptDescr",
                    json!("d".repeat(256)),
                ),
            ],
            ErrorCode::WrongLength,
            &["change 1", "smScriptDescr", "0..255 octets, not 256"],
        ),
        (
            vec![
                half(),
                col("script", "ops", "x", "smScriptRowStatus", json!(4)),
            ],
            ErrorCode::InconsistentValue,
            &["change 1", "smScriptLanguage must be set"],
        ),
        (
            vec![half(), l("smLaunchStart", json!(next))],
            ErrorCode::InconsistentValue,
            &in_use_words,
        ),
        (
            vec![
                half(),
                col("script", "ops", "nosuch", "smScriptDescr", json!("x")),
            ],
            ErrorCode::NoCreation,
            &["change 1", "smScriptDescr", "no such smScriptTable row"],
        ),
        (
            vec![
                half(),
                col(
                    "script",
                    "ops",
                    &"n".repeat(33),
                    "smScriptRowStatus",
                    json!(5),
                ),
            ],
            ErrorCode::NoCreation,
            &["change 1", "name 1..32 octets"],
        ),
        (
            vec![
                half(),
                indexed(col("run", "ops", "msl", "smRunControl", json!(1)), 999),
            ],
            ErrorCode::NoCreation,
            &["change 1", "smRunControl", "no such smRunTable row"],
        ),
        (
            vec![
                half(),
                col("script", "ops", "half", "smScriptRowStatus", json!("go")),
            ],
            ErrorCode::BadRequest,
            &["change 1", "takes an integer", "wrongType"],
        ),
        (
            vec![
                half(),
                col("script", "ops", "half", "smScriptBogus", json!(1)),
            ],
            ErrorCode::BadRequest,
            &["change 1", "no column smScriptBogus"],
        ),
    ];
    for (changes, want, words) in bad {
        let (code, msg) = refused(t(c.mib_set(changes.clone())).await);
        assert_eq!(code, want, "{changes:?}: {msg}");
        for w in words {
            assert!(msg.contains(w), "{w:?} in {msg:?}");
        }
        assert!(
            script_row(&mut c, "ops", "half").await.is_none(),
            "nothing half-created: {msg}"
        );
    }

    // smLaunchControl fans out: three runs started by one request (each smLaunchStart is
    // counted against smLaunchMaxRunning), suspended, resumed and aborted together.
    t(c.script_install(content_spec(
        "ops",
        "sleeper.sh",
        SLEEPER,
        StorageType::Volatile,
    )))
    .await
    .unwrap();
    t(c.launch_add(LaunchSpec {
        max_running: Some(3),
        max_completed: Some(3),
        ..button("ops", "fan", ("ops", "sleeper.sh"))
    }))
    .await
    .unwrap();
    let f = |column: &str, v: Value| col("launch", "ops", "fan", column, v);
    let mut idx = Vec::new();
    for _ in 0..3 {
        idx.push(t(c.run_index_next("ops", "fan")).await.unwrap());
    }
    let out = t(c.mib_set(idx.iter().map(|i| f("smLaunchStart", json!(i))).collect()))
        .await
        .unwrap();
    let mut got: Vec<u32> = out.started.iter().map(|r| r.index).collect();
    got.sort();
    let mut want = idx.clone();
    want.sort();
    assert_eq!(got, want);
    let (code, msg) = refused(t(c.mib_set(vec![f("smLaunchStart", json!(0))])).await);
    assert_eq!(code, ErrorCode::InconsistentValue);
    assert!(msg.contains("check 6"), "{msg}");
    let all = |s: RunState| move |rs: &[RunInfo]| rs.len() == 3 && rs.iter().all(|r| r.state == s);
    runs_until(
        &mut c,
        "ops",
        "fan",
        15,
        "all executing",
        all(RunState::Executing),
    )
    .await;
    for (control, state) in [
        (2, RunState::Suspended),
        (3, RunState::Executing),
        (1, RunState::Terminated),
    ] {
        t(c.mib_set(vec![f("smLaunchControl", json!(control))]))
            .await
            .unwrap();
        runs_until(
            &mut c,
            "ops",
            "fan",
            15,
            &format!("all {state}"),
            all(state),
        )
        .await;
    }
    let runs = runs_of(&mut c, "ops", "fan").await;
    assert!(
        runs.iter().all(|r| r.exit_code == ExitCode::Halted),
        "{runs:#?}"
    );
    // Nothing left that abort applies to: inconsistentValue.
    let (code, msg) = refused(t(c.mib_set(vec![f("smLaunchControl", json!(1))])).await);
    assert_eq!(code, ErrorCode::InconsistentValue);
    assert!(msg.contains("smLaunchControl"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn autostart_buttons_start_when_the_daemon_starts() {
    need_root!();
    let tmp = tempdir();
    let dir = tmp.path();
    let mut d = Daemon::start(dir, true, "", "");
    let mut c = d.client().await;
    t(c.script_install(content_spec(
        "ops",
        "boot.sh",
        "#!/bin/sh\necho \"booted $1\"\n",
        StorageType::NonVolatile,
    )))
    .await
    .unwrap();
    // smLaunchAdminStatus autostart: the button starts a run when it becomes enabled; a
    // volatile one does so too, but is not there after the restart.
    for (name, st) in [
        ("auto", StorageType::NonVolatile),
        ("once", StorageType::Volatile),
    ] {
        t(c.launch_add(LaunchSpec {
            argument: Some(Octets::from(name)),
            max_completed: Some(5),
            storage_type: Some(st),
            admin_status: Some(smx::mib::LaunchAdmin::Autostart),
            ..button("ops", name, ("ops", "boot.sh"))
        }))
        .await
        .unwrap();
        let runs = runs_until(&mut c, "ops", name, 15, "autostarted", |rs| {
            rs.len() == 1 && rs[0].state == RunState::Terminated
        })
        .await;
        assert_eq!(runs[0].result.to_string(), format!("booted {name}"));
    }
    drop(c);
    d.stop();
    drop(d);

    let started = std::time::SystemTime::now();
    let d = Daemon::start(dir, true, "", "");
    let mut c = d.client().await;
    let runs = runs_until(&mut c, "ops", "auto", 15, "autostarted again", |rs| {
        rs.len() == 2 && rs.iter().all(|r| r.state == RunState::Terminated)
    })
    .await;
    assert_eq!(runs[0].index, 1, "the run from before the restart");
    assert!(runs[0].start_time < started);
    assert_eq!(runs[1].index, 2, "a fresh smRunIndex");
    assert!(runs[1].start_time >= started);
    assert_eq!(runs[1].result.to_string(), "booted auto");
    assert_eq!(runs[1].exit_code, ExitCode::NoError);
    d.wait_log("autostart", 5).await;
    // The volatile autostart button is gone: its run from before is all that is left.
    assert!(
        t(c.launches(None))
            .await
            .unwrap()
            .iter()
            .all(|l| l.row.name != "once")
    );
    assert_eq!(runs_of(&mut c, "ops", "once").await.len(), 1);
}

// =======================================================================================
// The command line: smx script, smx launch, smx ps.

fn json_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn sorted(words: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = words.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn cli_script_and_launch_verbs_answer_as_the_mib_does() {
    need_root!();
    let tmp = tempdir();
    let dir = tmp.path();
    let d = Daemon::start(dir, false, "", "");
    let sock = d.socket.clone();
    let s = Some(sock.as_path());
    let sock_str = sock.to_str().unwrap();
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let hello = file(&work, "hello.sh", HELLO, 0o644);
    let hello_s = hello.to_str().unwrap();
    let fail = file(
        &work,
        "fail.sh",
        "#!/bin/sh\necho boom >&2\nexit 3\n",
        0o644,
    );
    let sleeper = file(&work, "sleeper", SLEEPER, 0o644);
    let py = file(&work, "hi.py", "print('hi')\n", 0o644);
    let long = "n".repeat(33);

    // script install: FILE, through SMX_SOCKET and through --socket.
    let o = smx(&["script", "install", "ops", "hello.sh", hello_s], s);
    assert_eq!(
        ok_out(&o),
        "script ops/hello.sh enabled: language exec, volatile\n"
    );
    // NAME without an extension: the language comes from FILE's.
    let o = smx(
        &[
            "script",
            "install",
            "--socket",
            sock_str,
            "ops",
            "hi",
            py.to_str().unwrap(),
            "--descr",
            "from a file",
            "--storage",
            "nonVolatile",
        ],
        None,
    );
    assert_eq!(
        ok_out(&o),
        "script ops/hi enabled: language python, nonVolatile\n"
    );
    for (name, f) in [("fail.sh", &fail), ("sleeper", &sleeper)] {
        ok_out(&smx(
            &["script", "install", "ops", name, f.to_str().unwrap()],
            s,
        ));
    }
    let url = format!("file://{hello_s}");
    let o = smx(&["script", "install", "ops", "url.sh", "--source", &url], s);
    assert_eq!(
        ok_out(&o),
        format!("script ops/url.sh enabled: language exec, volatile, from {url}\n")
    );
    // Bad input: the MIB's answer, the row named, exit 1, nothing on stdout.
    let missing = work.join("missing.sh");
    fails(
        &smx(
            &[
                "script",
                "install",
                "ops",
                "x.sh",
                missing.to_str().unwrap(),
            ],
            s,
        ),
        &[missing.to_str().unwrap(), "No such file"],
    );
    fails(
        &smx(
            &[
                "script",
                "install",
                "ops",
                "x.sh",
                hello_s,
                "--language",
                "cobol",
            ],
            s,
        ),
        &[
            "script ops/x.sh: ",
            "unknown language \"cobol\"",
            "(bad_request)",
        ],
    );
    let descr = "d".repeat(256);
    fails(
        &smx(
            &[
                "script", "install", "ops", "x.sh", hello_s, "--descr", &descr,
            ],
            s,
        ),
        &[
            "smScriptDescr: wrongLength",
            "0..255 octets, not 256",
            "(wrong_length)",
        ],
    );
    fails(
        &smx(&["script", "install", "ops", &long, hello_s], s),
        &["noCreation", "name 1..32 octets", "(no_creation)"],
    );
    fails(
        &smx(
            &[
                "script",
                "install",
                "ops",
                "u.sh",
                "--source",
                "file:///nonexistent/u.sh",
            ],
            s,
        ),
        &[
            "script ops/u.sh is not enabled: smScriptOperStatus noSuchScript",
            "/nonexistent/u.sh",
            "smx script remove ops u.sh",
        ],
    );
    fails(
        &smx(
            &[
                "script",
                "install",
                "ops",
                "g.sh",
                "--source",
                "gopher://h/g.sh",
            ],
            s,
        ),
        &["smScriptOperStatus unknownProtocol", "gopher://h/g.sh"],
    );
    // Usage errors: exit 2, from clap.
    for args in [
        &["script", "install", "ops", "x.sh"][..],
        &[
            "script", "install", "ops", "x.sh", hello_s, "--source", &url,
        ],
        &[
            "script",
            "install",
            "ops",
            "x.sh",
            hello_s,
            "--storage",
            "permanent",
        ],
        &["launch", "add", "ops", "x"],
        &[
            "launch",
            "add",
            "ops",
            "x",
            "--script",
            "a/b",
            "--max-running",
            "-1",
        ],
        &[
            "launch",
            "start",
            "ops",
            "x",
            "--argument",
            "a",
            "--argument-hex",
            "00",
        ],
    ] {
        let o = smx(args, s);
        assert_eq!(o.code, Some(2), "{args:?}: {o:#?}");
    }
    assert!(
        smx(
            &[
                "script",
                "install",
                "ops",
                "x.sh",
                hello_s,
                "--storage",
                "permanent"
            ],
            s
        )
        .stderr
        .contains("not volatile or nonVolatile")
    );

    // script list and --json: the smScriptTable columns.
    let o = smx(&["script", "list"], s);
    let out = ok_out(&o);
    let header = out.lines().next().unwrap();
    for c in [
        "OWNER", "NAME", "LANGUAGE", "ADMIN", "OPER", "STORAGE", "ROW",
    ] {
        assert!(header.contains(c), "{header}");
    }
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} in\n{out}"))
            .to_owned()
    };
    for w in ["ops", "exec", "enabled", "volatile", "active"] {
        assert!(row("hello.sh").contains(w), "{w}: {}", row("hello.sh"));
    }
    assert!(row("hi").contains("python") && row("hi").contains("nonVolatile"));
    assert!(row("u.sh").contains("noSuchScript") && row("u.sh").contains("/nonexistent/u.sh"));
    let o = smx(&["script", "list", "--json", "--owner", "ops"], s);
    let rows: Vec<Value> = serde_json::from_str(ok_out(&o)).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "fail.sh", "g.sh", "hello.sh", "hi", "sleeper", "u.sh", "url.sh"
        ]
    );
    assert_eq!(
        json_keys(&rows[2]),
        sorted(&[
            "owner",
            "name",
            "descr",
            "language",
            "source",
            "admin_status",
            "oper_status",
            "storage_type",
            "row_status",
            "error",
            "last_change",
            "file",
        ])
    );
    let hi = rows.iter().find(|r| r["name"] == "hi").unwrap();
    assert_eq!(
        (
            &hi["descr"],
            &hi["storage_type"],
            &hi["oper_status"],
            &hi["file"]
        ),
        (
            &json!("from a file"),
            &json!("nonVolatile"),
            &json!("enabled"),
            &json!("ops/%mib/hi")
        )
    );
    assert_eq!(
        smx(&["script", "list", "--json", "--owner", "nobody"], s).stdout,
        "[]\n"
    );

    // launch add.
    let o = smx(
        &[
            "launch",
            "add",
            "ops",
            "hi",
            "--script",
            "ops/hello.sh",
            "--argument",
            "world",
            "--max-completed",
            "3",
        ],
        s,
    );
    assert_eq!(
        ok_out(&o),
        "launch button ops/hi added: enabled, script ops/hello.sh, volatile\n"
    );
    let o = smx(
        &[
            "launch",
            "add",
            "ops",
            "bare",
            "--script",
            "hello.sh",
            "--lifetime",
            "5",
            "--expire",
            "60",
            "--max-running",
            "2",
            "--argument-hex",
            "00ff",
        ],
        s,
    );
    assert!(
        ok_out(&o).contains("script ops/hello.sh"),
        "a bare SNAME is OWNER's"
    );
    let o = smx(
        &[
            "launch",
            "add",
            "ops",
            "orphan",
            "--script",
            "ops/missing.sh",
        ],
        s,
    );
    assert_eq!(
        ok_out(&o),
        "launch button ops/orphan added: disabled, script ops/missing.sh, volatile\n",
        "a button may name a script that does not exist (yet)"
    );
    for (name, script) in [("failing", "fail.sh"), ("sl", "sleeper")] {
        ok_out(&smx(&["launch", "add", "ops", name, "--script", script], s));
    }
    fails(
        &smx(
            &["launch", "add", "ops", "hi", "--script", "ops/hello.sh"],
            s,
        ),
        &[
            "launch button ops/hi: ",
            "inconsistentValue",
            "exists already",
            "(inconsistent_value)",
        ],
    );
    fails(
        &smx(
            &[
                "launch",
                "add",
                "ops",
                "z",
                "--script",
                "hello.sh",
                "--max-running",
                "0",
            ],
            s,
        ),
        &[
            "smLaunchMaxRunning: wrongValue",
            "1..4294967295",
            "(wrong_value)",
        ],
    );
    fails(
        &smx(&["launch", "add", "ops", &long, "--script", "hello.sh"], s),
        &["noCreation", "(no_creation)"],
    );
    let long_script = format!("ops/{long}");
    fails(
        &smx(&["launch", "add", "ops", "z", "--script", &long_script], s),
        &["smLaunchScriptName: wrongLength", "(wrong_length)"],
    );

    // launch list and --json: the smLaunchTable columns.
    let o = smx(&["launch", "list", "--socket", sock_str], None);
    let out = ok_out(&o);
    let hi_row = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("hi"))
        .unwrap();
    for w in ["ops/hello.sh", "enabled", "0/1", " 3 ", "3600s", "volatile"] {
        assert!(hi_row.contains(w), "{w:?} in {hi_row}");
    }
    let o = smx(&["launch", "list", "--json"], s);
    let rows: Vec<Value> = serde_json::from_str(ok_out(&o)).unwrap();
    assert_eq!(
        json_keys(&rows[0]),
        sorted(&[
            "owner",
            "name",
            "script_owner",
            "script_name",
            "argument",
            "max_running",
            "max_completed",
            "lifetime",
            "expire_time",
            "start",
            "admin_status",
            "storage_type",
            "row_status",
            "error",
            "last_change",
            "oper_status",
            "row_expire_time",
            "running",
            "implicit",
        ])
    );
    let bare = rows.iter().find(|r| r["name"] == "bare").unwrap();
    assert_eq!(
        (
            &bare["lifetime"],
            &bare["expire_time"],
            &bare["max_running"],
            &bare["argument"]
        ),
        (
            &json!(500),
            &json!(6000),
            &json!(2),
            &json!({"hex": "00FF"})
        )
    );

    // launch start: --wait prints the result and exits as smx run does.
    let o = smx(&["launch", "start", "ops", "hi", "--wait"], s);
    assert_eq!(ok_out(&o), "hello world\n");
    let o = smx(
        &[
            "launch",
            "start",
            "ops",
            "hi",
            "--wait",
            "--json",
            "--argument",
            "json",
        ],
        s,
    );
    let row: Value = serde_json::from_str(ok_out(&o)).unwrap();
    assert_eq!(
        (
            &row["owner"],
            &row["name"],
            &row["index"],
            &row["state"],
            &row["exit_code"],
            &row["result"]
        ),
        (
            &json!("ops"),
            &json!("hi"),
            &json!(2),
            &json!("terminated"),
            &json!("noError"),
            &json!("hello json")
        )
    );
    let id = row["run_id"].to_string();
    let status: Value = serde_json::from_str(ok_out(&smx(&["status", "--json", &id], s))).unwrap();
    assert_eq!(
        json_keys(&row),
        json_keys(&status),
        "the row as smx status --json has it"
    );
    for k in [
        "run_id",
        "index",
        "argument",
        "result",
        "exit_code",
        "start_time",
        "end_time",
    ] {
        assert_eq!(row[k], status[k], "{k}");
    }
    // --argument stays set on the button, as smLaunchArgument does.
    assert_eq!(
        ok_out(&smx(&["launch", "start", "ops", "hi", "--wait"], s)),
        "hello json\n"
    );
    let o = smx(&["launch", "start", "ops", "failing", "--wait"], s);
    assert_eq!(o.code, Some(16), "runtimeError is 10 + 6: {o:#?}");
    assert!(
        o.stderr.contains("ended with runtimeError") && o.stderr.contains("boom"),
        "{o:#?}"
    );
    // --index, and without --wait the row as created.
    let o = smx(&["launch", "start", "ops", "hi", "--index", "7"], s);
    let out = ok_out(&o);
    assert!(
        out.starts_with("run ") && out.ends_with(": ops/hi index 7: initializing\n"),
        "{out}"
    );
    let run7: u64 = out["run ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut c = d.client().await;
    let done = t(c.wait(smx::proto::RunId(run7))).await.unwrap();
    assert_eq!(done.index, 7);
    fails(
        &smx(&["launch", "start", "ops", "hi", "--index", "7"], s),
        &[
            "smLaunchStart: inconsistentValue: check 5: smRunIndex 7 is in use",
            "(inconsistent_value)",
        ],
    );
    fails(
        &smx(&["launch", "start", "ops", "orphan"], s),
        &[
            "launch button ops/orphan: ",
            "check 2: no script ops/missing.sh",
        ],
    );
    fails(
        &smx(&["launch", "start", "ops", "nosuch"], s),
        &["launch button ops/nosuch: no such launch button (no_such_row)"],
    );
    let o = smx(&["launch", "start", "ops", "sl", "--json"], s);
    let sl: Value = serde_json::from_str(ok_out(&o)).unwrap();
    assert_eq!(
        (&sl["state"], &sl["index"]),
        (&json!("initializing"), &json!(1))
    );
    let sl_id = sl["run_id"].to_string();
    fails(
        &smx(&["launch", "start", "ops", "sl"], s),
        &["check 6", "smLaunchMaxRunning is 1"],
    );
    runs_until(&mut c, "ops", "sl", 15, "executing", |rs| {
        rs.iter().any(|r| r.state == RunState::Executing)
    })
    .await;

    // ps: the smRunTable index (owner, launch, index).
    let o = smx(&["ps"], s);
    let out = ok_out(&o);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "RUNID", "OWNER", "LAUNCH", "INDEX", "RUNTIME", "STATE", "EXIT", "AGE", "RESULT"
        ]
    );
    let cells: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        cells
            .iter()
            .any(|c| c[0] == run7.to_string() && c[1..4] == ["ops", "hi", "7"]),
        "{out}"
    );
    assert!(
        cells
            .iter()
            .any(|c| c[0] == sl_id && c[1..6] == ["ops", "sl", "1", "exec", "executing"]),
        "{out}"
    );

    // A script whose runs still execute is neither replaced nor removed, and stays enabled.
    fails(
        &smx(&["script", "install", "ops", "sleeper", hello_s], s),
        &[
            "script ops/sleeper: ",
            "still running",
            "launch button ops/sl",
            "(inconsistent_value)",
        ],
    );
    fails(
        &smx(&["script", "remove", "ops", "sleeper"], s),
        &["still running", "(inconsistent_value)"],
    );
    let left = script_row(&mut c, "ops", "sleeper").await.unwrap();
    assert_eq!(left.oper_status, ScriptOper::Enabled, "{left:#?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("storage/ops/%mib/sleeper")).unwrap(),
        SLEEPER,
        "the old script is still the stored one"
    );
    ok_out(&smx(&["abort", &sl_id], s));
    assert_eq!(
        ok_out(&smx(&["script", "remove", "ops", "sleeper"], s)),
        "script ops/sleeper removed\n"
    );
    assert!(
        !dir.join("storage/ops/%mib/sleeper").exists(),
        "its stored file goes too"
    );
    fails(
        &smx(&["script", "remove", "ops", "sleeper"], s),
        &["script ops/sleeper: no such script (no_such_row)"],
    );
    // A replacement of an idle script goes through.
    let o = smx(
        &[
            "script",
            "install",
            "ops",
            "hello.sh",
            fail.to_str().unwrap(),
        ],
        s,
    );
    ok_out(&o);
    assert_eq!(
        smx(&["launch", "start", "ops", "hi", "--wait"], s).code,
        Some(16)
    );
    assert_eq!(
        ok_out(&smx(&["launch", "remove", "ops", "hi"], s)),
        "launch button ops/hi removed\n"
    );
    fails(
        &smx(&["launch", "remove", "ops", "hi"], s),
        &["launch button ops/hi: no such launch button (no_such_row)"],
    );
}

#[test]
fn cli_script_and_launch_verbs_without_a_daemon_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-daemon.sock");
    let hello = file(dir.path(), "hello.sh", HELLO, 0o644);
    let h = hello.to_str().unwrap();
    let verbs: [&[&str]; 9] = [
        &["script", "install", "o", "n", h],
        &["script", "install", "o", "n", "--source", "file:///x"],
        &["script", "list"],
        &["script", "remove", "o", "n"],
        &["launch", "add", "o", "n", "--script", "o/n"],
        &["launch", "list", "--json"],
        &["launch", "start", "o", "n", "--wait"],
        &["launch", "remove", "o", "n"],
        &["ps"],
    ];
    for verb in verbs {
        for via_env in [false, true] {
            let o = if via_env {
                smx(verb, Some(&missing))
            } else {
                let mut args = verb.to_vec();
                args.extend(["--socket", missing.to_str().unwrap()]);
                smx(&args, None)
            };
            fails(
                &o,
                &[
                    &format!("smx: cannot reach smx daemon at {}: ", missing.display()),
                    "is `smx daemon` running?",
                ],
            );
        }
    }
}

// =======================================================================================
// Storage quota.

/// Every file below `dir`, as paths relative to it (temporary files included).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Issue 11: `[host] storage_quota` exceeded, through every way a script gets stored (the
/// smScriptTable row of `smx script install`, the API's `install`, `smx run --daemon`),
/// is a clear error naming the owner, the size and the setting, and leaves nothing
/// half-written: no file (nor temporary file) in the storage, no smScriptTable row, and
/// after a restart on the same state_dir none either. Another owner's quota is its own.
#[tokio::test]
async fn storage_quota_exceeded_is_clear_and_leaves_nothing_behind() {
    let tmp = tempdir();
    let dir = tmp.path();
    let mut d = Daemon::start(dir, true, "storage_quota = 1000", "");
    let sock = d.socket.clone();
    let small = file(
        dir,
        "small.sh",
        &format!("#!/bin/sh\n#{}\n", "s".repeat(580)),
        0o755,
    );
    let big = file(
        dir,
        "big.sh",
        &format!("#!/bin/sh\n#{}\n", "b".repeat(580)),
        0o755,
    );
    let small_s = small.display().to_string();
    let big_s = big.display().to_string();
    ok_out(&smx(
        &[
            "script",
            "install",
            "noc",
            "small.sh",
            &small_s,
            "--storage",
            "nonVolatile",
        ],
        Some(&sock),
    ));
    let before = files_under(&dir.join("storage"));
    assert_eq!(before, ["noc/%mib/small.sh"], "{before:?}");

    let o = smx(
        &[
            "script",
            "install",
            "noc",
            "big.sh",
            &big_s,
            "--storage",
            "nonVolatile",
        ],
        Some(&sock),
    );
    fails(
        &o,
        &[
            "owner \"noc\" would hold 1184 octets of smCodeText",
            "the quota is 1000",
            "storage_quota",
        ],
    );
    let mut c = d.client().await;
    let e = refused(t(c.install("noc", "api.sh", &[b'#'; 600], true)).await);
    assert!(
        e.1.contains("owner \"noc\" would use") && e.1.contains("storage_quota"),
        "{e:?}"
    );
    let o = smx(&["run", "--daemon", "--owner", "noc", &big_s], Some(&sock));
    fails(&o, &["owner \"noc\" would use", "storage_quota"]);

    assert_eq!(
        files_under(&dir.join("storage")),
        before,
        "nothing half-written"
    );
    let names =
        |rows: Vec<ScriptRow>| -> Vec<String> { rows.into_iter().map(|r| r.name).collect() };
    assert_eq!(
        names(t(c.scripts(Some("noc"))).await.unwrap()),
        ["small.sh"]
    );
    assert!(
        t(c.runs(Some("noc"))).await.unwrap().is_empty(),
        "no run started"
    );
    // Another owner's quota is its own.
    ok_out(&smx(
        &[
            "script",
            "install",
            "ops",
            "big.sh",
            &big_s,
            "--storage",
            "nonVolatile",
        ],
        Some(&sock),
    ));

    drop(c);
    d.stop();
    let d = Daemon::start(dir, true, "storage_quota = 1000", "");
    let mut c = d.client().await;
    assert_eq!(
        names(t(c.scripts(Some("noc"))).await.unwrap()),
        ["small.sh"]
    );
    assert_eq!(names(t(c.scripts(Some("ops"))).await.unwrap()), ["big.sh"]);
}
