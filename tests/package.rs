//! The Debian package: built with `cargo deb` from the metadata in Cargo.toml, its file list
//! and control files checked, unpacked with `dpkg -x`, and the smx in it run on the example
//! scripts it ships; as root, the README's "Install as a service" steps against the
//! unpacked package, with the daemon under no_new_privs as the unit runs it.
//!
//! The package is made from the smx binary under test (cargo deb --no-build, from a staging
//! target directory), so the test costs seconds, not a release build. Needs cargo-deb,
//! dpkg-deb, man and systemd-analyze (.ci/run installs them).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{repo, smx_bin};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(c: &mut Command) -> Output {
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e} (is it installed? .ci/run installs it)"));
    assert!(
        o.status.success(),
        "{c:?}: {}\n{}",
        o.status,
        text(&o.stderr)
    );
    o
}

/// The package, built once per test process, and the directory it was unpacked in.
struct Package {
    _dir: tempfile::TempDir,
    deb: PathBuf,
    root: PathBuf,
}

fn package() -> &'static Package {
    static P: OnceLock<Package> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("smx-package-test-")
            .tempdir_in("/tmp")
            .unwrap();
        // Readable for `nobody`, whom the root test's scripts run as.
        run(Command::new("chmod").arg("755").arg(dir.path()));
        let release = dir.path().join("target/release");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::copy(smx_bin(), release.join("smx")).unwrap();
        let out = dir.path().join("out");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let t = Instant::now();
        run(Command::new(cargo)
            .args([
                "deb",
                "--no-build",
                "--no-strip",
                "--locked",
                "--fast",
                "-o",
            ])
            .arg(&out)
            .env("CARGO_TARGET_DIR", dir.path().join("target"))
            .current_dir(repo()));
        eprintln!("cargo deb --no-build took {:?}", t.elapsed());
        let deb = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("cargo deb made a .deb");
        let root = dir.path().join("root");
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
        Package {
            _dir: dir,
            deb,
            root,
        }
    })
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The packaged smx, with nothing of the build environment that would point it elsewhere.
fn packaged_smx(p: &Package) -> Command {
    let mut c = Command::new(p.root.join("usr/bin/smx"));
    c.env_remove("SMX_RUNTIMES")
        .env_remove("SMX_CONFIG")
        .env_remove("SMX_SOCKET")
        .stdin(Stdio::null());
    c
}

