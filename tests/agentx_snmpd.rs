//! DISMAN-SCRIPT-MIB (RFC 3165) over SNMP: a real `smx daemon` as AgentX (RFC 2741)
//! subagent of a real net-snmp `snmpd`, driven with net-snmp's command-line tools
//! (`snmpget`, `snmpwalk`, `snmpbulkwalk`, `snmpset`, numeric OIDs, `-On`), notifications
//! received by a real `snmptrapd`. Every test starts its own snmpd on loopback ports and a
//! private AgentX socket (the set-up of shared/notes/agentx.md).
//!
//! A missing snmpd, snmp tools or snmptrapd fails the test ("install snmpd snmp
//! snmptrapd"); it never skips. Tests that run scripts need root (the daemon's owners map
//! to an OS profile) and are `#[ignore = "needs root"]`. Every wait is bounded.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::smx_bin;
use smx::agentx::{
    ByteOrder, Framer, Oid, Payload, Pdu, ResError, Response, TestSet, Value, VarBind,
};

macro_rules! need_root {
    () => {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it runs scripts through the daemon, whose owners map to an \
             OS profile (run as root, or leave out --include-ignored)"
        )
    };
}

const SM: &str = "1.3.6.1.2.1.64";
const SCRIPT: &str = "1.3.6.1.2.1.64.1.3.1.1";
const CODE: &str = "1.3.6.1.2.1.64.1.3.2.1";
const LAUNCH: &str = "1.3.6.1.2.1.64.1.4.1.1";
const RUN: &str = "1.3.6.1.2.1.64.1.4.2.1";

