//! `hello` (RFC 3179 section 6.2.2): the exchange that opens every connection, with the
//! Authenticator check of TCP connections (section 8.2).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::framing::{Frame, LineReader};
use crate::proto::{Command, Id, Malformed, Reply, Version};

/// Why the `hello` exchange failed (RFC 3179 section 6.2.2).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no 211 reply to hello within {0:?} (RFC 3179 6.2.2 rule 1)")]
    Timeout(Duration),
    #[error("the runtime closed the connection before replying to hello")]
    Closed,
    #[error("reply to hello cannot be analyzed ({why}): {line:?} (RFC 3179 6.2.2 rule 2)")]
    Malformed { why: Malformed, line: String },
    #[error("a reply line longer than the limit arrived during hello")]
    Overlong,
    #[error("211 carries Id {got}, hello was sent with Id {sent} (RFC 3179 6.2.2 rule 3)")]
    WrongId { sent: Id, got: Id },
    #[error("the runtime speaks {0}, this host SMX/1.1 (RFC 3179 6.2.2 rule 3)")]
    Version(Version),
    #[error("211 lacks the Authenticator this host requires (RFC 3179 6.2.2 rule 3, 8.2)")]
    MissingAuthenticator,
    #[error("211 Authenticator does not match (RFC 3179 6.2.2 rule 3, 8.2)")]
    WrongAuthenticator,
    #[error("I/O error during hello: {0}")]
    Io(#[from] io::Error),
}

/// The Id of the `hello` that opens every connection.
pub(crate) const HELLO_ID: Id = Id(1);

/// Sends `hello` and waits for a valid `211` (RFC 3179 section 6.2.2). With `secret`, the
/// reply must carry it as Authenticator; it is compared in constant time.
pub(crate) async fn hello<R, W>(
    reader: &mut LineReader<R>,
    writer: &mut W,
    secret: Option<&[u8]>,
    timeout: Duration,
) -> Result<Version, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + ?Sized,
{
    let exchange = async {
        writer
            .write_all(&Command::Hello { id: HELLO_ID }.to_bytes())
            .await?;
        writer.flush().await?;
        loop {
            let line = match reader.next().await? {
                None => return Err(HandshakeError::Closed),
                Some(Frame::Overlong) => return Err(HandshakeError::Overlong),
                Some(Frame::Line(l)) => l,
            };
            let reply = Reply::decode(&line).map_err(|why| HandshakeError::Malformed {
                why,
                line: String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned(),
            })?;
            // Rule 4: any other well-formed message is discarded.
            let Reply::Hello { id, version, auth } = reply else {
                tracing::debug!(
                    code = reply.code(),
                    "discarding message received before 211"
                );
                continue;
            };
            if id != HELLO_ID {
                return Err(HandshakeError::WrongId {
                    sent: HELLO_ID,
                    got: id,
                });
            }
            if version != Version::V1_1 {
                return Err(HandshakeError::Version(version));
            }
            if let Some(secret) = secret {
                use subtle::ConstantTimeEq;
                let Some(auth) = auth else {
                    return Err(HandshakeError::MissingAuthenticator);
                };
                if !bool::from(auth.as_bytes().ct_eq(secret)) {
                    return Err(HandshakeError::WrongAuthenticator);
                }
            }
            return Ok(version);
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout(timeout)),
    }
}
