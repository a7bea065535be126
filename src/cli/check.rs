//! `smx config check [FILE]`: the config as `smx daemon` loads it, every problem reported.

use std::path::Path;
use std::process::ExitCode;

use smx::config::Config;

use super::anyhow_lite::Result;
use super::safe;

/// `s` as one line for the terminal: control characters escaped as everywhere else
/// ([`safe::text`]), and newlines too, since a key or value of the file (a quoted TOML key
/// may hold any character) must not start a line of its own that looks like a verdict.
fn one_line(s: &str) -> String {
    safe::text(s).replace('\n', "\\n").replace('\t', "\\t")
}

/// Loads `file` (or the embedded default alone) with [`Config::load_checked`], the function
/// the daemon starts and reloads with. Problems go to stderr, one per line as
/// `FILE:LINE:COLUMN: KEY: MESSAGE`; exit status 1 if there are any.
pub fn check(file: Option<&Path>) -> Result<ExitCode> {
    let name = file.map_or_else(
        || "<embedded>".to_owned(),
        |f| one_line(&f.display().to_string()),
    );
    match Config::load_checked(file) {
        Ok(c) => {
            println!(
                "{name}: ok ({} runtimes, {} os profiles, {} owners)",
                c.runtimes.len(),
                c.os_profiles.len(),
                c.owners.len()
            );
            if let Some(a) = &c.agentx {
                println!("{name}: AgentX subagent on, master {}", a.socket);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let problems = e.problems();
            for p in &problems {
                eprintln!("{}", one_line(&p.to_string()));
            }
            let n = problems.len();
            eprintln!(
                "smx: {name}: {n} problem{}; smx daemon would refuse to start with it",
                if n == 1 { "" } else { "s" }
            );
            Ok(ExitCode::from(super::EXIT_SMX_ERROR))
        }
    }
}
