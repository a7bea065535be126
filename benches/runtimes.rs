//! Runtime benchmarks: for each shipped runtime (exec, python, tcl), runs per second of an
//! empty script through the host and the start -> executing latency, each next to a baseline
//! measured in the same run (absolute times on shared machines are noise):
//!
//! - exec: a copy of `/bin/true` and an empty `#!/bin/sh` script through the host (one warm
//!   exec runtime serves every run), against fork+exec+wait of the same files;
//! - python: an empty script through the host (one warm, multi-threaded runtime serves every
//!   run), against `python3 -c pass` and against the interpreter `python3` runs, called
//!   directly (`python3` may be a wrapper such as a pyenv shim);
//! - tcl: an empty script through the host (`threading = "single"`: every run starts its own
//!   `tclsh` runtime process and does the hello handshake), against `tclsh empty.tcl`.
//!
//! "runs/s" is sequential launch + wait (the next run is launched when the previous one has
//! terminated with its ExitCode). "start->executing" is the time from `Host::launch()` to
//! the run's `EventKind::State { state: Executing }` event (the `231 <Id> 2` reply to `start`,
//! RFC 3179 6.2.3). Baseline and host rounds alternate, so that changes in machine load hit
//! both; runs/s is the median over rounds, start->executing the median over all runs. The
//! latency rows are set against the same baselines (the cost of starting the program anew).
//!
//! Run with `cargo bench --bench runtimes`. `SMX_BENCH_QUICK=1` shortens it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smx::config::Config;
use smx::host::{EventKind, Host, LaunchRequest};
use smx::proto::{ExitCode, RunState};
use smx::storage::Storage;

fn smx_bin() -> String {
    // Benches are built next to the binary: target/release/deps/runtimes-* -> target/release/smx
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("smx").display().to_string()
}

fn quick() -> bool {
    std::env::var_os("SMX_BENCH_QUICK").is_some()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn config() -> Config {
    let mut c = Config::embedded();
    // `{smx}` would expand to this bench binary: point the exec runtime at the real one.
    let text = format!(
        "[[runtime]]\nname = \"exec\"\ncommand = [{:?}, \"exec-runtime\"]\nextensions = [\"sh\"]\nprofiles = [\"trusted\"]\n",
        smx_bin()
    );
    c.extend(&text, "bench", None).unwrap();
    c.host.max_finished_runs = 1000;
    c
}

/// Spawns `cmd` and waits for it, asserting success.
fn spawn_wait(cmd: &mut Command) {
    let s = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(s.success(), "{cmd:?}: {s}");
}

/// A baseline: `iters` calls of `f` per round.
struct Baseline {
    name: String,
    iters: usize,
    f: Box<dyn FnMut()>,
}

fn baseline(name: impl Into<String>, iters: usize, f: impl FnMut() + 'static) -> Baseline {
    Baseline {
        name: name.into(),
        iters: iters.max(1),
        f: Box::new(f),
    }
}

/// What one script through the host measured, and its baselines.
struct Compared {
    /// Median time per sequential launch+wait.
    per_run: Duration,
    /// Median start->executing latency.
    latency: Duration,
    /// Median time per baseline iteration, by name.
    baselines: Vec<(String, Duration)>,
}

/// Runs `script` through the host `iters` times per round, and each baseline, interleaved
/// round by round so that a change in machine load hits both sides alike.
fn compare(
    rt: &tokio::runtime::Runtime,
    host: &Host,
    script: &str,
    rounds: usize,
    iters: usize,
    mut baselines: Vec<Baseline>,
) -> Compared {
    let mut events = host.subscribe();
    // One run: launch, the Executing event (its latency), the Terminated event.
    let mut one = async || -> f64 {
        let t0 = Instant::now();
        let run = host.launch(LaunchRequest::new(script)).unwrap();
        let mut executing = None;
        loop {
            let e = events.recv().await.expect("event stream");
            if e.run_id != run {
                continue;
            }
            match e.kind {
                EventKind::State {
                    state: RunState::Executing,
                } => executing = Some(t0.elapsed().as_secs_f64()),
                EventKind::Terminated { exit_code, .. } => {
                    assert_eq!(exit_code, ExitCode::NoError, "{:?}", host.run(run));
                    break;
                }
                _ => {}
            }
        }
        executing.unwrap_or_else(|| panic!("run {run} of {script} never reported executing"))
    };
    // Warm-up (for python and exec this also starts the runtime that then stays warm).
    rt.block_on(async {
        for _ in 0..iters / 10 + 1 {
            one().await;
        }
    });
    for b in &mut baselines {
        for _ in 0..b.iters / 10 + 1 {
            (b.f)();
        }
    }
    let mut per_run = Vec::new();
    let mut latency = Vec::new();
    let mut base: Vec<Vec<f64>> = vec![Vec::new(); baselines.len()];
    for _ in 0..rounds {
        for (b, times) in baselines.iter_mut().zip(&mut base) {
            let t = Instant::now();
            for _ in 0..b.iters {
                (b.f)();
            }
            times.push(t.elapsed().as_secs_f64() / b.iters as f64);
        }
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..iters {
                latency.push(one().await);
            }
            per_run.push(t.elapsed().as_secs_f64() / iters as f64);
        });
    }
    Compared {
        per_run: Duration::from_secs_f64(median(per_run)),
        latency: Duration::from_secs_f64(median(latency)),
        baselines: baselines
            .into_iter()
            .zip(base)
            .map(|(b, t)| (b.name, Duration::from_secs_f64(median(t))))
            .collect(),
    }
}