#[test]
fn the_package_has_the_layout_and_its_smx_runs_the_examples() {
    let p = package();
    let listing = text(&run(Command::new("dpkg-deb").arg("--contents").arg(&p.deb)).stdout);
    let mut files = BTreeSet::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (mode, path) = (cols[0], cols[5].trim_start_matches("./"));
        if mode.starts_with('d') {
            continue;
        }
        files.insert(path.to_owned());
        let executable = path == "usr/bin/smx" || path.ends_with(".sh");
        assert_eq!(
            mode,
            if executable {
                "-rwxr-xr-x"
            } else {
                "-rw-r--r--"
            },
            "{path}"
        );
        assert!(
            matches!(cols[1], "root/root" | "0/0"),
            "{path} is owned by {}",
            cols[1]
        );
    }
    let mut want: BTreeSet<String> = [
        "etc/smx/smx.toml",
        "usr/bin/smx",
        "usr/lib/smx/runtimes/exec/conform.sh",
        "usr/lib/smx/runtimes/python/conform.py",
        "usr/lib/smx/runtimes/python/smx_runtime.py",
        "usr/lib/smx/runtimes/tcl/conform.tcl",
        "usr/lib/smx/runtimes/tcl/smx_runtime.tcl",
        "usr/lib/systemd/system/smx.service",
        "usr/share/bash-completion/completions/smx",
        "usr/share/zsh/vendor-completions/_smx",
        "usr/share/fish/vendor_completions.d/smx.fish",
        "usr/share/doc/smx/README.md",
        "usr/share/doc/smx/copyright",
        "usr/share/doc/smx/control-protocol.md",
        "usr/share/doc/smx/writing-a-runtime.md",
        "usr/share/doc/smx/runtimes/python/README.md",
        "usr/share/doc/smx/runtimes/tcl/README.md",
        "usr/share/doc/smx/examples/smx.toml",
        "usr/share/doc/smx/examples/subagent.rs",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for page in names(&repo().join("packaging/man")) {
        want.insert(format!("usr/share/man/man1/{page}.gz"));
    }
    for s in names(&repo().join("scripts")) {
        want.insert(format!("usr/share/doc/smx/examples/scripts/{s}"));
    }
    assert_eq!(files, want, "the package's files");

    // Control files: the conffile, the unit enabled and started by the maintainer scripts.
    let field = |f: &str| {
        text(&run(Command::new("dpkg-deb").arg("--field").arg(&p.deb).arg(f)).stdout)
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "smx");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    assert!(field("Recommends").contains("python3"));
    let ctl = p.root.parent().unwrap().join("control");
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&p.deb)
        .arg(&ctl));
    assert_eq!(
        std::fs::read_to_string(ctl.join("conffiles")).unwrap(),
        "/etc/smx/smx.toml\n"
    );
    let postinst = std::fs::read_to_string(ctl.join("postinst")).unwrap();
    assert!(
        postinst.contains("deb-systemd-helper enable smx.service"),
        "{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-invoke $_dh_action smx.service"),
        "{postinst}"
    );
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");

    // What is installed is what the repository has.
    for (installed, source) in [
        ("usr/lib/systemd/system/smx.service", "examples/smx.service"),
        ("etc/smx/smx.toml", "packaging/smx.toml"),
        (
            "usr/lib/smx/runtimes/python/smx_runtime.py",
            "runtimes/python/smx_runtime.py",
        ),
    ] {
        assert_eq!(
            std::fs::read(p.root.join(installed)).unwrap(),
            std::fs::read(repo().join(source)).unwrap(),
            "{installed}"
        );
    }

    // The packaged smx runs the packaged example scripts: exec, and Python from
    // /usr/lib/smx/runtimes next to it.
    let examples = p.root.join("usr/share/doc/smx/examples/scripts");
    let o = packaged_smx(p)
        .args(["run", "--argument", "1"])
        .arg(examples.join("sysinfo.sh"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("host "), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).starts_with("smx: result: sample 1/1 load "),
        "{}",
        text(&o.stderr)
    );
    let o = packaged_smx(p)
        .args(["run", "--argument", "1"])
        .arg(examples.join("loadavg.py"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("load1="), "{}", text(&o.stdout));
    let o = run(packaged_smx(p).arg("runtimes"));
    let runtimes = p.root.join("usr/lib/smx/runtimes");
    for r in ["python/smx_runtime.py", "tcl/smx_runtime.tcl"] {
        assert!(
            text(&o.stdout).contains(&runtimes.join(r).display().to_string()),
            "{}",
            text(&o.stdout)
        );
    }
    let o = run(packaged_smx(p)
        .args(["config", "check"])
        .arg(p.root.join("etc/smx/smx.toml")));
    assert!(text(&o.stdout).contains(": ok ("), "{}", text(&o.stdout));

    // The man pages render, the completion is valid bash, the unit is a valid unit.
    let man1 = p.root.join("usr/share/man/man1");
    for page in names(&man1) {
        let o = run(Command::new("man")
            .args(["--warnings", "-l"])
            .arg(man1.join(&page))
            .env("MANWIDTH", "80"));
        assert!(o.stderr.is_empty(), "man -l {page}: {}", text(&o.stderr));
        assert!(!o.stdout.is_empty(), "{page}");
    }
    run(Command::new("bash")
        .arg("-n")
        .arg(p.root.join("usr/share/bash-completion/completions/smx")));
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(p.root.join("usr/lib/systemd/system/smx.service"))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze (.ci/run installs systemd)");
    // Not installed on this machine, so not found: /usr/bin/smx and the man pages named in
    // Documentation=. Anything else (an unknown key, a bad value) is a fault of the unit.
    let faults: Vec<&str> = std::str::from_utf8(&o.stderr)
        .unwrap()
        .lines()
        .filter(|l| {
            let smx_missing = l.contains("Command /usr/bin/smx is not executable");
            let page_missing = l.contains("Command 'man smx") && l.contains("failed with code");
            !(smx_missing || page_missing)
        })
        .collect();
    assert!(faults.is_empty(), "systemd-analyze verify: {faults:#?}");
    let unit = std::fs::read_to_string(p.root.join("usr/lib/systemd/system/smx.service")).unwrap();
    for key in [
        "ExecStart=/usr/bin/smx daemon --config /etc/smx/smx.toml",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RuntimeDirectory=smx",
        "StateDirectory=smx",
    ] {
        assert!(unit.lines().any(|l| l == key), "the unit lacks {key}");
    }
}

