//! smScriptSource (RFC 3165): pulling a script from a URL when it is enabled. `file:` URLs
//! are read under the owner's OS identity (RFC 3165 section 10: "a mapping of the owner
//! index value to a local operating system security user identity should be used ... when
//! resolving URLs"), `http:` and `https:` with `ureq` (bounded in size and time). Any
//! other scheme is `unknownProtocol`.

use std::io::Read;
use std::time::Duration;

use crate::config::OsProfileSpec;
use crate::security::Prepared;

use super::types::ScriptOper;

/// Bounds of one retrieval.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest script accepted.
    pub max_octets: u64,
    /// The whole retrieval, connection to last octet.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_octets: crate::storage::MAX_SCRIPT_OCTETS,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why a script could not be retrieved; each maps to an smScriptOperStatus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("unsupported URL scheme in {0:?} (file:, http: and https: are)")]
    UnknownProtocol(String),
    #[error("no script at {0}")]
    NoSuchScript(String),
    #[error("access to {0} denied")]
    AccessDenied(String),
    #[error("{0}")]
    ProtocolFailure(String),
    #[error("the script is larger than {0} octets")]
    TooLarge(u64),
    #[error("{0}")]
    Other(String),
}

impl FetchError {
    pub fn oper_status(&self) -> ScriptOper {
        match self {
            FetchError::UnknownProtocol(_) => ScriptOper::UnknownProtocol,
            FetchError::NoSuchScript(_) => ScriptOper::NoSuchScript,
            FetchError::AccessDenied(_) => ScriptOper::AccessDenied,
            FetchError::ProtocolFailure(_) => ScriptOper::ProtocolFailure,
            FetchError::TooLarge(_) => ScriptOper::NoResourcesLeft,
            FetchError::Other(_) => ScriptOper::GenericError,
        }
    }
}

/// Retrieves the script at `url`. Blocking: call it from a blocking thread.
pub fn fetch(
    url: &str,
    os: Option<&OsProfileSpec>,
    limits: &Limits,
) -> Result<Vec<u8>, FetchError> {
    let scheme = url
        .split_once(':')
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    match scheme.as_str() {
        "file" => fetch_file(url, os, limits),
        "http" | "https" => fetch_http(url, limits),
        _ => Err(FetchError::UnknownProtocol(url.to_owned())),
    }
}

/// The path of a `file:` URL (RFC 8089: `file:/p`, `file:///p`, `file://localhost/p`).
fn file_path(url: &str) -> Result<String, FetchError> {
    let rest = &url["file:".len()..];
    let path = if let Some(r) = rest.strip_prefix("//") {
        match r.find('/') {
            Some(0) => r.to_owned(),
            Some(i) if r[..i].eq_ignore_ascii_case("localhost") => r[i..].to_owned(),
            _ => {
                return Err(FetchError::UnknownProtocol(format!(
                    "{url} (only local file: URLs)"
                )));
            }
        }
    } else {
        rest.to_owned()
    };
    if !path.starts_with('/') {
        return Err(FetchError::NoSuchScript(format!(
            "{url} (not an absolute path)"
        )));
    }
    let decoded = percent_decode(&path).ok_or_else(|| FetchError::NoSuchScript(url.to_owned()))?;
    if decoded.contains('\0') {
        return Err(FetchError::NoSuchScript(url.to_owned()));
    }
    Ok(decoded)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Reads the file as the owner's OS identity: a `cat` started in the owner's OS profile
/// (user, groups, chroot, limits), so the host never reads a file the owner could not.
fn fetch_file(
    url: &str,
    os: Option<&OsProfileSpec>,
    limits: &Limits,
) -> Result<Vec<u8>, FetchError> {
    let path = file_path(url)?;
    let prepared = match os {
        Some(spec) => Prepared::new(spec).map_err(|e| FetchError::Other(e.to_string()))?,
        None => Prepared::invoker(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FetchError::Other(e.to_string()))?;
    rt.block_on(async {
        let cat = crate::security::resolve_program(
            "cat",
            crate::security::DEFAULT_PATH,
            prepared.chroot.as_deref(),
        )
        .ok_or_else(|| FetchError::Other("no cat(1) to read file: URLs with".into()))?;
        let mut cmd = tokio::process::Command::new(cat);
        cmd.arg("--").arg(&path);
        prepared.apply(&mut cmd, None);
        cmd.env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = crate::contain::spawn_tracked(|| cmd.spawn(), tokio::process::Child::id)
            .map_err(|e| FetchError::Other(format!("cannot read {path}: {e}")))?;
        // Read at most one octet past the limit (a /dev/zero must not fill the daemon's
        // memory), and stderr within a small bound; `cat` is killed on any way out.
        use tokio::io::AsyncReadExt;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let errs = tokio::spawn(async move {
            let mut err = Vec::new();
            let _ = stderr.take(64 * 1024).read_to_end(&mut err).await;
            err
        });
        let mut body = Vec::new();
        let mut limited = stdout.take(limits.max_octets + 1);
        let read = limited.read_to_end(&mut body);
        tokio::time::timeout(limits.timeout, read)
            .await
            .map_err(|_| {
                FetchError::ProtocolFailure(format!(
                    "reading {path} took longer than {:?}",
                    limits.timeout
                ))
            })?
            .map_err(|e| FetchError::Other(e.to_string()))?;
        if body.len() as u64 > limits.max_octets {
            let _ = child.kill().await;
            return Err(FetchError::TooLarge(limits.max_octets));
        }
        let status = tokio::time::timeout(limits.timeout, child.wait())
            .await
            .map_err(|_| FetchError::ProtocolFailure(format!("reading {path} did not end")))?
            .map_err(|e| FetchError::Other(e.to_string()))?;
        struct Out {
            status: std::process::ExitStatus,
            stdout: Vec<u8>,
            stderr: Vec<u8>,
        }
        let err = tokio::time::timeout(Duration::from_secs(1), errs)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let out = Out {
            status,
            stdout: body,
            stderr: err,
        };
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(out.stdout)
        } else if err.contains("Permission denied") {
            Err(FetchError::AccessDenied(path))
        } else if err.contains("No such file") || err.contains("Not a directory") {
            Err(FetchError::NoSuchScript(path))
        } else {
            Err(FetchError::Other(format!("reading {path}: {}", err.trim())))
        }
    })
}

fn fetch_http(url: &str, limits: &Limits) -> Result<Vec<u8>, FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limits.timeout))
        .http_status_as_error(false)
        .max_redirects(5)
        .build()
        .into();
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Timeout(_) => {
            FetchError::ProtocolFailure(format!("{url}: no answer within {:?}", limits.timeout))
        }
        e => FetchError::ProtocolFailure(format!("{url}: {e}")),
    })?;
    let status = resp.status().as_u16();
    match status {
        200..=299 => {}
        404 | 410 => return Err(FetchError::NoSuchScript(url.to_owned())),
        401 | 403 => return Err(FetchError::AccessDenied(url.to_owned())),
        s => {
            return Err(FetchError::ProtocolFailure(format!(
                "{url}: HTTP status {s}"
            )));
        }
    }
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limits.max_octets + 1)
        .read_to_end(&mut body)
        .map_err(|e| FetchError::ProtocolFailure(format!("{url}: {e}")))?;
    if body.len() as u64 > limits.max_octets {
        return Err(FetchError::TooLarge(limits.max_octets));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_and_schemes() {
        assert_eq!(file_path("file:///tmp/a%20b.sh").unwrap(), "/tmp/a b.sh");
        assert_eq!(file_path("file:/tmp/x").unwrap(), "/tmp/x");
        assert_eq!(file_path("file://localhost/tmp/x").unwrap(), "/tmp/x");
        assert!(matches!(
            file_path("file://elsewhere/tmp/x"),
            Err(FetchError::UnknownProtocol(_))
        ));
        let e = fetch("ftp://h/x", None, &Limits::default()).unwrap_err();
        assert_eq!(e.oper_status(), ScriptOper::UnknownProtocol);
        assert_eq!(
            fetch("gopher:x", None, &Limits::default())
                .unwrap_err()
                .oper_status(),
            ScriptOper::UnknownProtocol
        );
    }
}

