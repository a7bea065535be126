//! What can go wrong turning bytes into PDUs and back, as small typed values.
//!
//! Decoding distinguishes the two cases RFC 2741 section 7.1 treats differently: a header
//! that could not be parsed (no Response can be addressed, the PDU is dropped) and a payload
//! that could not be parsed under a good header (the receiver answers `parseError`, which
//! [`DecodeError::Payload`] carries enough of the header to do).

use super::header::Header;

/// Where and why a PDU failed to decode: `at` is an offset from the PDU's first octet (the
/// header's `h.version`), `expected` names the RFC 2741 construct that was not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} at offset {at}")]
pub struct Malformed {
    pub at: usize,
    pub expected: &'static str,
}

/// A PDU that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The 20-octet header is short or has an unknown `h.version` or `h.type`, or a
    /// `h.payload_length` that is not a multiple of 4: nothing in it can be trusted, so no
    /// Response can be sent (RFC 2741 section 7.1, step 6). Close the session if it repeats.
    #[error("unusable AgentX header, dropped without a response (RFC 2741 7.1): {0}")]
    Header(Malformed),
    /// The header is good but the payload is not: a request is answered with a Response
    /// whose `res.error` is `parseError` (RFC 2741 section 7.1, step 2).
    #[error("malformed AgentX {:?} payload (answer parseError, RFC 2741 7.1): {why}", .header.pdu_type)]
    Payload { header: Header, why: Malformed },
}

impl DecodeError {
    /// The offset and construct of the failure, whichever part it was in.
    pub fn malformed(&self) -> Malformed {
        match self {
            DecodeError::Header(m) => *m,
            DecodeError::Payload { why, .. } => *why,
        }
    }
}

/// A PDU that cannot be put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// `h.payload_length` and every Octet String length are 32-bit (RFC 2741 sections 5.3
    /// and 6.1); split the data over several PDUs.
    #[error("AgentX payload of {octets} octets does not fit the 32-bit h.payload_length")]
    PayloadTooLong { octets: usize },
}
