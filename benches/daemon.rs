//! Daemon benchmarks: every row is a ratio against a baseline measured in the same run,
//! because absolute times on shared machines are noise.
//!
//! - (a) launch -> terminated of an empty script (a copy of `/bin/true`, and an empty
//!   `#!/bin/sh` script) through `smx daemon`: `smx::client` launches over the control
//!   socket and waits for the run's `terminated` event. Baselines: the same launch + wait for
//!   the `Terminated` event through an in-process `smx::host::Host` with the same config (so
//!   the ratio is the daemon's overhead: socket, JSON, the extra process), and fork+exec+wait
//!   of the same file. Rounds alternate between measurement and baselines.
//! - (b) `smx ps` (the real CLI binary, wall time of the whole process, output read through
//!   a pipe) over a table of 10,000 finished runs in the daemon, against `smx ps` over an
//!   empty table (starting the CLI and connecting); also the per-run cost, `smx ps --json`,
//!   and the `runs` request alone through `smx::client` (no process start, no formatting).
//!
//! The daemon runs scripts for an owner mapped to an OS profile, which only root may use:
//! run as root. Run with `cargo bench --bench daemon`. `SMX_BENCH_QUICK=1` shortens it
//! (and uses 2,000 runs for (b)).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smx::client::{Client, Notice};
use smx::config::Config;
use smx::control::proto::LaunchParams;
use smx::host::{EventKind, Host, LaunchRequest, TimeInterval};
use smx::proto::{ExitCode, RunId};
use smx::storage::Storage;

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

/// The config shared by the daemon and the in-process host: the exec runtime of the real
/// smx binary, the invoking user's name mapped to an OS profile running as that user, room
/// for many finished runs.
fn config_text(storage: &Path) -> String {
    format!(
        r#"[host]
storage = {storage:?}
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
        storage = storage.display().to_string(),
        smx = smx_bin().display().to_string(),
        me = me(),
    )
}

/// `smx daemon` as a subprocess, killed when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("smx-bench-daemon-")
            .tempdir_in("/tmp")
            .unwrap();
        let config = dir.path().join("smx.toml");
        let socket = dir.path().join("smx.sock");
        std::fs::write(&config, config_text(&dir.path().join("storage"))).unwrap();
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
        let deadline = Instant::now() + Duration::from_secs(10);
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

fn row(name: &str, value: Duration, base_name: &str, base: Duration) {
    let ratio = value.as_secs_f64() / base.as_secs_f64();
    println!(
        "{name:<46} {}   {base_name:<40} {}   {ratio:>7.2}x",
        fmt(value),
        fmt(base)
    );
}

fn params(owner: &str, script: &str) -> LaunchParams {
    LaunchParams {
        owner: owner.to_owned(),
        name: None,
        script: script.to_owned(),
        runtime: None,
        argument: Default::default(),
        lifetime: TimeInterval::ONE_HOUR,
        expire_time: TimeInterval::ONE_HOUR,
    }
}

/// One launch through the daemon, until its `terminated` event.
async fn daemon_run(c: &mut Client, owner: &str, script: &str) {
    let run = c.launch(params(owner, script)).await.unwrap().run_id;
    loop {
        match c.next_event().await.unwrap() {
            Notice::Event(e) if e.run_id == run => {
                if let EventKind::Terminated { exit_code, .. } = e.kind {
                    assert_eq!(exit_code, ExitCode::NoError);
                    return;
                }
            }
            Notice::Lagged(n) => panic!("lagged {n}"),
            _ => {}
        }
    }
}

/// One launch through the in-process host, until its `Terminated` event.
async fn host_run(host: &Host, events: &mut smx::host::Subscriber, owner: &str, script: &str) {
    let mut req = LaunchRequest::new(script);
    req.owner = Some(owner.to_owned());
    let run = host.launch(req).unwrap();
    loop {
        let e = events.recv().await.unwrap();
        if e.run_id == run
            && let EventKind::Terminated { exit_code, .. } = e.kind
        {
            assert_eq!(exit_code, ExitCode::NoError);
            return;
        }
    }
}

