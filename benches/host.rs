//! Host benchmarks: every row is a ratio against a baseline measured in the same run,
//! because absolute times on shared machines are noise.
//!
//! - status round trip through the host to a warm exec runtime, against the same `status`
//!   line written straight to an exec runtime over its pipes (and `cat` as the floor);
//! - a whole run of a trivial executable through the host (warm exec runtime), against
//!   fork+exec+wait of the same executable.
//!
//! Run with `cargo bench --bench host`. `SMX_BENCH_QUICK=1` shortens it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smx::config::Config;
use smx::host::{Host, LaunchRequest, TimeInterval};
use smx::proto::{ExitCode, RunState};
use smx::storage::Storage;

fn smx_bin() -> String {
    // Benches are built next to the binary: target/release/deps/host-* -> target/release/smx
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

/// Median over `rounds` of the mean time per iteration of `f(iters)`.
fn measure(rounds: usize, iters: usize, mut f: impl FnMut(usize)) -> Duration {
    f(iters / 10 + 1); // warm-up
    let per: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f(iters);
            t.elapsed().as_secs_f64() / iters as f64
        })
        .collect();
    Duration::from_secs_f64(median(per))
}

fn row(name: &str, value: Duration, base_name: &str, base: Duration, target: Option<f64>) {
    let ratio = value.as_secs_f64() / base.as_secs_f64();
    let verdict = match target {
        Some(t) if ratio <= t => format!("<= {t:.2} ok"),
        Some(t) => format!("<= {t:.2} MISSED"),
        None => String::new(),
    };
    println!(
        "{name:<44} {:>10.1} us   {base_name:<34} {:>10.1} us   {ratio:>6.2}x  {verdict}",
        value.as_secs_f64() * 1e6,
        base.as_secs_f64() * 1e6
    );
}

/// A line-echo peer (`cat`) driven with blocking pipes: the floor of any round trip.
fn cat_rtt(iters: usize) -> Duration {
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = child.stdin.take().unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let d = measure(5, iters, |n| {
        for _ in 0..n {
            w.write_all(b"status 5 1\r\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
        }
    });
    drop(w);
    let _ = child.wait();
    d
}

/// `status` written straight to an exec runtime (no host), blocking pipes.
fn direct_status_rtt(iters: usize, script: &str) -> Duration {
    let mut child = Command::new(smx_bin())
        .arg("exec-runtime")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = child.stdin.take().unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut ask = |cmd: &str, line: &mut String| {
        w.write_all(cmd.as_bytes()).unwrap();
        line.clear();
        r.read_line(line).unwrap();
    };
    ask("hello 1\r\n", &mut line);
    ask(
        &format!("start 2 1 \"{script}\" trusted \"\"\r\n"),
        &mut line,
    );
    assert!(line.starts_with("231 2 2"), "{line}");
    let mut id = 10u64;
    let d = measure(5, iters, |n| {
        for _ in 0..n {
            id += 1;
            ask(&format!("status {id} 1\r\n"), &mut line);
        }
    });
    drop(w);
    let _ = child.wait();
    d
}

/// Whole runs of `script` started by writing `start` straight to an exec runtime and reading
/// until its `538` (no host): the exec runtime's own share of a run.
fn direct_run(iters: usize, script: &str) -> Duration {
    let mut child = Command::new(smx_bin())
        .arg("exec-runtime")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = child.stdin.take().unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    w.write_all(b"hello 1\r\n").unwrap();
    r.read_line(&mut line).unwrap();
    let mut run = 100u64;
    let d = measure(5, iters, |n| {
        for _ in 0..n {
            run += 1;
            let start = format!("start {run} {run} \"{script}\" trusted \"\"\r\n");
            w.write_all(start.as_bytes()).unwrap();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line.starts_with("538") {
                    assert!(line.trim_end().ends_with(" 1"), "{line}");
                    break;
                }
            }
        }
    });
    drop(w);
    let _ = child.wait();
    d
}

fn config() -> Config {
    let mut c = Config::embedded();
    let text = format!(
        "[[runtime]]\nname = \"exec\"\ncommand = [{:?}, \"exec-runtime\"]\nextensions = [\"sh\"]\nprofiles = [\"trusted\"]\n\
         [[runtime]]\nname = \"python-tcp\"\ncommand = [\"python3\", \"{{runtimes}}/python/smx_runtime.py\"]\n\
         transport = \"tcp\"\nprofiles = [\"trusted\"]\n",
        smx_bin()
    );
    c.extend(&text, "bench", None).unwrap();
    c.host.max_finished_runs = 1000;
    c
}