#[cfg(test)]
mod http_tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A one-shot HTTP server on 127.0.0.1 answering `response` (None: never answers).
    fn serve(response: Option<Vec<u8>>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/script.sh", l.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut buf);
                match response {
                    Some(r) => {
                        let _ = s.write_all(&r);
                    }
                    None => std::thread::sleep(Duration::from_secs(5)),
                }
            }
        });
        url
    }

    fn reply(status: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn http_sources_map_to_oper_status() {
        let limits = Limits {
            max_octets: 64,
            timeout: Duration::from_secs(1),
        };
        let ok = serve(Some(reply("200 OK", b"#!/bin/sh\necho hi\n")));
        assert_eq!(fetch(&ok, None, &limits).unwrap(), b"#!/bin/sh\necho hi\n");
        let missing = serve(Some(reply("404 Not Found", b"")));
        assert_eq!(
            fetch(&missing, None, &limits).unwrap_err().oper_status(),
            ScriptOper::NoSuchScript
        );
        let denied = serve(Some(reply("403 Forbidden", b"")));
        assert_eq!(
            fetch(&denied, None, &limits).unwrap_err().oper_status(),
            ScriptOper::AccessDenied
        );
        let big = serve(Some(reply("200 OK", &[b'x'; 100])));
        assert_eq!(
            fetch(&big, None, &limits).unwrap_err().oper_status(),
            ScriptOper::NoResourcesLeft
        );
        let silent = serve(None);
        let t0 = std::time::Instant::now();
        assert_eq!(
            fetch(&silent, None, &limits).unwrap_err().oper_status(),
            ScriptOper::ProtocolFailure
        );
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "the timeout bounds it"
        );
        let refused = "http://127.0.0.1:1/x";
        assert_eq!(
            fetch(refused, None, &limits).unwrap_err().oper_status(),
            ScriptOper::ProtocolFailure
        );
    }

    #[test]
    fn file_sources_as_the_invoking_user() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sh");
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        let limits = Limits::default();
        let url = format!("file://{}", p.display());
        assert_eq!(fetch(&url, None, &limits).unwrap(), b"#!/bin/sh\n");
        let gone = format!("file://{}/nope", d.path().display());
        assert_eq!(
            fetch(&gone, None, &limits).unwrap_err().oper_status(),
            ScriptOper::NoSuchScript
        );
        let small = Limits {
            max_octets: 3,
            ..Limits::default()
        };
        assert_eq!(
            fetch(&url, None, &small).unwrap_err().oper_status(),
            ScriptOper::NoResourcesLeft
        );
    }
}