/// Wall time of one `smx ps` process (stdout read through a pipe, as a terminal would).
fn ps_once(socket: &Path, json: bool) -> (Duration, usize) {
    let t = Instant::now();
    let mut cmd = Command::new(smx_bin());
    cmd.arg("ps").arg("--socket").arg(socket);
    if json {
        cmd.arg("--json");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    (t.elapsed(), out.len())
}

fn ps_median(socket: &Path, json: bool, rounds: usize) -> (Duration, usize) {
    ps_once(socket, json); // warm-up (page cache, daemon)
    let mut size = 0;
    let times = (0..rounds)
        .map(|_| {
            let (d, n) = ps_once(socket, json);
            size = n;
            d.as_secs_f64()
        })
        .collect();
    (Duration::from_secs_f64(median(times)), size)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!(
            "smx daemon benchmark: skipped, it needs root (daemon runs use an OS profile, \
             whose identity change only root may make)"
        );
        return;
    }
    let quick = quick();
    let rounds = 5;
    let iters = if quick { 40 } else { 300 };
    let table_runs = if quick { 2_000 } else { 10_000 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let me = me();
    let daemon = Daemon::start();
    let truebin = std::fs::read("/bin/true").expect("/bin/true");
    let empty_sh = b"#!/bin/sh\n";

    println!(
        "smx daemon benchmark ({} mode; medians of {rounds} rounds)\n",
        if quick { "quick" } else { "full" }
    );
    println!(
        "{:<46} {:>12}   {:<40} {:>12}   {:>8}",
        "measured", "per op", "baseline (same run)", "per op", "ratio"
    );

    // ---- (a) launch -> terminated.
    let (mut client, d_true, d_sh) = rt.block_on(async {
        let mut c = Client::connect(&daemon.socket).await.unwrap();
        let t = c.install(&me, "true", &truebin, true).await.unwrap();
        let s = c.install(&me, "empty.sh", empty_sh, true).await.unwrap();
        c.subscribe(Some(&me), None).await.unwrap();
        (c, t, s)
    });
    let host = rt.block_on(async {
        let mut config = Config::embedded();
        let dir = tempfile::tempdir().unwrap();
        config
            .extend(&config_text(&dir.path().join("unused")), "bench", None)
            .unwrap();
        Host::new(config, Storage::temporary().unwrap())
    });
    let h_true = host.storage().install(&me, "true", &truebin, true).unwrap();
    let h_sh = host
        .storage()
        .install(&me, "empty.sh", empty_sh, true)
        .unwrap();
    let files = [
        host.storage().resolve(&h_true).unwrap(),
        host.storage().resolve(&h_sh).unwrap(),
    ];
    let mut events = host.subscribe();
    let mut per = [
        [Vec::new(), Vec::new(), Vec::new()],
        [Vec::new(), Vec::new(), Vec::new()],
    ];
    for round in 0..=rounds {
        for (k, (ds, hs)) in [(&d_true, &h_true), (&d_sh, &h_sh)].into_iter().enumerate() {
            let n = if round == 0 { iters / 10 + 1 } else { iters };
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..n {
                    daemon_run(&mut client, &me, ds).await;
                }
            });
            let daemon_t = t.elapsed().as_secs_f64() / n as f64;
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..n {
                    host_run(&host, &mut events, &me, hs).await;
                }
            });
            let host_t = t.elapsed().as_secs_f64() / n as f64;
            let t = Instant::now();
            for _ in 0..n {
                let s = Command::new(&files[k]).status().unwrap();
                assert!(s.success());
            }
            let fork_t = t.elapsed().as_secs_f64() / n as f64;
            if round > 0 {
                per[k][0].push(daemon_t);
                per[k][1].push(host_t);
                per[k][2].push(fork_t);
            }
        }
    }
    let [p_true, p_sh] = per.map(|v| v.map(|x| Duration::from_secs_f64(median(x))));
    row(
        "(a) /bin/true: launch->terminated, daemon",
        p_true[0],
        "same, in-process Host",
        p_true[1],
    );
    row(
        "(a) /bin/true: launch->terminated, daemon",
        p_true[0],
        "fork+exec+wait of /bin/true",
        p_true[2],
    );
    row(
        "(a) empty sh script: launch->terminated, daemon",
        p_sh[0],
        "same, in-process Host",
        p_sh[1],
    );
    row(
        "(a) empty sh script: launch->terminated, daemon",
        p_sh[0],
        "fork+exec+wait of the script",
        p_sh[2],
    );
    rt.block_on(host.shutdown());
    drop(client);
    drop(daemon);

    // ---- (b) smx ps over a big table. A fresh daemon: the baseline is its empty table.
    let daemon = Daemon::start();
    let (empty_ps, _) = ps_median(&daemon.socket, false, rounds * 2);
    let (empty_json, _) = ps_median(&daemon.socket, true, rounds * 2);
    let empty_runs_op = rt.block_on(runs_op(&daemon.socket, rounds * 2, 0));
    let fill = Instant::now();
    rt.block_on(fill_table(&daemon.socket, &me, &truebin, table_runs));
    let fill = fill.elapsed();
    let (full_ps, ps_bytes) = ps_median(&daemon.socket, false, rounds);
    let (full_json, json_bytes) = ps_median(&daemon.socket, true, rounds);
    let full_runs_op = rt.block_on(runs_op(&daemon.socket, rounds, table_runs));
    let label = |what: &str| format!("(b) {what}, {table_runs} finished runs");
    row(&label("smx ps"), full_ps, "smx ps, empty table", empty_ps);
    row(
        &label("smx ps --json"),
        full_json,
        "smx ps --json, empty table",
        empty_json,
    );
    row(
        &label("`runs` via smx::client"),
        full_runs_op,
        "`runs` via smx::client, empty table",
        empty_runs_op,
    );
    let per_run = |full: Duration, empty: Duration| {
        Duration::from_secs_f64(
            (full.as_secs_f64() - empty.as_secs_f64()).max(0.0) / table_runs as f64,
        )
    };
    println!();
    println!(
        "per run: smx ps {} ({} bytes out), smx ps --json {} ({} bytes), `runs` request {}",
        fmt(per_run(full_ps, empty_ps)).trim(),
        ps_bytes,
        fmt(per_run(full_json, empty_json)).trim(),
        json_bytes,
        fmt(per_run(full_runs_op, empty_runs_op)).trim(),
    );
    println!(
        "filling the table: {table_runs} launches of /bin/true through the daemon in {:.2} s ({} per run, 8 clients)",
        fill.as_secs_f64(),
        fmt(fill / table_runs as u32).trim()
    );
}

