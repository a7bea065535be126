//! The fixed 20-octet AgentX PDU header (RFC 2741 section 6.1): version, type, flags, the
//! three ids and the payload length, in the byte order its own flags announce.

use super::error::Malformed;

/// Length of every AgentX header.
pub const HEADER_LEN: usize = 20;

/// The only `h.version` RFC 2741 defines.
pub const VERSION: u8 = 1;

/// The `h.flags` bits (RFC 2741 section 6.1). [`Pdu`](super::Pdu) sets and reads them from
/// its typed fields; they are public for code that looks at a raw [`Header`].
pub mod flags {
    /// Register: `r.subtree` is a fully qualified instance name.
    pub const INSTANCE_REGISTRATION: u8 = 0x01;
    /// IndexAllocate: allocate a value never used before.
    pub const NEW_INDEX: u8 = 0x02;
    /// IndexAllocate: allocate any value not currently allocated.
    pub const ANY_INDEX: u8 = 0x04;
    /// A context Octet String follows the header (section 6.1.1).
    pub const NON_DEFAULT_CONTEXT: u8 = 0x08;
    /// Multi-octet integers are most significant octet first.
    pub const NETWORK_BYTE_ORDER: u8 = 0x10;
}

/// The byte order of every multi-octet integer in one PDU, header included.
///
/// A receiver decodes each PDU in whatever order its sender chose (section 7.1.1 step 4); a
/// sender picks one per PDU (a subagent normally keeps one for its whole session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// `NETWORK_BYTE_ORDER` set: most significant octet first.
    BigEndian,
    /// `NETWORK_BYTE_ORDER` clear: least significant octet first.
    LittleEndian,
}

impl ByteOrder {
    /// The order a header's `h.flags` announces.
    pub fn from_flags(flags: u8) -> ByteOrder {
        if flags & flags::NETWORK_BYTE_ORDER != 0 {
            ByteOrder::BigEndian
        } else {
            ByteOrder::LittleEndian
        }
    }

    pub(crate) fn flag(self) -> u8 {
        match self {
            ByteOrder::BigEndian => flags::NETWORK_BYTE_ORDER,
            ByteOrder::LittleEndian => 0,
        }
    }

    pub(crate) fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            ByteOrder::BigEndian => u32::from_be_bytes(b),
            ByteOrder::LittleEndian => u32::from_le_bytes(b),
        }
    }
}

/// `h.type`: the 18 PDU types of RFC 2741 section 6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PduType {
    Open = 1,
    Close = 2,
    Register = 3,
    Unregister = 4,
    Get = 5,
    GetNext = 6,
    GetBulk = 7,
    TestSet = 8,
    CommitSet = 9,
    UndoSet = 10,
    CleanupSet = 11,
    Notify = 12,
    Ping = 13,
    IndexAllocate = 14,
    IndexDeallocate = 15,
    AddAgentCaps = 16,
    RemoveAgentCaps = 17,
    Response = 18,
}

impl PduType {
    /// Every type, in `h.type` order.
    pub const ALL: [PduType; 18] = [
        PduType::Open,
        PduType::Close,
        PduType::Register,
        PduType::Unregister,
        PduType::Get,
        PduType::GetNext,
        PduType::GetBulk,
        PduType::TestSet,
        PduType::CommitSet,
        PduType::UndoSet,
        PduType::CleanupSet,
        PduType::Notify,
        PduType::Ping,
        PduType::IndexAllocate,
        PduType::IndexDeallocate,
        PduType::AddAgentCaps,
        PduType::RemoveAgentCaps,
        PduType::Response,
    ];

    pub fn from_code(code: u8) -> Option<PduType> {
        let i = usize::from(code).checked_sub(1)?;
        PduType::ALL.get(i).copied()
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    /// Whether the PDU may carry a context after the header (section 6.1.1).
    pub fn has_context(self) -> bool {
        !matches!(
            self,
            PduType::Open
                | PduType::Close
                | PduType::CommitSet
                | PduType::UndoSet
                | PduType::CleanupSet
                | PduType::Response
        )
    }
}

/// A decoded header. Bits of `flags` a PDU type does not use are kept here but ignored by
/// [`Pdu::decode`](super::Pdu::decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub pdu_type: PduType,
    pub flags: u8,
    pub session_id: u32,
    pub transaction_id: u32,
    pub packet_id: u32,
    pub payload_length: u32,
}

impl Header {
    /// Decodes the first 20 octets of `bytes` (which may hold more). The reserved octet is
    /// ignored; `h.payload_length` must be a multiple of 4 (section 6.1).
    pub fn decode(bytes: &[u8]) -> Result<Header, Malformed> {
        let Some(h) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(Malformed {
                at: bytes.len(),
                expected: "a 20-octet AgentX header",
            });
        };
        if h[0] != VERSION {
            return Err(Malformed {
                at: 0,
                expected: "h.version 1",
            });
        }
        let Some(pdu_type) = PduType::from_code(h[1]) else {
            return Err(Malformed {
                at: 1,
                expected: "h.type 1-18",
            });
        };
        let order = ByteOrder::from_flags(h[2]);
        let word = |i: usize| order.u32([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let payload_length = word(16);
        if !payload_length.is_multiple_of(4) {
            return Err(Malformed {
                at: 16,
                expected: "h.payload_length a multiple of 4",
            });
        }
        Ok(Header {
            pdu_type,
            flags: h[2],
            session_id: word(4),
            transaction_id: word(8),
            packet_id: word(12),
            payload_length,
        })
    }

    pub fn byte_order(&self) -> ByteOrder {
        ByteOrder::from_flags(self.flags)
    }
}