fn main() {
    let quick = quick();
    let rtt_iters = if quick { 500 } else { 5000 };
    let run_iters = if quick { 50 } else { 400 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = rt.block_on(async { Host::new(config(), Storage::temporary().unwrap()) });
    let sleeper = host
        .storage()
        .install("bench", "sleeper.sh", b"#!/bin/sh\nexec sleep 600\n", true)
        .unwrap();
    let sleeper_abs = host
        .storage()
        .resolve(&sleeper)
        .unwrap()
        .display()
        .to_string();
    let truebin = std::fs::read("/bin/true").expect("/bin/true");
    let trivial = host
        .storage()
        .install("bench", "true", &truebin, true)
        .unwrap();
    let trivial_abs = host.storage().resolve(&trivial).unwrap();

    println!(
        "smx host benchmark ({} mode; medians of 5 rounds)\n",
        if quick { "quick" } else { "full" }
    );
    println!(
        "{:<44} {:>13}   {:<34} {:>13}   {:>7}",
        "measured", "per op", "baseline (same run)", "per op", "ratio"
    );

    // (a) status round trip.
    let cat = cat_rtt(rtt_iters);
    let direct = direct_status_rtt(rtt_iters, &sleeper_abs);
    let host_rtt = rt.block_on(async {
        let mut req = LaunchRequest::new(sleeper.clone());
        req.lifetime = TimeInterval::MAX;
        let run = host.launch(req).unwrap();
        while host.run(run).unwrap().state != RunState::Executing {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut per = Vec::new();
        for _ in 0..rtt_iters / 10 {
            host.refresh(run).await.unwrap();
        }
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..rtt_iters {
                let r = host.refresh(run).await.unwrap();
                debug_assert_eq!(r.state, RunState::Executing);
            }
            per.push(t.elapsed().as_secs_f64() / rtt_iters as f64);
        }
        host.abort(run).await.unwrap();
        Duration::from_secs_f64(median(per))
    });
    row(
        "status RTT, host -> warm exec runtime",
        host_rtt,
        "status RTT, raw pipes -> exec rt",
        direct,
        Some(1.5),
    );
    row(
        "status RTT, host -> warm exec runtime",
        host_rtt,
        "line echo RTT, raw pipes -> cat",
        cat,
        None,
    );

    // (a') status round trip over TCP vs over the pipe, same (Python) runtime, same script.
    let looper = host
        .storage()
        .install(
            "bench",
            "loop.py",
            b"import time\nwhile True:\n    time.sleep(0.05)\n",
            false,
        )
        .unwrap();
    let status_rtt = |runtime: &'static str| {
        let (host, looper) = (host.clone(), looper.clone());
        rt.block_on(async move {
            let mut req = LaunchRequest::new(looper);
            req.runtime = Some(runtime.into());
            req.lifetime = TimeInterval::MAX;
            let run = host.launch(req).unwrap();
            while host.run(run).unwrap().state != RunState::Executing {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let iters = rtt_iters / 5;
            let mut per = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..iters {
                    host.refresh(run).await.unwrap();
                }
                per.push(t.elapsed().as_secs_f64() / iters as f64);
            }
            host.abort(run).await.unwrap();
            Duration::from_secs_f64(median(per))
        })
    };
    let over_pipe = status_rtt("python");
    let over_tcp = status_rtt("python-tcp");
    row(
        "status RTT, host -> python runtime over TCP",
        over_tcp,
        "same over the pipe",
        over_pipe,
        None,
    );

    // (b) a whole run of a trivial executable.
    let fork_exec = measure(5, run_iters, |n| {
        for _ in 0..n {
            let s = Command::new(&trivial_abs).status().unwrap();
            assert!(s.success());
        }
    });
    let host_run = rt.block_on(async {
        let one = || async {
            let run = host.launch(LaunchRequest::new(trivial.clone())).unwrap();
            let info = host.wait(run).await.unwrap();
            assert_eq!(info.exit_code, ExitCode::NoError, "{}", info.error);
        };
        for _ in 0..run_iters / 10 + 1 {
            one().await;
        }
        let mut per = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..run_iters {
                one().await;
            }
            per.push(t.elapsed().as_secs_f64() / run_iters as f64);
        }
        Duration::from_secs_f64(median(per))
    });
    let direct = direct_run(run_iters, &trivial_abs.display().to_string());
    row(
        "run of /bin/true via host + warm exec rt",
        host_run,
        "fork+exec+wait of /bin/true",
        fork_exec,
        Some(1.2),
    );
    row(
        "  of which: raw pipes -> exec rt, no host",
        direct,
        "fork+exec+wait of /bin/true",
        fork_exec,
        None,
    );
    row(
        "  of which: the host",
        host_run,
        "raw pipes -> exec rt, no host",
        direct,
        None,
    );
    rt.block_on(host.shutdown());
}