/// Prints the runs/s row and the start->executing row against every baseline of `c`.
fn rows(rt: &str, what: &str, c: &Compared) {
    for (name, d) in &c.baselines {
        rate_row(rt, &format!("{what} runs/s"), c.per_run, name, *d);
    }
    for (name, d) in &c.baselines {
        latency_row(rt, "  start->executing", c.latency, name, *d);
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn header() {
    println!(
        "{:<8} {:<40} {:>12}   {:<34} {:>12}   {:>7}",
        "runtime", "measured", "value", "baseline (same run)", "value", "ratio"
    );
}

/// A ratio with three significant digits.
fn ratio(x: f64) -> String {
    let decimals = if x >= 10.0 {
        1
    } else if x >= 0.1 {
        2
    } else {
        4
    };
    format!("{x:.decimals$}x")
}

/// A rate row (higher is better): ratio = measured / baseline.
fn rate_row(rt: &str, name: &str, per: Duration, base_name: &str, base: Duration) {
    let (r, b) = (1.0 / per.as_secs_f64(), 1.0 / base.as_secs_f64());
    println!(
        "{rt:<8} {name:<40} {r:>8.1} r/s   {base_name:<34} {b:>8.1} r/s   {:>7}",
        ratio(r / b)
    );
}

/// A latency row (lower is better): ratio = measured / baseline.
fn latency_row(rt: &str, name: &str, v: Duration, base_name: &str, base: Duration) {
    println!(
        "{rt:<8} {name:<40} {:>9.0} us   {base_name:<34} {:>9.0} us   {:>7}",
        us(v),
        us(base),
        ratio(v.as_secs_f64() / base.as_secs_f64())
    );
}

fn which(program: &str) -> String {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|c| c.is_file())
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("{program} (not found)"))
}

fn main() {
    let quick = quick();
    let rounds = if quick { 3 } else { 5 };
    // Runs per round through the host, for exec, python and tcl.
    let (exec_iters, py_iters, tcl_iters) = if quick { (30, 30, 10) } else { (300, 300, 60) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = rt.block_on(async { Host::new(config(), Storage::temporary().unwrap()) });
    let st = host.storage();
    let truebin = std::fs::read("/bin/true").expect("/bin/true");
    let trivial = st.install("bench", "true", &truebin, true).unwrap();
    let empty_sh = st
        .install("bench", "empty.sh", b"#!/bin/sh\n", true)
        .unwrap();
    let empty_py = st.install("bench", "empty.py", b"", false).unwrap();
    let empty_tcl = st.install("bench", "empty.tcl", b"", false).unwrap();
    let abs = |s: &str| st.resolve(s).unwrap();
    let (trivial_abs, empty_sh_abs, empty_tcl_abs) =
        (abs(&trivial), abs(&empty_sh), abs(&empty_tcl));
    // `python3` may be a wrapper (a pyenv shim is a shell script that runs pyenv): the
    // interpreter it ends up running is a second baseline.
    let interpreter = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .expect("python3");

    println!(
        "smx runtime benchmark ({} mode; medians of {rounds} interleaved rounds; runs sequential)",
        if quick { "quick" } else { "full" }
    );
    println!(
        "python3 = {} (runs {interpreter}), tclsh = {}, {} CPUs\n",
        which("python3"),
        which("tclsh"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    header();

    // exec: one warm exec runtime; each run is a child process of it.
    let c = compare(
        &rt,
        &host,
        &trivial,
        rounds,
        exec_iters,
        vec![baseline(
            "fork+exec+wait of /bin/true",
            exec_iters,
            move || spawn_wait(&mut Command::new(&trivial_abs)),
        )],
    );
    rows("exec", "/bin/true via host (warm rt)", &c);
    let c = compare(
        &rt,
        &host,
        &empty_sh,
        rounds,
        exec_iters,
        vec![baseline(
            "fork+exec+wait of empty.sh",
            exec_iters,
            move || spawn_wait(&mut Command::new(&empty_sh_abs)),
        )],
    );
    rows("exec", "empty.sh via host (warm rt)", &c);

    // python: one warm multi-threaded runtime serves every run.
    let direct = interpreter.clone();
    let c = compare(
        &rt,
        &host,
        &empty_py,
        rounds,
        py_iters,
        vec![
            baseline("python3 -c pass", py_iters / 30, || {
                spawn_wait(Command::new("python3").args(["-c", "pass"]))
            }),
            baseline(
                "python3 -c pass, without wrapper",
                py_iters / 15,
                move || spawn_wait(Command::new(&direct).args(["-c", "pass"])),
            ),
        ],
    );
    rows("python", "empty.py via host (warm rt)", &c);

    // tcl: single-threaded, so each run starts a fresh tclsh runtime (spawn, loading
    // smx_runtime.tcl, hello, start) that exits when the run is over.
    let c = compare(
        &rt,
        &host,
        &empty_tcl,
        rounds,
        tcl_iters,
        vec![baseline("tclsh empty.tcl", tcl_iters, move || {
            spawn_wait(Command::new("tclsh").arg(&empty_tcl_abs))
        })],
    );
    rows("tcl", "empty.tcl via host (new rt/run)", &c);

    rt.block_on(host.shutdown());
}
