//! A client for `smx daemon`'s control socket (docs/control-protocol.md).
//!
//! One connection, one task: [`Client::call`] sends a request and returns its response,
//! keeping any event lines that arrive meanwhile for [`Client::next_event`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::control::proto::*;
use crate::framing::{Frame, LineReader};
use crate::host::{Event, RunInfo, TimeInterval};
use crate::proto::{Octets, RunId};

/// Largest line accepted from the daemon (a `runs` answer over a big table is one line).
const MAX_SERVER_LINE: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach smx daemon at {path}: {source} (is `smx daemon` running? set --socket or SMX_SOCKET)"
    )]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("unexpected data from the daemon: {0}")]
    Protocol(String),
    #[error("daemon speaks {0} version {1}; this client speaks version {VERSION}")]
    Version(String, u32),
    /// The daemon refused the request.
    #[error("{message} ({code})", code = serde_json::to_value(.code).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default())]
    Refused { code: ErrorCode, message: String },
}

/// Something that arrived for a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Event(Event),
    /// This many events were lost because the client read too slowly.
    Lagged(u64),
    /// The daemon is shutting down.
    Shutdown,
}

pub struct Client {
    reader: LineReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    notices: VecDeque<Notice>,
    pub greeting: Greeting,
}

impl Client {
    /// Connects and reads the greeting.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::NotRunning {
                path: path.to_owned(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let mut reader = LineReader::new(r, MAX_SERVER_LINE);
        let first = match reader.next().await? {
            Some(Frame::Line(l)) => l,
            _ => return Err(ClientError::Closed),
        };
        // A daemon at its connection cap answers with one error line instead.
        if let Ok(Response {
            ok: false,
            error: Some(e),
            ..
        }) = serde_json::from_slice::<Response>(&first)
        {
            return Err(ClientError::Refused {
                code: e.code,
                message: e.message,
            });
        }
        let greeting: Greeting = serde_json::from_slice(&first)
            .map_err(|e| ClientError::Protocol(format!("greeting: {e}")))?;
        if greeting.protocol != PROTOCOL || greeting.version > VERSION {
            return Err(ClientError::Version(greeting.protocol, greeting.version));
        }
        Ok(Client {
            reader,
            writer: w,
            next_id: 1,
            notices: VecDeque::new(),
            greeting,
        })
    }

    async fn read_line(&mut self) -> Result<ServerLine, ClientError> {
        match self.reader.next().await? {
            Some(Frame::Line(l)) => serde_json::from_slice(&l).map_err(|e| {
                ClientError::Protocol(format!(
                    "{e}: {}",
                    String::from_utf8_lossy(&l[..l.len().min(120)])
                ))
            }),
            Some(Frame::Overlong) => Err(ClientError::Protocol("over-long line".into())),
            None => Err(ClientError::Closed),
        }
    }

