//! `smx conform`'s check per golden vector (tests/vectors/smx.txt) against every shipped
//! runtime, over both transports and with either cookie delivery (RFC 3179 8.2, 9): a test
//! fails when any runtime's answer to any vector differs from the file's.

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

fn vectors() -> Vec<smx::conform::Vector> {
    smx::conform::vectors().expect("tests/vectors/smx.txt parses")
}

/// The report line of `v` (its verdict, section and COMMAND), if there is one.
fn vector_line<'a>(r: &'a str, v: &smx::conform::Vector) -> Option<&'a str> {
    let tail = format!("(smx.txt:{})", v.line);
    r.lines().find(|l| l.ends_with(&tail))
}

/// Every vector has its own PASS line, and nothing else failed or was skipped.
#[track_caller]
fn assert_every_vector_passes(what: &str, o: &Output, checks: usize) {
    let r = report(o);
    let mut wrong = Vec::new();
    for v in vectors() {
        match vector_line(&r, &v) {
            Some(l) if l.starts_with(&format!("PASS  {:<7} {}", v.section, v.text)) => {}
            Some(l) => wrong.push(l.to_owned()),
            None => wrong.push(format!("smx.txt:{}: no report line", v.line)),
        }
    }
    assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
    let total = format!("{checks} passed, 0 failed, 0 skipped");
    assert!(r.contains(&total), "{what}: want {total:?}\n{r}");
    assert_eq!(o.status.code(), Some(0), "{what}: {r}");
}

/// The checks of a full run with --script: 31 of the protocol, one per vector.
fn all_checks() -> usize {
    31 + vectors().len()
}

