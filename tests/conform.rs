//! `smx conform` against the shipped runtimes (all must pass) and against runtimes that break
//! exactly one rule of RFC 3179 (each must fail, on a line naming that rule).

mod common;

use std::process::{Command, Output};

use common::*;

fn conform(extra: &[&str], runtime: &[&str]) -> Output {
    let mut args = vec!["conform", "--timeout", "3s"];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(runtime);
    Command::new(smx_bin())
        .args(&args)
        .output()
        .expect("run smx conform")
}

fn report(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn path(rel: &str) -> String {
    repo().join(rel).display().to_string()
}

/// The checks of a full run: 31 of the protocol, and one per golden vector.
fn checks() -> usize {
    31 + smx::conform::vectors().expect("vectors").len()
}

fn assert_all_pass(o: &Output) {
    let r = report(o);
    assert_eq!(o.status.code(), Some(0), "{r}");
    assert!(!r.contains("FAIL") && !r.contains("SKIP"), "{r}");
    let total = format!("{} passed, 0 failed, 0 skipped", checks());
    assert!(r.contains(&total), "{r}");
}

#[test]
fn exec_runtime_conforms() {
    let smx = smx_bin().display().to_string();
    let o = conform(
        &["--script", &path("runtimes/exec/conform.sh")],
        &[&smx, "exec-runtime"],
    );
    assert_all_pass(&o);
}

#[test]
fn python_runtime_conforms() {
    let o = conform(
        &["--script", &path("runtimes/python/conform.py")],
        &["python3", &path("runtimes/python/smx_runtime.py")],
    );
    assert_all_pass(&o);
    let o = conform(
        &[
            "--profile",
            "restricted",
            "--script",
            &path("runtimes/python/conform.py"),
        ],
        &["python3", &path("runtimes/python/smx_runtime.py")],
    );
    assert_all_pass(&o);
}

#[test]
fn tcl_runtime_conforms() {
    for profile in ["trusted", "safe"] {
        let o = conform(
            &[
                "--profile",
                profile,
                "--script",
                &path("runtimes/tcl/conform.tcl"),
            ],
            &["tclsh", &path("runtimes/tcl/smx_runtime.tcl")],
        );
        assert_all_pass(&o);
    }
}

#[test]
fn python_and_tcl_runtimes_conform_over_tcp() {
    let o = conform(
        &[
            "--transport",
            "tcp",
            "--script",
            &path("runtimes/python/conform.py"),
        ],
        &["python3", &path("runtimes/python/smx_runtime.py")],
    );
    assert_all_pass(&o);
    let r = report(&o);
    assert!(
        r.contains("connected from loopback, 211 1 SMX/1.1 with the cookie"),
        "{r}"
    );
    assert!(
        r.contains("<32-octet authenticator>"),
        "the cookie is masked: {r}"
    );
    let o = conform(
        &[
            "--transport",
            "tcp",
            "--script",
            &path("runtimes/tcl/conform.tcl"),
        ],
        &["tclsh", &path("runtimes/tcl/smx_runtime.tcl")],
    );
    assert_all_pass(&o);
}

#[test]
fn without_a_script_the_script_checks_are_skipped() {
    let smx = smx_bin().display().to_string();
    let o = conform(&[], &[&smx, "exec-runtime"]);
    let r = report(&o);
    assert_eq!(o.status.code(), Some(0), "{r}");
    let total = format!("{} passed, 0 failed, 8 skipped", checks() - 10);
    assert!(r.contains(&total), "{r}");
    assert!(r.contains("SKIP  6.1.5   abort gives 232"), "{r}");
}

/// The fixture with no bug is a correct runtime: the suite itself must not cry wolf.
#[test]
fn correct_fixture_passes() {
    let o = conform(
        &["--script", &path("runtimes/exec/conform.sh")],
        &["python3", &fixture("broken_runtime.py"), "--bug", "none"],
    );
    assert_all_pass(&o);
}

#[test]
fn each_broken_rule_is_named() {
    let cases = [
        ("no-402", "FAIL  6.1     unknown command word gives 402"),
        (
            "start-order",
            "FAIL  6.1.2   start: RunId is checked before the others",
        ),
        (
            "dup-runid",
            "FAIL  6.1.2   start with a RunId in use gives 431 (item 2)",
        ),
        (
            "lf-only",
            "FAIL  5       every message is well-formed and ends with CRLF",
        ),
        (
            "notify-id",
            "FAIL  6.1.7   notifications are well-formed with Id 0",
        ),
        (
            "no-538",
            "FAIL  6.1.5   abort gives 232, and a 538 ends the run",
        ),
        (
            "raw-quotes",
            "FAIL  5.1     results come back intact as QuotedString and HexString",
        ),
        (
            "ignore-eof",
            "FAIL  5.2     closing the connection terminates the runtime",
        ),
        (
            "no-hello",
            "FAIL  6.1.1   runtime starts and answers hello with 211",
        ),
        (
            "no-suspend-reply",
            "FAIL  6.1.3   suspend gives 231 4 (or 434 if unsupported)",
        ),
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(bug, line)| {
            std::thread::spawn(move || {
                let o = conform(
                    &["--script", &path("runtimes/exec/conform.sh")],
                    &["python3", &fixture("broken_runtime.py"), "--bug", bug],
                );
                (bug, line, o)
            })
        })
        .collect();
    for h in handles {
        let (bug, line, o) = h.join().unwrap();
        let r = report(&o);
        assert_eq!(o.status.code(), Some(1), "{bug}: {r}");
        assert!(r.contains(line), "{bug}: expected {line:?} in\n{r}");
    }
}