/// Median time of the `runs` request through `smx::client` on one connection.
async fn runs_op(socket: &Path, rounds: usize, expect: usize) -> Duration {
    let mut c = Client::connect(socket).await.unwrap();
    assert_eq!(c.runs(None).await.unwrap().len(), expect); // warm-up
    let mut per = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        assert_eq!(c.runs(None).await.unwrap().len(), expect);
        per.push(t.elapsed().as_secs_f64());
    }
    Duration::from_secs_f64(median(per))
}

/// Creates `n` finished runs of a copy of `/bin/true`, 8 clients launching in batches.
async fn fill_table(socket: &Path, owner: &str, truebin: &[u8], n: usize) {
    const CLIENTS: usize = 8;
    const BATCH: usize = 100;
    let mut c = Client::connect(socket).await.unwrap();
    let script = c.install(owner, "true", truebin, true).await.unwrap();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (socket, owner, script) = (socket.to_owned(), owner.to_owned(), script.clone());
            let share = n / CLIENTS + usize::from(i < n % CLIENTS);
            async move {
                let mut c = Client::connect(&socket).await.unwrap();
                let mut left = share;
                while left > 0 {
                    let k = left.min(BATCH);
                    let mut ids: Vec<RunId> = Vec::with_capacity(k);
                    for _ in 0..k {
                        ids.push(c.launch(params(&owner, &script)).await.unwrap().run_id);
                    }
                    for id in ids {
                        let r = c.wait(id).await.unwrap();
                        assert_eq!(r.exit_code, ExitCode::NoError, "{}", r.error);
                    }
                    left -= k;
                }
            }
        })
        .collect();
    futures_util::future::join_all(tasks).await;
    assert_eq!(c.runs(None).await.unwrap().len(), n);
}
