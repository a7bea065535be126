//! OS security profiles (RFC 3179 sections 3, 6.2.1 and 9) with real users, groups, chroot
//! and limits. These tests need root (CI runs as root) and skip, saying so, otherwise.
//!
//! Everything is checked from the outside: /proc/<pid> of the runtime process, and what a
//! script running in the profile can and cannot do.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use smx::config::Config;
use smx::host::{Host, LaunchError, LaunchRequest};
use smx::proto::{ExitCode, RunState};
use smx::storage::Storage;

/// Root-only tests are `#[ignore = "needs root"]` and run with `--include-ignored` (CI
/// runs as root); run without root, they fail here instead of passing by returning early.
macro_rules! need_root {
    () => {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it creates users and drops privileges (run as root, or leave out --include-ignored)"
        );
    };
}

/// A world-readable directory with a copy of the smx binary: the repository (and so the
/// build directory) may sit where the dropped users cannot reach, such as /root.
struct Sandbox {
    dir: tempfile::TempDir,
    smx: PathBuf,
}

fn sandbox() -> Sandbox {
    let dir = tempfile::Builder::new()
        .prefix("smx-profile-test-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let smx = dir.path().join("smx");
    std::fs::copy(smx_bin(), &smx).unwrap();
    std::fs::set_permissions(&smx, std::fs::Permissions::from_mode(0o755)).unwrap();
    Sandbox { dir, smx }
}

fn profiles_config(smx: &Path, extra: &str) -> Config {
    let (ops, _) = user("smxt-ops", &[]);
    let _ = user("smxt-noc", &[]);
    let _ = (ops, group("smxt-extra"));
    let mut c = Config::embedded();
    let text = format!(
        r#"
[host]
hello_timeout = "5s"
command_timeout = "5s"

[[runtime]]
name = "exec"
command = [{smx:?}, "exec-runtime", "--profiles", "trusted"]
extensions = ["sh"]
profiles = ["trusted"]

[[os_profile]]
name = "ops"
user = "smxt-ops"
groups = ["smxt-extra"]
rlimits = {{ nofile = 64, cpu = 60, core = 0, as = "2G" }}
umask = "027"
env = {{ LANG = "C.UTF-8", SMX_PROFILE_NOTE = "from the profile" }}

[[os_profile]]
name = "noc"
user = "smxt-noc"

[[owner]]
name = "ops"
os_profile = "ops"
runtime_profile = "trusted"

[[owner]]
name = "noc"
os_profile = "noc"
runtime_profile = "trusted"
{extra}"#,
        smx = smx.display().to_string()
    );
    c.extend(&text, "profiles-test.toml", None).unwrap();
    c
}

fn launch_as(host: &Host, owner: &str, script: &str) -> smx::proto::RunId {
    let mut r = LaunchRequest::new(script);
    r.owner = Some(owner.into());
    host.launch(r).unwrap()
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn result_lines(r: &smx::host::RunInfo) -> Vec<String> {
    r.result
        .as_str()
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
#[ignore = "needs root"]
async fn runtime_runs_as_the_profile_user_with_only_what_it_needs() {
    need_root!();
    let sb = sandbox();
    let (uid, gid) = user("smxt-ops", &[]);
    let extra = group("smxt-extra");
    // A root-only file that the script must not be able to read.
    let secret = sb.dir.path().join("root-only");
    std::fs::write(&secret, "top secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // An fd of the host opened without O_CLOEXEC: it must not reach the runtime.
    let marker = sb.dir.path().join("leak-marker");
    std::fs::write(&marker, "").unwrap();
    let cpath = std::ffi::CString::new(marker.display().to_string()).unwrap();
    // SAFETY: plain open(2) of a valid path; the fd is closed at the end of the test.
    let leaked = unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY) };
    assert!(leaked > 2);

    let h = Host::new(profiles_config(&sb.smx, ""), Storage::temporary().unwrap());
    let body = format!(
        "#!/bin/sh\n\
         echo \"id $(id -u) $(id -g) $(id -G)\"\n\
         echo \"nofile $(ulimit -n)\"\n\
         if cat {secret} >/dev/null 2>&1; then echo secret readable; else echo secret denied; fi\n\
         if (echo x >> \"$SMX_SCRIPT\") 2>/dev/null; then echo script writable; else echo script read-only; fi\n\
         echo \"home $HOME user $USER\"\n",
        secret = secret.display()
    );
    let s = install(&h, "whoami.sh", &body, true);
    let run = launch_as(&h, "ops", &s);
    let r = finish(&h, run, 20).await;
    assert_eq!(r.exit_code, ExitCode::NoError, "{}", r.error);
    assert_eq!(r.os_profile.as_deref(), Some("ops"));
    let lines = result_lines(&r);
    assert_eq!(
        lines[0],
        format!(
            "id {uid} {gid} {}",
            [gid, extra].map(|g| g.to_string()).join(" ")
        )
    );
    assert_eq!(lines[1], "nofile 64");
    assert_eq!(lines[2], "secret denied");
    assert_eq!(lines[3], "script read-only");
    assert_eq!(lines[4], "home /nonexistent user smxt-ops");

    // The runtime process itself, as the kernel sees it.
    let pid = r.runtime_pid.unwrap();
    assert_eq!(
        status_field(pid, "Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}"),
        "real/effective/saved/fs uid"
    );
    assert_eq!(
        status_field(pid, "Gid"),
        format!("{gid}\t{gid}\t{gid}\t{gid}"),
        "real/effective/saved/fs gid"
    );
    assert_eq!(
        status_field(pid, "Groups"),
        extra.to_string(),
        "exactly the configured supplementary groups"
    );
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Umask"), "0027");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        nofile.split_whitespace().collect::<Vec<_>>()[3..5],
        ["64", "64"],
        "{nofile}"
    );
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let pgrp: u32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pgrp, pid, "the runtime leads its own process group");

    // A clean environment: only what the profile and SMX put there, nothing of the host's.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let keys: BTreeSet<String> = environ
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            String::from_utf8_lossy(e)
                .split('=')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    let expected: BTreeSet<String> = [
        "HOME",
        "LANG",
        "LOGNAME",
        "PATH",
        "SMX_PROFILE_NOTE",
        "SMX_RUNTIME",
        "SMX_TRANSPORT",
        "USER",
    ]
    .map(String::from)
    .into();
    assert_eq!(keys, expected);

    // No fd of the host crossed exec, although one was inheritable.
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        assert_ne!(
            target,
            marker,
            "host fd {leaked} leaked into the runtime as {:?}",
            fd.file_name()
        );
    }
    let mut control = Command::new("sleep").arg("5").spawn().unwrap();
    let inherited = std::fs::read_dir(format!("/proc/{}/fd", control.id()))
        .unwrap()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).ok().as_deref() == Some(marker.as_path()));
    assert!(
        inherited,
        "control: a plain child does inherit the marker fd"
    );
    let _ = control.kill();
    let _ = control.wait();
    // SAFETY: closing the fd this test opened.
    unsafe { libc::close(leaked) };

    // Regaining root is impossible for the runtime: setuid(0) as that user fails. (The
    // child's own check aborts the start if it did not; here we check the kernel agrees.)
    let o = Command::new(&sb.smx)
        .arg("--version")
        .uid(uid)
        .gid(gid)
        .output()
        .expect("smx runs as the profile user");
    assert!(o.status.success());
    h.shutdown().await;
}

