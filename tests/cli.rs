//! `smx run` as a user runs it: the real binary, real runtimes, the embedded configuration.

mod common;

use std::process::{Command, Output};

use common::*;

fn smx(args: &[&str]) -> Output {
    Command::new(smx_bin())
        .args(args)
        .output()
        .expect("run smx")
}

fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn readme_main_job_runs_the_example_script() {
    let ex = repo().join("scripts/sysinfo.sh").display().to_string();
    let o = smx(&["run", "--argument", "1", &ex]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("host "), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("smx: result: sample 1/1 load"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn exit_status_follows_the_exit_code() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("#!/bin/sh\necho ok\n", 0),
        ("#!/bin/sh\nexit 3\n", 16),
        ("#!/bin/sh\nexit 64\n", 17),
        ("#!/bin/sh\nexit 77\n", 18),
        ("#!/bin/sh\nif then\n", 15),
    ];
    for (i, (body, code)) in cases.into_iter().enumerate() {
        let s = script(&d, &format!("s{i}.sh"), body);
        let o = smx(&["run", &s]);
        assert_eq!(o.status.code(), Some(code), "case {i}: {}", text(&o.stderr));
    }
    let s = script(&d, "slow.sh", "#!/bin/sh\nsleep 10\n");
    let o = smx(&["run", "--lifetime", "1", &s]);
    assert_eq!(
        o.status.code(),
        Some(13),
        "lifeTimeExceeded: {}",
        text(&o.stderr)
    );
}

#[test]
fn json_output_has_mib_names_and_hex_for_binary() {
    let d = tempfile::tempdir().unwrap();
    let s = script(&d, "bin.sh", "#!/bin/sh\nprintf '\\377\\000x'\n");
    let o = smx(&["run", "--json", &s]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "terminated");
    assert_eq!(v["exit_code"], "noError");
    assert_eq!(v["result"], serde_json::json!({"hex": "FF0078"}));
    assert_eq!(v["error"], "");
    assert!(v["run_id"].as_u64().unwrap() >= 1);

    let s = script(&d, "fail.sh", "#!/bin/sh\necho 'it broke' >&2\nexit 1\n");
    let o = smx(&["run", "--json", &s]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], "runtimeError");
    assert_eq!(v["error"], "it broke (exit status 1)");
}

#[test]
fn argument_as_text_and_hex() {
    let d = tempfile::tempdir().unwrap();
    let s = script(&d, "cat.sh", "#!/bin/sh\ncat\n");
    let o = smx(&["run", "--argument", "a \"quoted\" arg", &s]);
    assert_eq!(text(&o.stdout), "a \"quoted\" arg\n");
    let o = smx(&["run", "--json", "--argument-hex", "00ff41", &s]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["result"], serde_json::json!({"hex": "00FF41"}));
    assert_eq!(v["argument"], serde_json::json!({"hex": "00FF41"}));
}

