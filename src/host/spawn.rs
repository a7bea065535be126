//! Starting a runtime process and establishing its SMX connection (RFC 3179 sections 4, 6.2.1,
//! 8.1 and 8.2). Both transports end in the same place: a line reader, a writer, and a
//! completed `hello`/`211` exchange; everything after that is transport-neutral.

use std::ffi::OsString;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::config::{CookieDelivery, Registered, Transport, runtimes_dir};
use crate::framing::{DEFAULT_MAX_LINE, LineReader};
use crate::security::{self, COOKIE_FD, Prepared, ProfileError};

use super::conn::{BoxRead, BoxWrite};
use super::hello::{HandshakeError, hello};

/// Why a runtime could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("runtime {runtime}: program {program:?} not found (PATH {path})")]
    NotFound {
        runtime: String,
        program: String,
        path: String,
    },
    #[error("runtime {runtime}: {source}")]
    Profile {
        runtime: String,
        source: ProfileError,
    },
    #[error("runtime {runtime}: cannot start {program:?}: {source}")]
    Spawn {
        runtime: String,
        program: String,
        source: std::io::Error,
    },
    #[error("runtime {runtime} (pid {pid}): {source}{stderr}")]
    Handshake {
        runtime: String,
        pid: u32,
        source: HandshakeError,
        stderr: String,
    },
    #[error("runtime {runtime}: TCP listener: {source}")]
    Listener {
        runtime: String,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime {runtime}: no cookie: the OS random generator failed: {reason}")]
    Random { runtime: String, reason: String },
    #[error(
        "runtime {runtime} (pid {pid}) did not connect and authenticate within {timeout:?} (RFC 3179 8.2){refused}{stderr}"
    )]
    NoConnection {
        runtime: String,
        pid: u32,
        timeout: Duration,
        refused: String,
        stderr: String,
    },
    #[error(
        "runtime {runtime} (pid {pid}) exited ({status}) before a connection authenticated{refused}{stderr}"
    )]
    ExitedEarly {
        runtime: String,
        pid: u32,
        status: String,
        refused: String,
        stderr: String,
    },
}

impl StartError {
    /// Whether the host ran out of descriptors, processes or memory (EMFILE, ENFILE,
    /// EAGAIN from fork, ENOMEM): the run ends with noResourcesLeft, not genericError.
    pub fn out_of_resources(&self) -> bool {
        let io = match self {
            StartError::Spawn { source, .. } | StartError::Listener { source, .. } => source,
            _ => return false,
        };
        matches!(
            io.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
        )
    }
}

/// A started runtime with a completed handshake.
pub(crate) struct Started {
    pub child: Child,
    pub pid: u32,
    pub reader: LineReader<BoxRead>,
    pub writer: BoxWrite,
    /// Diagnostic output to log: stderr, and stdout for TCP runtimes.
    pub logs: Vec<BoxRead>,
}

/// The argv of `rt` with its placeholders expanded.
pub fn expand_command(rt: &Registered) -> Vec<String> {
    let smx = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "smx".into());
    let runtimes = runtimes_dir().display().to_string();
    let config_dir = rt
        .config_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| ".".into());
    rt.command
        .0
        .iter()
        .map(|a| {
            a.replace("{smx}", &smx)
                .replace("{runtimes}", &runtimes)
                .replace("{config_dir}", &config_dir)
        })
        .collect()
}

fn command_for(rt: &Registered, os: &Prepared) -> Result<(Command, PathBuf), StartError> {
    let argv = expand_command(rt);
    let path = os
        .env_var("PATH")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| security::DEFAULT_PATH.into());
    let program =
        security::resolve_program(&argv[0], &path, os.chroot.as_deref()).ok_or_else(|| {
            StartError::NotFound {
                runtime: rt.name.0.clone(),
                program: argv[0].clone(),
                path: path.clone(),
            }
        })?;
    let mut cmd = Command::new(&program);
    cmd.arg0(&argv[0]).args(&argv[1..]);
    Ok((cmd, program))
}

