//! AgentX (RFC 2741) as a sans-IO codec: the PDUs smx exchanges with an SNMP master agent
//! (net-snmp's snmpd) to serve the Script MIB over SNMP.
//!
//! Why our own: the only AgentX crate holds octet strings as UTF-8 `String` (so no
//! DateAndTime or binary values), cannot send SNMP error statuses such as wrongValue, and
//! panics once the master has been up ~49.7 days. This module is pure functions over
//! bytes, like [`crate::proto`], so the session, the tests, the fuzzers and the benchmarks
//! share one implementation.
//!
//! - [`Framer`] cuts a byte stream into whole PDUs and caps what a peer can make it buffer;
//! - [`Pdu::decode`] turns one PDU into typed values, or says which construct at which
//!   offset is wrong ([`DecodeError`]); it never panics and never allocates more than its
//!   input's size;
//! - [`Pdu::to_bytes`] encodes in the byte order the caller chose, with `prefix`-compressed
//!   OIDs (section 5.1) and zero-padded Octet Strings (section 5.3).
//!
//! Input is read leniently where RFC 2741 says "reserved" or "padding" (not checked) and
//! strictly everywhere else: unknown `h.version`, `h.type` or `v.type`, lengths past the
//! payload, OIDs over 128 sub-identifiers, an `include` other than 0 or 1, an IpAddress not
//! of 4 octets and octets after the last field are errors.

mod admin;
mod error;
mod framer;
mod header;
mod oid;
mod pdu;
mod request;
mod response;
mod value;
mod wire;

pub use admin::{
    AddAgentCaps, Close, CloseReason, DEFAULT_PRIORITY, IndexAllocation, Notify, Open, Ping,
    Register, RemoveAgentCaps, SubidRange, Unregister,
};
pub use error::{DecodeError, EncodeError, Malformed};
pub use framer::{DEFAULT_MAX_PAYLOAD, FrameError, Framer};
pub use header::{ByteOrder, HEADER_LEN, Header, PduType, VERSION, flags};
pub use oid::{MAX_SUBIDS, Oid, OidError, SearchRange};
pub use pdu::{Payload, Pdu};
pub use request::{Get, GetBulk, GetNext, TestSet};
pub use response::{ResError, Response};
pub use value::{Value, VarBind};
