//! SMX commands, sent by the host to a runtime system (RFC 3179 section 5.2).
//!
//! [`Command::decode`] is written for the runtime side: its error says exactly how to answer
//! as section 6.1 prescribes (discard, `402`, or the specific `4yz` of section 6.1.2).

use super::lex::{Cursor, Malformed};
use super::octets::{Octets, Script};
use super::reply::{Negative, Reply};
use super::types::{Id, Profile, RunId};

/// One SMX command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `hello Id`: always the first command on a connection (section 5.2).
    Hello {
        id: Id,
    },
    /// `start Id RunId Script Profile Argument`.
    Start {
        id: Id,
        run: RunId,
        script: Script,
        profile: Profile,
        argument: Octets,
    },
    Suspend {
        id: Id,
        run: RunId,
    },
    Resume {
        id: Id,
        run: RunId,
    },
    Abort {
        id: Id,
        run: RunId,
    },
    Status {
        id: Id,
        run: RunId,
    },
}

/// The six command words, in the order section 6.1 lists them.
pub const COMMAND_WORDS: [&str; 6] = ["hello", "start", "suspend", "resume", "abort", "status"];

/// Why a command could not be decoded, and therefore how a runtime must answer (section 6.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command word and the Id could not both be extracted: the message is discarded
    /// (a `511` may be sent).
    #[error("message discarded, no command word and Id: {0}")]
    Unrecognized(Malformed),
    /// The command word is not one of the six: answer `402`.
    #[error("unknown command word (Id {id})")]
    UnknownCommand { id: Id },
    /// A syntax error: answer with `code` (`401`, or `431`/`421`/`432`/`433` for the checks
    /// of section 6.1.2 item 1 in that order, or `431` for a bad RunId of sections 6.1.3-6.1.6).
    #[error("{code} for Id {id}: {why}")]
    Rejected {
        id: Id,
        code: Negative,
        why: Malformed,
    },
}

impl CommandError {
    /// The reply a runtime sends for this error, `None` when the message is discarded.
    pub fn reply(&self) -> Option<Reply> {
        match *self {
            CommandError::Unrecognized(_) => None,
            CommandError::UnknownCommand { id } => Some(Reply::Negative {
                id,
                code: Negative::UnknownCommand,
            }),
            CommandError::Rejected { id, code, .. } => Some(Reply::Negative { id, code }),
        }
    }
}

#[derive(Clone, Copy)]
enum Word {
    Hello,
    Start,
    Suspend,
    Resume,
    Abort,
    Status,
}

/// ABNF literals are case-insensitive (RFC 2234 section 2.3), so `HELLO` is `hello`.
fn word(token: &[u8]) -> Option<Word> {
    const WORDS: [(&[u8], Word); 6] = [
        (b"hello", Word::Hello),
        (b"start", Word::Start),
        (b"suspend", Word::Suspend),
        (b"resume", Word::Resume),
        (b"abort", Word::Abort),
        (b"status", Word::Status),
    ];
    WORDS
        .iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(token))
        .map(|&(_, w)| w)
}

impl Command {
    /// The transaction identifier of any command.
    pub fn id(&self) -> Id {
        match *self {
            Command::Hello { id }
            | Command::Start { id, .. }
            | Command::Suspend { id, .. }
            | Command::Resume { id, .. }
            | Command::Abort { id, .. }
            | Command::Status { id, .. } => id,
        }
    }

    /// The run a command addresses (`None` for `hello`).
    pub fn run(&self) -> Option<RunId> {
        match *self {
            Command::Hello { .. } => None,
            Command::Start { run, .. }
            | Command::Suspend { run, .. }
            | Command::Resume { run, .. }
            | Command::Abort { run, .. }
            | Command::Status { run, .. } => Some(run),
        }
    }

    /// The command word as sent on the wire.
    pub fn word(&self) -> &'static str {
        match self {
            Command::Hello { .. } => "hello",
            Command::Start { .. } => "start",
            Command::Suspend { .. } => "suspend",
            Command::Resume { .. } => "resume",
            Command::Abort { .. } => "abort",
            Command::Status { .. } => "status",
        }
    }

    /// Decodes one whole message, terminator included (CRLF, or a bare LF leniently).
    pub fn decode(msg: &[u8]) -> Result<Command, CommandError> {
        let mut c = Cursor::new(msg);
        let head = c.token_as("command word", |t| (!t.is_empty()).then_some(t));
        let head = head.map_err(CommandError::Unrecognized)?;
        c.wsp().map_err(CommandError::Unrecognized)?;
        let id = c
            .token_as("Id", Id::parse)
            .map_err(CommandError::Unrecognized)?;
        let Some(w) = word(head) else {
            return Err(CommandError::UnknownCommand { id });
        };
        let reject = |code| move |why| CommandError::Rejected { id, code, why };
        let cmd = match w {
            Word::Hello => Command::Hello { id },
            Word::Start => {
                // Section 6.1.2 item 1: check RunId, Script, Profile, Argument in this order.
                let run = c
                    .field("RunId", RunId::parse)
                    .map_err(reject(Negative::IllegalRunId))?;
                let script = c
                    .quoted_field("Script")
                    .map_err(reject(Negative::IllegalScript))?;
                let profile = c
                    .field("Profile", Profile::parse)
                    .map_err(reject(Negative::IllegalProfile))?;
                let argument = c
                    .value_field("Argument")
                    .map_err(reject(Negative::IllegalArgument))?;
                let script = Script::new(script).expect("a decoded QuotedString is quotable");
                Command::Start {
                    id,
                    run,
                    script,
                    profile,
                    argument,
                }
            }
            Word::Suspend | Word::Resume | Word::Abort | Word::Status => {
                // Sections 6.1.3-6.1.6 item 1: a syntax error in the RunId is a 431.
                let run = c
                    .field("RunId", RunId::parse)
                    .map_err(reject(Negative::IllegalRunId))?;
                match w {
                    Word::Suspend => Command::Suspend { id, run },
                    Word::Resume => Command::Resume { id, run },
                    Word::Abort => Command::Abort { id, run },
                    _ => Command::Status { id, run },
                }
            }
        };
        // Anything else (trailing fields, junk, a missing CRLF) is the generic 401.
        c.end().map_err(reject(Negative::Syntax))?;
        Ok(cmd)
    }

    /// Appends the wire form: lower-case word, single spaces, CRLF.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "{} {}", self.word(), self.id());
        if let Command::Start {
            run,
            script,
            profile,
            argument,
            ..
        } = self
        {
            let _ = write!(out, " {run} ");
            script.encode(out);
            let _ = write!(out, " {profile} ");
            argument.encode(out);
        } else if let Some(run) = self.run() {
            let _ = write!(out, " {run}");
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