/// README "Install as a service", against the unpacked package instead of an installed
/// one: the shipped config with the README's owner appended (its printf line, run as
/// written), checked; the daemon as the unit starts it (root, no_new_privs); the example
/// script run for that owner, as nobody.
#[test]
#[ignore = "needs root"]
fn the_readme_service_steps_work_from_the_package() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: the daemon switches to the profile's user (run as root, or \
         leave out --include-ignored)"
    );
    let p = package();
    let dir = tempfile::Builder::new()
        .prefix("smx-service-test-")
        .tempdir_in("/tmp")
        .unwrap();
    run(Command::new("chmod").arg("755").arg(dir.path()));
    let conf = dir.path().join("smx.toml");
    let shipped = std::fs::read_to_string(p.root.join("etc/smx/smx.toml")).unwrap();
    // Only the two paths change: the storage and the socket of this test's daemon.
    let storage = dir.path().join("scripts");
    let socket = dir.path().join("smx.sock");
    let ours = shipped
        .replace(
            "storage = \"/var/lib/smx/scripts\"",
            &format!("storage = {:?}", storage.display().to_string()),
        )
        .replace(
            "socket = \"/run/smx/smx.sock\"",
            &format!("socket = {:?}", socket.display().to_string()),
        );
    assert_ne!(ours, shipped);
    std::fs::write(&conf, ours).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let printf = readme
        .lines()
        .find(|l| l.starts_with("printf ") && l.contains("[[owner]]"))
        .expect("README's service section appends an owner with printf")
        .trim_end_matches('|')
        .trim();
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("{printf} >> {}", conf.display())));
    let o = run(packaged_smx(p).args(["config", "check"]).arg(&conf));
    assert!(text(&o.stdout).contains("1 owners"), "{}", text(&o.stdout));

    let mut daemon = Command::new("setpriv")
        .arg("--no-new-privs")
        .arg(p.root.join("usr/bin/smx"))
        .args(["daemon", "--config"])
        .arg(&conf)
        .env_remove("SMX_RUNTIMES")
        .env_remove("SMX_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = packaged_smx(p)
        .args(["run", "--daemon", "--socket"])
        .arg(&socket)
        .args(["--owner", "noc"])
        .arg(p.root.join("usr/share/doc/smx/examples/scripts/sysinfo.sh"))
        .output()
        .unwrap();
    let ps = packaged_smx(p)
        .args(["ps", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = Instant::now();
    let status = daemon.wait().unwrap();
    let log = {
        use std::io::Read;
        let mut s = String::new();
        daemon
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\ndaemon: {log}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).trim_end().ends_with("user nobody"),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&ps.stdout)
            .lines()
            .any(|l| l.contains("noc") && l.contains("sysinfo.sh") && l.contains("noError")),
        "{}",
        text(&ps.stdout)
    );
    assert!(status.success(), "{status:?}: {log}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}
