//! Script MIB benchmarks through `smx daemon`: every row is a ratio against a baseline
//! measured in the same run, because absolute times on shared machines are noise.
//!
//! - (a) Launch throughput with the state database on (`[host] state_dir`) against the same
//!   daemon config without it (everything in memory). Both daemons run side by side and the
//!   rounds alternate between them. A round is N smLaunchStart requests (`launch_start`) on a
//!   nonVolatile launch button over a nonVolatile copy of `/bin/true`, from 8 clients at
//!   once; measured: starts answered per second, runs terminated per second, and for the
//!   database also how long after the last termination the database had committed every
//!   row (read from the database file itself).
//! - (b) Daemon restart time (spawn until the first control connection gets its greeting,
//!   which the daemon sends only once the saved rows are loaded) on a state database with
//!   10,000 finished run rows, against one with none. Rounds alternate; each restart ends
//!   with a `kill -9` so the database stays as it was.
//!
//! The daemon runs scripts for an owner mapped to an OS profile, which only root may use:
//! run as root. Run with `cargo bench --bench mib`; `SMX_BENCH_QUICK=1` shortens it (fewer
//! rounds, 400 launches a round, 2,000 saved rows for (b)).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smx::client::Client;
use smx::mib::{LaunchSpec, ScriptSpec, StorageType};
use smx::proto::{ExitCode, Octets, RunId};

fn smx_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smx"))
}

fn quick() -> bool {
    std::env::var_os("SMX_BENCH_QUICK").is_some()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("current user has a name")
        .name
}

/// The config of every daemon here; `state`: with `[host] state_dir` in `dir`.
fn config_text(dir: &Path, state: bool) -> String {
    format!(
        r#"[host]
storage = {storage:?}
{state}
max_active_runs = 4096
max_finished_runs = 100000

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
        storage = dir.join("storage").display().to_string(),
        state = if state {
            format!("state_dir = {:?}", dir.join("state").display().to_string())
        } else {
            String::new()
        },
        smx = smx_bin().display().to_string(),
        me = me(),
    )
}

/// `smx daemon` as a subprocess in `dir`, killed (SIGKILL) when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    /// Starts a daemon and returns it with the time until its greeting arrived.
    fn start(rt: &tokio::runtime::Runtime, dir: &Path, state: bool) -> (Daemon, Duration) {
        let config = dir.join("smx.toml");
        let socket = dir.join("smx.sock");
        std::fs::write(&config, config_text(dir, state)).unwrap();
        let _ = std::fs::remove_file(&socket);
        let t = Instant::now();
        let mut child = Command::new(smx_bin())
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start smx daemon");
        let deadline = t + Duration::from_secs(60);
        let ready = rt.block_on(async {
            loop {
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(30), Client::connect(&socket)).await
                {
                    return t.elapsed();
                }
                assert!(child.try_wait().unwrap().is_none(), "smx daemon exited");
                assert!(Instant::now() < deadline, "no daemon greeting");
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        });
        (Daemon { child, socket }, ready)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn fmt(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:>9.3} s ")
    } else if s >= 1e-3 {
        format!("{:>9.2} ms", s * 1e3)
    } else {
        format!("{:>9.1} us", s * 1e6)
    }
}

fn row(name: &str, value: &str, base_name: &str, base: &str, ratio: f64) {
    println!("{name:<44} {value:>13}   {base_name:<36} {base:>13}   {ratio:>7.2}x");
}

