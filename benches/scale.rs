//! Scale benchmark (issue 12): 10,000 live scripts through one `smx daemon`.
//!
//! The daemon starts with a soft RLIMIT_NOFILE of 1024 (hard: the bench's own, which stays
//! high), as a service often does; it must raise its own soft limit and spread the runs
//! over several exec runtime processes. Rows, all measured in this run:
//!
//! - burst: N sleeping exec scripts (`exec sleep 1000`) launched in one pipelined burst
//!   over the control socket: launches/s (replies to `launch`), time until every run is
//!   `executing` (from its event), failed launches; baseline: fork+exec of the same script
//!   N times from a plain Rust loop.
//! - with all N live: daemon and runtime RSS; `run` (status from the table) and `refresh`
//!   (asks the runtime, RFC 3179 6.2.7) p50/p99, one request at a time; `runs` (all N);
//!   baselines: a `ps`-style scan of /proc (every process's `stat`), and one
//!   `/proc/<pid>/stat` read.
//! - abort-all: N pipelined `abort`s until every `terminated` event; baseline: SIGKILL +
//!   wait of the baseline's N processes.
//! - events: launched/terminated seen by a subscriber that reads as fast as it can (each
//!   must be N) and lagged (must be 0).
//! - sustained: 2,000 launches/s of a copy of `/bin/true` for 30 s: achieved rate, failed
//!   runs, launch->terminated p50/p99; baseline: fork+exec+wait of `/bin/true` in a loop.
//!
//! Needs root (the owner maps to an OS profile). `cargo bench --bench scale`;
//! `SMX_SCALE_N=1000` and `SMX_SCALE_SECS=5` make a quick run; `SMX_SCALE_WRAP` runs the
//! daemon under a wrapper (`valgrind --tool=massif ...`).

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

fn smx_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smx"))
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("current user has a name")
        .name
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of a process (user + system) and of its reaped children.
fn cpu_secs(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<f64> = s
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|w| w.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    if f.len() < 15 {
        return (0.0, 0.0);
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // After the `)`: state is field 0, utime 11, stime 12, cutime 13, cstime 14.
    ((f[11] + f[12]) / hz, (f[13] + f[14]) / hz)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn fmt(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

/// One table row: what, the value, the baseline and their ratio, and the target.
fn row(name: &str, value: &str, base: &str, ratio: Option<f64>, target: &str) {
    let ratio = ratio.map_or(String::new(), |r| format!("{r:.2}x"));
    println!("| {name} | {value} | {base} | {ratio} | {target} |");
}

// ---------------------------------------------------------------------------------------

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(n: u64) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("smx-bench-scale-")
            .tempdir_in("/tmp")
            .unwrap();
        let config = dir.path().join("smx.toml");
        let socket = dir.path().join("smx.sock");
        let text = format!(
            r#"[host]
storage = {storage:?}
max_active_runs = {active}
max_finished_runs = 1000000

[[runtime]]
name = "exec"
command = [{smx:?}, "exec-runtime"]
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
            storage = dir.path().join("storage").display().to_string(),
            active = n + 1000,
            smx = smx_bin().display().to_string(),
            me = me(),
        );
        std::fs::write(&config, text).unwrap();
        // SMX_SCALE_WRAP="valgrind --tool=massif --massif-out-file=/tmp/m.out" profiles it.
        let wrap: Vec<String> = std::env::var("SMX_SCALE_WRAP")
            .map(|w| w.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let mut cmd = match wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(smx_bin());
                c
            }
            None => Command::new(smx_bin()),
        };
        cmd.arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: getrlimit/setrlimit are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let mut l = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
                l.rlim_cur = 1024;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start smx daemon");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "smx daemon exited");
            assert!(Instant::now() < deadline, "no daemon socket");
            std::thread::sleep(Duration::from_millis(5));
        }
        Daemon {
            child,
            socket,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first: a daemon under a profiler writes its output at exit.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control connection, read and written by hand so requests can be pipelined.
struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    next: u64,
}

impl Conn {
    async fn open(path: &Path) -> Conn {
        let (r, w) = UnixStream::connect(path).await.unwrap().into_split();
        let mut c = Conn {
            r: BufReader::with_capacity(1 << 16, r),
            w,
            next: 0,
        };
        let g = c.line().await;
        assert_eq!(g["protocol"], "smx-control", "{g}");
        c
    }

    async fn line(&mut self) -> Value {
        let mut buf = Vec::new();
        let n = self.r.read_until(b'\n', &mut buf).await.unwrap();
        assert!(n > 0, "the daemon closed the connection");
        serde_json::from_slice(&buf).unwrap()
    }

    async fn call(&mut self, mut req: Value) -> Value {
        self.next += 1;
        req["id"] = json!(self.next);
        let mut l = serde_json::to_vec(&req).unwrap();
        l.push(b'\n');
        self.w.write_all(&l).await.unwrap();
        loop {
            let v = self.line().await;
            if v["id"] == json!(self.next) {
                assert_eq!(v["ok"], true, "{req} -> {v}");
                return v["result"].clone();
            }
        }
    }
}

/// Writes `reqs` back to back and reads their replies as they come: (id -> reply, time
/// of the last reply).
async fn pipeline(path: &Path, reqs: Vec<Value>) -> (Vec<Value>, Instant) {
    let c = Conn::open(path).await;
    let (mut r, mut w) = (c.r, c.w);
    let n = reqs.len();
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(1 << 16);
        for (i, mut q) in reqs.into_iter().enumerate() {
            q["id"] = json!(i);
            serde_json::to_writer(&mut buf, &q).unwrap();
            buf.push(b'\n');
            if buf.len() > 32 * 1024 {
                w.write_all(&buf).await.unwrap();
                buf.clear();
            }
        }
        w.write_all(&buf).await.unwrap();
        w
    });
    let mut replies = vec![Value::Null; n];
    let mut got = 0;
    let mut buf = Vec::new();
    while got < n {
        buf.clear();
        assert!(r.read_until(b'\n', &mut buf).await.unwrap() > 0, "closed");
        let v: Value = serde_json::from_slice(&buf).unwrap();
        if let Some(i) = v["id"].as_u64() {
            replies[i as usize] = v;
            got += 1;
        }
    }
    let _w = writer.await.unwrap();
    (replies, Instant::now())
}