fn spawn(
    rt: &Registered,
    os: &Prepared,
    mut cmd: Command,
    program: PathBuf,
    cookie: Option<OwnedFd>,
    extra_env: Vec<(OsString, OsString)>,
) -> Result<Child, StartError> {
    // A cgroup of its own, joined before anything else happens in the child (while it is
    // still the host's identity): see crate::contain.
    let owner = os
        .identity
        .as_ref()
        .map(|i| (i.uid.as_raw(), i.gid.as_raw()));
    let cgroup = crate::contain::runtime_cgroup(owner);
    if let Some(cg) = &cgroup {
        use std::os::fd::AsRawFd;
        let fd = cg.procs.as_raw_fd();
        // SAFETY: one write(2) on an fd that outlives the spawn; a failure is found by
        // runtime_started (the runtime then stays contained by its process group only).
        unsafe {
            cmd.pre_exec(move || {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                Ok(())
            });
        }
    }
    os.apply(&mut cmd, cookie);
    cmd.envs(extra_env);
    cmd.env("SMX_RUNTIME", rt.name.0.as_str());
    if let Some(cg) = &cgroup {
        cmd.env("SMX_CGROUP", &cg.path);
    }
    let spawned = {
        let _no_writer = crate::storage::FORK_GUARD
            .read()
            .unwrap_or_else(|e| e.into_inner());
        crate::contain::spawn_tracked(|| cmd.spawn(), Child::id)
    };
    if let (Ok(child), Some(cg)) = (&spawned, cgroup)
        && let Some(pid) = child.id()
    {
        crate::contain::runtime_started(pid, cg);
    }
    spawned.map_err(|e| match security::describe_spawn_error(&e) {
        Some(p) => StartError::Profile {
            runtime: rt.name.0.clone(),
            source: p,
        },
        None => StartError::Spawn {
            runtime: rt.name.0.clone(),
            program: program.display().to_string(),
            source: e,
        },
    })
}

/// The last lines a failed runtime wrote, for an error text (bounded in size and time).
async fn tail(out: Option<BoxRead>) -> String {
    let Some(out) = out else { return String::new() };
    let mut lines = BufReader::new(out.take(64 * 1024)).lines();
    let mut last = String::new();
    let read = async {
        while let Ok(Some(l)) = lines.next_line().await {
            if !l.trim().is_empty() {
                last = l;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(300), read).await;
    if last.is_empty() {
        last
    } else {
        let cut: String = last.chars().take(200).collect();
        format!("; last stderr line: {cut}")
    }
}

async fn kill_and_reap(child: &mut Child) {
    if let Some(pid) = child.id() {
        crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

/// Starts the runtime `rt` inside the OS profile `os` and completes the handshake.
pub(crate) async fn start(
    rt: &Registered,
    os: &Prepared,
    hello_timeout: Duration,
) -> Result<Started, StartError> {
    match rt.transport {
        Transport::Pipe => start_pipe(rt, os, hello_timeout).await,
        Transport::Tcp => start_tcp(rt, os, hello_timeout).await,
    }
}

async fn start_pipe(
    rt: &Registered,
    os: &Prepared,
    hello_timeout: Duration,
) -> Result<Started, StartError> {
    let (mut cmd, program) = command_for(rt, os)?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let env = vec![("SMX_TRANSPORT".into(), "pipe".into())];
    let mut child = spawn(rt, os, cmd, program, None, env)?;
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stderr: BoxRead = Box::new(child.stderr.take().expect("piped stderr"));
    let mut reader = LineReader::new(Box::new(stdout) as BoxRead, DEFAULT_MAX_LINE);
    match hello(&mut reader, &mut stdin, None, hello_timeout).await {
        Ok(_) => Ok(Started {
            child,
            pid,
            reader,
            writer: Box::new(stdin),
            logs: vec![stderr],
        }),
        Err(source) => {
            drop(stdin);
            kill_and_reap(&mut child).await;
            Err(StartError::Handshake {
                runtime: rt.name.0.clone(),
                pid,
                source,
                stderr: tail(Some(stderr)).await,
            })
        }
    }
}

/// Most handshakes one TCP listener runs at once; more connections are dropped at once.
const MAX_PENDING_CONNECTIONS: usize = 8;

/// Cookie length: 256 bits from the OS random generator (RFC 3179 section 9 asks for a
/// secret; 128 bits would do, more costs nothing).
const COOKIE_OCTETS: usize = 32;

async fn start_tcp(
    rt: &Registered,
    os: &Prepared,
    hello_timeout: Duration,
) -> Result<Started, StartError> {
    let name = rt.name.0.clone();
    let listener_err = |source| StartError::Listener {
        runtime: name.clone(),
        source,
    };
    // Loopback only: other hosts cannot even connect (RFC 3179 8.2 "must originate from the
    // local host"); the peer address is checked again below.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(listener_err)?;
    let port = listener.local_addr().map_err(listener_err)?.port();

    let mut secret = [0u8; COOKIE_OCTETS];
    {
        use rand::TryRng;
        rand::rngs::SysRng
            .try_fill_bytes(&mut secret)
            .map_err(|e| StartError::Random {
                runtime: name.clone(),
                reason: e.to_string(),
            })?;
    }
    let mut cookie_hex = hex::encode_upper(secret);

    let (mut cmd, program) = command_for(rt, os)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut env: Vec<(OsString, OsString)> = vec![
        ("SMX_TRANSPORT".into(), "tcp".into()),
        ("SMX_HOST".into(), "127.0.0.1".into()),
        ("SMX_PORT".into(), port.to_string().into()),
    ];
    let cookie_fd = match rt.cookie_delivery() {
        CookieDelivery::Fd => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| listener_err(e.into()))?;
            // 64 octets fit in any pipe buffer, so this write cannot block.
            let mut w = std::fs::File::from(w);
            w.write_all(cookie_hex.as_bytes()).map_err(listener_err)?;
            drop(w);
            env.push(("SMX_COOKIE_FD".into(), COOKIE_FD.to_string().into()));
            Some(r)
        }
        CookieDelivery::Env => {
            env.push(("SMX_COOKIE".into(), cookie_hex.clone().into()));
            None
        }
    };
    // The hex copy is no longer needed; only the raw secret is compared.
    // SAFETY: overwriting ASCII hex digits with ASCII zeros keeps the string valid UTF-8.
    unsafe { cookie_hex.as_bytes_mut().fill(b'0') };
    let mut child = spawn(rt, os, cmd, program, cookie_fd, env)?;
    let pid = child.id().unwrap_or(0);
    let stdout: BoxRead = Box::new(child.stdout.take().expect("piped stdout"));
    let stderr: BoxRead = Box::new(child.stderr.take().expect("piped stderr"));

    let deadline = tokio::time::Instant::now() + hello_timeout;
    let mut refused = String::new();
    let mut handshakes: JoinSet<Authenticated> = JoinSet::new();
    let outcome = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                if !peer.ip().is_loopback() {
                    tracing::warn!(runtime = %name, %peer, "refused SMX connection from a non-loopback address");
                    continue;
                }
                if handshakes.len() >= MAX_PENDING_CONNECTIONS {
                    tracing::warn!(runtime = %name, %peer, "refused SMX connection: too many pending handshakes");
                    continue;
                }
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                handshakes.spawn(authenticate(stream, peer, secret, remaining));
            }
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                let Ok((peer, result)) = done else { continue };
                match result {
                    Ok(parts) => {
                        tracing::debug!(runtime = %name, %peer, "runtime authenticated");
                        break Ok(parts);
                    }
                    Err(e) => {
                        tracing::warn!(runtime = %name, %peer, "closed SMX connection: {e}");
                        refused = format!("; last refused connection from {peer}: {e}");
                    }
                }
            }
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                break Err(StartError::ExitedEarly { runtime: name.clone(), pid, status, refused: std::mem::take(&mut refused), stderr: String::new() });
            }
            _ = tokio::time::sleep_until(deadline) => {
                break Err(StartError::NoConnection { runtime: name.clone(), pid, timeout: hello_timeout, refused: std::mem::take(&mut refused), stderr: String::new() });
            }
        }
    };
    secret.fill(0);
    // Closing the listener refuses any later connection; pending handshakes are dropped.
    drop(listener);
    handshakes.abort_all();
    match outcome {
        Ok((reader, writer)) => Ok(Started {
            child,
            pid,
            reader,
            writer,
            logs: vec![stderr, stdout],
        }),
        Err(mut e) => {
            kill_and_reap(&mut child).await;
            let t = tail(Some(stderr)).await;
            if let StartError::NoConnection { stderr, .. }
            | StartError::ExitedEarly { stderr, .. } = &mut e
            {
                *stderr = t;
            }
            Err(e)
        }
    }
}

