//! `smx daemon` under abuse: clients that disconnect mid-request, never read, pipeline and
//! vanish, or hold more connections than the daemon has file descriptors. Every test runs
//! the real binary and measures the daemon process itself (/proc/<pid>/status and stat):
//! memory, CPU time, and how long a well-behaved client then waits.
//!
//! Tests that run scripts need root (every daemon owner maps to an OS profile whose
//! identity change only root may make, see tests/daemon.rs); they skip, saying so, when
//! not root. The tests of this file run one at a time: they measure CPU and latency.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader as StdBufReader, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cpu_ticks, smx_bin};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long any single read from the daemon may take before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// One test at a time: the CPU and latency bounds assume the daemon under test is alone.
/// (An async mutex: each test has its own runtime, and the guard is held across awaits.)
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Root-only tests are `#[ignore = "needs root"]` and run with `--include-ignored` (CI runs
/// as root); run without root they fail here instead of passing by returning early.
macro_rules! need_root {
    () => {
        need_root!("it runs scripts through the daemon as mapped owners")
    };
    ($why:expr) => {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: {} (run as root, or leave out --include-ignored)",
            $why
        )
    };
}

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("current user has a name")
        .name
}

/// Clock ticks per second, for /proc/<pid>/stat.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// VmRSS of a process in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The share of one core the process used over `window`.
async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let t0 = cpu_ticks(pid);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let used = (cpu_ticks(pid) - t0) as f64 / ticks_per_sec();
    used / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// The daemon under test.

/// A running `smx daemon`; killed when dropped, even on panic.
struct Daemon {
    child: Child,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    /// Extra `[host]` settings of its config.
    host: String,
    /// The last lines of its log (bounded: a daemon that floods its log must not grow
    /// the test), and how many lines there were in all.
    log: Arc<Mutex<(VecDeque<String>, usize)>>,
}

/// The config: storage in `dir`, the exec runtime, the invoking user's name mapped to an
/// OS profile running as that user, and `control` as the `[control]` section.
fn config_text(dir: &Path, host: &str, control: &str) -> String {
    format!(
        r#"[host]
storage = {storage:?}
hello_timeout = "5s"
command_timeout = "5s"
shutdown_grace = "2s"
{host}

[control]
{control}

[[runtime]]
name = "exec"
command = [{bin:?}, "exec-runtime", "--profiles", "trusted", "--grace", "1s"]
extensions = ["sh"]
profiles = ["trusted"]

[[os_profile]]
name = "self"
user = {me:?}

[[owner]]
name = {me:?}
os_profile = "self"
runtime_profile = "trusted"
"#,
        storage = dir.join("storage").display().to_string(),
        bin = smx_bin().display().to_string(),
        me = me(),
    )
}

impl Daemon {
    fn start(control: &str) -> Daemon {
        Daemon::start_with(control, None)
    }

    /// A daemon whose RLIMIT_NOFILE is `nofile` (soft and hard), if given.
    fn start_with(control: &str, nofile: Option<u64>) -> Daemon {
        Daemon::start_full("", control, nofile.map(|n| (n, n)))
    }

