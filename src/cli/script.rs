//! `smx script`: the daemon's smScriptTable (RFC 3165 section 5.2): install a script for an
//! owner and enable it, list the scripts, remove one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use smx::client::Client;
use smx::mib::{ScriptOper, ScriptRow, ScriptSpec, StorageType};
use smx::proto::Octets;

use super::anyhow_lite::Result;
use super::remote::SocketArg;

#[derive(Debug, Subcommand)]
pub enum ScriptCmd {
    /// Store a script for an owner and enable it (smScriptTable, RFC 3165 7.1 and 7.2).
    Install(InstallArgs),
    /// List the scripts you may see (smScriptTable).
    List {
        /// Only this owner's scripts.
        #[arg(long)]
        owner: Option<String>,
        /// The rows as a JSON array, with the smScriptTable column names.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Disable and destroy a script (RFC 3165 7.4).
    Remove {
        /// smScriptOwner.
        owner: String,
        /// smScriptName.
        name: String,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// smScriptOwner (0..32 octets).
    pub owner: String,
    /// smScriptName (1..32 octets). An existing script of that name is replaced.
    pub name: String,
    /// The script file; its content is sent to the daemon.
    #[arg(required_unless_present = "source", conflicts_with = "source")]
    pub file: Option<PathBuf>,
    /// smScriptSource: a URL the daemon pulls the script from instead of FILE (file: read as
    /// the owner's OS user, http:, https:).
    #[arg(long)]
    pub source: Option<String>,
    /// smScriptLanguage: a runtime name or an smLangIndex (default: by NAME's extension, else
    /// FILE's, else exec).
    #[arg(long)]
    pub language: Option<String>,
    /// smScriptDescr (0..255 octets).
    #[arg(long)]
    pub descr: Option<String>,
    /// smScriptStorageType: nonVolatile scripts survive a restart of the daemon (it needs
    /// [host] state_dir); default volatile.
    #[arg(long, value_parser = storage_type)]
    pub storage: Option<StorageType>,
    #[command(flatten)]
    pub socket: SocketArg,
}

/// `--storage`: the two StorageType values a manager may set.
pub fn storage_type(s: &str) -> std::result::Result<StorageType, String> {
    match s {
        "volatile" => Ok(StorageType::Volatile),
        "nonVolatile" => Ok(StorageType::NonVolatile),
        _ => Err(format!("{s:?} is not volatile or nonVolatile")),
    }
}

pub async fn script(cmd: ScriptCmd) -> Result<ExitCode> {
    match cmd {
        ScriptCmd::Install(args) => install(args).await,
        ScriptCmd::List {
            owner,
            json,
            socket,
        } => list(socket, owner, json).await,
        ScriptCmd::Remove {
            owner,
            name,
            socket,
        } => {
            let mut c = socket.connect().await?;
            c.script_remove(&owner, &name)
                .await
                .map_err(|e| format!("script {owner}/{name}: {e}"))?;
            println!("script {owner}/{name} removed");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// smLangIndex -> runtime name, from the daemon's smLangTable.
async fn language_names(c: &mut Client) -> Result<BTreeMap<u32, String>> {
    Ok(c.languages()
        .await?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect())
}

fn language_name(names: &BTreeMap<u32, String>, index: u32) -> String {
    names
        .get(&index)
        .cloned()
        .unwrap_or_else(|| index.to_string())
}

/// The runtime registered for `path`'s extension in the daemon, if any.
async fn runtime_for(c: &mut Client, path: &Path) -> Result<Option<String>> {
    let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
        return Ok(None);
    };
    Ok(c.languages()
        .await?
        .into_iter()
        .find(|l| l.extensions.iter().any(|e| e == ext))
        .map(|l| l.name))
}

async fn install(args: InstallArgs) -> Result<ExitCode> {
    let (owner, name) = (args.owner.clone(), args.name.clone());
    let content = match &args.file {
        Some(f) => Octets::new(std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?),
        None => Octets::default(),
    };
    if let Some(f) = &args.file
        && content.is_empty()
    {
        return Err(format!("{}: the file is empty", f.display()).into());
    }
    let mut c = args.socket.connect().await?;
    let mut language = args.language.clone();
    if language.is_none()
        && let Some(f) = &args.file
        && runtime_for(&mut c, Path::new(&name)).await?.is_none()
    {
        language = runtime_for(&mut c, f).await?;
    }
    let spec = ScriptSpec {
        owner: owner.clone(),
        name: name.clone(),
        content,
        source: args.source.clone(),
        language,
        descr: args.descr.clone(),
        storage_type: args.storage,
    };
    let mut row = c
        .script_install(spec)
        .await
        .map_err(|e| format!("script {owner}/{name}: {e}"))?;
    // A URL is retrieved in the background: follow smScriptOperStatus as a manager would
    // (the daemon bounds the retrieval by [host] fetch_timeout).
    let mut pause = Duration::from_millis(20);
    while matches!(
        row.oper_status,
        ScriptOper::Retrieving | ScriptOper::Compiling
    ) {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
        row = c
            .scripts(Some(&owner))
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| format!("script {owner}/{name} was removed while it was retrieved"))?;
    }
    let names = language_names(&mut c).await?;
    if row.oper_status != ScriptOper::Enabled {
        let why = if row.error.is_empty() {
            String::new()
        } else {
            format!(": {}", row.error)
        };
        return Err(format!(
            "script {owner}/{name} is not enabled: smScriptOperStatus {}{why} (the row stays, \
             as in the MIB: `smx script remove {owner} {name}` removes it)",
            row.oper_status
        )
        .into());
    }
    println!(
        "script {owner}/{name} enabled: language {}, {}{}",
        language_name(&names, row.language),
        row.storage_type,
        if row.source.is_empty() {
            String::new()
        } else {
            format!(", from {}", row.source)
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(sock: SocketArg, owner: Option<String>, json: bool) -> Result<ExitCode> {
    let mut c = sock.connect().await?;
    let rows: Vec<ScriptRow> = c.scripts(owner.as_deref()).await?;
    if json {
        // Exact: serde_json escapes what JSON requires, and nothing is changed after.
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = super::safe::Escape::new(std::io::stdout().lock());
    let names = language_names(&mut c).await?;
    writeln!(
        out,
        "{:<10} {:<20} {:<8} {:<9} {:<16} {:<11} {:<12} SOURCE / ERROR",
        "OWNER", "NAME", "LANGUAGE", "ADMIN", "OPER", "STORAGE", "ROW"
    )?;
    for r in &rows {
        let mut tail = r.source.clone();
        if !r.error.is_empty() {
            if !tail.is_empty() {
                tail.push_str(": ");
            }
            tail.push_str(&r.error);
        }
        writeln!(
            out,
            "{:<10} {:<20} {:<8} {:<9} {:<16} {:<11} {:<12} {}",
            r.owner,
            r.name,
            language_name(&names, r.language),
            r.admin_status.as_str(),
            r.oper_status.as_str(),
            r.storage_type.as_str(),
            r.row_status.as_str(),
            tail
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
