//! AgentX subagent benchmarks: `smx daemon` with `[agentx]` behind a real net-snmp `snmpd`,
//! driven by net-snmp's command-line tools; every row is a ratio against a baseline
//! measured in the same run (absolute times on a shared machine are noise).
//!
//! - (a) `snmpget` of one smRunTable column (smRunState of one row) against `snmpget` of
//!   sysUpTime.0, which snmpd answers itself: the cost of the AgentX hop (goal <= 1.3x).
//! - (b) `snmpwalk` of smRunTable's smRunState column with N rows against `snmpwalk` of
//!   snmpd's own hrSWRunStatus (HOST-RESOURCES-MIB) with as many processes, made up with
//!   `sleep` processes (goal <= 1.5x). N is 10,000 (`SMX_BENCH_QUICK=1`: 1,000).
//! - (c) smLaunchStart to terminated of an empty `#!/bin/sh` script over SNMP (`snmpset` of
//!   smLaunchStart 0, then `snmpget` of smRunState until 7) against the control API
//!   (`launch_start` + `wait` through `smx::client`).
//!
//! - (d) the subagent's own share of (b): GetNext over the same number of smRunTable rows
//!   answered in-process by `smx::snmp::view` (no IO), per row, against the per-row time
//!   of the hrSWRunStatus walk; and (e) a GetNext round trip over the AgentX socket to the
//!   subagent's session from a master in this process (the subagent's IO included).
//!
//! Runs scripts for an owner mapped to an OS profile: run as root. `cargo bench --bench agentx`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smx::client::Client;
use smx::mib::{LaunchSpec, ScriptSpec};
use smx::proto::Octets;

fn smx_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smx"))
}