/// An SnmpAdminString index component: length, then the octets (RFC 2578 7.7).
fn idx(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            let mut v = vec![p.len().to_string()];
            v.extend(p.bytes().map(|b| b.to_string()));
            v.join(".")
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn need_tools() {
    for tool in [
        "snmpd",
        "snmptrapd",
        "snmpget",
        "snmpset",
        "snmpwalk",
        "snmpbulkwalk",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(tool).exists();
        assert!(
            found,
            "{tool} not found: install snmpd snmp snmptrapd (apt-get install snmpd snmp snmptrapd)"
        );
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process whose stdout+stderr are collected; killed when dropped.
struct Proc {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let log = Arc::new(Mutex::new(String::new()));
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines() {
                    let Ok(l) = l else { break };
                    let mut s = sink.lock().unwrap();
                    s.push_str(&l);
                    s.push('\n');
                }
            });
        }
        Proc {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// snmpd (master agentx on a private socket), snmptrapd, and an smx daemon subagent.
struct Lab {
    dir: tempfile::TempDir,
    port: u16,
    snmpd: Proc,
    trapd: Proc,
    smx: Option<Proc>,
}

impl Lab {
    fn agentx_socket(&self) -> PathBuf {
        self.dir.path().join("agentx.sock")
    }

    /// snmpd and snmptrapd, no subagent yet.
    fn snmp_only() -> Lab {
        need_tools();
        let dir = tempfile::Builder::new()
            .prefix("smx-agentx-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let port = free_udp_port();
        let trap_port = free_udp_port();
        let d = dir.path();
        std::fs::write(
            d.join("snmpd.conf"),
            format!(
                "agentAddress udp:127.0.0.1:{port}\nmaster agentx\nagentXSocket unix:{sock}\n\
                 agentXPerms 0600 0700\nagentXTimeout 5\nagentXRetries 1\n\
                 rocommunity public 127.0.0.1\nrwcommunity private 127.0.0.1\n\
                 trap2sink 127.0.0.1:{trap_port} public\n",
                sock = d.join("agentx.sock").display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("trapd.conf"), "disableAuthorization yes\n").unwrap();
        let mut t = Command::new("snmptrapd");
        t.args(["-f", "-Lo", "-On", "-C", "-c"])
            .arg(d.join("trapd.conf"))
            .arg(format!("udp:127.0.0.1:{trap_port}"))
            .env("MIBS", "")
            .env("SNMP_PERSISTENT_DIR", d.join("trapd-persist"));
        let trapd = Proc::spawn(t);
        let mut lab = Lab {
            port,
            snmpd: Proc {
                child: None,
                log: Default::default(),
            },
            trapd,
            smx: None,
            dir,
        };
        lab.start_snmpd();
        lab
    }

    fn start_snmpd(&mut self) {
        let d = self.dir.path();
        let mut c = Command::new("snmpd");
        c.args(["-f", "-Lo", "-C", "-c"])
            .arg(d.join("snmpd.conf"))
            .args(["-I", "-smux", "-p"])
            .arg(d.join("snmpd.pid"))
            .env("MIBS", "")
            .env("SNMP_PERSISTENT_DIR", d.join("persist"));
        self.snmpd = Proc::spawn(c);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.agentx_socket().exists() {
            assert!(
                Instant::now() < deadline,
                "snmpd did not open its AgentX socket:\n{}",
                self.snmpd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything, with the smx daemon's `[agentx]` pointing at snmpd.
    fn start(extra: &str) -> Lab {
        let mut lab = Lab::snmp_only();
        let socket = lab.agentx_socket();
        lab.start_smx(&format!(
            "[agentx]\nsocket = {:?}\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n{extra}",
            socket.display().to_string()
        ));
        lab.wait_smx_log("scriptMIB registered", 1);
        lab
    }

    fn start_smx(&mut self, agentx: &str) {
        let d = self.dir.path();
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name;
        let config = format!(
            "[host]\nstorage = {storage:?}\nhello_timeout = \"5s\"\ncommand_timeout = \"5s\"\n\
             shutdown_grace = \"2s\"\n\n[[runtime]]\nname = \"exec\"\n\
             command = [{bin:?}, \"exec-runtime\", \"--profiles\", \"trusted\", \"--grace\", \"1s\"]\n\
             extensions = [\"sh\"]\nprofiles = [\"trusted\"]\n\
             [[runtime.language_extensions]]\noid = \"1.3.6.1.4.1.99.7\"\nversion = \"1.0\"\n\
             description = \"report lines on fd 3\"\n\n\
             [[os_profile]]\nname = \"self\"\nuser = {me:?}\n\n\
             [[owner]]\nname = \"*\"\nos_profile = \"self\"\nruntime_profile = \"trusted\"\n\n{agentx}\n",
            storage = d.join("storage").display().to_string(),
            bin = smx_bin().display().to_string(),
        );
        std::fs::write(d.join("smx.toml"), config).unwrap();
        let mut c = Command::new(smx_bin());
        c.args(["-v", "daemon", "--config"])
            .arg(d.join("smx.toml"))
            .arg("--socket")
            .arg(d.join("smx.sock"))
            .env_remove("SMX_SOCKET")
            .env_remove("SMX_CONFIG")
            .env_remove("RUST_LOG");
        self.smx = Some(Proc::spawn(c));
    }

    fn smx_log(&self) -> String {
        self.smx.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// Waits until the smx log shows `needle` at least `n` times.
    fn wait_smx_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.smx_log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "smx log never showed {needle:?} {n} times:\n{}\nsnmpd:\n{}",
                self.smx_log(),
                self.snmpd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn tool(&self, tool: &str, community: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(tool)
            .args(["-v2c", "-c", community, "-On", "-t", "10", "-r", "0"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(args)
            .env("MIBS", "")
            .output()
            .expect("run net-snmp tool");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `snmpwalk -On` lines `OID = TYPE: VALUE`.
    fn walk(&self, oid: &str) -> Vec<(String, String)> {
        let (ok, out, err) = self.tool("snmpwalk", "public", &[oid]);
        assert!(ok, "snmpwalk {oid}: {err}{out}");
        parse(&out)
    }

    fn bulkwalk(&self, oid: &str) -> Vec<(String, String)> {
        let (ok, out, err) = self.tool("snmpbulkwalk", "public", &["-Cr10", oid]);
        assert!(ok, "snmpbulkwalk {oid}: {err}{out}");
        parse(&out)
    }

    /// The value of one object as snmpget prints it after `=`.
    fn get(&self, oid: &str) -> String {
        let (ok, out, err) = self.tool("snmpget", "public", &[oid]);
        assert!(ok, "snmpget {oid}: {err}{out}");
        parse(&out).pop().expect("one varbind").1
    }

    fn int(&self, oid: &str) -> i64 {
        let v = self.get(oid);
        v.strip_prefix("INTEGER: ")
            .or(v.strip_prefix("Gauge32: "))
            .unwrap_or_else(|| panic!("{oid} is not an integer: {v}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// snmpset with (oid, type, value) triples in one PDU; Ok or the error's Reason line.
    fn set(&self, vbs: &[(&str, &str, &str)]) -> Result<(), String> {
        let mut args = Vec::new();
        for (o, t, v) in vbs {
            args.extend([*o, *t, *v]);
        }
        let (ok, out, err) = self.tool("snmpset", "private", &args);
        if ok {
            Ok(())
        } else {
            Err(format!("{err}{out}"))
        }
    }

    fn set_ok(&self, vbs: &[(&str, &str, &str)]) {
        if let Err(e) = self.set(vbs) {
            panic!("snmpset {vbs:?} failed: {e}\nsmx:\n{}", self.smx_log());
        }
    }

    /// Polls `oid` until its integer value is `want` (at most 20 s).
    fn wait_int(&self, oid: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.int(oid);
            if v == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{oid} stayed {v}, not {want}\nsmx:\n{}",
                self.smx_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_trap(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.trapd.log();
            if let Some(l) = log.lines().find(|l| l.contains(needle)) {
                return l.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "snmptrapd never got {needle}:\n{log}\nsmx:\n{}",
                self.smx_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn script_file(&self, name: &str, body: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        format!("file://{}", p.display())
    }

    /// smScriptTable row (owner, name) from a file: URL, createAndGo in one PDU with
    /// language, source and descr (as Tnm's InstallScript), then enabled.
    fn install(&self, owner: &str, name: &str, body: &str) {
        let url = self.script_file(name, body);
        let i = idx(&[owner, name]);
        let col = |c: u32| format!("{SCRIPT}.{c}.{i}");
        self.set_ok(&[
            (&col(9), "i", "4"),
            (&col(4), "i", "1"),
            (&col(5), "s", &url),
            (&col(3), "s", "test script"),
        ]);
        self.set_ok(&[(&col(6), "i", "1")]);
        self.wait_int(&col(7), 1);
    }

    /// smLaunchTable row: createAndGo with its columns in one PDU.
    fn launch_button(&self, owner: &str, name: &str, script: &str, extra: &[(&str, &str, &str)]) {
        let i = idx(&[owner, name]);
        let col = |c: u32| format!("{LAUNCH}.{c}.{i}");
        let mut vbs: Vec<(String, &str, &str)> = vec![
            (col(16), "i", "4"),
            (col(3), "s", owner),
            (col(4), "s", script),
            (col(12), "i", "1"),
        ];
        for (c, t, v) in extra {
            vbs.push((format!("{LAUNCH}.{c}.{i}"), t, v));
        }
        let refs: Vec<(&str, &str, &str)> =
            vbs.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
        self.set_ok(&refs);
    }

    /// smLaunchRunIndexNext, then smLaunchStart with it (as scli does): the smRunIndex.
    fn start_run(&self, owner: &str, name: &str) -> i64 {
        let i = idx(&[owner, name]);
        let n = self.int(&format!("{LAUNCH}.14.{i}"));
        assert!(n > 0, "smLaunchRunIndexNext {n}");
        self.set_ok(&[(&format!("{LAUNCH}.10.{i}"), "i", &n.to_string())]);
        n
    }
}

fn parse(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(o, v)| (o.trim_start_matches('.').to_owned(), v.trim().to_owned()))
        .collect()
}

fn string(v: &str) -> String {
    v.strip_prefix("STRING: ")
        .unwrap_or(v)
        .trim_matches('"')
        .to_owned()
}

fn oid_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let p = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap()).collect() };
    p(a).cmp(&p(b))
}

// ---------------------------------------------------------------------------------------

/// smLangTable and smExtsnTable (RFC 3165 5.1) walked with GetNext and GetBulk: every
/// accessible column of every row, in strictly increasing OID order (RFC 2741 7.2.3.2).
#[test]
fn walk_lang_and_extsn_tables_in_oid_order() {
    let lab = Lab::start("");
    let walk = lab.walk(&format!("{SM}.1.1"));
    // 3 runtimes (exec, python, tcl) x 5 columns (smLangLanguage..smLangDescr).
    assert_eq!(walk.len(), 15, "{walk:?}");
    for w in walk.windows(2) {
        assert_eq!(oid_cmp(&w[0].0, &w[1].0), std::cmp::Ordering::Less, "{w:?}");
    }
    assert!(walk[0].0.starts_with(&format!("{SM}.1.1.1.2.")), "{walk:?}");
    let ext = lab.walk(&format!("{SM}.1.2"));
    let exec = ext
        .iter()
        .find(|(o, _)| o.starts_with(&format!("{SM}.1.2.1.2.")))
        .expect("smExtsnExtension");
    assert_eq!(exec.1, "OID: .1.3.6.1.4.1.99.7");
    assert!(
        ext.iter().any(|(_, v)| v.contains("report lines on fd 3")),
        "smExtsnDescr: {ext:?}"
    );
    // GetBulk (snmpd turns it into GetNexts) sees the same.
    assert_eq!(lab.bulkwalk(&format!("{SM}.1.1")), walk);
    // noSuchObject / noSuchInstance for Gets outside the rows.
    assert!(
        lab.get(&format!("{SM}.1.1.1.9.1"))
            .contains("No Such Object")
    );
    assert!(
        lab.get(&format!("{SM}.1.1.1.3.99"))
            .contains("No Such Instance")
    );
}

/// RFC 3165 7.1/7.2 and 7.5: a script from a file: URL, a launch button, smLaunchRunIndexNext
/// then smLaunchStart, smRunState polled to terminated, the run's columns read; the script's
/// `event` (SMX 533) and `exception` (537) reach snmptrapd as smScriptResult and
/// smScriptException, a failing run as smScriptAbort (RFC 3165 section 6).
#[test]
#[ignore = "needs root"]
fn script_from_url_launch_and_run_with_traps() {
    need_root!();
    let lab = Lab::start("");
    lab.install(
        "noc",
        "hi",
        "echo \"event partial $1\" >&3\necho \"exception odd $1\" >&3\necho \"hello $1\"",
    );
    lab.launch_button("noc", "hi", "hi", &[("5", "s", "world")]);
    let li = idx(&["noc", "hi"]);
    assert_eq!(
        lab.int(&format!("{LAUNCH}.13.{li}")),
        1,
        "smLaunchOperStatus enabled"
    );
    let a = lab.int(&format!("{LAUNCH}.14.{li}"));
    let b = lab.int(&format!("{LAUNCH}.14.{li}"));
    assert_ne!(a, b, "smLaunchRunIndexNext: a different value on each read");
    let n = lab.start_run("noc", "hi");
    let ri = format!("{li}.{n}");
    assert_eq!(
        lab.int(&format!("{LAUNCH}.10.{li}")),
        n,
        "smLaunchStart reads the last index"
    );
    lab.wait_int(&format!("{RUN}.10.{ri}"), 7);
    assert_eq!(
        lab.int(&format!("{RUN}.7.{ri}")),
        1,
        "smRunExitCode noError"
    );
    assert_eq!(string(&lab.get(&format!("{RUN}.8.{ri}"))), "hello world");
    assert_eq!(string(&lab.get(&format!("{RUN}.2.{ri}"))), "world");
    assert_eq!(string(&lab.get(&format!("{RUN}.11.{ri}"))), "odd world");
    assert_eq!(
        lab.int(&format!("{RUN}.5.{ri}")),
        0,
        "smRunLifeTime 0 once terminated"
    );
    for c in [3, 4, 12, 13] {
        let v = lab.get(&format!("{RUN}.{c}.{ri}"));
        assert!(
            v.starts_with("Hex-STRING: 07 "),
            "DateAndTime column {c}: {v}"
        );
    }
    let t = lab.wait_trap(".1.3.6.1.2.1.64.2.0.2");
    assert!(
        t.contains(&format!("{RUN}.8.{ri}")) && t.contains("partial world"),
        "{t}"
    );
    let t = lab.wait_trap(".1.3.6.1.2.1.64.2.0.3");
    assert!(
        t.contains(&format!("{RUN}.11.{ri}")) && t.contains("odd world"),
        "{t}"
    );

    lab.install("noc", "bad", "echo broken >&2\nexit 3");
    lab.launch_button("noc", "bad", "bad", &[]);
    let n = lab.start_run("noc", "bad");
    let ri = format!("{}.{n}", idx(&["noc", "bad"]));
    lab.wait_int(&format!("{RUN}.10.{ri}"), 7);
    let t = lab.wait_trap(".1.3.6.1.2.1.64.2.0.1");
    let head = t.find(".1.3.6.1.6.3.1.1.4.1.0").expect("snmpTrapOID.0");
    let exit = t.find(&format!("{RUN}.7.{ri}")).expect("smRunExitCode");
    let end = t.find(&format!("{RUN}.4.{ri}")).expect("smRunEndTime");
    let err = t.find(&format!("{RUN}.11.{ri}")).expect("smRunError");
    assert!(
        head < exit && exit < end && end < err,
        "order of OBJECTS: {t}"
    );
}

/// createAndWait then active (RFC 2579), and smCodeTable download (RFC 3165 7.1): the
/// script row and two code fragments, then enabled; the run's output is both fragments.
#[test]
#[ignore = "needs root"]
fn create_and_wait_with_code_table_download() {
    need_root!();
    let lab = Lab::start("");
    let i = idx(&["ops", "frag"]);
    let s = |c: u32| format!("{SCRIPT}.{c}.{i}");
    lab.set_ok(&[(&s(9), "i", "5"), (&s(4), "i", "1")]);
    assert_eq!(lab.int(&s(9)), 2, "notInService once complete");
    let c = |col: u32, n: u32| format!("{CODE}.{col}.{i}.{n}");
    lab.set_ok(&[
        (&c(3, 1), "i", "4"),
        (&c(2, 1), "s", "#!/bin/sh\nprintf one"),
        (&c(3, 2), "i", "4"),
        (&c(2, 2), "s", "\nprintf two\n"),
    ]);
    let code = lab.walk(&format!("{CODE}.2"));
    assert_eq!(code.len(), 2, "{code:?}");
    assert!(code[0].0.ends_with(".1") && code[1].0.ends_with(".2"));
    lab.set_ok(&[(&s(9), "i", "1"), (&s(6), "i", "1")]);
    lab.wait_int(&s(7), 1);
    // The launch row: createAndWait, its columns, then active (one PDU each).
    let li = idx(&["ops", "frag"]);
    let l = |c: u32| format!("{LAUNCH}.{c}.{li}");
    lab.set_ok(&[
        (&l(16), "i", "5"),
        (&l(3), "s", "ops"),
        (&l(4), "s", "frag"),
    ]);
    lab.set_ok(&[(&l(16), "i", "1"), (&l(12), "i", "1"), (&l(6), "u", "2")]);
    assert_eq!(lab.get(&l(6)), "Gauge32: 2");
    let n = lab.start_run("ops", "frag");
    lab.wait_int(&format!("{RUN}.10.{li}.{n}"), 7);
    assert_eq!(string(&lab.get(&format!("{RUN}.8.{li}.{n}"))), "onetwo");
}

/// smRunControl suspend, resume and abort (RFC 3165 smRunControl), and smRunLifeTime set
/// to 0 aborting at once with lifeTimeExceeded (7.9).
#[test]
#[ignore = "needs root"]
fn run_control_and_lifetime_zero() {
    need_root!();
    let lab = Lab::start("");
    lab.install("noc", "nap", "sleep 30");
    lab.launch_button("noc", "nap", "nap", &[("6", "u", "5")]);
    let li = idx(&["noc", "nap"]);
    let n = lab.start_run("noc", "nap");
    let r = |c: u32| format!("{RUN}.{c}.{li}.{n}");
    lab.wait_int(&r(10), 2);
    lab.set_ok(&[(&r(9), "i", "2")]);
    lab.wait_int(&r(10), 4);
    lab.set_ok(&[(&r(9), "i", "3")]);
    lab.wait_int(&r(10), 2);
    lab.set_ok(&[(&r(9), "i", "1")]);
    lab.wait_int(&r(10), 7);
    assert_eq!(lab.int(&r(7)), 2, "smRunExitCode halted");
    assert_eq!(lab.int(&r(9)), 4, "smRunControl reads nop");

    let n = lab.start_run("noc", "nap");
    let r = |c: u32| format!("{RUN}.{c}.{li}.{n}");
    lab.wait_int(&r(10), 2);
    let before = lab.int(&r(5));
    assert!(
        before > 0 && before <= 360_000,
        "smRunLifeTime ticks from 1 h: {before}"
    );
    lab.set_ok(&[(&r(5), "i", "0")]);
    lab.wait_int(&r(10), 7);
    assert_eq!(lab.int(&r(7)), 3, "smRunExitCode lifeTimeExceeded");
}

/// Every error status a bad Set can get (RFC 3416 4.2.5), reaching snmpset unchanged.
#[test]
#[ignore = "needs root"]
fn bad_sets_get_precise_error_statuses() {
    need_root!();
    let lab = Lab::start("");
    lab.install("noc", "e", "true");
    lab.launch_button("noc", "e", "e", &[]);
    let si = idx(&["noc", "e"]);
    let long = "o".repeat(33);
    let rows: [(&str, &str, &str, &str); 9] = [
        (&format!("{SCRIPT}.4.{si}"), "s", "x", "wrongType"),
        (&format!("{LAUNCH}.6.{si}"), "i", "3", "wrongType"),
        (&format!("{LAUNCH}.6.{si}"), "u", "0", "wrongValue"),
        (&format!("{SCRIPT}.6.{si}"), "i", "9", "wrongValue"),
        (&format!("{SCRIPT}.9.{si}"), "i", "6", "inconsistentValue"),
        (&format!("{LAUNCH}.10.{si}"), "i", "0", "noError"),
        (&format!("{RUN}.5.{si}.4242"), "i", "0", "noCreation"),
        (&format!("{SCRIPT}.7.{si}"), "i", "1", "notWritable"),
        // smLaunchScriptOwner is SnmpAdminString (SIZE (0..32)).
        (&format!("{LAUNCH}.3.{si}"), "s", &long, "wrongLength"),
    ];
    for (oid, t, v, want) in rows {
        let got = lab.set(&[(oid, t, v)]);
        if want == "noError" {
            assert!(got.is_ok(), "{oid} {t} {v}: {got:?}");
        } else {
            let e = got.expect_err(oid);
            assert!(e.contains(&format!("Reason: {want}")), "{oid} {t} {v}: {e}");
        }
    }
    let smlang = lab
        .set(&[(&format!("{SM}.1.1.1.2.1"), "o", "1.3")])
        .unwrap_err();
    assert!(smlang.contains("notWritable"), "{smlang}");
    // smLaunchStart check 6 (smLaunchMaxRunning 1) with a run still going.
    lab.install("noc", "slow", "sleep 10");
    lab.launch_button("noc", "slow", "slow", &[]);
    let _ = lab.start_run("noc", "slow");
    let li = idx(&["noc", "slow"]);
    let e = lab
        .set(&[(&format!("{LAUNCH}.10.{li}"), "i", "0")])
        .unwrap_err();
    assert!(e.contains("inconsistentValue"), "{e}");
    // A PDU whose second varbind fails changes nothing (all or none).
    let di = idx(&["noc", "half"]);
    let e = lab
        .set(&[
            (&format!("{SCRIPT}.9.{di}"), "i", "5"),
            (&format!("{SCRIPT}.4.{di}"), "s", "oops"),
        ])
        .unwrap_err();
    assert!(
        e.contains("wrongType") && e.contains("Failed object"),
        "{e}"
    );
    assert!(
        lab.get(&format!("{SCRIPT}.9.{di}"))
            .contains("No Such Instance")
    );
}

/// snmpd restarted under a running subagent: smx reconnects, registers again, and the
/// walk works again (RFC 2741 7.1.1; agentx.md: snmpd closes the socket).
#[test]
fn snmpd_restart_reregisters() {
    let mut lab = Lab::start("");
    assert_eq!(lab.walk(&format!("{SM}.1.1")).len(), 15);
    lab.snmpd.kill();
    let _ = std::fs::remove_file(lab.agentx_socket());
    lab.wait_smx_log("AgentX session lost", 1);
    lab.start_snmpd();
    lab.wait_smx_log("scriptMIB registered", 2);
    assert_eq!(lab.walk(&format!("{SM}.1.1")).len(), 15);
}

// ---------------------------------------------------------------------------------------
// A raw AgentX master in the test: to send what snmpd sends only under load.

struct RawMaster {
    stream: UnixStream,
    buf: bytes::BytesMut,
    framer: Framer,
    session: u32,
    pings: usize,
}

impl RawMaster {
    /// Accepts the subagent and answers its Open (session 77) and its Register of
    /// scriptMIB at priority 127 (RFC 2741 7.1.1, 7.1.5).
    fn accept(listener: &UnixListener) -> RawMaster {
        let (stream, _) = listener.accept().unwrap();
        let mut m = RawMaster {
            stream,
            buf: Default::default(),
            framer: Framer::default(),
            session: 0,
            pings: 0,
        };
        let open = m.recv(Duration::from_secs(10)).expect("Open");
        assert!(matches!(open.payload, Payload::Open(_)), "{open:?}");
        m.session = 77;
        let mut open_r = open.clone();
        open_r.session_id = 77;
        m.answer(&open_r, Response::ok(Vec::new()));
        let reg = m.recv(Duration::from_secs(10)).expect("Register");
        match &reg.payload {
            Payload::Register(r) => {
                assert_eq!(r.subtree, oid(SM));
                assert_eq!(r.priority, 127);
            }
            p => panic!("expected Register, got {p:?}"),
        }
        m.answer(&reg, Response::ok(Vec::new()));
        m
    }

    fn send(&mut self, tid: u32, pid: u32, payload: Payload) {
        let pdu = Pdu {
            session_id: self.session,
            transaction_id: tid,
            packet_id: pid,
            byte_order: ByteOrder::LittleEndian,
            payload,
        };
        self.stream.write_all(&pdu.to_bytes().unwrap()).unwrap();
    }

    /// The next PDU, or `None` after `within`.
    fn recv(&mut self, within: Duration) -> Option<Pdu> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(f) = self.framer.next_frame(&mut self.buf).unwrap() {
                return Some(Pdu::decode(&f).unwrap());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the subagent closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn answer(&mut self, pdu: &Pdu, r: Response) {
        let out = pdu.respond(r);
        self.stream.write_all(&out.to_bytes().unwrap()).unwrap();
    }

    /// TestSet + CommitSet + CleanupSet of `varbinds` as one transaction.
    fn set(&mut self, tid: u32, varbinds: Vec<VarBind>) {
        self.send(
            tid,
            1,
            Payload::TestSet(TestSet {
                context: None,
                varbinds,
            }),
        );
        let r = self.response(1);
        assert_eq!(r.error, ResError::NoError, "TestSet: {r:?}");
        self.send(tid, 2, Payload::CommitSet);
        let r = self.response(2);
        assert_eq!(r.error, ResError::NoError, "CommitSet: {r:?}");
        self.send(tid, 3, Payload::CleanupSet);
    }

    /// The Response to our packet `pid`; Pings from the subagent meanwhile are answered
    /// and counted.
    fn response(&mut self, pid: u32) -> Response {
        loop {
            let p = self
                .recv(Duration::from_secs(10))
                .expect("a response in time");
            match p.payload {
                Payload::Response(r) if p.packet_id == pid => return r,
                Payload::Ping(_) => {
                    self.pings += 1;
                    self.answer(&p, Response::ok(Vec::new()));
                }
                _ => {}
            }
        }
    }
}

fn oid(s: &str) -> Oid {
    s.parse().unwrap()
}

/// A test-side AgentX master, for what snmpd does only under load or with other
/// subagents: a CommitSet retransmitted by the master (same transaction and packet id,
/// RFC 2741 7.2.4 and agentx.md: after agentXTimeout snmpd resends the identical PDU)
/// starts one run, not two, whether the copy arrives during the commit or after its
/// answer; UndoSet after a good and after a failed CommitSet; Ping; Close on SIGTERM.
#[test]
#[ignore = "needs root"]
fn raw_master_retransmitted_commit_set_undo_ping_close() {
    need_root!();
    need_tools();
    let dir = tempfile::Builder::new()
        .prefix("smx-agentx-raw-")
        .tempdir_in("/tmp")
        .unwrap();
    let sock = dir.path().join("master.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut lab = Lab::snmp_only();
    lab.start_smx(&format!(
        "[agentx]\nsocket = {:?}\nping_interval = \"1s\"\n",
        sock.display().to_string()
    ));
    let mut m = RawMaster::accept(&listener);
    // Install a script (smCodeTable) and a button through the subagent itself.
    let i = idx(&["noc", "once"]);
    let s = |c: u32| oid(&format!("{SCRIPT}.{c}.{i}"));
    let c = |col: u32| oid(&format!("{CODE}.{col}.{i}.1"));
    let l = |col: u32| oid(&format!("{LAUNCH}.{col}.{i}"));
    let os = |t: &str| Value::OctetString(t.as_bytes().to_vec());
    m.set(
        10,
        vec![
            VarBind::new(s(9), Value::Integer(5)),
            VarBind::new(s(4), Value::Integer(1)),
            VarBind::new(c(3), Value::Integer(4)),
            VarBind::new(c(2), os("#!/bin/sh\nsleep 1\n")),
        ],
    );
    m.set(
        11,
        vec![
            VarBind::new(s(9), Value::Integer(1)),
            VarBind::new(s(6), Value::Integer(1)),
        ],
    );
    m.set(
        12,
        vec![
            VarBind::new(l(16), Value::Integer(4)),
            VarBind::new(l(3), os("noc")),
            VarBind::new(l(4), os("once")),
            VarBind::new(l(12), Value::Integer(1)),
            VarBind::new(l(6), Value::Gauge32(10)),
        ],
    );
    // smLaunchStart 5: TestSet, then the same CommitSet three times.
    m.send(
        20,
        1,
        Payload::TestSet(TestSet {
            context: None,
            varbinds: vec![VarBind::new(l(10), Value::Integer(5))],
        }),
    );
    assert_eq!(m.response(1).error, ResError::NoError);
    m.send(20, 2, Payload::CommitSet);
    m.send(20, 2, Payload::CommitSet);
    assert_eq!(m.response(2).error, ResError::NoError);
    m.send(20, 2, Payload::CommitSet);
    let again = m.response(2);
    assert_eq!(
        again.error,
        ResError::NoError,
        "the original's answer, re-sent"
    );
    m.send(20, 3, Payload::CleanupSet);
    // Exactly one smRunTable row: a Get of index 5 exists, a walk finds only it.
    m.send(
        0,
        30,
        Payload::GetNext(smx::agentx::GetNext {
            context: None,
            ranges: vec![smx::agentx::SearchRange {
                start: oid(&format!("{RUN}.10")),
                end: oid(&format!("{RUN}.11")),
                include: false,
            }],
        }),
    );
    let first = m.response(30);
    assert_eq!(
        first.varbinds[0].name,
        oid(&format!("{RUN}.10.{i}.5")),
        "{first:?}"
    );
    m.send(
        0,
        31,
        Payload::GetNext(smx::agentx::GetNext {
            context: None,
            ranges: vec![smx::agentx::SearchRange {
                start: first.varbinds[0].name.clone(),
                end: oid(&format!("{RUN}.11")),
                include: false,
            }],
        }),
    );
    let next = m.response(31);
    assert_eq!(
        next.varbinds[0].value,
        Value::EndOfMibView,
        "one run only: {next:?}"
    );
    assert_eq!(
        lab.smx_log().matches("launch run=").count(),
        1,
        "{}",
        lab.smx_log()
    );
    // UndoSet after a good CommitSet (another subagent's part of the Set failed, RFC 2741
    // 7.2.5.2): a changed column gets its old value back, a created row goes again.
    let u = idx(&["noc", "undo"]);
    let lu = |col: u32| oid(&format!("{LAUNCH}.{col}.{u}"));
    m.send(
        40,
        1,
        Payload::TestSet(TestSet {
            context: None,
            varbinds: vec![
                VarBind::new(s(3), os("changed")),
                VarBind::new(l(10), Value::Integer(7)),
                VarBind::new(lu(16), Value::Integer(4)),
                VarBind::new(lu(3), os("noc")),
                VarBind::new(lu(4), os("once")),
                VarBind::new(lu(12), Value::Integer(1)),
            ],
        }),
    );
    assert_eq!(m.response(1).error, ResError::NoError);
    m.send(40, 2, Payload::CommitSet);
    assert_eq!(m.response(2).error, ResError::NoError);
    let get = |m: &mut RawMaster, pid: u32, name: Oid| {
        m.send(
            0,
            pid,
            Payload::Get(smx::agentx::Get {
                context: None,
                ranges: vec![smx::agentx::SearchRange {
                    start: name,
                    end: Oid::null(),
                    include: false,
                }],
            }),
        );
        m.response(pid).varbinds.remove(0).value
    };
    assert_eq!(get(&mut m, 41, s(3)), os("changed"));
    assert_eq!(get(&mut m, 42, lu(16)), Value::Integer(1), "created active");
    m.send(40, 3, Payload::UndoSet);
    assert_eq!(m.response(3).error, ResError::NoError);
    assert_eq!(get(&mut m, 43, s(3)), os(""), "smScriptDescr restored");
    // The run the commit started (smRunIndex 7, `sleep 1`) is aborted: halted(2).
    let exit = oid(&format!("{RUN}.7.{i}.7"));
    let state = oid(&format!("{RUN}.10.{i}.7"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pid = 100;
    while get(&mut m, pid, state.clone()) != Value::Integer(7) {
        assert!(
            Instant::now() < deadline,
            "run 7 not terminated after UndoSet"
        );
        pid += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get(&mut m, 99, exit),
        Value::Integer(2),
        "smRunExitCode halted"
    );
    assert_eq!(
        get(&mut m, 44, lu(16)),
        Value::NoSuchInstance,
        "created row gone"
    );
    // A CommitSet the model refuses (the table changed since TestSet): commitFailed, and the
    // UndoSet that follows only frees the transaction (agentx.md: no CleanupSet then).
    let x = idx(&["noc", "race"]);
    let sx = |col: u32| oid(&format!("{SCRIPT}.{col}.{x}"));
    let create = || {
        vec![
            VarBind::new(sx(9), Value::Integer(5)),
            VarBind::new(sx(4), Value::Integer(1)),
        ]
    };
    m.send(
        50,
        1,
        Payload::TestSet(TestSet {
            context: None,
            varbinds: create(),
        }),
    );
    assert_eq!(m.response(1).error, ResError::NoError);
    m.send(
        51,
        1,
        Payload::TestSet(TestSet {
            context: None,
            varbinds: create(),
        }),
    );
    assert_eq!(m.response(1).error, ResError::NoError);
    m.send(50, 2, Payload::CommitSet);
    assert_eq!(m.response(2).error, ResError::NoError);
    m.send(51, 2, Payload::CommitSet);
    assert_eq!(m.response(2).error, ResError::CommitFailed);
    m.send(51, 3, Payload::UndoSet);
    assert_eq!(m.response(3).error, ResError::NoError);
    m.send(50, 3, Payload::CleanupSet);
    assert_eq!(
        get(&mut m, 52, sx(9)),
        Value::Integer(2),
        "notInService: the first one stands"
    );
    // A payload that does not parse under a good header is answered parseError (RFC 2741
    // 7.1, step 2), and the session goes on.
    let mut bad = vec![1u8, 8, 0, 0];
    for w in [77u32, 60, 61, 4] {
        bad.extend_from_slice(&w.to_le_bytes());
    }
    bad.extend_from_slice(&[0xff; 4]);
    m.stream.write_all(&bad).unwrap();
    assert_eq!(m.response(61).error, ResError::ParseError);
    assert_eq!(get(&mut m, 62, s(9)), Value::Integer(1), "still served");
    // A quiet master is pinged (RFC 2741 6.2.13), and SIGTERM closes the session with
    // reason shutdown (6.2.2).
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.pings == 0 {
        assert!(Instant::now() < deadline, "no Ping from the subagent");
        if let Some(p) = m.recv(Duration::from_millis(200))
            && matches!(p.payload, Payload::Ping(_))
        {
            m.pings += 1;
            m.answer(&p, Response::ok(Vec::new()));
        }
    }
    let pid = lab.smx.as_ref().unwrap().child.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let close = loop {
        let p = m
            .recv(Duration::from_secs(15))
            .expect("a Close before the subagent goes");
        if let Payload::Close(c) = &p.payload {
            break (p.clone(), c.reason);
        }
    };
    assert_eq!(close.1, smx::agentx::CloseReason::Shutdown);
    m.answer(&close.0, Response::ok(Vec::new()));
}

/// Notifications raised while no master is there wait in a queue of `notify_queue`; past
/// it they are dropped and counted in the log; the queued ones go out once a session is
/// open (RFC 3165 smScriptException from SMX 537).
#[test]
#[ignore = "needs root"]
fn notifications_queue_while_disconnected_bounded() {
    need_root!();
    let dir = tempfile::Builder::new()
        .prefix("smx-agentx-queue-")
        .tempdir_in("/tmp")
        .unwrap();
    let sock = dir.path().join("late-master.sock");
    let mut lab = Lab::snmp_only();
    lab.start_smx(&format!(
        "[agentx]\nsocket = {:?}\nnotify_queue = 2\nreconnect_min = \"100ms\"\nreconnect_max = \"300ms\"\n",
        sock.display().to_string()
    ));
    lab.wait_smx_log("cannot connect to the AgentX master", 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let socket = lab.dir.path().join("smx.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = loop {
            match smx::client::Client::connect(&socket).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "daemon socket: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        c.script_install(smx::mib::ScriptSpec {
            owner: "noc".into(),
            name: "exc.sh".into(),
            content: smx::proto::Octets::new(b"#!/bin/sh\necho \"exception e$1\" >&3\n".to_vec()),
            ..Default::default()
        })
        .await
        .unwrap();
        c.launch_add(smx::mib::LaunchSpec {
            owner: "noc".into(),
            name: "exc".into(),
            script_owner: "noc".into(),
            script_name: "exc.sh".into(),
            max_completed: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
        for n in 1..=3 {
            let arg = smx::proto::Octets::new(n.to_string().into_bytes());
            let run = c.launch_start("noc", "exc", None, Some(arg)).await.unwrap();
            c.wait(run.run_id).await.unwrap();
        }
    });
    lab.wait_smx_log("notification dropped (1 so far)", 1);
    let listener = UnixListener::bind(&sock).unwrap();
    let mut m = RawMaster::accept(&listener);
    let mut texts = Vec::new();
    while let Some(p) = m.recv(Duration::from_secs(3)) {
        if let Payload::Notify(n) = &p.payload {
            assert_eq!(
                n.varbinds[0].name,
                oid("1.3.6.1.6.3.1.1.4.1.0"),
                "snmpTrapOID.0 first"
            );
            assert_eq!(
                n.varbinds[0].value,
                Value::ObjectIdentifier(oid("1.3.6.1.2.1.64.2.0.3"))
            );
            texts.push(n.varbinds[1].value.clone());
            m.answer(&p, Response::ok(Vec::new()));
        }
    }
    let os = |t: &str| Value::OctetString(t.as_bytes().to_vec());
    assert_eq!(
        texts,
        [os("e1"), os("e2")],
        "the queued two; the third was dropped"
    );
}