    /// A daemon with extra `[host]` settings `host`, started with RLIMIT_NOFILE
    /// `(soft, hard)` if given.
    fn start_full(host: &str, control: &str, nofile: Option<(u64, u64)>) -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("smx-limits-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path().to_owned();
        let config = dir.join("smx.toml");
        let socket = dir.join("smx.sock");
        std::fs::write(&config, config_text(&dir, host, control)).unwrap();
        let mut cmd = Command::new(smx_bin());
        cmd.args(["-v", "daemon", "--config"])
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .env_remove("SMX_SOCKET")
            .env_remove("SMX_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((soft, hard)) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start smx daemon");
        let log = Arc::new(Mutex::new((VecDeque::new(), 0)));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in StdBufReader::new(stderr).lines() {
                let Ok(l) = l else { break };
                let mut s = sink.lock().unwrap();
                s.1 += 1;
                s.0.push_back(l);
                if s.0.len() > 2000 {
                    s.0.pop_front();
                }
            }
        });
        let mut d = Daemon {
            child,
            _tmp: tmp,
            dir,
            socket,
            config,
            host: host.to_owned(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
            if let Some(st) = d.child.try_wait().unwrap() {
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        let s = self.log.lock().unwrap();
        s.0.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Lines of the log that contain `needle`, among the retained ones.
    fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .0
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn log_lines(&self) -> usize {
        self.log.lock().unwrap().1
    }

    async fn raw(&self) -> Raw {
        Raw::connect(&self.socket).await
    }

    /// Replaces the config file and makes the daemon reload it.
    async fn reload(&self, control: &str) {
        let before = self.log_count("configuration reloaded");
        let tmp = self.dir.join("smx.toml.new");
        std::fs::write(&tmp, config_text(&self.dir, &self.host, control)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log_count("configuration reloaded") == before {
            assert!(Instant::now() < deadline, "no reload:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// A raw control-protocol client.

struct Raw {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    next: u64,
    stash: VecDeque<Value>,
}

impl Raw {
    async fn connect(path: &Path) -> Raw {
        let mut c = Raw::open(path).await;
        let g = c.line().await.expect("a greeting");
        assert_eq!(g["protocol"], "smx-control", "{g}");
        c
    }

    /// Connects without reading the greeting.
    async fn open(path: &Path) -> Raw {
        let s = UnixStream::connect(path)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        let (r, w) = s.into_split();
        Raw {
            r: BufReader::new(r),
            w,
            next: 1000,
            stash: VecDeque::new(),
        }
    }

    /// The next line from the daemon, `None` at end of stream.
    async fn line(&mut self) -> Option<Value> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(READ_TIMEOUT, self.r.read_until(b'\n', &mut buf))
            .await
            .expect("the daemon answered in time")
            .expect("read from daemon");
        if n == 0 {
            return None;
        }
        Some(
            serde_json::from_slice(&buf)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&buf))),
        )
    }

    async fn send(&mut self, mut req: Value) -> Value {
        self.next += 1;
        req["id"] = json!(self.next);
        let mut l = serde_json::to_vec(&req).unwrap();
        l.push(b'\n');
        self.w.write_all(&l).await.expect("write to daemon");
        req["id"].clone()
    }

    async fn response(&mut self, id: &Value) -> Value {
        if let Some(i) = self
            .stash
            .iter()
            .position(|v| v.get("ok").is_some() && v["id"] == *id)
        {
            return self.stash.remove(i).unwrap();
        }
        loop {
            let v = self.line().await.expect("connection open");
            if v.get("ok").is_some() && v["id"] == *id {
                return v;
            }
            self.stash.push_back(v);
        }
    }

    async fn ok(&mut self, req: Value) -> Value {
        let what = req.to_string();
        let id = self.send(req).await;
        let r = self.response(&id).await;
        assert_eq!(r["ok"], true, "{what} -> {r}");
        r["result"].clone()
    }

    async fn install(&mut self, name: &str, body: &str) -> String {
        let r = self
            .ok(json!({"op": "install", "owner": me(), "name": name, "content": body, "executable": true}))
            .await;
        r["script"].as_str().unwrap().to_owned()
    }

    async fn launch(&mut self, script: &str) -> u64 {
        let r = self
            .ok(json!({"op": "launch", "owner": me(), "script": script}))
            .await;
        r["run_id"].as_u64().unwrap()
    }

    async fn reach(&mut self, run: u64, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.ok(json!({"op": "run", "run_id": run})).await;
            if r["state"] == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "run {run} never reached {state}: {r}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn clients(&mut self) -> u64 {
        self.ok(json!({"op": "stats"})).await["clients"]
            .as_u64()
            .unwrap()
    }
}

const SLEEPER: &str = "#!/bin/sh\nexec sleep 600\n";

/// Reports a 60,000-octet result as fast as the shell can, until aborted.
const FLOOD: &str = "#!/bin/bash\nx=$(head -c 60000 /dev/zero | tr '\\0' x)\n\
                     while :; do echo \"result $x\" >&3; done\n";

// =======================================================================================

/// A client that disconnects while its `wait` is pending is gone at once: before, the
/// wait's task kept the connection's writer alive (and the client counted in `stats`)
/// until the run ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_client_gone_with_a_pending_wait_is_forgotten_at_once() {
    need_root!();
    let _serial = serial().await;
    let d = Daemon::start("");
    let mut c = d.raw().await;
    let sleeper = c.install("sleeper.sh", SLEEPER).await;
    let run = c.launch(&sleeper).await;
    c.reach(run, "executing").await;
    let before = c.clients().await;
    assert_eq!(before, 1);

    let mut w = d.raw().await;
    let wait = w.send(json!({"op": "wait", "run_id": run})).await;
    // Served in order of reading: once whoami is answered, the wait is pending.
    w.ok(json!({"op": "whoami"})).await;
    assert!(
        w.stash.iter().all(|v| v["id"] != wait),
        "wait answered early"
    );
    assert_eq!(c.clients().await, 2);
    drop(w);

    let t0 = Instant::now();
    loop {
        let n = c.clients().await;
        if n == before {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "clients still {n} (was {before}) {:?} after the waiting client closed",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("client forgotten {:?} after it closed", t0.elapsed());
    c.ok(json!({"op": "abort", "run_id": run})).await;
}

/// A subscriber that never reads while a run floods 60 KB results: the daemon's memory
/// stays bounded (the event bus and the connection's queue are bounded in bytes), and the
/// subscriber, once it reads, is told how many events it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_subscriber_that_never_reads_does_not_grow_the_daemon() {
    need_root!();
    let _serial = serial().await;
    let d = Daemon::start("");
    let mut c = d.raw().await;
    let flood = c.install("flood.sh", FLOOD).await;
    let mut sub = d.raw().await;
    sub.ok(json!({"op": "subscribe"})).await;
    let base = rss(d.pid());

    let run = c.launch(&flood).await;
    c.reach(run, "executing").await;
    let t0 = Instant::now();
    let mut peak = 0;
    let mut results = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        peak = peak.max(rss(d.pid()));
        assert!(
            peak < 100 << 20,
            "daemon VmRSS {} MB after {:?} of the flood",
            peak >> 20,
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The daemon still serves others, and the flood is really on.
        let row = c.ok(json!({"op": "run", "run_id": run})).await;
        assert_eq!(row["state"], "executing", "{row}");
        results += 1;
    }
    eprintln!(
        "VmRSS before the flood {} MB, peak during 10 s of it {} MB ({results} polls)",
        base >> 20,
        peak >> 20
    );
    c.ok(json!({"op": "abort", "run_id": run})).await;

    // The subscriber's backlog: events, then (soon) the count of those it lost.
    let mut lagged = None;
    for _ in 0..5000 {
        let Some(n) = sub.line().await else { break };
        if let Some(l) = n.get("lagged") {
            lagged = l.as_u64();
            break;
        }
    }
    let lost = lagged.expect("a lagged notice");
    assert!(lost > 0);
    eprintln!("the subscriber lost {lost} events");
}

/// 1,100 idle connections against a daemon limited to 1024 file descriptors: accept
/// fails with EMFILE while they are held. The daemon must back off instead of retrying at
/// once (which spun a core and logged 17 MB/s), and serve a new client promptly once they
/// are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_connections_than_descriptors_cost_no_cpu() {
    let _serial = serial().await;
    let d = Daemon::start_with(
        "max_connections = 5000\nmax_connections_per_uid = 5000\nidle_timeout = \"10m\"",
        Some(1024),
    );
    let mut held = Vec::new();
    for i in 0..1100 {
        // Non-blocking: a full listen backlog fails the test instead of hanging it.
        match tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(&d.socket)).await {
            Ok(Ok(s)) => held.push(s),
            other => panic!("connection {i}: {other:?}"),
        }
    }
    // Let the daemon accept what it can and hit the limit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines_before = d.log_lines();
    let share = cpu_share(d.pid(), Duration::from_secs(4)).await;
    let logged = d.log_lines() - lines_before;
    eprintln!(
        "1100 connections held: daemon CPU {:.1}% of a core, {logged} log lines in 4 s",
        share * 100.0
    );
    assert!(
        d.log_count("accept failed") > 0,
        "the daemon never ran out of descriptors:\n{}",
        d.log()
    );
    assert!(share < 0.10, "daemon used {:.1}% of a core", share * 100.0);
    assert!(logged <= 20, "{logged} log lines in 4 s:\n{}", d.log());

    drop(held);
    let t0 = Instant::now();
    let mut c = tokio::time::timeout(Duration::from_secs(5), d.raw())
        .await
        .expect("greeting");
    let who = c.ok(json!({"op": "whoami"})).await;
    let took = t0.elapsed();
    assert_eq!(who["uid"], nix::unistd::geteuid().as_raw(), "{who}");
    eprintln!("after closing them: greeting and whoami in {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// Reads one line from a fresh connection and checks it is a `too_many_connections`
/// refusal naming `cap`, followed by the close.
async fn refused(d: &Daemon, cap: &str) {
    let mut r = Raw::open(&d.socket).await;
    let l = r.line().await.expect("one line");
    assert_eq!(l["ok"], false, "{l}");
    assert_eq!(l["error"]["code"], "too_many_connections", "{l}");
    let msg = l["error"]["message"].as_str().unwrap();
    assert!(msg.contains(cap), "{msg}");
    assert_eq!(r.line().await, None, "closed after the line");
}

/// `[control] max_connections` (reloadable): a connection over the cap gets one
/// `too_many_connections` line instead of the greeting and is closed; a closed connection
/// frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_with_one_line() {
    let _serial = serial().await;
    let d = Daemon::start("max_connections = 3");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(d.raw().await);
    }
    refused(&d, "[control] max_connections)").await;
    // The CLI says so, not "greeting: missing field".
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smx"))
        .args(["ps", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("too_many_connections"),
        "{err}"
    );
    assert_eq!(open[0].clients().await, 3);
    drop(open.pop());
    // The daemon frees the place once it has seen the close (bounded wait, no fixed sleep).
    let t0 = Instant::now();
    while open[0].clients().await != 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the closed connection still counts"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    open.push(d.raw().await);
    refused(&d, "[control] max_connections)").await;

    d.reload("max_connections = 4").await;
    open.push(d.raw().await);
    refused(&d, "already has 4 control connections").await;
    for c in &mut open {
        c.ok(json!({"op": "whoami"})).await;
    }
    assert!(
        d.log_count("control connection refused") >= 1,
        "refusals are logged:\n{}",
        d.log()
    );
}

/// Run as another user by `the_per_uid_cap_leaves_room_for_others` (does nothing
/// otherwise): opens `SMXL_COUNT` connections to `SMXL_SOCKET`, prints the first line of
/// each as `SMXL> <line>`, and holds them until its stdin closes.
#[test]
#[ignore = "helper: the per-uid cap test runs it as another user"]
fn hold_connections_helper() {
    use std::io::Read as _;
    let Some(sock) = std::env::var_os("SMXL_SOCKET") else {
        return;
    };
    let n: usize = std::env::var("SMXL_COUNT").unwrap().parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..n {
        let s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut r = StdBufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        println!("SMXL> {}", line.trim_end());
        held.push(s);
    }
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// `[control] max_connections_per_uid`: one user over its cap is refused while root (and
/// the daemon's own user) are bound by `max_connections` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn the_per_uid_cap_leaves_room_for_others() {
    need_root!();
    let _serial = serial().await;
    let gid = common::group("smxt-limits");
    let (uid, _) = common::user("smxt-limits-u", &["smxt-limits"]);
    let d = Daemon::start(&format!(
        "max_connections = 10\nmax_connections_per_uid = 2\nsocket_group = {gid}"
    ));
    // The other user must reach the socket and run the helper.
    let helper = d.dir.join("daemon-limits-test");
    std::fs::copy(std::env::current_exe().unwrap(), &helper).unwrap();
    for p in [&d.dir, &helper] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut child = Command::new(&helper)
        .args([
            "--ignored",
            "--exact",
            "hold_connections_helper",
            "--nocapture",
        ])
        .env("SMXL_SOCKET", &d.socket)
        .env("SMXL_COUNT", "3")
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in StdBufReader::new(out).lines().map_while(Result::ok) {
            if let Some(v) = l.strip_prefix("SMXL> ") {
                let _ = tx.send(v.to_owned());
            }
        }
    });
    let mut got = Vec::new();
    for _ in 0..3 {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("helper: {e}; so far {got:?}\n{}", d.log()));
        got.push(serde_json::from_str::<Value>(&l).unwrap());
    }
    assert_eq!(got[0]["protocol"], "smx-control", "{got:?}");
    assert_eq!(got[1]["protocol"], "smx-control", "{got:?}");
    assert_eq!(got[2]["error"]["code"], "too_many_connections", "{got:?}");
    let msg = got[2]["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("uid {uid}")) && msg.contains("max_connections_per_uid"),
        "{msg}"
    );
    // Root is not bound by the per-uid cap: 2 + 5 connections, all served.
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(d.raw().await);
    }
    assert_eq!(mine[0].clients().await, 7);
    drop(child.stdin.take());
    let _ = child.wait();
}