#[test]
fn errors_are_clear_and_exit_1() {
    let d = tempfile::tempdir().unwrap();
    let s = script(&d, "x.sh", "#!/bin/sh\n");
    let bad = d.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[runtime]]\nname = \"x\"\ncommand = [\"a\"]\nthreading = \"many\"\n",
    )
    .unwrap();
    let o = smx(&["run", "--config", bad.to_str().unwrap(), &s]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("bad.toml:4:") && e.contains("runtime.threading"),
        "{e}"
    );

    let o = smx(&["run", "--runtime", "cobol", &s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("unknown runtime \"cobol\""),
        "{}",
        text(&o.stderr)
    );

    let o = smx(&["run", "/nonexistent/script.sh"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("/nonexistent/script.sh"),
        "{}",
        text(&o.stderr)
    );

    let plain = d.path().join("notes.txt");
    std::fs::write(&plain, "hello").unwrap();
    let o = smx(&["run", plain.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no runtime for"),
        "{}",
        text(&o.stderr)
    );

    let o = smx(&["run", "--owner", "noc", &s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("owner \"noc\" is not mapped"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn runtimes_lists_the_registry() {
    let o = smx(&["runtimes"]);
    assert_eq!(o.status.code(), Some(0));
    let t = text(&o.stdout);
    for name in ["exec", "python", "tcl"] {
        assert!(t.lines().any(|l| l.starts_with(name)), "{t}");
    }
}

fn smx_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(smx_bin());
    c.args(args)
        .env_remove("SMX_CONFIG")
        .env_remove("SMX_SOCKET");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run smx")
}

#[test]
fn a_missing_script_is_said_to_not_exist() {
    for args in [
        &["run", "/nonexistent.sh"][..],
        &[
            "run",
            "--daemon",
            "--socket",
            "/nonexistent/smx.sock",
            "/nonexistent.sh",
        ],
    ] {
        let o = smx(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o.stderr));
        assert_eq!(
            text(&o.stderr),
            "smx: script /nonexistent.sh does not exist\n",
            "{args:?}"
        );
    }
    let d = tempfile::tempdir().unwrap();
    let o = smx(&["run", d.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("is a directory, not a file"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn out_of_range_seconds_are_plain_usage_errors() {
    for args in [
        &["run", "--lifetime", "-1", "x.sh"][..],
        &["run", "--lifetime", "99999999", "x.sh"],
        &["set", "1", "--lifetime", "-1"],
        &["set", "1", "--expire", "-5"],
    ] {
        let o = smx(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = text(&o.stderr);
        assert!(
            e.contains("out of range: must be a whole number of seconds from 0 to 21474836"),
            "{args:?}: {e}"
        );
        assert!(!e.contains("unexpected argument"), "{args:?}: {e}");
    }
    let o = smx(&["run", "--lifetime", "soon", "x.sh"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("must be a whole number of seconds"));
}

#[test]
fn config_with_daemon_is_a_usage_error_not_ignored() {
    let ex = repo().join("scripts/sysinfo.sh").display().to_string();
    let o = smx_env(
        &["run", "--daemon", "--config", "/etc/smx/smx.toml", &ex],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("--config cannot be used with --daemon"),
        "{}",
        text(&o.stderr)
    );
    // SMX_CONFIG in the environment (exported for the daemon, say) is documented as not
    // read with --daemon: it does not stop the client.
    let o = smx_env(
        &["run", "--daemon", "--socket", "/nonexistent/smx.sock", &ex],
        &[("SMX_CONFIG", "/etc/smx/smx.toml")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("cannot reach smx daemon at /nonexistent/smx.sock"),
        "{}",
        text(&o.stderr)
    );
    let o = smx(&["run", "--help"]);
    assert!(text(&o.stdout).contains("Not with --daemon"));
}

#[test]
fn every_line_of_a_multi_line_result_keeps_the_prefix() {
    let d = tempfile::tempdir().unwrap();
    // "first\nsecond\r\nthird" as hex, then an error of two lines.
    let s = script(
        &d,
        "multi.sh",
        "#!/bin/sh\necho 'result-hex 66697273740A7365636F6E640D0A7468697264' >&3\n\
         echo 'exception-hex 6F6E650A74776F' >&3\necho done\n",
    );
    let o = smx(&["run", &s]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stderr),
        "smx: result: first\nsmx: result: second\nsmx: result: third\n\
         smx: exception: one\nsmx: exception: two\n"
    );
    assert_eq!(text(&o.stdout), "done\n");
}

/// The run's end used to race its last events (`select!` on the run's end and the event
/// stream), and about one run in ten lost its last progress lines.
#[test]
fn smx_run_shows_every_progress_line() {
    let d = tempfile::tempdir().unwrap();
    let s = script(
        &d,
        "many.sh",
        "#!/bin/sh\nfor i in 1 2 3 4 5 6 7 8; do echo \"result step $i\" >&3; done\n\
         echo 'event last' >&3\necho finished\n",
    );
    let want: String = (1..=8)
        .map(|i| format!("smx: result: step {i}\n"))
        .chain(["smx: event: last\n".to_owned()])
        .collect();
    for i in 0..25 {
        let o = smx(&["run", &s]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert_eq!(text(&o.stderr), want, "run {i}");
        // The final result is the outcome on stdout, not a progress line too.
        assert_eq!(text(&o.stdout), "finished\n", "run {i}");
    }
    // A run that fails shows its error once, in the outcome line.
    let s = script(
        &d,
        "fails.sh",
        "#!/bin/sh\necho 'result half' >&3\necho broke >&2\nexit 3\n",
    );
    let o = smx(&["run", &s]);
    assert_eq!(o.status.code(), Some(16));
    assert_eq!(
        text(&o.stderr),
        "smx: result: half\nsmx: run 1 ended with runtimeError: broke (exit status 3)\n"
    );
}

#[test]
fn every_option_an_operator_sees_has_help() {
    let o = smx(&["events", "--help"]);
    let t = text(&o.stdout);
    assert!(
        t.contains("--owner <OWNER>") && t.contains("Only events of this owner's runs"),
        "{t}"
    );
    assert!(
        t.contains("--run <RUN>") && t.contains("Only events of this run"),
        "{t}"
    );
    let o = smx(&["runtimes", "--help"]);
    let t = text(&o.stdout);
    assert!(
        t.contains("--config <CONFIG>") && t.contains("Config file extending the embedded default"),
        "{t}"
    );
}

#[test]
fn readme_usage_of_smx_run_shows_daemon_and_socket() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let usage = readme
        .split("```")
        .find(|b| b.trim_start().starts_with("smx run ["))
        .expect("README has the usage block of smx run");
    for flag in [
        "--daemon",
        "--socket PATH",
        "--config FILE",
        "--lifetime SECONDS",
    ] {
        assert!(
            usage.contains(flag),
            "README's smx run usage lacks {flag}: {usage}"
        );
    }
}

#[test]
fn completions_are_valid_shell() {
    let o = smx(&["completions", "bash"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        text(&o.stdout).contains("complete -F _smx"),
        "bash completion"
    );
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bash");
    use std::io::Write;
    bash.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    let b = bash.wait_with_output().unwrap();
    assert!(b.status.success(), "bash -n: {}", text(&b.stderr));
    // And it completes: `smx co<TAB>`, `smx run --li<TAB>`.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("smx.bash");
    std::fs::write(&f, &o.stdout).unwrap();
    let b = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(smx co); COMP_CWORD=1; _smx smx co smx; echo \"${{COMPREPLY[*]}}\"; \
             COMP_WORDS=(smx run --li); COMP_CWORD=2; _smx smx --li run; echo \"${{COMPREPLY[*]}}\"; \
             COMP_WORDS=(smx e); COMP_CWORD=1; _smx smx e smx; echo \"${{COMPREPLY[*]}}\"",
            f.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        text(&b.stdout),
        "conform config completions\n--lifetime\nevents\n"
    );
    for (shell, marker) in [("zsh", "#compdef smx"), ("fish", "complete -c smx")] {
        let o = smx(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        let t = text(&o.stdout);
        assert!(t.contains(marker), "{shell}: {t}");
        for verb in ["run", "daemon", "config", "completions"] {
            assert!(t.contains(verb), "{shell} completion lacks {verb}");
        }
        assert!(
            !t.contains("exec-runtime"),
            "{shell}: hidden verbs stay hidden"
        );
    }
    let o = smx(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Every man page renders without a warning, and the ones the package installs
/// (packaging/man) are the ones the clap definitions make now.
#[test]
fn man_pages_render_and_are_current() {
    let d = tempfile::tempdir().unwrap();
    let o = smx(&["manpages", d.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "smx.1",
        "smx-run.1",
        "smx-daemon.1",
        "smx-config.1",
        "smx-config-check.1",
        "smx-ps.1",
        "smx-completions.1",
    ] {
        assert!(
            pages.iter().any(|p| p == want),
            "{want} missing from {pages:?}"
        );
    }
    assert!(
        !pages
            .iter()
            .any(|p| p.contains("exec-runtime") || p.contains("manpages")),
        "{pages:?}"
    );
    for p in &pages {
        let o = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(d.path().join(p))
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .expect("man (install man-db)");
        assert!(o.status.success(), "man -l {p}: {}", text(&o.stderr));
        assert!(o.stderr.is_empty(), "man -l {p} warns: {}", text(&o.stderr));
        // Without the overstrikes (bold, underline) of terminal output.
        let mut shown = String::new();
        for c in text(&o.stdout).chars() {
            if c == '\u{8}' {
                shown.pop();
            } else {
                shown.push(c);
            }
        }
        assert!(
            shown.contains("NAME") && shown.contains("SYNOPSIS"),
            "{p}: {shown}"
        );
    }
    let run = std::fs::read_to_string(d.path().join("smx-run.1")).unwrap();
    assert!(
        run.contains("lifeTimeExceeded"),
        "the exit statuses are in smx-run(1)"
    );

    let packaged = repo().join("packaging/man");
    let mut shipped: Vec<String> = std::fs::read_dir(&packaged)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    assert_eq!(
        shipped, pages,
        "packaging/man is stale: run `cargo run -- manpages packaging/man`"
    );
    for p in &pages {
        let now = std::fs::read(d.path().join(p)).unwrap();
        let old = std::fs::read(packaged.join(p)).unwrap();
        assert!(
            now == old,
            "packaging/man/{p} is stale: run `cargo run -- manpages packaging/man`"
        );
    }
    for (shell, file) in [("bash", "smx.bash"), ("zsh", "_smx"), ("fish", "smx.fish")] {
        let now = smx(&["completions", shell]).stdout;
        let old = std::fs::read(repo().join("packaging/completions").join(file)).unwrap();
        assert!(
            now == old,
            "packaging/completions/{file} is stale: run `cargo run -- completions {shell} > packaging/completions/{file}`"
        );
    }
}

fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn config_check_reports_every_problem_with_its_place() {
    let d = tempfile::tempdir().unwrap();
    let bad = write(
        d.path(),
        "bad.toml",
        "[host]\nmax_active_runs = 0\n\n\
         [[runtime]]\nname = \"py2\"\ncommand = [\"python3\", \"{runtime}/python/smx_runtime.py\"]\nextensions = [\"py\"]\n\n\
         [[os_profile]]\nname = \"ops\"\nuser = \"smx-no-such-user\"\ngroups = [\"smx-no-such-group\"]\n\n\
         [[owner]]\nname = \"noc\"\nos_profile = \"ops\"\nruntime_profile = \"trusted\"\n\n\
         [[owner]]\nname = \"noc\"\nos_profile = \"ops\"\nruntime_profile = \"trusted\"\n",
    );
    let o = smx_env(&["config", "check", &bad], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let e = text(&o.stderr);
    let lines: Vec<&str> = e.lines().collect();
    let want = [
        format!("{bad}:2:19: host.max_active_runs: must be at least 1"),
        format!("{bad}:6:23: runtime.command: unknown placeholder {{runtime}}"),
        format!(
            "{bad}:7:15: runtime.extensions: extension \"py\" of runtime \"py2\" is also registered by runtime \"python\""
        ),
        format!(
            "{bad}:11:8: os_profile.user: os_profile \"ops\": user \"smx-no-such-user\" does not exist"
        ),
        format!(
            "{bad}:12:11: os_profile.groups: os_profile \"ops\": group \"smx-no-such-group\" does not exist"
        ),
        format!("{bad}:20:8: owner.name: owner \"noc\" is defined twice (first at line 14)"),
        format!("smx: {bad}: 6 problems; smx daemon would refuse to start with it"),
    ];
    assert_eq!(lines.len(), want.len(), "{e}");
    for (l, w) in lines.iter().zip(&want) {
        assert!(l.starts_with(w.as_str()), "want {w}\n got {l}");
    }
    assert!(o.stdout.is_empty());

    // The daemon refuses to start on the same problems, every one of them named.
    let o = smx_env(
        &[
            "daemon",
            "--config",
            &bad,
            "--socket",
            &format!("{}/d.sock", d.path().display()),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let de = text(&o.stderr);
    for w in &want[..6] {
        assert!(de.contains(w.as_str()), "daemon stderr lacks {w}: {de}");
    }
    assert!(!d.path().join("d.sock").exists());

    // `smx run` checks what the text says, not this system's users.
    let o = smx_env(&["run", "--config", &bad, "/nonexistent.sh"], &[]);
    assert_eq!(o.status.code(), Some(1));

    let good = write(d.path(), "good.toml", "[host]\nmax_active_runs = 8\n");
    let o = smx_env(&["config", "check", &good], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        format!("{good}: ok (3 runtimes, 0 os profiles, 0 owners)\n")
    );
    let o = smx_env(&["config", "check"], &[("SMX_CONFIG", &good)]);
    assert_eq!(
        text(&o.stdout),
        format!("{good}: ok (3 runtimes, 0 os profiles, 0 owners)\n")
    );
    let o = smx_env(&["config", "check"], &[]);
    assert_eq!(
        text(&o.stdout),
        "<embedded>: ok (3 runtimes, 0 os profiles, 0 owners)\n"
    );
    let o = smx_env(&["config", "check", "/nonexistent/smx.toml"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("cannot read config file /nonexistent/smx.toml"),
        "{}",
        text(&o.stderr)
    );
    let syntax = write(d.path(), "syntax.toml", "[host\n");
    let o = smx_env(&["config", "check", &syntax], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).starts_with(&format!("{syntax}:1:")),
        "{}",
        text(&o.stderr)
    );
}

/// Issue 11 (no terminal injection): `smx config check` prints what the file and its name
/// say with control characters escaped, each problem on one line (a file name with a
/// newline cannot forge a verdict line). `fetch_timeout = "0s"` and a `state_dir` that
/// cannot be a directory are problems too.
#[test]
fn config_check_escapes_names_and_values_and_flags_unusable_settings() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "e\x1b]0;owned\x07\nfake.toml: ok\x1b[2J.toml",
        "[host]\nfetch_timeout = \"0s\"\nstate_dir = \"/etc/passwd/\\u001b[2J\"\n",
    );
    let o = smx_env(&["config", "check", &f], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let e = text(&o.stderr);
    assert!(
        !e.bytes().any(|b| b == 0x1b || b == 0x07),
        "raw control characters: {e:?}"
    );
    let name = f
        .replace('\x1b', "\\x1b")
        .replace('\x07', "\\x07")
        .replace('\n', "\\n");
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{name}:2:17: host.fetch_timeout: must be more than 0s (with 0 every \
                 smScriptSource retrieval would time out at once)"
            ),
            format!(
                "{name}:3:13: host.state_dir: /etc/passwd/\\x1b[2J cannot be created: \
                 /etc/passwd is not a directory"
            ),
            format!("smx: {name}: 2 problems; smx daemon would refuse to start with it"),
        ],
        "{e}"
    );
    let f = write(
        d.path(),
        "file.toml",
        "[host]\nstate_dir = \"/etc/passwd\"\n",
    );
    let o = smx_env(&["config", "check", &f], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).starts_with(&format!(
            "{f}:2:13: host.state_dir: /etc/passwd exists and is not a directory\n"
        )),
        "{}",
        text(&o.stderr)
    );
}

/// The conffile the package installs is valid as shipped.
#[test]
fn packaged_config_is_valid() {
    let f = repo().join("packaging/smx.toml").display().to_string();
    let o = smx_env(&["config", "check", &f], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

/// Found by a hostile review (issue "isolation": no terminal injection): results and
/// errors are a script's text, and an ESC in them must not reach the terminal raw. The
/// progress lines on stderr are escaped; stdout that is not a terminal, and `--json`,
/// stay exact.
#[test]
fn control_characters_from_a_script_never_reach_the_terminal_raw() {
    let d = tempfile::tempdir().unwrap();
    let s = script(
        &d,
        "esc.sh",
        "#!/bin/sh\nprintf 'result \\033]0;owned\\007\\033[2J\\n' >&3\nprintf 'error \\233x\\r\\n' >&3\nprintf 'out\\033[1m'\n",
    );
    let o = smx(&["run", &s]);
    let err = text(&o.stderr);
    assert!(
        !err.contains('\x1b') && !err.contains('\x07') && !err.contains('\r'),
        "{err:?}"
    );
    assert!(
        err.contains("smx: result: \\x1b]0;owned\\x07\\x1b[2J"),
        "{err:?}"
    );
    // A lone 0x9B octet (C1 CSI in Latin-1) is not UTF-8: shown as U+FFFD, never raw.
    assert!(err.contains("smx: error: \u{fffd}x"), "{err:?}");
    assert_eq!(
        o.stdout, b"out\x1b[1m\n",
        "stdout to a pipe is the exact result"
    );
    let j = smx(&["run", "--json", &s]);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["result"], "out\u{1b}[1m", "--json is exact");
}