/// A peer and the outcome of its handshake.
type Authenticated = (
    SocketAddr,
    Result<(LineReader<BoxRead>, BoxWrite), HandshakeError>,
);

async fn authenticate(
    stream: TcpStream,
    peer: SocketAddr,
    secret: [u8; COOKIE_OCTETS],
    timeout: Duration,
) -> Authenticated {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut reader = LineReader::new(Box::new(r) as BoxRead, DEFAULT_MAX_LINE);
    let result = hello(&mut reader, &mut w, Some(&secret), timeout).await;
    (peer, result.map(|_| (reader, Box::new(w) as BoxWrite)))
}

/// Forwards a runtime's diagnostic output to the log, one line at a time (bounded),
/// remembering the last line for error texts.
pub(crate) async fn log_lines(
    out: BoxRead,
    runtime: String,
    pid: u32,
    last: impl Fn(String) + Send + 'static,
) {
    let mut reader = LineReader::new(out, 4096);
    while let Ok(Some(frame)) = reader.next().await {
        if let crate::framing::Frame::Line(l) = frame {
            let text = String::from_utf8_lossy(&l);
            let text = text.trim_end();
            if !text.is_empty() {
                tracing::info!(target: "smx::runtime", runtime = %runtime, pid, "{text}");
                last(text.to_owned());
            }
        }
    }
}
