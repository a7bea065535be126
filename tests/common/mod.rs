//! Shared helpers for the integration tests: real hosts, real runtime processes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use smx::config::Config;
use smx::host::{Host, LaunchRequest, RunInfo, TimeInterval};
use smx::proto::RunId;
use smx::storage::Storage;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> String {
    repo()
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// The embedded config extended by `extra`, with short timeouts so misbehaviour shows fast.
pub fn config(extra: &str) -> Config {
    let mut c = Config::embedded();
    // `{smx}` would be the test binary here: point the exec runtime at the real one.
    let text = format!(
        "[host]\nhello_timeout = \"2s\"\ncommand_timeout = \"1s\"\nshutdown_grace = \"2s\"\n\
         [[runtime]]\nname = \"exec\"\ncommand = [{:?}, \"exec-runtime\", \"--profiles\", \"trusted\", \"--grace\", \"1s\"]\n\
         extensions = [\"sh\"]\nprofiles = [\"trusted\"]\n{extra}",
        smx_bin().display().to_string()
    );
    c.extend(&text, "test.toml", None)
        .expect("test config is valid");
    c
}

/// A `[[runtime]]` entry for the fake runtime with the given behaviour flags.
pub fn fake_runtime(name: &str, flags: &[&str]) -> String {
    let mut argv = vec![
        format!("{:?}", "python3"),
        format!("{:?}", fixture("fake_runtime.py")),
    ];
    argv.extend(flags.iter().map(|f| format!("{f:?}")));
    format!(
        "[[runtime]]\nname = \"{name}\"\ncommand = [{}]\nextensions = []\nprofiles = [\"default\"]\n",
        argv.join(", ")
    )
}

pub fn host(extra: &str) -> Host {
    Host::new(config(extra), Storage::temporary().expect("temp storage"))
}

/// Installs a script (executable or not) and returns its storage name.
pub fn install(host: &Host, name: &str, content: &str, executable: bool) -> String {
    host.storage()
        .install("tester", name, content.as_bytes(), executable)
        .expect("install script")
}

pub fn request(script: &str, runtime: Option<&str>) -> LaunchRequest {
    let mut r = LaunchRequest::new(script);
    r.runtime = runtime.map(str::to_owned);
    r
}

/// Waits for the run to finish, failing the test after `secs`.
pub async fn finish(host: &Host, run: RunId, secs: u64) -> RunInfo {
    tokio::time::timeout(Duration::from_secs(secs), host.wait(run))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "run {run} did not finish within {secs}s: {:?}",
                host.run(run)
            )
        })
        .expect("run exists")
}

/// Polls until `f` holds, failing after `secs`.
pub async fn eventually<F: FnMut() -> bool>(secs: u64, what: &str, mut f: F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the run reaches `state`.
pub async fn reach(host: &Host, run: RunId, state: smx::proto::RunState) -> RunInfo {
    eventually(10, &format!("run {run} to reach {state}"), || {
        host.run(run).is_some_and(|r| r.state == state)
    })
    .await;
    host.run(run).unwrap()
}

pub fn secs(s: u64) -> TimeInterval {
    TimeInterval::from_secs(s)
}

/// The CPU time (utime + stime, in clock ticks) of a process.
pub fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// The state letter of /proc/<pid>/stat ('S', 'R', 'T', ...).
pub fn proc_state(pid: u32) -> Option<char> {
    smx::process::proc_state(pid as i32)
}

/// Children of `pid` (from /proc/<pid>/task/*/children).
pub fn children(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                v.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    v
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && proc_state(pid) != Some('Z')
}

/// The smx binary under test.
pub fn smx_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smx"))
}

/// Creates a system group if needed; returns its gid.
pub fn group(name: &str) -> u32 {
    let _ = std::process::Command::new("groupadd")
        .args(["--system", name])
        .output();
    nix::unistd::Group::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("group {name} exists"))
        .gid
        .as_raw()
}

/// Creates a system user (no home, no login) in `groups` if needed; returns (uid, gid).
pub fn user(name: &str, groups: &[&str]) -> (u32, u32) {
    let _ = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output();
    for g in groups {
        let o = std::process::Command::new("usermod")
            .args(["-aG", g, name])
            .output()
            .unwrap();
        assert!(o.status.success(), "usermod -aG {g} {name}: {o:?}");
    }
    let u = nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("user {name} exists"));
    (u.uid.as_raw(), u.gid.as_raw())
}
