//! A subagent-style client of `smx daemon`: installs and launches a script, then turns the
//! run's events into the log lines an SNMP subagent would turn into notifications
//! (smScriptResult on a `533`, smScriptException on a `537`, smScriptAbort when a run ends
//! with an exit code other than noError).
//!
//! ```text
//! cargo run --example subagent -- OWNER SCRIPT [ARGUMENT]
//! ```
//! The socket is `SMX_SOCKET`, else the daemon's default.

use std::path::PathBuf;

use smx::client::{Client, Notice, socket_path};
use smx::control::proto::LaunchParams;
use smx::host::{EventKind, TimeInterval};
use smx::proto::{ExitCode, Octets};

/// DISMAN-SCRIPT-MIB notification OIDs (RFC 3165).
const SM_SCRIPT_ABORT: &str = "1.3.6.1.2.1.64.2.0.1";
const SM_SCRIPT_RESULT: &str = "1.3.6.1.2.1.64.2.0.2";
const SM_SCRIPT_EXCEPTION: &str = "1.3.6.1.2.1.64.2.0.3";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(owner), Some(script)) = (args.next(), args.next()) else {
        eprintln!("usage: subagent OWNER SCRIPT [ARGUMENT]");
        std::process::exit(2);
    };
    let argument = args.next().unwrap_or_default();
    let script = PathBuf::from(script);

    let mut smx = Client::connect(&socket_path(None)).await?;
    let name = script
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stored = smx
        .install(&owner, &name, &std::fs::read(&script)?, true)
        .await?;
    smx.subscribe(Some(&owner), None).await?;
    let launched = smx
        .launch(LaunchParams {
            owner: owner.clone(),
            name: Some(name.clone()),
            script: stored,
            runtime: None,
            argument: Octets::from(argument),
            lifetime: TimeInterval::from_secs(600),
            expire_time: TimeInterval::from_secs(3600),
        })
        .await?;
    println!(
        "launched {owner}/{name} as run {} (smRunIndex {})",
        launched.run_id, launched.index
    );

    loop {
        let event = match smx.next_event().await? {
            Notice::Event(e) => e,
            Notice::Lagged(n) => {
                println!("warning: {n} events lost; a real subagent would re-read smRunTable now");
                continue;
            }
            Notice::Shutdown => {
                println!("the daemon is shutting down");
                return Ok(());
            }
        };
        let who = format!(
            "run={} owner={} name={}",
            event.run_id, event.owner, event.name
        );
        let ours_ended =
            event.run_id == launched.run_id && matches!(event.kind, EventKind::Terminated { .. });
        match event.kind {
            EventKind::Result {
                result,
                notify: true,
            } => {
                println!("notify smScriptResult ({SM_SCRIPT_RESULT}) {who} smRunResult={result:?}")
            }
            EventKind::Error {
                error,
                notify: true,
            } => {
                println!(
                    "notify smScriptException ({SM_SCRIPT_EXCEPTION}) {who} smRunError={error:?}"
                )
            }
            EventKind::Terminated {
                exit_code, error, ..
            } if exit_code != ExitCode::NoError => {
                println!(
                    "notify smScriptAbort ({SM_SCRIPT_ABORT}) {who} smRunExitCode={exit_code} smRunError={error:?}"
                )
            }
            other => println!("log {who} {other:?}"),
        }
        if ours_ended {
            let row = smx.run(launched.run_id).await?;
            println!(
                "run {} ended: {} result={}",
                row.run_id, row.exit_code, row.result
            );
            return Ok(());
        }
    }
}