/// Terminated run rows the state database has committed.
fn committed_runs(state_dir: &Path) -> usize {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        state_dir.join("smx.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return 0;
    };
    conn.query_row(
        "SELECT count(*) FROM run WHERE json_extract(row, '$.state') = 'terminated'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as usize)
    .unwrap_or(0)
}

/// A nonVolatile copy of /bin/true and a nonVolatile launch button `b` on it that keeps
/// every finished run.
async fn setup(socket: &Path, owner: &str) {
    let mut c = Client::connect(socket).await.unwrap();
    let truebin = std::fs::read("/bin/true").expect("/bin/true");
    c.script_install(ScriptSpec {
        owner: owner.into(),
        name: "true".into(),
        content: Octets::new(truebin),
        language: Some("exec".into()),
        storage_type: Some(StorageType::NonVolatile),
        ..Default::default()
    })
    .await
    .unwrap();
    c.launch_add(LaunchSpec {
        owner: owner.into(),
        name: "b".into(),
        script_owner: owner.into(),
        script_name: "true".into(),
        max_running: Some(100_000),
        max_completed: Some(100_000),
        storage_type: Some(StorageType::NonVolatile),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// `n` launches from 8 clients at once; (time until every start was answered, time until
/// every run terminated).
async fn round(socket: &Path, owner: &str, n: usize) -> (Duration, Duration) {
    const CLIENTS: usize = 8;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Client::connect(socket).await.unwrap());
    }
    let t = Instant::now();
    let started: Vec<(Client, Vec<RunId>)> =
        futures_util::future::join_all(clients.into_iter().enumerate().map(|(i, mut c)| {
            let share = n / CLIENTS + usize::from(i < n % CLIENTS);
            async move {
                let mut ids = Vec::with_capacity(share);
                for _ in 0..share {
                    let r = c.launch_start(owner, "b", None, None).await.unwrap();
                    ids.push(r.run_id);
                }
                (c, ids)
            }
        }))
        .await;
    let starts = t.elapsed();
    futures_util::future::join_all(started.into_iter().map(|(mut c, ids)| async move {
        for id in ids {
            let r = c.wait(id).await.unwrap();
            assert_eq!(r.exit_code, ExitCode::NoError, "{}", r.error);
        }
    }))
    .await;
    (starts, t.elapsed())
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!(
            "smx mib benchmark: skipped, it needs root (daemon runs use an OS profile, \
             whose identity change only root may make)"
        );
        return;
    }
    let quick = quick();
    let rounds = if quick { 3 } else { 5 };
    let n = if quick { 400 } else { 2_000 };
    let saved = if quick { 2_000 } else { 10_000 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let me = me();
    let tmp = |p: &str| {
        tempfile::Builder::new()
            .prefix(p)
            .tempdir_in("/tmp")
            .unwrap()
    };
    println!(
        "smx mib benchmark ({} mode; medians of {rounds} rounds)\n",
        if quick { "quick" } else { "full" }
    );
    println!(
        "{:<44} {:>13}   {:<36} {:>13}   {:>8}",
        "measured", "value", "baseline (same run)", "value", "ratio"
    );

    // ---- (a) launch throughput, database on vs in memory.
    let (db_dir, mem_dir) = (tmp("smx-bench-mib-db-"), tmp("smx-bench-mib-mem-"));
    let state_dir = db_dir.path().join("state");
    let (db, _) = Daemon::start(&rt, db_dir.path(), true);
    let (mem, _) = Daemon::start(&rt, mem_dir.path(), false);
    rt.block_on(setup(&db.socket, &me));
    rt.block_on(setup(&mem.socket, &me));
    let mut per: [Vec<f64>; 5] = Default::default();
    let mut total = 0;
    for r in 0..=rounds {
        // Round 0 warms up (runtime processes, page cache).
        let k = if r == 0 { n / 4 } else { n };
        let (db_starts, db_done) = rt.block_on(round(&db.socket, &me, k));
        total += k;
        let t = Instant::now();
        let deadline = t + Duration::from_secs(60);
        while committed_runs(&state_dir) < total {
            assert!(Instant::now() < deadline, "the database never caught up");
            std::thread::sleep(Duration::from_millis(2));
        }
        let lag = t.elapsed();
        let (mem_starts, mem_done) = rt.block_on(round(&mem.socket, &me, k));
        if r > 0 {
            let rate = |d: Duration| k as f64 / d.as_secs_f64();
            per[0].push(rate(db_starts));
            per[1].push(rate(mem_starts));
            per[2].push(rate(db_done));
            per[3].push(rate(mem_done));
            per[4].push(lag.as_secs_f64());
        }
    }
    let [db_s, mem_s, db_r, mem_r, lag] = per.map(median);
    let rate = |v: f64| format!("{v:>8.0} /s");
    row(
        &format!("(a) smLaunchStart answered, database on ({n})"),
        &rate(db_s),
        "same, in memory",
        &rate(mem_s),
        db_s / mem_s,
    );
    row(
        "(a) runs started and terminated, database on",
        &rate(db_r),
        "same, in memory",
        &rate(mem_r),
        db_r / mem_r,
    );
    println!(
        "    the database had committed every run row {} after the last one terminated",
        fmt(Duration::from_secs_f64(lag)).trim()
    );
    drop(db);
    drop(mem);

    // ---- (b) restart with `saved` run rows vs none.
    let (full_dir, empty_dir) = (tmp("smx-bench-mib-full-"), tmp("smx-bench-mib-empty-"));
    let full_state = full_dir.path().join("state");
    {
        let (d, _) = Daemon::start(&rt, full_dir.path(), true);
        rt.block_on(setup(&d.socket, &me));
        let fill = Instant::now();
        let mut left = saved;
        while left > 0 {
            let k = left.min(1000);
            rt.block_on(round(&d.socket, &me, k));
            left -= k;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while committed_runs(&full_state) < saved {
            assert!(Instant::now() < deadline, "the database never caught up");
            std::thread::sleep(Duration::from_millis(5));
        }
        println!(
            "    (filling: {saved} launches of /bin/true through the daemon, committed, in {:.2} s)",
            fill.elapsed().as_secs_f64()
        );
        // The empty one has the same script and button, and no runs.
        let (e, _) = Daemon::start(&rt, empty_dir.path(), true);
        rt.block_on(setup(&e.socket, &me));
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut full = Vec::new();
    let mut empty = Vec::new();
    for r in 0..=rounds {
        let (d, t_full) = Daemon::start(&rt, full_dir.path(), true);
        if r == 0 {
            let runs = rt.block_on(async {
                let mut c = Client::connect(&d.socket).await.unwrap();
                c.runs(None).await.unwrap().len()
            });
            assert_eq!(runs, saved, "every saved run row is back");
        }
        drop(d);
        let (d, t_empty) = Daemon::start(&rt, empty_dir.path(), true);
        drop(d);
        if r > 0 {
            full.push(t_full.as_secs_f64());
            empty.push(t_empty.as_secs_f64());
        }
    }
    let (full, empty) = (median(full), median(empty));
    row(
        &format!("(b) restart, {saved} saved run rows"),
        &fmt(Duration::from_secs_f64(full)),
        "restart, no saved run rows",
        &fmt(Duration::from_secs_f64(empty)),
        full / empty,
    );
    println!(
        "    per saved run row: {}",
        fmt(Duration::from_secs_f64(
            (full - empty).max(0.0) / saved as f64
        ))
        .trim()
    );
}