/// `[control] idle_timeout`: a connection that sends no request in time is told and
/// closed; one that has sent a request (a subscriber, say) may then stay quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_quiet_clients_are_not() {
    let _serial = serial().await;
    let d = Daemon::start("idle_timeout = \"1s\"");
    let t0 = Instant::now();
    let mut idle = d.raw().await;
    let mut asked = d.raw().await;
    asked.ok(json!({"op": "whoami"})).await;
    let mut sub = d.raw().await;
    sub.ok(json!({"op": "subscribe"})).await;

    let l = idle.line().await.expect("a line before the close");
    let took = t0.elapsed();
    assert_eq!(l["error"]["code"], "idle_timeout", "{l}");
    assert_eq!(idle.line().await, None);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    asked.ok(json!({"op": "whoami"})).await;
    sub.ok(json!({"op": "whoami"})).await;
    assert_eq!(asked.clients().await, 2);
}

/// A client that pipelines `runs` requests over a big table (up to 220 KB of them; the
/// daemon stops reading after a few KB, as the answers are not read) and closes: the daemon
/// stops at the first answer it cannot write. Before, it went on serializing every request
/// it had read for nobody (1.6 cores for 32 s in the report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn pipelined_requests_of_a_vanished_client_stop_at_once() {
    need_root!();
    let _serial = serial().await;
    let d = Daemon::start("");
    let mut c = d.raw().await;
    // 20 rows with a 60 KB result each: every `runs` answer is 1.2 MB of JSON.
    let big = c
        .install(
            "big.sh",
            "#!/bin/sh\nhead -c 60000 /dev/zero | tr '\\0' x\n",
        )
        .await;
    let runs: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(c.launch(&big).await);
        }
        v
    };
    for r in &runs {
        c.reach(*r, "terminated").await;
    }
    let s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_nonblocking(true).unwrap();
    let req = b"{\"op\":\"runs\"}\n";
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut w = &s;
    while sent < 220 * 1024 && Instant::now() < deadline {
        match w.write(req) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    drop(s);
    eprintln!("pipelined {} KB of runs requests, then closed", sent / 1024);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let share = cpu_share(d.pid(), Duration::from_secs(3)).await;
    eprintln!(
        "daemon CPU 0.5-3.5 s after the client closed: {:.1}% of a core",
        share * 100.0
    );
    assert!(share < 0.10, "daemon used {:.1}% of a core", share * 100.0);
    let t0 = Instant::now();
    c.ok(json!({"op": "whoami"})).await;
    assert!(t0.elapsed() < Duration::from_secs(1));
}