use std::os::unix::process::CommandExt;

#[tokio::test]
#[ignore = "needs root"]
async fn two_owners_run_concurrently_in_separate_runtime_processes() {
    need_root!();
    let sb = sandbox();
    let (ops, _) = user("smxt-ops", &[]);
    let (noc, _) = user("smxt-noc", &[]);
    let h = Host::new(profiles_config(&sb.smx, ""), Storage::temporary().unwrap());
    let s = install(&h, "sleep.sh", "#!/bin/sh\nsleep 30\n", true);
    let a = launch_as(&h, "ops", &s);
    let b = launch_as(&h, "noc", &s);
    let ra = reach(&h, a, RunState::Executing).await;
    let rb = reach(&h, b, RunState::Executing).await;
    let (pa, pb) = (ra.runtime_pid.unwrap(), rb.runtime_pid.unwrap());
    assert_ne!(pa, pb, "different OS profiles never share a runtime");
    assert_eq!(
        status_field(pa, "Uid").split('\t').next().unwrap(),
        ops.to_string()
    );
    assert_eq!(
        status_field(pb, "Uid").split('\t').next().unwrap(),
        noc.to_string()
    );
    // A second run of the same owner goes to the same runtime (RFC 3179 6.2.1).
    let c = launch_as(&h, "ops", &s);
    assert_eq!(
        reach(&h, c, RunState::Executing).await.runtime_pid,
        Some(pa)
    );
    assert_eq!(h.stats().runtime_processes.len(), 2);
    h.shutdown().await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn chroot_hides_the_host_and_script_paths_are_translated() {
    need_root!();
    let sb = sandbox();
    let root = sb.dir.path().join("root");
    // The root holds smx, /bin/sh and their shared libraries, and the script storage.
    for bin in [smx_bin(), PathBuf::from("/bin/sh")] {
        let out = Command::new("ldd").arg(&bin).output().unwrap();
        for lib in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let src = std::fs::canonicalize(lib).unwrap();
            let dst = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(&src, &dst).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(
        std::fs::canonicalize("/bin/sh").unwrap(),
        root.join("bin/sh"),
    )
    .unwrap();
    std::fs::copy(smx_bin(), root.join("smx")).unwrap();
    for p in ["bin/sh", "smx"] {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let storage = root.join("scripts");
    let extra = format!(
        "[[os_profile]]\nname = \"jail\"\nuser = \"smxt-ops\"\nchroot = {:?}\n\n\
         [[owner]]\nname = \"jailed\"\nos_profile = \"jail\"\nruntime_profile = \"trusted\"\n\n\
         [[runtime]]\nname = \"jexec\"\ncommand = [\"/smx\", \"exec-runtime\"]\nprofiles = [\"trusted\"]\n",
        root.display().to_string()
    );
    let h = Host::new(
        profiles_config(&sb.smx, &extra),
        Storage::open(&storage).unwrap(),
    );
    let body = "#!/bin/sh\n\
        if [ -e /etc/passwd ]; then echo etc visible; else echo etc hidden; fi\n\
        echo \"script $SMX_SCRIPT\"\n\
        echo \"cwd $(pwd)\"\n";
    let s = install(&h, "jail.sh", body, true);
    let mut req = LaunchRequest::new(s.clone());
    req.owner = Some("jailed".into());
    req.runtime = Some("jexec".into());
    let r = finish(&h, h.launch(req).unwrap(), 20).await;
    assert_eq!(r.exit_code, ExitCode::NoError, "{}", r.error);
    assert_eq!(
        result_lines(&r),
        ["etc hidden", &format!("script /scripts/{s}"), "cwd /"]
    );
    let pid = r.runtime_pid.unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).unwrap(),
        std::fs::canonicalize(&root).unwrap()
    );

    // A storage outside the root cannot serve a chrooted owner: refused at launch.
    let h2 = Host::new(
        profiles_config(&sb.smx, &extra),
        Storage::temporary().unwrap(),
    );
    let s2 = install(&h2, "jail.sh", body, true);
    let mut req = LaunchRequest::new(s2);
    req.owner = Some("jailed".into());
    req.runtime = Some("jexec".into());
    assert!(matches!(
        h2.launch(req),
        Err(LaunchError::NotInChroot { .. })
    ));
    h.shutdown().await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn profile_setup_failures_end_the_run_and_name_the_step() {
    need_root!();
    let sb = sandbox();
    let extra = "[[os_profile]]\nname = \"greedy\"\nuser = \"smxt-ops\"\nrlimits = { nofile = 1099511627776 }\n\
                 [[owner]]\nname = \"greedy\"\nos_profile = \"greedy\"\nruntime_profile = \"trusted\"\n\
                 [[os_profile]]\nname = \"ghost\"\nuser = \"smxt-no-such-user\"\n\
                 [[owner]]\nname = \"ghost\"\nos_profile = \"ghost\"\nruntime_profile = \"trusted\"\n";
    let h = Host::new(
        profiles_config(&sb.smx, extra),
        Storage::temporary().unwrap(),
    );
    let s = install(&h, "x.sh", "#!/bin/sh\n", true);
    let r = finish(&h, launch_as(&h, "greedy", &s), 20).await;
    assert_eq!(
        (r.state, r.exit_code),
        (RunState::Terminated, ExitCode::GenericError)
    );
    assert!(
        r.error.contains("failed at step `setrlimit`"),
        "{}",
        r.error
    );
    let r = finish(&h, launch_as(&h, "ghost", &s), 20).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(
        r.error.contains("unknown user smxt-no-such-user"),
        "{}",
        r.error
    );
}

#[tokio::test]
async fn unmapped_owners_are_refused_and_profiles_not_overridden() {
    // No root needed: refusing must happen before anything is started.
    let sb = sandbox();
    let h = Host::new(profiles_config(&sb.smx, ""), Storage::temporary().unwrap());
    let s = install(&h, "x.sh", "#!/bin/sh\n", true);
    let mut r = LaunchRequest::new(s.clone());
    r.owner = Some("mallory".into());
    let e = h.launch(r).unwrap_err();
    assert!(matches!(e, LaunchError::OwnerNotMapped(_)), "{e}");
    assert!(e.to_string().contains("\"mallory\" is not mapped"), "{e}");
    let mut r = LaunchRequest::new(s.clone());
    r.owner = Some("ops".into());
    r.profile = Some("other".parse().unwrap());
    assert!(
        matches!(h.launch(r), Err(LaunchError::ProfileOverride { .. })),
        "an owner's profile cannot be overridden"
    );

    h.shutdown().await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_star_entry_maps_every_owner_without_one() {
    need_root!();
    let sb = sandbox();
    let star = "[[owner]]\nname = \"*\"\nos_profile = \"noc\"\nruntime_profile = \"trusted\"\n";
    let h = Host::new(
        profiles_config(&sb.smx, star),
        Storage::temporary().unwrap(),
    );
    let s = install(&h, "x.sh", "#!/bin/sh\nid -un\n", true);
    let r = finish(&h, launch_as(&h, "mallory", &s), 20).await;
    assert_eq!(
        (r.exit_code, r.result.as_str()),
        (ExitCode::NoError, Some("smxt-noc"))
    );
    assert_eq!(r.owner, "mallory");
    h.shutdown().await;
}

#[tokio::test]
async fn path_traversal_and_symlink_escapes_are_refused() {
    let h = host("");
    let s = install(&h, "ok.sh", "#!/bin/sh\n", true);
    for bad in ["../../etc/passwd", "/etc/passwd", "tester/../../x", ""] {
        let e = h.launch(request(bad, None)).unwrap_err();
        assert!(
            matches!(
                e,
                LaunchError::Storage(smx::storage::StorageError::BadPath(_))
            ),
            "{bad:?}: {e}"
        );
    }
    let link = h.storage().root().join("tester/escape.sh");
    std::os::unix::fs::symlink("/bin/true", &link).unwrap();
    let e = h.launch(request("tester/escape.sh", None)).unwrap_err();
    assert!(
        matches!(
            e,
            LaunchError::Storage(smx::storage::StorageError::Escape(_))
        ),
        "{e}"
    );
    let dir_link = h.storage().root().join("evil");
    std::os::unix::fs::symlink("/usr/bin", &dir_link).unwrap();
    let e = h.launch(request("evil/true", None)).unwrap_err();
    assert!(
        matches!(
            e,
            LaunchError::Storage(smx::storage::StorageError::Escape(_))
        ),
        "{e}"
    );
    assert!(h.launch(request(&s, None)).is_ok());
    h.shutdown().await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn runtimes_die_with_the_host_and_inherit_none_of_its_environment() {
    need_root!();
    let sb = sandbox();
    let cfg = sb.dir.path().join("smx.toml");
    let text = format!(
        "[[runtime]]\nname = \"exec\"\ncommand = [{:?}, \"exec-runtime\"]\nextensions = [\"sh\"]\nprofiles = [\"trusted\"]\n\
         [[os_profile]]\nname = \"ops\"\nuser = \"smxt-ops\"\n[[owner]]\nname = \"ops\"\nos_profile = \"ops\"\nruntime_profile = \"trusted\"\n",
        sb.smx.display().to_string()
    );
    let _ = user("smxt-ops", &[]);
    std::fs::write(&cfg, text).unwrap();
    let script = sb.dir.path().join("env.sh");
    std::fs::write(&script, "#!/bin/sh\nenv | grep -c SMX_TEST_SECRET >&3\nenv > /dev/null\necho \"result $(env | grep -c hunter2)\" >&3\nsleep 60\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut host = Command::new(&sb.smx)
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--owner",
            "ops",
            script.to_str().unwrap(),
        ])
        .env("SMX_TEST_SECRET", "hunter2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let hpid = host.id();
    eventually(20, "the runtime and its script to start", || {
        children(hpid).iter().any(|rt| !children(*rt).is_empty())
    })
    .await;
    let runtime = *children(hpid)
        .iter()
        .find(|rt| !children(**rt).is_empty())
        .unwrap();
    let script_pid = children(runtime)[0];
    let environ = std::fs::read(format!("/proc/{runtime}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("hunter2"),
        "the host's environment leaked"
    );
    // Kill the host outright: no clean-up code runs, the kernel must take the tree down.
    host.kill().unwrap();
    let _ = host.wait();
    eventually(10, "the runtime to die with its host", || !alive(runtime)).await;
    eventually(10, "the script to die with its runtime", || {
        !alive(script_pid)
    })
    .await;
}

/// An unprivileged host can run an owner mapped to its own identity (nothing to switch),
/// and gets a clear error for any other identity.
#[tokio::test]
#[ignore = "needs root"]
async fn unprivileged_host_runs_owners_mapped_to_itself() {
    need_root!();
    let sb = sandbox();
    let (uid, gid) = user("smxt-ops", &[]);
    let _ = user("smxt-noc", &[]);
    let cfg = sb.dir.path().join("self.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[runtime]]\nname = \"exec\"\ncommand = [{:?}, \"exec-runtime\"]\nextensions = [\"sh\"]\nprofiles = [\"trusted\"]\n\
             [[os_profile]]\nname = \"me\"\nuser = \"smxt-ops\"\n[[owner]]\nname = \"me\"\nos_profile = \"me\"\nruntime_profile = \"trusted\"\n\
             [[os_profile]]\nname = \"other\"\nuser = \"smxt-noc\"\n[[owner]]\nname = \"other\"\nos_profile = \"other\"\nruntime_profile = \"trusted\"\n",
            sb.smx.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let script = sb.dir.path().join("who.sh");
    std::fs::write(&script, "#!/bin/sh\nid -un\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |owner: &str| {
        Command::new(&sb.smx)
            .args([
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--owner",
                owner,
                script.to_str().unwrap(),
            ])
            .env("TMPDIR", "/tmp")
            .env("HOME", "/nonexistent")
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    };
    let o = run("me");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "smxt-ops\n");
    // Another identity is refused before anything starts (it used to get as far as the
    // runtime's setgroups and end with genericError, EPERM).
    let o = run("other");
    assert_eq!(o.status.code(), Some(1), "a refused launch");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("smx runs as user smxt-ops and cannot switch to user smxt-noc"),
        "{err}"
    );
}

/// Issue 11 / RFC 3179 sections 3 and 9: owners mapped to different OS users get runtime
/// processes of their own, so whatever a script writes reaches no other owner's run. Owner
/// `pyb`'s restricted script and owner `pyc`'s trusted one (which nothing stops from writing
/// to its own SMX pipe) write forged `532`/`533`/`538` lines about every nearby RunId to
/// every fd 0-1023 and to every `/proc/<ppid>/fd/*`; owner `pya`'s restricted run, in a
/// runtime process of its own, ends exactly as it would have.
#[tokio::test]
#[ignore = "needs root"]
async fn forged_smx_from_another_owner_changes_no_other_run() {
    need_root!();
    let sb = sandbox();
    let runtime = sb.dir.path().join("smx_runtime.py");
    std::fs::copy(repo().join("runtimes/python/smx_runtime.py"), &runtime).unwrap();
    assert!(
        Path::new("/usr/bin/python3").exists(),
        "this test needs /usr/bin/python3 >= 3.11 (apt install python3): the dropped users \
         cannot reach a python3 under /root"
    );
    let extra = format!(
        "[[runtime]]\nname = \"python\"\ncommand = [\"/usr/bin/python3\", {runtime:?}]\n\
         extensions = [\"py\"]\nprofiles = [\"trusted\", \"restricted\"]\n\
         [[owner]]\nname = \"pya\"\nos_profile = \"ops\"\nruntime_profile = \"restricted\"\n\
         [[owner]]\nname = \"pyb\"\nos_profile = \"noc\"\nruntime_profile = \"restricted\"\n\
         [[owner]]\nname = \"pyc\"\nos_profile = \"noc\"\nruntime_profile = \"trusted\"\n",
        runtime = runtime.display().to_string()
    );
    let mut c = profiles_config(&sb.smx, &extra);
    c.host.hello_timeout = std::time::Duration::from_secs(15);
    let h = Host::new(c, Storage::temporary().unwrap());
    let victim = install(
        &h,
        "victim.py",
        "import smx, time\nsmx.result('victim alive')\ntime.sleep(4)\nsmx.result('victim done')\n",
        false,
    );
    let forge = install(
        &h,
        "forge.py",
        r#"import os, smx
wrote, refused = set(), set()
lines = b"".join(b'532 0 %d 2 "forged"\r\n533 0 %d 2 "forged"\r\n538 0 %d 9\r\n' % (r, r, r)
                 for r in range(max(1, smx.run_id - 4), smx.run_id + 4) if r != smx.run_id)
def attempt(where, write):
    try:
        write()
        wrote.add(where)
    except PermissionError:
        refused.add(where)
    except (OSError, ValueError):
        pass
for fd in range(1024):
    attempt(fd, lambda: os.write(fd, lines))
proc = "/proc/%d/fd" % os.getppid()
try:
    names = os.listdir(proc)
except OSError:
    names = []
for name in names:
    def write(path=os.path.join(proc, name)):
        with open(path, "wb") as f:
            f.write(lines)
    attempt(proc + "/" + name, write)
smx.result("wrote %s refused %s" % (sorted(map(str, wrote)), len(refused)))
"#,
        false,
    );
    let mut ev = h.subscribe();
    let a = launch_as(&h, "pya", &victim);
    let alive = eventually(20, "the victim to report", || {
        h.run(a).unwrap().result.as_bytes() == b"victim alive"
    });
    alive.await;
    let b = launch_as(&h, "pyb", &forge);
    let c = launch_as(&h, "pyc", &forge);
    let rb = finish(&h, b, 30).await;
    let rc = finish(&h, c, 30).await;
    let ra = finish(&h, a, 30).await;
    let pids: BTreeSet<_> = [ra.runtime_pid, rb.runtime_pid, rc.runtime_pid]
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(
        pids.len(),
        3,
        "three owners, three runtime processes: {pids:?}"
    );
    assert_eq!(
        (
            ra.state,
            ra.exit_code,
            ra.result.as_bytes(),
            ra.error.as_str()
        ),
        (
            RunState::Terminated,
            ExitCode::NoError,
            &b"victim done"[..],
            ""
        ),
        "pya's run is unchanged: {ra:?}"
    );
    let mut seen = Vec::new();
    while let Ok(e) = ev.try_recv() {
        if e.run_id == a {
            seen.push(format!("{:?}", e.kind));
        }
    }
    assert!(
        !seen
            .iter()
            .any(|k| k.contains("forged") || k.contains("GenericError")),
        "forged SMX reached pya's run: {seen:?}"
    );
    // The restricted forger was refused on its SMX fds (and recorded for it); the trusted
    // one could write its own SMX pipe, which only reaches runs of its own process.
    assert_eq!(rb.exit_code, ExitCode::SecurityViolation, "{rb:?}");
    assert!(rb.error.contains("on the SMX channel"), "{rb:?}");
    let rb_result = String::from_utf8_lossy(rb.result.as_bytes()).into_owned();
    assert!(
        !rb_result.contains("/proc/"),
        "pyb wrote to the host's fds: {rb_result}"
    );
    let rc_result = String::from_utf8_lossy(rc.result.as_bytes()).into_owned();
    assert!(
        !rc_result.contains("/proc/"),
        "pyc wrote to the host's fds: {rc_result}"
    );
    eprintln!(
        "pyb: {rb_result}\npyc: {rc_result} ({:?}, {:?})",
        rc.exit_code, rc.error
    );
    h.shutdown().await;
}