/// What a subscriber that reads as fast as it can has seen.
#[derive(Default)]
struct Seen {
    launched: AtomicU64,
    executing: AtomicU64,
    terminated: AtomicU64,
    terminated_ok: AtomicU64,
    lagged: AtomicU64,
    /// Run -> when its `terminated` event was read (sustained row only).
    ended_at: Mutex<Option<HashMap<u64, Instant>>>,
}

async fn subscriber(path: PathBuf, seen: Arc<Seen>) {
    let mut c = Conn::open(&path).await;
    c.call(json!({"op": "subscribe"})).await;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if c.r.read_until(b'\n', &mut buf).await.unwrap_or(0) == 0 {
            return;
        }
        let v: Value = serde_json::from_slice(&buf).unwrap();
        if let Some(n) = v["lagged"].as_u64() {
            seen.lagged.fetch_add(n, Ordering::Relaxed);
            continue;
        }
        let e = &v["event"];
        match e["event"].as_str() {
            Some("launched") => {
                seen.launched.fetch_add(1, Ordering::Relaxed);
            }
            Some("state") if e["state"] == "executing" => {
                seen.executing.fetch_add(1, Ordering::Relaxed);
            }
            Some("terminated") => {
                if e["exit_code"] == "noError" || e["exit_code"] == "halted" {
                    seen.terminated_ok.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(m) = seen.ended_at.lock().unwrap().as_mut() {
                    m.insert(e["run_id"].as_u64().unwrap(), Instant::now());
                }
                seen.terminated.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Instant::now()
}

/// Every process's state letter from /proc, as `ps` reads it.
fn proc_scan() -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && s.rsplit_once(')').is_some()
        {
            n += 1;
        }
    }
    n
}

fn runtime_pids(stats: &Value) -> Vec<u32> {
    stats["runtime_processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
        .collect()
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the scale bench needs root: its owner maps to an OS profile"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let n = env_num("SMX_SCALE_N", 10_000);
    let secs = env_num("SMX_SCALE_SECS", 30);
    let rate = env_num("SMX_SCALE_RATE", 2_000);
    let me = me();
    let tmp = tempfile::tempdir().unwrap();
    let sleeper = tmp.path().join("sleep.sh");
    let sleeper_text = "#!/bin/sh\nexec sleep 1000\n";
    std::fs::write(&sleeper, sleeper_text).unwrap();
    std::fs::set_permissions(
        &sleeper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    // Baseline: fork+exec of N sleepers from a plain loop, then kill and wait them.
    let t = Instant::now();
    let mut kids: Vec<Child> = (0..n)
        .map(|_| {
            Command::new(&sleeper)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn a sleeper")
        })
        .collect();
    let base_spawn = t.elapsed();
    let t = Instant::now();
    for k in &mut kids {
        let _ = k.kill();
    }
    for k in &mut kids {
        let _ = k.wait();
    }
    let base_kill = t.elapsed();
    drop(kids);

    // Baseline: fork+exec+wait of /bin/true.
    let t = Instant::now();
    let loops = 2000;
    for _ in 0..loops {
        Command::new("/bin/true").status().unwrap();
    }
    let base_true = t.elapsed() / loops;

    let d = Daemon::start(n);
    let seen = Arc::new(Seen::default());
    let sub = tokio::spawn(subscriber(d.socket.clone(), seen.clone()));
    let mut c = Conn::open(&d.socket).await;
    // The subscription is in place once a request on another connection sees it counted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let install = |name: &str, content: &[u8]| {
        json!({"op": "install", "owner": me, "name": name,
               "content": octets(content), "executable": true})
    };
    let script = c.call(install("sleep.sh", sleeper_text.as_bytes())).await["script"]
        .as_str()
        .unwrap()
        .to_owned();
    let rss_idle = rss_kib(d.pid());

    // The burst.
    let launch = {
        let me = me.clone();
        move |s: &str| json!({"op": "launch", "owner": me, "script": s})
    };
    let reqs: Vec<Value> = (0..n).map(|_| launch(&script)).collect();
    let burst_cpu0 = cpu_secs(d.pid()).0;
    let t0 = Instant::now();
    let (replies, replied) = pipeline(&d.socket, reqs).await;
    let refused = replies.iter().filter(|r| r["ok"] != true).count();
    let runs: Vec<u64> = replies
        .iter()
        .filter_map(|r| r["result"]["run_id"].as_u64())
        .collect();
    let all_exec = until("every run executing", Duration::from_secs(300), || {
        seen.executing.load(Ordering::Relaxed) + seen.terminated.load(Ordering::Relaxed) >= n
    })
    .await;
    let launch_time = replied - t0;
    let exec_time = all_exec - t0;
    let burst_cpu = cpu_secs(d.pid()).0 - burst_cpu0;
    let stats = c.call(json!({"op": "stats"})).await;
    // The exec runtimes started during the burst: all their CPU time is the burst's.
    let burst_rt_cpu: f64 = runtime_pids(&stats).iter().map(|p| cpu_secs(*p).0).sum();
    let failed_early = seen.terminated.load(Ordering::Relaxed);
    let executing = seen.executing.load(Ordering::Relaxed);

    // Memory with all live.
    let rss_daemon = rss_kib(d.pid());
    let rts = runtime_pids(&stats);
    let rss_rts: u64 = rts.iter().map(|p| rss_kib(*p)).sum();

    // Status and refresh with all live, one at a time.
    let samples = 2000.min(runs.len());
    let mut status = Vec::with_capacity(samples);
    let mut refresh = Vec::with_capacity(samples);
    for i in 0..samples {
        let r = runs[(i * 7919) % runs.len()];
        let t = Instant::now();
        c.call(json!({"op": "run", "run_id": r})).await;
        status.push(t.elapsed());
        let t = Instant::now();
        c.call(json!({"op": "refresh", "run_id": r})).await;
        refresh.push(t.elapsed());
    }
    let t = Instant::now();
    let listed = c.call(json!({"op": "runs"})).await;
    let runs_all = t.elapsed();
    assert!(listed.as_array().unwrap().len() as u64 >= n);

    // Baselines: a ps-style scan, and one /proc/<pid>/stat read.
    let mut scans = Vec::new();
    let mut procs = 0;
    for _ in 0..5 {
        let t = Instant::now();
        procs = proc_scan();
        scans.push(t.elapsed());
    }
    let scan = pct(&mut scans, 0.5);
    let mut reads = Vec::new();
    for i in 0..samples {
        let pid = rts[i % rts.len()];
        let t = Instant::now();
        let _ = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        reads.push(t.elapsed());
    }

    // Abort all.
    let before = seen.terminated.load(Ordering::Relaxed);
    let aborts: Vec<Value> = runs
        .iter()
        .map(|r| json!({"op": "abort", "run_id": r}))
        .collect();
    let t0 = Instant::now();
    let (_, _) = pipeline(&d.socket, aborts).await;
    let all_ended = until("every run terminated", Duration::from_secs(300), || {
        seen.terminated.load(Ordering::Relaxed) >= before + runs.len() as u64
    })
    .await;
    let abort_time = all_ended - t0;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (launched, terminated, lagged) = (
        seen.launched.load(Ordering::Relaxed),
        seen.terminated.load(Ordering::Relaxed),
        seen.lagged.load(Ordering::Relaxed),
    );

    // Sustained: `rate` launches/s of /bin/true for `secs`.
    let truebin = std::fs::read("/bin/true").unwrap();
    let t_script = c.call(install("true", &truebin)).await["script"]
        .as_str()
        .unwrap()
        .to_owned();
    *seen.ended_at.lock().unwrap() = Some(HashMap::new());
    let cpu0 = cpu_secs(d.pid()).0;
    let rts0: Vec<(u32, (f64, f64))> = runtime_pids(&c.call(json!({"op": "stats"})).await)
        .into_iter()
        .map(|p| (p, cpu_secs(p)))
        .collect();
    let ok_before = seen.terminated_ok.load(Ordering::Relaxed);
    let term_before = seen.terminated.load(Ordering::Relaxed);
    let total = rate * secs;
    let sent_at = Arc::new(Mutex::new(HashMap::<u64, Instant>::new()));
    let sc = Conn::open(&d.socket).await;
    let (mut sr, mut sw) = (sc.r, sc.w);
    let sa = sent_at.clone();
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let t_sus = Instant::now();
    let launch = launch.clone();
    let writer = tokio::spawn(async move {
        let mut i = 0u64;
        let mut next = tokio::time::Instant::now();
        while i < total {
            let mut buf = Vec::new();
            for _ in 0..per_tick.min(total - i) {
                let mut q = launch(&t_script);
                q["id"] = json!(i);
                serde_json::to_writer(&mut buf, &q).unwrap();
                buf.push(b'\n');
                sa.lock().unwrap().insert(i, Instant::now());
                i += 1;
            }
            sw.write_all(&buf).await.unwrap();
            next += tick;
            tokio::time::sleep_until(next).await;
        }
        sw
    });
    let mut req_run = HashMap::new();
    let mut sus_refused = 0;
    let mut refusal = None;
    let mut buf = Vec::new();
    while (req_run.len() + sus_refused) < total as usize {
        buf.clear();
        assert!(sr.read_until(b'\n', &mut buf).await.unwrap() > 0);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        if let Some(i) = v["id"].as_u64() {
            match v["result"]["run_id"].as_u64() {
                Some(r) => {
                    req_run.insert(r, i);
                }
                None => {
                    sus_refused += 1;
                    refusal.get_or_insert_with(|| v["error"]["code"].to_string());
                }
            }
        }
    }
    let launched_in = t_sus.elapsed();
    let _sw = writer.await.unwrap();
    let want = term_before + req_run.len() as u64;
    until(
        "every sustained run terminated",
        Duration::from_secs(120),
        || seen.terminated.load(Ordering::Relaxed) >= want,
    )
    .await;
    let sus_ok = seen.terminated_ok.load(Ordering::Relaxed) - ok_before;
    let sus_failed = total - sus_ok;
    let ended = seen.ended_at.lock().unwrap().take().unwrap();
    let sent = sent_at.lock().unwrap();
    let mut lat: Vec<Duration> = req_run
        .iter()
        .filter_map(|(r, i)| Some(*ended.get(r)? - sent[i]))
        .collect();
    let rss_after = rss_kib(d.pid());
    let cpu_daemon = cpu_secs(d.pid()).0 - cpu0;
    let (mut cpu_rt, mut cpu_scripts) = (0.0, 0.0);
    for (p, (own, kids)) in &rts0 {
        let (o, k) = cpu_secs(*p);
        cpu_rt += o - own;
        cpu_scripts += k - kids;
    }
    let sus_wall = t_sus.elapsed().as_secs_f64();
    let final_lagged = seen.lagged.load(Ordering::Relaxed);
    drop(c);
    drop(d);
    sub.abort();

    let nf = n as f64;
    println!(
        "\nscale bench: N = {n} sleeping exec scripts (`exec sleep 1000`), daemon soft RLIMIT_NOFILE 1024; \
         {} exec runtime processes; {procs} processes on the machine during the scan\n",
        rts.len()
    );
    println!("| row | smx daemon | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    row(
        "burst: launches/s (replies to `launch`)",
        &format!("{:.0}/s", nf / launch_time.as_secs_f64()),
        &format!(
            "{:.0}/s fork+exec from a Rust loop",
            nf / base_spawn.as_secs_f64()
        ),
        Some(base_spawn.as_secs_f64() / launch_time.as_secs_f64()),
        "",
    );
    row(
        "burst: time until all executing",
        &fmt(exec_time),
        &format!("{} fork+exec of N", fmt(base_spawn)),
        Some(exec_time.as_secs_f64() / base_spawn.as_secs_f64()),
        "",
    );
    row(
        "burst: failed launches",
        &format!(
            "{} refused, {} ended early ({executing} executing)",
            refused, failed_early
        ),
        "",
        None,
        "0",
    );
    row(
        "burst: CPU, share of one core until all executing",
        &format!(
            "daemon {:.0}%, exec runtimes {:.0}%",
            100.0 * burst_cpu / exec_time.as_secs_f64(),
            100.0 * burst_rt_cpu / exec_time.as_secs_f64()
        ),
        "",
        None,
        "",
    );
    row(
        "daemon RSS, all live",
        &format!(
            "{:.1} MiB (idle {:.1} MiB)",
            rss_daemon as f64 / 1024.0,
            rss_idle as f64 / 1024.0
        ),
        "",
        None,
        "<= 64 MiB",
    );
    row(
        "exec runtime RSS, all live (sum)",
        &format!(
            "{:.1} MiB in {} processes",
            rss_rts as f64 / 1024.0,
            rts.len()
        ),
        "",
        None,
        "<= 96 MiB",
    );
    let (s50, s99) = (pct(&mut status, 0.5), pct(&mut status, 0.99));
    let (r50, r99) = (pct(&mut reads, 0.5), pct(&mut reads, 0.99));
    row(
        "`run` (status) p50 / p99, all live",
        &format!("{} / {}", fmt(s50), fmt(s99)),
        &format!("{} / {} one /proc/PID/stat read", fmt(r50), fmt(r99)),
        Some(s99.as_secs_f64() / r99.as_secs_f64()),
        "p99 <= 1 ms",
    );
    let (f50, f99) = (pct(&mut refresh, 0.5), pct(&mut refresh, 0.99));
    row(
        "`refresh` (SMX status) p50 / p99, all live",
        &format!("{} / {}", fmt(f50), fmt(f99)),
        &format!("{} / {} one /proc/PID/stat read", fmt(r50), fmt(r99)),
        Some(f99.as_secs_f64() / r99.as_secs_f64()),
        "p99 <= 5 ms",
    );
    row(
        "`runs` (all N rows)",
        &fmt(runs_all),
        &format!("{} ps-style /proc scan", fmt(scan)),
        Some(runs_all.as_secs_f64() / scan.as_secs_f64()),
        "",
    );
    row(
        "abort all",
        &fmt(abort_time),
        &format!("{} SIGKILL+wait of N", fmt(base_kill)),
        Some(abort_time.as_secs_f64() / base_kill.as_secs_f64()),
        "",
    );
    row(
        "events: launched / terminated / lagged",
        &format!("{launched} / {terminated} / {lagged}"),
        "",
        None,
        &format!("{n} / {n} / 0"),
    );
    let (l50, l99) = if lat.is_empty() {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (pct(&mut lat, 0.5), pct(&mut lat, 0.99))
    };
    row(
        &format!("sustained {rate}/s /bin/true for {secs} s: achieved"),
        &format!(
            "{:.0}/s, {sus_refused} refused{}, {sus_failed} failed",
            total as f64 / launched_in.as_secs_f64(),
            refusal.map_or(String::new(), |r| format!(" ({r})"))
        ),
        &format!("{:.0}/s fork+exec+wait loop", 1.0 / base_true.as_secs_f64()),
        None,
        "0 failed",
    );
    row(
        "sustained: launch->terminated p50 / p99",
        &format!("{} / {}", fmt(l50), fmt(l99)),
        &format!("{} fork+exec+wait", fmt(base_true)),
        Some(l50.as_secs_f64() / base_true.as_secs_f64()),
        "",
    );
    row(
        "sustained: CPU, share of one core",
        &format!(
            "daemon {:.0}%, exec runtimes {:.0}%, scripts {:.0}%",
            100.0 * cpu_daemon / sus_wall,
            100.0 * cpu_rt / sus_wall,
            100.0 * cpu_scripts / sus_wall
        ),
        "2 cores on this machine",
        None,
        "",
    );
    row(
        "daemon RSS after sustained",
        &format!(
            "{:.1} MiB, lagged {final_lagged}",
            rss_after as f64 / 1024.0
        ),
        "",
        None,
        "",
    );
}

fn octets(b: &[u8]) -> Value {
    // Octets in the control protocol: a string when printable, else {"hex": ...}.
    match std::str::from_utf8(b) {
        Ok(s) if !s.contains('\0') => json!(s),
        _ => json!({"hex": hex::encode(b)}),
    }
}
