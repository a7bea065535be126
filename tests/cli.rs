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