    /// Sends `op` and returns its result, decoded as `T`.
    pub async fn call<T: DeserializeOwned>(&mut self, op: Op) -> Result<T, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request {
            id: Some(id.into()),
            op,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let want = serde_json::Value::from(id);
        loop {
            let l = match self.reader.next().await? {
                Some(Frame::Line(l)) => l,
                Some(Frame::Overlong) => {
                    return Err(ClientError::Protocol("over-long line".into()));
                }
                None => return Err(ClientError::Closed),
            };
            // One pass over a response: its result stays raw JSON until decoded as `T`
            // (the untagged ServerLine would buffer it, then build a Value, then convert).
            #[derive(serde::Deserialize)]
            struct Head<'a> {
                #[serde(default)]
                id: Option<serde_json::Value>,
                ok: Option<bool>,
                #[serde(default, borrow)]
                result: Option<&'a serde_json::value::RawValue>,
                #[serde(default)]
                error: Option<ErrorBody>,
            }
            let head: Head =
                serde_json::from_slice(&l).map_err(|e| ClientError::Protocol(format!("{e}")))?;
            match head.ok {
                Some(ok) if head.id.as_ref() == Some(&want) => {
                    return match (ok, head.result, head.error) {
                        (true, Some(v), _) => serde_json::from_str(v.get())
                            .map_err(|e| ClientError::Protocol(format!("result: {e}"))),
                        (_, _, Some(e)) => Err(ClientError::Refused {
                            code: e.code,
                            message: e.message,
                        }),
                        _ => Err(ClientError::Protocol(
                            "response without result or error".into(),
                        )),
                    };
                }
                Some(_) => {}
                None => match serde_json::from_slice::<ServerLine>(&l)
                    .map_err(|e| ClientError::Protocol(format!("{e}")))?
                {
                    ServerLine::Event { event } => self.notices.push_back(Notice::Event(event)),
                    ServerLine::Lagged { lagged } => self.notices.push_back(Notice::Lagged(lagged)),
                    ServerLine::Shutdown { .. } => self.notices.push_back(Notice::Shutdown),
                    ServerLine::Response(_) => {}
                },
            }
        }
    }

    /// The next event of a subscription (see [`Client::subscribe`]).
    pub async fn next_event(&mut self) -> Result<Notice, ClientError> {
        if let Some(n) = self.notices.pop_front() {
            return Ok(n);
        }
        loop {
            match self.read_line().await? {
                ServerLine::Event { event } => return Ok(Notice::Event(event)),
                ServerLine::Lagged { lagged } => return Ok(Notice::Lagged(lagged)),
                ServerLine::Shutdown { .. } => return Ok(Notice::Shutdown),
                ServerLine::Response(_) => {}
            }
        }
    }

    pub async fn whoami(&mut self) -> Result<Whoami, ClientError> {
        self.call(Op::Whoami).await
    }

    pub async fn languages(&mut self) -> Result<Vec<Language>, ClientError> {
        self.call(Op::Languages).await
    }

    /// Stores a script for `owner`; returns its name in the storage.
    pub async fn install(
        &mut self,
        owner: &str,
        name: &str,
        content: &[u8],
        executable: bool,
    ) -> Result<String, ClientError> {
        let r: Installed = self
            .call(Op::Install {
                owner: owner.into(),
                name: name.into(),
                content: Octets::new(content),
                executable,
            })
            .await?;
        Ok(r.script)
    }

    pub async fn launch(&mut self, p: LaunchParams) -> Result<Launched, ClientError> {
        self.call(Op::Launch(p)).await
    }

    pub async fn runs(&mut self, owner: Option<&str>) -> Result<Vec<RunInfo>, ClientError> {
        self.call(Op::Runs {
            owner: owner.map(String::from),
        })
        .await
    }

    pub async fn run(&mut self, run_id: RunId) -> Result<RunInfo, ClientError> {
        self.call(Op::Run { run_id }).await
    }

    pub async fn suspend(&mut self, run_id: RunId) -> Result<RunInfo, ClientError> {
        self.call(Op::Suspend { run_id }).await
    }

    pub async fn resume(&mut self, run_id: RunId) -> Result<RunInfo, ClientError> {
        self.call(Op::Resume { run_id }).await
    }

    pub async fn abort(&mut self, run_id: RunId) -> Result<RunInfo, ClientError> {
        self.call(Op::Abort { run_id }).await
    }

    pub async fn refresh(&mut self, run_id: RunId) -> Result<RunInfo, ClientError> {
        self.call(Op::Refresh { run_id }).await
    }

    pub async fn set(
        &mut self,
        run_id: RunId,
        lifetime: Option<TimeInterval>,
        expire_time: Option<TimeInterval>,
    ) -> Result<RunInfo, ClientError> {
        self.call(Op::Set {
            run_id,
            lifetime,
            expire_time,
        })
        .await
    }

    /// Waits until the run has terminated.
    pub async fn wait(&mut self, run_id: RunId) -> Result<RunInfo, ClientError> {
        self.call(Op::Wait { run_id }).await
    }

    /// Starts the event stream (optionally only one owner's or one run's events).
    pub async fn subscribe(
        &mut self,
        owner: Option<&str>,
        run_id: Option<RunId>,
    ) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(Op::Subscribe {
                owner: owner.map(String::from),
                run_id,
            })
            .await?;
        Ok(())
    }

    pub async fn stats(&mut self) -> Result<serde_json::Value, ClientError> {
        self.call(Op::Stats).await
    }

    pub async fn reload(&mut self) -> Result<(), ClientError> {
        let _: serde_json::Value = self.call(Op::Reload).await?;
        Ok(())
    }

    // ---- The Script MIB (protocol version 2).

    /// smExtsnTable: the language extensions of every language.
    pub async fn extensions(&mut self) -> Result<Vec<crate::mib::ExtsnRow>, ClientError> {
        self.call(Op::Extensions).await
    }

    /// smScriptTable rows the caller may see (optionally one owner's).
    pub async fn scripts(
        &mut self,
        owner: Option<&str>,
    ) -> Result<Vec<crate::mib::ScriptRow>, ClientError> {
        self.call(Op::Scripts {
            owner: owner.map(String::from),
        })
        .await
    }

    /// smCodeTable rows of one script.
    pub async fn code(
        &mut self,
        owner: &str,
        name: &str,
    ) -> Result<Vec<crate::mib::CodeRow>, ClientError> {
        self.call(Op::Code {
            owner: owner.into(),
            name: name.into(),
        })
        .await
    }

    /// Creates (or replaces) a script row and enables it. The row comes back `enabled` for
    /// content, `retrieving` for a `source` URL (poll [`Client::scripts`] for the outcome).
    pub async fn script_install(
        &mut self,
        spec: crate::mib::ScriptSpec,
    ) -> Result<crate::mib::ScriptRow, ClientError> {
        self.call(Op::ScriptInstall(spec)).await
    }

    /// Disables and destroys a script row.
    pub async fn script_remove(&mut self, owner: &str, name: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(Op::ScriptRemove {
                owner: owner.into(),
                name: name.into(),
            })
            .await?;
        Ok(())
    }

    /// smLaunchTable rows the caller may see (optionally one owner's).
    pub async fn launches(
        &mut self,
        owner: Option<&str>,
    ) -> Result<Vec<crate::mib::LaunchView>, ClientError> {
        self.call(Op::Launches {
            owner: owner.map(String::from),
        })
        .await
    }

    /// Creates a launch button.
    pub async fn launch_add(
        &mut self,
        spec: crate::mib::LaunchSpec,
    ) -> Result<crate::mib::LaunchView, ClientError> {
        self.call(Op::LaunchAdd(spec)).await
    }

    /// smLaunchStart (after setting smLaunchArgument if `argument` is given): the new
    /// smRunTable row, state `initializing`. `index` 0 or `None`: a fresh smRunIndex.
    pub async fn launch_start(
        &mut self,
        owner: &str,
        name: &str,
        index: Option<u32>,
        argument: Option<Octets>,
    ) -> Result<RunInfo, ClientError> {
        self.call(Op::LaunchStart {
            owner: owner.into(),
            name: name.into(),
            index,
            argument,
        })
        .await
    }

    /// Disables and destroys a launch button.
    pub async fn launch_remove(&mut self, owner: &str, name: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(Op::LaunchRemove {
                owner: owner.into(),
                name: name.into(),
            })
            .await?;
        Ok(())
    }

    /// smLaunchRunIndexNext: a fresh unused smRunIndex on every call (0: no such button, or
    /// no index left).
    pub async fn run_index_next(&mut self, owner: &str, name: &str) -> Result<u32, ClientError> {
        #[derive(serde::Deserialize)]
        struct Next {
            index: u32,
        }
        let n: Next = self
            .call(Op::RunIndexNext {
                owner: owner.into(),
                name: name.into(),
            })
            .await?;
        Ok(n.index)
    }

    /// Sets columns of the Script MIB tables as one SNMP set request: all or nothing. The
    /// result lists the smRunTable rows that smLaunchStart created.
    pub async fn mib_set(
        &mut self,
        changes: Vec<ColumnSet>,
    ) -> Result<crate::mib::SetOutcome, ClientError> {
        self.call(Op::MibSet { changes }).await
    }
}

/// The socket a client uses: the given path, else `SMX_SOCKET`, else the daemon's default.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_owned)
        .or_else(|| std::env::var_os("SMX_SOCKET").map(PathBuf::from))
        .unwrap_or_else(crate::control::server::default_socket)
}
