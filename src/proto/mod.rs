//! The SMX/1.1 wire protocol (RFC 3179 sections 5 and 6.1): types, decoding and encoding.
//!
//! Everything here is a pure function over bytes, with no IO, so the same code serves the
//! host, the built-in runtimes, the conformance suite, the fuzzers and the benchmarks.
//!
//! Input conventions, applied identically by [`Command::decode`] and [`Reply::decode`]:
//! - a message is one line including its terminator. CRLF is the terminator of the ABNF;
//!   a bare LF is accepted as well (runtimes written with `print`/`puts` emit it), while a
//!   line without any terminator is a syntax error. Output is always CRLF.
//! - literal words (`hello`, `SMX`) match case-insensitively, as ABNF quoted strings do
//!   (RFC 2234 section 2.3); output is lower-case words and `SMX/1.1`.
//! - `WSP` is exactly one space or tab; two in a row are a syntax error.
//! - hex digits are accepted in either case and written in upper case.

mod command;
mod lex;
mod octets;
mod reply;
mod types;

pub use command::{COMMAND_WORDS, Command, CommandError};
pub use lex::Malformed;
pub use octets::{Authenticator, NotQuotable, Octets, Quoted, Script};
pub use reply::{Negative, Reply};
pub use types::{ExitCode, Id, ParseTokenError, Profile, RunId, RunState, Version};

/// The largest smRunResult the Script MIB can hold (an SMI OCTET STRING).
pub const MAX_RESULT_OCTETS: usize = 65535;

/// smRunError is an SnmpAdminString: at most 255 octets of UTF-8.
pub const MAX_ERROR_OCTETS: usize = 255;
