//! SMX replies and asynchronous notifications, sent by a runtime system (RFC 3179 section 5.3).
//!
//! [`Reply::decode`] is written for the host side: an `Err` is a message that "can not be
//! analyzed because it does not have the required format" (section 6.2.x rule 2).

use std::fmt;
use std::io::Write;

use super::lex::{Cursor, Malformed};
use super::octets::{Authenticator, Octets, Quoted};
use super::types::{ExitCode, Id, RunId, RunState, Version};

/// The permanent negative replies (`4yz`) of section 5.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Negative {
    /// `401` syntax error in command.
    Syntax,
    /// `402` unknown command.
    UnknownCommand,
    /// `421` unknown or illegal Script.
    IllegalScript,
    /// `431` unknown or illegal RunId.
    IllegalRunId,
    /// `432` unknown or illegal Profile.
    IllegalProfile,
    /// `433` illegal Argument.
    IllegalArgument,
    /// `434` unable to change the status of a running script.
    CannotChange,
}

impl Negative {
    pub const ALL: [Negative; 7] = [
        Negative::Syntax,
        Negative::UnknownCommand,
        Negative::IllegalScript,
        Negative::IllegalRunId,
        Negative::IllegalProfile,
        Negative::IllegalArgument,
        Negative::CannotChange,
    ];

    pub fn code(self) -> u16 {
        match self {
            Negative::Syntax => 401,
            Negative::UnknownCommand => 402,
            Negative::IllegalScript => 421,
            Negative::IllegalRunId => 431,
            Negative::IllegalProfile => 432,
            Negative::IllegalArgument => 433,
            Negative::CannotChange => 434,
        }
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Negative::ALL.into_iter().find(|n| n.code() == code)
    }

    /// The RFC's comment for the code, for logs and smRunError texts.
    pub fn meaning(self) -> &'static str {
        match self {
            Negative::Syntax => "syntax error in command",
            Negative::UnknownCommand => "unknown command",
            Negative::IllegalScript => "unknown or illegal Script",
            Negative::IllegalRunId => "unknown or illegal RunId",
            Negative::IllegalProfile => "unknown or illegal Profile",
            Negative::IllegalArgument => "illegal Argument",
            Negative::CannotChange => "unable to change the status of a running script",
        }
    }
}

impl fmt::Display for Negative {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.meaning())
    }
}

/// One reply line. Replies to a command (`2yz`, `4yz`) carry its Id; notifications (`5yz`)
/// carry the Id `0`, which is implied here and written back on encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `211 Id Version [Authenticator]`: identification of the runtime system.
    Hello {
        id: Id,
        version: Version,
        auth: Option<Authenticator>,
    },
    /// `231 Id RunState`: status of a running script.
    Status { id: Id, state: RunState },
    /// `232 Id`: abort of a running script.
    Aborted { id: Id },
    /// `401`..`434`: a permanent negative reply.
    Negative { id: Id, code: Negative },
    /// `511 0 QuotedString`: an arbitrary message, to be logged.
    Message { text: Quoted },
    /// `531 0 RunId RunState`: asynchronous status change.
    StateChange { run: RunId, state: RunState },
    /// `532 0 RunId RunState Result`: intermediate result.
    Result {
        run: RunId,
        state: RunState,
        result: Octets,
    },
    /// `533 0 RunId RunState Result`: intermediate result that triggers smScriptResult.
    ResultEvent {
        run: RunId,
        state: RunState,
        result: Octets,
    },
    /// `534 0 RunId Result`: normal termination (deprecated).
    Completed { run: RunId, result: Octets },
    /// `535 0 RunId ExitCode ErrorMsg`: abnormal termination (deprecated).
    Failed {
        run: RunId,
        exit: ExitCode,
        error: Octets,
    },
    /// `536 0 RunId RunState ErrorMsg`: script error.
    Error {
        run: RunId,
        state: RunState,
        error: Octets,
    },
    /// `537 0 RunId RunState ErrorMsg`: script error that triggers smScriptException.
    ErrorEvent {
        run: RunId,
        state: RunState,
        error: Octets,
    },
    /// `538 0 RunId ExitCode`: script termination.
    Terminated { run: RunId, exit: ExitCode },
}

