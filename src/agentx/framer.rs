//! Cutting a byte stream into whole AgentX PDUs, with a cap on what a peer can make us buffer.
//!
//! AgentX has no delimiter: a PDU is its 20-octet header plus `h.payload_length` octets
//! (RFC 2741 section 6.1), read in the byte order of the header's own flags. The framer
//! looks at nothing else, so a PDU that will not decode still comes out whole and the
//! session can answer it with `parseError`.
//!
//! Memory is bounded as in [`crate::framing::LineFramer`]: a header announcing more than
//! the cap (or a length that is not a multiple of 4) is reported once, and its payload is
//! then skipped as it arrives, never buffered. The framer never allocates; it only splits
//! the caller's buffer.

use bytes::{Buf, Bytes, BytesMut};

use super::header::{ByteOrder, HEADER_LEN};

/// Default cap on `h.payload_length`: far above any PDU smx sends or expects (a TestSet of
/// a 64 KiB smCodeText fragment is ~64 KiB), far below anything that hurts.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;

/// A header the framer refused, or a stream that ended inside a PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The payload is skipped; the stream stays in step. A peer that keeps doing this is
    /// broken: close the session with reasonParseError.
    #[error(
        "AgentX h.payload_length {payload_length} exceeds the limit of {max} octets; payload skipped"
    )]
    TooLong { payload_length: u32, max: u32 },
    /// The payload is skipped (RFC 2741 section 6.1 makes every length a multiple of 4).
    #[error(
        "AgentX h.payload_length {payload_length} is not a multiple of 4 (RFC 2741 6.1); payload skipped"
    )]
    Misaligned { payload_length: u32 },
    /// From [`Framer::finish`]: the peer closed the stream part way through a PDU.
    #[error("AgentX stream ended {buffered} octets into a PDU")]
    Truncated { buffered: usize },
}

/// The sans-IO framer: finds PDUs in a buffer that the caller fills.
#[derive(Debug)]
pub struct Framer {
    max_payload: u32,
    /// Octets of a refused payload still to be dropped as they arrive.
    skip: u64,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl Framer {
    /// A framer accepting payloads of at most `max_payload` octets.
    pub fn new(max_payload: u32) -> Self {
        Framer {
            max_payload,
            skip: 0,
        }
    }

    /// Takes the next whole PDU (header and payload) out of `buf`; `Ok(None)` if more
    /// input is needed. After an error, call again: the refused payload is skipped.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len() as u64);
            buf.advance(n as usize);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let payload_length = ByteOrder::from_flags(h[2]).u32([h[16], h[17], h[18], h[19]]);
        let refused = if !payload_length.is_multiple_of(4) {
            Some(FrameError::Misaligned { payload_length })
        } else if payload_length > self.max_payload {
            Some(FrameError::TooLong {
                payload_length,
                max: self.max_payload,
            })
        } else {
            None
        };
        if let Some(e) = refused {
            buf.advance(HEADER_LEN);
            self.skip = u64::from(payload_length);
            return Err(e);
        }
        // At most HEADER_LEN + max_payload, which the caller chose.
        let total = HEADER_LEN + payload_length as usize;
        if buf.len() < total {
            return Ok(None);
        }
        Ok(Some(buf.split_to(total).freeze()))
    }

    /// At end of input: an error if `buf` holds part of a PDU (a refused payload being
    /// skipped does not count). Leaves `buf` empty.
    pub fn finish(&mut self, buf: &mut BytesMut) -> Result<(), FrameError> {
        let buffered = buf.len();
        buf.clear();
        let skipping = std::mem::take(&mut self.skip) > 0;
        if buffered == 0 || skipping {
            Ok(())
        } else {
            Err(FrameError::Truncated { buffered })
        }
    }
}
