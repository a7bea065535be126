//! `smx conform`: the conformance suite for third-party runtimes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use smx::config::{CookieDelivery, Transport};
use smx::conform::{Options, Verdict};
use smx::proto::Profile;

use super::anyhow_lite::Result;

#[derive(Debug, Args)]
pub struct ConformArgs {
    /// How the runtime talks SMX: stdin/stdout or a TCP connection back to smx.
    #[arg(long, value_enum, default_value = "pipe")]
    pub transport: TransportArg,
    /// A runtime security profile the runtime accepts.
    #[arg(long, default_value = "trusted")]
    pub profile: Profile,
    /// A conformance script in the runtime's language (see docs/writing-a-runtime.md);
    /// without it the checks that need a running script are skipped.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// With --transport tcp: how the runtime gets its cookie, from the fd SMX_COOKIE_FD
    /// names or (RFC 2593-era runtimes such as Scotty's Tnm) from SMX_COOKIE.
    #[arg(long, value_enum, default_value = "fd")]
    pub cookie: CookieArg,
    /// How long to wait for each expected reply.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The runtime's command line.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TransportArg {
    Pipe,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CookieArg {
    Fd,
    Env,
}

pub async fn conform(args: ConformArgs) -> Result<ExitCode> {
    if args.cookie == CookieArg::Env && !matches!(args.transport, TransportArg::Tcp) {
        return Err("--cookie env only applies to --transport tcp".into());
    }
    let script = match args.script {
        Some(p) => {
            Some(std::fs::canonicalize(&p).map_err(|e| format!("--script {}: {e}", p.display()))?)
        }
        None => None,
    };
    let opts = Options {
        command: args.command,
        transport: match args.transport {
            TransportArg::Pipe => Transport::Pipe,
            TransportArg::Tcp => Transport::Tcp,
        },
        profile: args.profile,
        script,
        timeout: args.timeout,
        cookie: match args.cookie {
            CookieArg::Fd => None,
            CookieArg::Env => Some(CookieDelivery::Env),
        },
    };
    let out = smx::conform::run(&opts, true).await;
    let count = |v| out.iter().filter(|o| o.verdict == v).count();
    let (pass, fail, skip) = (
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Skip),
    );
    println!("\n{pass} passed, {fail} failed, {skip} skipped");
    Ok(if fail == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