impl Reply {
    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        match self {
            Reply::Hello { .. } => 211,
            Reply::Status { .. } => 231,
            Reply::Aborted { .. } => 232,
            Reply::Negative { code, .. } => code.code(),
            Reply::Message { .. } => 511,
            Reply::StateChange { .. } => 531,
            Reply::Result { .. } => 532,
            Reply::ResultEvent { .. } => 533,
            Reply::Completed { .. } => 534,
            Reply::Failed { .. } => 535,
            Reply::Error { .. } => 536,
            Reply::ErrorEvent { .. } => 537,
            Reply::Terminated { .. } => 538,
        }
    }

    /// The Id of a reply to a command; `None` for an asynchronous notification.
    pub fn id(&self) -> Option<Id> {
        match *self {
            Reply::Hello { id, .. }
            | Reply::Status { id, .. }
            | Reply::Aborted { id }
            | Reply::Negative { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The run an asynchronous notification is about (`None` for replies and `511`).
    pub fn run(&self) -> Option<RunId> {
        match *self {
            Reply::StateChange { run, .. }
            | Reply::Result { run, .. }
            | Reply::ResultEvent { run, .. }
            | Reply::Completed { run, .. }
            | Reply::Failed { run, .. }
            | Reply::Error { run, .. }
            | Reply::ErrorEvent { run, .. }
            | Reply::Terminated { run, .. } => Some(run),
            _ => None,
        }
    }

    /// Decodes one whole message, terminator included (CRLF, or a bare LF leniently).
    pub fn decode(msg: &[u8]) -> Result<Reply, Malformed> {
        let mut c = Cursor::new(msg);
        let code = c.token_as("three-digit reply code", |t| match t {
            [a, b, d] if t.iter().all(u8::is_ascii_digit) => {
                Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(d - b'0'))
            }
            _ => None,
        })?;
        if code >= 500 {
            let zero = |t: &[u8]| (t == b"0").then_some(());
            c.field("Id 0 of a notification", zero)?;
        }
        let reply = match code {
            211 => {
                let id = c.field("Id", Id::parse)?;
                let version = c.field("Version", Version::parse)?;
                let auth = if c.at_end() {
                    None
                } else {
                    let bytes = c.field("Authenticator", hex_token)?;
                    Some(Authenticator::new(bytes).expect("a HexString is not empty"))
                };
                Reply::Hello { id, version, auth }
            }
            231 => Reply::Status {
                id: c.field("Id", Id::parse)?,
                state: c.field("RunState", RunState::parse)?,
            },
            232 => Reply::Aborted {
                id: c.field("Id", Id::parse)?,
            },
            511 => Reply::Message {
                text: Quoted::new(c.quoted_field("QuotedString")?)
                    .expect("a decoded QuotedString is quotable"),
            },
            531 => Reply::StateChange {
                run: c.field("RunId", RunId::parse)?,
                state: c.field("RunState", RunState::parse)?,
            },
            532 | 533 | 536 | 537 => {
                let run = c.field("RunId", RunId::parse)?;
                let state = c.field("RunState", RunState::parse)?;
                let value = c.value_field(if code < 536 { "Result" } else { "ErrorMsg" })?;
                match code {
                    532 => Reply::Result {
                        run,
                        state,
                        result: value,
                    },
                    533 => Reply::ResultEvent {
                        run,
                        state,
                        result: value,
                    },
                    536 => Reply::Error {
                        run,
                        state,
                        error: value,
                    },
                    _ => Reply::ErrorEvent {
                        run,
                        state,
                        error: value,
                    },
                }
            }
            534 => Reply::Completed {
                run: c.field("RunId", RunId::parse)?,
                result: c.value_field("Result")?,
            },
            535 => Reply::Failed {
                run: c.field("RunId", RunId::parse)?,
                exit: c.field("ExitCode", ExitCode::parse)?,
                error: c.value_field("ErrorMsg")?,
            },
            538 => Reply::Terminated {
                run: c.field("RunId", RunId::parse)?,
                exit: c.field("ExitCode", ExitCode::parse)?,
            },
            _ => match Negative::from_code(code) {
                Some(code) => Reply::Negative {
                    id: c.field("Id", Id::parse)?,
                    code,
                },
                None => {
                    return Err(Malformed {
                        at: 0,
                        expected: "a reply code defined by SMX/1.1",
                    });
                }
            },
        };
        c.end()?;
        Ok(reply)
    }

    /// Appends the wire form: single spaces, CRLF, the preferred form for octet strings.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let code = self.code();
        let _ = match self.id() {
            Some(id) => write!(out, "{code} {id}"),
            None => write!(out, "{code} 0"),
        };
        match self {
            Reply::Hello { version, auth, .. } => {
                let _ = write!(out, " {version}");
                if let Some(a) = auth {
                    out.push(b' ');
                    a.encode(out);
                }
            }
            Reply::Status { state, .. } => {
                let _ = write!(out, " {}", state.number());
            }
            Reply::Aborted { .. } | Reply::Negative { .. } => {}
            Reply::Message { text } => {
                out.push(b' ');
                text.encode(out);
            }
            Reply::StateChange { run, state } => {
                let _ = write!(out, " {run} {}", state.number());
            }
            Reply::Result {
                run,
                state,
                result: v,
            }
            | Reply::ResultEvent {
                run,
                state,
                result: v,
            }
            | Reply::Error {
                run,
                state,
                error: v,
            }
            | Reply::ErrorEvent {
                run,
                state,
                error: v,
            } => {
                let _ = write!(out, " {run} {} ", state.number());
                v.encode(out);
            }
            Reply::Completed { run, result } => {
                let _ = write!(out, " {run} ");
                result.encode(out);
            }
            Reply::Failed { run, exit, error } => {
                let _ = write!(out, " {run} {} ", exit.number());
                error.encode(out);
            }
            Reply::Terminated { run, exit } => {
                let _ = write!(out, " {run} {}", exit.number());
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        self.encode(&mut v);
        v
    }
}

fn hex_token(t: &[u8]) -> Option<Vec<u8>> {
    if t.is_empty() || !t.len().is_multiple_of(2) {
        return None;
    }
    hex::decode(t).ok()
}