fn quick() -> bool {
    std::env::var_os("SMX_BENCH_QUICK").is_some()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Children killed when dropped.
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

struct Lab {
    dir: tempfile::TempDir,
    port: u16,
    _procs: Kids,
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Lab {
    fn start() -> Lab {
        for tool in ["snmpd", "snmpget", "snmpwalk", "snmpset"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{tool} not found: install snmpd snmp snmptrapd"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("smx-bench-agentx-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let port = free_udp_port();
        let sock = d.join("agentx.sock");
        std::fs::write(
            d.join("snmpd.conf"),
            format!(
                "agentAddress udp:127.0.0.1:{port}\nmaster agentx\nagentXSocket unix:{}\n\
                 agentXPerms 0600 0700\nagentXTimeout 5\nagentXRetries 1\n\
                 rocommunity public 127.0.0.1\nrwcommunity private 127.0.0.1\n",
                sock.display()
            ),
        )
        .unwrap();
        let snmpd = Command::new("snmpd")
            .args(["-f", "-Lf", "/dev/null", "-C", "-c"])
            .arg(d.join("snmpd.conf"))
            .args(["-I", "-smux"])
            .env("MIBS", "")
            .env("SNMP_PERSISTENT_DIR", d.join("persist"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("snmpd's AgentX socket", || sock.exists());
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name;
        std::fs::write(
            d.join("smx.toml"),
            format!(
                "[host]\nstorage = {storage:?}\nmax_active_runs = 4096\nmax_finished_runs = 100000\n\n\
                 [[runtime]]\nname = \"exec\"\ncommand = [{bin:?}, \"exec-runtime\"]\n\
                 extensions = [\"sh\"]\nprofiles = [\"trusted\"]\n\n\
                 [[os_profile]]\nname = \"self\"\nuser = {me:?}\n\n\
                 [[owner]]\nname = \"*\"\nos_profile = \"self\"\nruntime_profile = \"trusted\"\n\n\
                 [agentx]\nsocket = {sock:?}\n",
                storage = d.join("storage").display().to_string(),
                bin = smx_bin().display().to_string(),
                sock = sock.display().to_string(),
            ),
        )
        .unwrap();
        let smx = Command::new(smx_bin())
            .args(["daemon", "--config"])
            .arg(d.join("smx.toml"))
            .arg("--socket")
            .arg(d.join("smx.sock"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lab = Lab {
            port,
            _procs: Kids(vec![snmpd, smx]),
            dir,
        };
        wait_for("the subagent's registration", || {
            lab.snmp("snmpget", "public", &["1.3.6.1.2.1.64.1.1.1.2.1"])
                .contains("OID")
        });
        lab
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("smx.sock")
    }

    fn snmp(&self, tool: &str, community: &str, args: &[&str]) -> String {
        let out = Command::new(tool)
            .args(["-v2c", "-c", community, "-On", "-t", "30", "-r", "0"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(args)
            .env("MIBS", "")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn timed(&self, tool: &str, args: &[&str]) -> (Duration, String) {
        let t = Instant::now();
        let out = self.snmp(tool, "public", args);
        (t.elapsed(), out)
    }
}

const SM_RUN_STATE: &str = "1.3.6.1.2.1.64.1.4.2.1.10";
const HR_SW_RUN_STATUS: &str = "1.3.6.1.2.1.25.4.2.1.7";
const SYS_UP_TIME: &str = "1.3.6.1.2.1.1.3.0";
/// smLaunchTable row ("noc", "bench").
const LAUNCH_IDX: &str = "3.110.111.99.5.98.101.110.99.104";

fn fmt(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1e-3 {
        format!("{:>9.2} ms", s * 1e3)
    } else {
        format!("{:>9.2} us", s * 1e6)
    }
}

fn row(name: &str, got: Duration, base: &str, base_t: Duration, goal: &str) {
    let ratio = got.as_secs_f64() / base_t.as_secs_f64();
    println!(
        "| {name:<46} | {} | {base:<36} | {} | {ratio:>6.2}x | {goal} |",
        fmt(got),
        fmt(base_t)
    );
}

async fn install(c: &mut Client) {
    c.script_install(ScriptSpec {
        owner: "noc".into(),
        name: "bench.sh".into(),
        content: Octets::new(b"#!/bin/sh\n".to_vec()),
        ..Default::default()
    })
    .await
    .unwrap();
    c.launch_add(LaunchSpec {
        owner: "noc".into(),
        name: "bench".into(),
        script_owner: "noc".into(),
        script_name: "bench.sh".into(),
        max_running: Some(1000),
        max_completed: Some(1_000_000),
        ..Default::default()
    })
    .await
    .unwrap();
}

fn main() {
    let rows = if quick() { 1_000 } else { 10_000 };
    let rounds = if quick() { 10 } else { 30 };
    let lab = Lab::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = rt.block_on(Client::connect(&lab.socket())).unwrap();
    rt.block_on(install(&mut c));

    // (c) smLaunchStart -> terminated, SNMP and control API alternating.
    let (mut snmp_t, mut api_t) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let next = lab.snmp(
            "snmpget",
            "public",
            &["-Oqv", &format!("1.3.6.1.2.1.64.1.4.1.1.14.{LAUNCH_IDX}")],
        );
        let n = next.trim().to_owned();
        let set = lab.snmp(
            "snmpset",
            "private",
            &[&format!("1.3.6.1.2.1.64.1.4.1.1.10.{LAUNCH_IDX}"), "i", &n],
        );
        assert!(set.contains("INTEGER"), "smLaunchStart: {set}");
        let state = format!("{SM_RUN_STATE}.{LAUNCH_IDX}.{n}");
        while lab.snmp("snmpget", "public", &["-Oqv", &state]).trim() != "7" {}
        snmp_t.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(async {
            let run = c.launch_start("noc", "bench", None, None).await.unwrap();
            c.wait(run.run_id).await.unwrap();
        });
        api_t.push(t.elapsed());
    }

    // Fill smRunTable to `rows` rows.
    rt.block_on(async {
        let mut have = c.runs(Some("noc")).await.unwrap().len();
        while have < rows {
            match c.launch_start("noc", "bench", None, None).await {
                Ok(_) => have += 1,
                // smLaunchMaxRunning (1000) reached: let some finish.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let runs = c.runs(Some("noc")).await.unwrap();
            if runs.len() >= rows && runs.iter().all(|r| r.is_terminated()) {
                break;
            }
            assert!(Instant::now() < deadline, "runs did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let our_rows = lab.timed("snmpwalk", &[SM_RUN_STATE]).1.lines().count();

    // As many processes for hrSWRunTable: topped up with `sleep`s by /proc's count (the
    // walk lags behind snmpd's process cache; other processes come and go).
    let procs = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter(|e| {
                e.as_ref().is_ok_and(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
            })
            .count()
    };
    let mut sleeps = Kids(Vec::new());
    let spawn_sleeps = |sleeps: &mut Kids, n: usize| {
        for _ in 0..n {
            sleeps.0.push(
                Command::new("sleep")
                    .arg("600")
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
    };
    spawn_sleeps(&mut sleeps, (our_rows + 5).saturating_sub(procs()));
    // snmpd caches its process list for a while: wait until the walk sees them all.
    let deadline = Instant::now() + Duration::from_secs(120);
    while lab.timed("snmpwalk", &[HR_SW_RUN_STATUS]).1.lines().count() < our_rows {
        assert!(
            Instant::now() < deadline,
            "hrSWRunTable never showed {our_rows} rows"
        );
        spawn_sleeps(&mut sleeps, (our_rows + 5).saturating_sub(procs()));
        std::thread::sleep(Duration::from_secs(2));
    }

    // (a) and (b), alternating with their baselines.
    let (mut get_t, mut up_t, mut walk_t, mut hr_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let one = format!("{SM_RUN_STATE}.{LAUNCH_IDX}.1");
    let mut hr_rows = 0;
    for i in 0..rounds {
        get_t.push(lab.timed("snmpget", &[&one]).0);
        up_t.push(lab.timed("snmpget", &[SYS_UP_TIME]).0);
        if i < rounds.min(5) {
            walk_t.push(lab.timed("snmpwalk", &[SM_RUN_STATE]).0);
            let (t, out) = lab.timed("snmpwalk", &[HR_SW_RUN_STATUS]);
            hr_rows = out.lines().count();
            hr_t.push(t);
        }
    }
    drop(sleeps);
    println!(
        "\nAgentX subagent (smx daemon behind snmpd), medians; {rounds} rounds, walks 5 rounds"
    );
    println!("| measured | time | baseline (same run) | time | ratio | goal |");
    println!("|---|---|---|---|---|---|");
    row(
        "snmpget smRunState.(noc,bench,1)",
        median(get_t),
        "snmpget sysUpTime.0 (snmpd itself)",
        median(up_t),
        "<= 1.3x",
    );
    row(
        &format!("snmpwalk smRunState, {our_rows} rows"),
        median(walk_t),
        &format!("snmpwalk hrSWRunStatus, {hr_rows} rows"),
        median(hr_t.clone()),
        "<= 1.5x",
    );
    row(
        "smLaunchStart -> terminated over SNMP",
        median(snmp_t),
        "same through the control API",
        median(api_t),
        "",
    );
    let per_hr = median(hr_t) / hr_rows.max(1) as u32;
    row(
        "GetNext smRunState in-process (view), per row",
        in_process(our_rows),
        "hrSWRunStatus walk, per row",
        per_hr,
        "",
    );
    row(
        "GetNext round trip over AgentX (raw master)",
        raw_round_trip(),
        "hrSWRunStatus walk, per row",
        per_hr,
        "",
    );
}

/// (e): a master in this process sends 10,000 GetNexts (one at a time, as snmpd does) to a
/// subagent session over a Unix socket; the median round trip of five rounds.
fn raw_round_trip() -> Duration {
    use smx::agentx::{ByteOrder, Framer, GetNext, Oid, Payload, Pdu, Response, SearchRange};
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("master.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (s2, stop2) = (sock.clone(), stop.clone());
    let subagent = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let host = smx::host::Host::new(
                smx::config::Config::embedded(),
                smx::storage::Storage::temporary().unwrap(),
            );
            let mib = smx::mib::Mib::new(host, None).unwrap();
            let a = smx::snmp::AgentxSettings {
                socket: smx::snmp::MasterAddr::Unix(s2),
                ping_interval: Duration::from_secs(600),
                ..Default::default()
            };
            smx::snmp::session::run(mib.clone(), a, stop2).await;
            mib.shutdown().await;
        });
    });
    let (mut st, _) = listener.accept().unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut framer = Framer::default();
    let mut recv = |st: &mut std::os::unix::net::UnixStream| -> Pdu {
        loop {
            if let Some(f) = framer.next_frame(&mut buf).unwrap() {
                return Pdu::decode(&f).unwrap();
            }
            let mut c = [0u8; 65536];
            let n = st.read(&mut c).unwrap();
            assert!(n > 0, "subagent closed");
            buf.extend_from_slice(&c[..n]);
        }
    };
    for _ in 0..2 {
        // Open, then Register.
        let p = recv(&mut st);
        st.write_all(&p.respond(Response::ok(vec![])).to_bytes().unwrap())
            .unwrap();
    }
    let start: Oid = "1.3.6.1.2.1.64.1.1.1.2".parse().unwrap();
    let mut times = Vec::new();
    let n = 10_000u32;
    for round in 0..5u32 {
        let t = Instant::now();
        for i in 0..n {
            let p = Pdu {
                session_id: 1,
                transaction_id: round * n + i,
                packet_id: round * n + i,
                byte_order: ByteOrder::LittleEndian,
                payload: Payload::GetNext(GetNext {
                    context: None,
                    ranges: vec![SearchRange {
                        start: start.clone(),
                        end: Oid::null(),
                        include: false,
                    }],
                }),
            };
            st.write_all(&p.to_bytes().unwrap()).unwrap();
            let _ = recv(&mut st);
        }
        times.push(t.elapsed() / n);
    }
    stop.cancel();
    drop(st);
    let _ = subagent.join();
    median(times)
}

/// (d): GetNext steps over `rows` smRunTable rows of an in-process model, per step.
fn in_process(rows: usize) -> Duration {
    use smx::agentx::{SearchRange, Value};
    use smx::host::{Host, RunInfo, TimeInterval};
    use smx::proto::{ExitCode, RunId, RunState};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = smx::config::Config::embedded();
        let host = Host::new(config, smx::storage::Storage::temporary().unwrap());
        for i in 1..=rows as u32 {
            host.restore(RunInfo {
                run_id: RunId(u64::from(i)),
                owner: "noc".into(),
                name: "bench".into(),
                index: i,
                script: "s".into(),
                runtime: "exec".into(),
                profile: "trusted".into(),
                os_profile: None,
                argument: Octets::default(),
                state: RunState::Terminated,
                exit_code: ExitCode::NoError,
                result: Octets::default(),
                error: String::new(),
                start_time: std::time::SystemTime::now(),
                end_time: Some(std::time::SystemTime::now()),
                result_time: None,
                error_time: None,
                lifetime: TimeInterval::ZERO,
                expire_time: TimeInterval::MAX,
                runtime_pid: None,
            });
        }
        let mib = smx::mib::Mib::new(host, None).unwrap();
        let end: smx::agentx::Oid = "1.3.6.1.2.1.64.1.4.2.1.11".parse().unwrap();
        let mut times = Vec::new();
        for _ in 0..5 {
            let mut start: smx::agentx::Oid = SM_RUN_STATE.parse().unwrap();
            let t = Instant::now();
            let mut n = 0u32;
            loop {
                // One MibSource per PDU, as the session builds it.
                let src = smx::snmp::view::MibSource::new(&mib);
                let vb = smx::snmp::view::get_next(
                    &src,
                    &SearchRange {
                        start: start.clone(),
                        end: end.clone(),
                        include: false,
                    },
                );
                if vb.value == Value::EndOfMibView {
                    break;
                }
                n += 1;
                start = vb.name;
            }
            assert_eq!(n as usize, rows);
            times.push(t.elapsed() / n);
        }
        mib.shutdown().await;
        median(times)
    })
}