/// EOF semantics: after the client shuts down its sending side, a request that acts (an
/// `abort`) is still answered, its pending `wait` is dropped, and the daemon closes the
/// connection at once instead of holding it until the waited-for run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn at_eof_acting_requests_are_answered_and_waits_dropped() {
    need_root!();
    let _serial = serial().await;
    let d = Daemon::start("");
    let mut c = d.raw().await;
    let sleeper = c.install("sleeper.sh", SLEEPER).await;
    let (a, b) = (c.launch(&sleeper).await, c.launch(&sleeper).await);
    c.reach(a, "executing").await;
    c.reach(b, "executing").await;

    let mut h = d.raw().await;
    let wait = h.send(json!({"op": "wait", "run_id": b})).await;
    let abort = h.send(json!({"op": "abort", "run_id": a})).await;
    h.w.shutdown().await.unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    while let Some(l) = h.line().await {
        got.push(l);
    }
    let took = t0.elapsed();
    assert!(
        got.iter()
            .any(|l| l["id"] == abort && l["result"]["exit_code"] == "halted"),
        "the abort was answered: {got:?}"
    );
    assert!(
        got.iter().all(|l| l["id"] != wait),
        "the wait was dropped: {got:?}"
    );
    eprintln!(
        "answered and closed {took:?} after the EOF: {} lines",
        got.len()
    );
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    let row = c.ok(json!({"op": "run", "run_id": b})).await;
    assert_eq!(
        row["state"], "executing",
        "the waited-for run goes on: {row}"
    );
    // The seat is freed right after the close the client saw.
    let t1 = Instant::now();
    while c.clients().await != 1 {
        assert!(t1.elapsed() < Duration::from_secs(1), "still counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.ok(json!({"op": "abort", "run_id": b})).await;
}

/// A host that runs out of descriptors starting runtimes ends the runs it cannot serve
/// with noResourcesLeft (RFC 3165 smRunExitCode) and says why in smRunError; it never
/// leaves them waiting, and once descriptors are free again launches succeed. One run per
/// runtime process, so every launch needs new pipes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn running_out_of_descriptors_is_a_per_run_error_not_a_stall() {
    need_root!();
    let _serial = serial().await;
    let d = Daemon::start_full(
        "max_runs_per_runtime = 1\nmax_active_runs = 200\nidle_timeout = \"1s\"",
        "",
        Some((64, 64)),
    );
    let mut c = d.raw().await;
    let s = c.install("sleep.sh", SLEEPER).await;
    let mut runs = Vec::new();
    for _ in 0..40 {
        runs.push(c.launch(&s).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let infos = loop {
        let mut infos = Vec::new();
        for r in &runs {
            infos.push(c.ok(json!({"op": "run", "run_id": r})).await);
        }
        if infos
            .iter()
            .all(|i| i["state"] == "executing" || i["state"] == "terminated")
        {
            break infos;
        }
        assert!(
            Instant::now() < deadline,
            "runs left waiting: {:?}",
            infos
                .iter()
                .filter(|i| i["state"] != "executing" && i["state"] != "terminated")
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let executing = infos.iter().filter(|i| i["state"] == "executing").count();
    let failed: Vec<_> = infos
        .iter()
        .filter(|i| i["state"] == "terminated")
        .collect();
    eprintln!("{executing} executing, {} failed", failed.len());
    assert!(executing > 0, "{infos:?}");
    assert!(!failed.is_empty(), "64 descriptors held 40 runtimes?");
    for f in &failed {
        assert_eq!(f["exit_code"], "noResourcesLeft", "{f}");
        assert!(
            f["error"].as_str().unwrap().contains("Too many open files"),
            "{f}"
        );
    }

    // Free the descriptors: abort every run, wait for the idle runtimes to close.
    for (r, i) in runs.iter().zip(&infos) {
        if i["state"] == "executing" {
            c.ok(json!({"op": "abort", "run_id": r})).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.ok(json!({"op": "stats"})).await;
        if st["runtime_processes"]
            .as_array()
            .is_some_and(|p| p.is_empty())
        {
            break;
        }
        assert!(Instant::now() < deadline, "runtimes left: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = c.launch(&s).await;
    c.reach(again, "executing").await;
}

/// The soft and hard "Max open files" of a process, from /proc/<pid>/limits.
fn nofile_of(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let l = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let v: Vec<u64> = l
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

/// The daemon raises its soft open-file limit to the hard one at start; a runtime it
/// starts gets the soft limit the daemon was started with (a runtime may use select()),
/// except the exec runtime, which raises its own because it holds descriptors per script;
/// its scripts get the original back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn the_daemon_raises_its_open_file_limit_and_runtimes_get_the_original() {
    need_root!();
    let _serial = serial().await;
    let d = Daemon::start_full("", "", Some((1024, 8192)));
    assert_eq!(nofile_of(d.pid()), (8192, 8192));
    let mut c = d.raw().await;
    let py = c
        .install("sleep.py", "import time\ntime.sleep(600)\n")
        .await;
    let sh = c.install("sleep.sh", SLEEPER).await;
    let (py, sh) = (c.launch(&py).await, c.launch(&sh).await);
    c.reach(py, "executing").await;
    c.reach(sh, "executing").await;
    let pid = |r: Value| r["runtime_pid"].as_u64().unwrap() as u32;
    let py_rt = pid(c.ok(json!({"op": "run", "run_id": py})).await);
    let sh_rt = pid(c.ok(json!({"op": "run", "run_id": sh})).await);
    assert_eq!(nofile_of(py_rt), (1024, 8192), "the python runtime");
    assert_eq!(nofile_of(sh_rt), (8192, 8192), "the exec runtime");
    let scripts = common::children(sh_rt);
    assert_eq!(scripts.len(), 1, "{scripts:?}");
    assert_eq!(
        nofile_of(scripts[0]),
        (1024, 8192),
        "a script of the exec runtime"
    );
}

/// The event stream keeps up with a burst: 10,000 launches pipelined into the daemon,
/// each run started and finished at once by the runtime, and a subscriber that reads as
/// fast as it can sees every `launched` and every `terminated` event and never `lagged`
/// (the AgentX subagent turns these into smScriptAbort/smScriptResult traps, RFC 3165).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_subscriber_that_reads_keeps_up_with_a_burst_of_ten_thousand_runs() {
    need_root!();
    let _serial = serial().await;
    const N: u64 = 10_000;
    // Tables after `[control]`'s keys: the fake runtime, finishing every run at once.
    let fake = format!(
        "\n[[runtime]]\nname = \"fake\"\ncommand = [\"python3\", {:?}, \"--start\", \"finish\"]\n\
         extensions = [\"fake\"]\nprofiles = [\"trusted\"]\n",
        common::fixture("fake_runtime.py")
    );
    let d = Daemon::start_full("max_active_runs = 20000", &fake, None);
    let mut c = d.raw().await;
    let s = c.install("x.fake", "script").await;
    let mut sub = d.raw().await;
    sub.ok(json!({"op": "subscribe"})).await;

    let (ok, (launched, terminated, lagged)) = tokio::join!(
        async {
            let mut reqs = Vec::new();
            for i in 0..N {
                let mut l = serde_json::to_vec(
                    &json!({"op": "launch", "owner": me(), "script": s, "id": i}),
                )
                .unwrap();
                l.push(b'\n');
                reqs.extend_from_slice(&l);
            }
            c.w.write_all(&reqs).await.unwrap();
            let mut ok = 0;
            for _ in 0..N {
                let r = c.line().await.expect("a reply");
                assert_eq!(r["ok"], true, "{r}");
                ok += 1;
            }
            ok
        },
        async {
            let (mut launched, mut terminated, mut lagged) = (0u64, 0u64, 0u64);
            while terminated < N {
                let v = sub.line().await.expect("the stream stays open");
                if let Some(n) = v.get("lagged") {
                    lagged += n.as_u64().unwrap();
                    break;
                }
                match v["event"]["event"].as_str() {
                    Some("launched") => launched += 1,
                    Some("terminated") => {
                        assert_eq!(v["event"]["exit_code"], "noError", "{v}");
                        terminated += 1
                    }
                    _ => {}
                }
            }
            (launched, terminated, lagged)
        }
    );
    eprintln!(
        "{ok} launched; events: {launched} launched, {terminated} terminated, lagged {lagged}"
    );
    assert_eq!(ok, N);
    assert_eq!(
        lagged, 0,
        "a subscriber reading as fast as it can lost events"
    );
    assert_eq!((launched, terminated), (N, N));
}