fn runtimes() -> [(&'static str, Vec<String>, String); 3] {
    [
        (
            "exec",
            vec![smx_bin().display().to_string(), "exec-runtime".into()],
            path("runtimes/exec/conform.sh"),
        ),
        (
            "python",
            vec!["python3".into(), path("runtimes/python/smx_runtime.py")],
            path("runtimes/python/conform.py"),
        ),
        (
            "tcl",
            vec!["tclsh".into(), path("runtimes/tcl/smx_runtime.tcl")],
            path("runtimes/tcl/conform.tcl"),
        ),
    ]
}

/// RFC 3179 6.1 through tests/vectors/smx.txt: exec, Python and Tcl answer every golden
/// vector as the file says, over stdin/stdout and over TCP (with the cookie from its fd).
#[test]
fn every_runtime_answers_every_vector_over_both_transports() {
    let handles: Vec<_> = runtimes()
        .into_iter()
        .flat_map(|(name, cmd, script)| {
            ["pipe", "tcp"].map(|transport| {
                let (cmd, script) = (cmd.clone(), script.clone());
                std::thread::spawn(move || {
                    let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
                    let o = conform(&["--transport", transport, "--script", &script], &argv);
                    (format!("{name} over {transport}"), o)
                })
            })
        })
        .collect();
    for h in handles {
        let (what, o) = h.join().unwrap();
        assert_every_vector_passes(&what, &o, all_checks());
        if what.ends_with("tcp") {
            let r = report(&o);
            assert!(r.contains("<32-octet authenticator>"), "{what}: {r}");
        }
    }
}

/// RFC 3179 9 and README ("cookie = \"env\""): `--cookie env` hands the cookie over in
/// SMX_COOKIE only, as RFC 2593-era runtimes such as Scotty's Tnm expect. A runtime behind
/// tests/fixtures/env_cookie_only.sh, which refuses to start with an SMX_COOKIE_FD or
/// without SMX_COOKIE, passes with it and fails with `--cookie fd`; every shipped runtime
/// reads SMX_COOKIE too.
#[test]
fn cookie_env_reaches_a_runtime_that_reads_smx_cookie() {
    let env_only = path("tests/fixtures/env_cookie_only.sh");
    let python = path("runtimes/python/smx_runtime.py");
    let script = path("runtimes/python/conform.py");
    let tnm_like = ["sh", env_only.as_str(), "python3", python.as_str()];
    let o = conform(
        &["--transport", "tcp", "--cookie", "env", "--script", &script],
        &tnm_like,
    );
    assert_every_vector_passes("env-only runtime, --cookie env", &o, all_checks());
    assert!(
        report(&o).contains("211 1 SMX/1.1 with the cookie from SMX_COOKIE"),
        "{}",
        report(&o)
    );
    let o = conform(
        &["--transport", "tcp", "--cookie", "fd", "--script", &script],
        &tnm_like,
    );
    let r = report(&o);
    assert_eq!(o.status.code(), Some(1), "{r}");
    assert!(
        r.contains("FAIL  6.1.1   runtime starts and answers hello with 211")
            && r.contains("no SMX_COOKIE, or an SMX_COOKIE_FD too"),
        "{r}"
    );
    for (name, cmd, script) in runtimes() {
        let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let o = conform(
            &["--transport", "tcp", "--cookie", "env", "--script", &script],
            &argv,
        );
        assert_every_vector_passes(&format!("{name}, --cookie env"), &o, all_checks());
    }
    // Over a pipe there is no cookie to deliver.
    let o = conform(&["--cookie", "env"], &["python3", &python]);
    assert_eq!(o.status.code(), Some(1), "{}", report(&o));
    assert!(report(&o).contains("--cookie env only applies to --transport tcp"));
}

/// A runtime that gets vectors wrong fails exactly on their lines, naming what it answered:
/// the broken fixture that checks the Profile first (6.1.2 item 1 order) and the one that
/// answers unknown words with 401 (6.1).
#[test]
fn a_runtime_that_answers_a_vector_wrongly_fails_on_its_line() {
    let fixture = fixture("broken_runtime.py");
    let vs = vectors();
    let find = |text: &str| {
        vs.iter()
            .find(|v| v.text == text)
            .unwrap_or_else(|| panic!("no vector {text:?}"))
    };
    for (bug, text, got) in [
        (
            "start-order",
            "start 27 9 /unquoted bad! 0G",
            "want \"421 27\", got \"432 27\"",
        ),
        ("no-402", "foo 1", "want \"402 1\", got \"401 1\""),
    ] {
        let o = conform(&[], &["python3", &fixture, "--bug", bug]);
        let r = report(&o);
        assert_eq!(o.status.code(), Some(1), "{bug}: {r}");
        let v = find(text);
        let line = vector_line(&r, v).unwrap_or_else(|| panic!("{bug}: no line for {text}"));
        assert!(
            line.starts_with(&format!("FAIL  {:<7} {text}", v.section)) && line.contains(got),
            "{bug}: {line}"
        );
    }
    // And the same fixture without a bug passes every vector.
    let script = path("runtimes/exec/conform.sh");
    let o = conform(
        &["--script", &script],
        &["python3", &fixture, "--bug", "none"],
    );
    assert_every_vector_passes("fixture without bug", &o, all_checks());
}

/// A runtime that stops answering fails the remaining vectors at once instead of waiting
/// for each: the vector checks end within a few timeouts, not one per vector.
#[test]
fn vectors_stop_at_a_runtime_that_stops_answering() {
    let t = std::time::Instant::now();
    let o = Command::new(smx_bin())
        .args(["conform", "--timeout", "1s", "--", "python3"])
        .arg(fixture("flood_runtime.py"))
        .arg("--silent")
        .output()
        .expect("run smx conform");
    let r = report(&o);
    assert_eq!(o.status.code(), Some(1), "{r}");
    let stopped = r
        .lines()
        .filter(|l| l.contains("not sent: the runtime stopped answering at smx.txt:"))
        .count();
    assert_eq!(stopped, vectors().len() - 1, "{r}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(45),
        "took {:?}",
        t.elapsed()
    );
}
