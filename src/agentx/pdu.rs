//! A whole AgentX PDU: the ids and byte order of its header and one typed payload, with
//! the dispatch between `h.type` and the payload types (RFC 2741 section 6.2).

use super::admin::{
    AddAgentCaps, Close, IndexAllocation, Notify, Open, Ping, Register, RemoveAgentCaps, Unregister,
};
use super::error::{DecodeError, EncodeError, Malformed};
use super::header::{ByteOrder, HEADER_LEN, Header, PduType, VERSION, flags};
use super::oid::{Oid, SearchRange};
use super::request::{Get, GetBulk, GetNext, TestSet};
use super::response::Response;
use super::value::VarBind;
use super::wire::{Reader, Step, Writer};

/// One AgentX PDU.
///
/// The `h.flags` bits are not stored as such: NETWORK_BYTE_ORDER is `byte_order`,
/// NON_DEFAULT_CONTEXT is a payload's `context` being `Some`, INSTANCE_REGISTRATION,
/// NEW_INDEX and ANY_INDEX are fields of the payloads they apply to. Bits a PDU type does
/// not use are ignored on input and never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub session_id: u32,
    pub transaction_id: u32,
    pub packet_id: u32,
    /// The order the PDU was received in, or is to be sent in.
    pub byte_order: ByteOrder,
    pub payload: Payload,
}

/// The PDU-specific part, one variant per `h.type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Open(Open),
    Close(Close),
    Register(Register),
    Unregister(Unregister),
    Get(Get),
    GetNext(GetNext),
    GetBulk(GetBulk),
    TestSet(TestSet),
    CommitSet,
    UndoSet,
    CleanupSet,
    Notify(Notify),
    Ping(Ping),
    IndexAllocate(IndexAllocation),
    IndexDeallocate(IndexAllocation),
    AddAgentCaps(AddAgentCaps),
    RemoveAgentCaps(RemoveAgentCaps),
    Response(Response),
}

impl Pdu {
    /// Decodes exactly one PDU, header included, as [`Framer`](super::Framer) cuts them.
    ///
    /// Total: every input gives a PDU or an error naming the construct and offset that
    /// failed. Reserved octets, padding and unused flag bits are not checked; a length
    /// that points past the payload is an error before anything is allocated for it.
    pub fn decode(bytes: &[u8]) -> Result<Pdu, DecodeError> {
        let header = Header::decode(bytes).map_err(DecodeError::Header)?;
        let fail = |why| DecodeError::Payload { header, why };
        let end = usize::try_from(header.payload_length)
            .ok()
            .and_then(|n| n.checked_add(HEADER_LEN))
            .filter(|&end| end <= bytes.len())
            .ok_or(fail(Malformed {
                at: bytes.len(),
                expected: "h.payload_length octets of payload",
            }))?;
        if end < bytes.len() {
            return Err(fail(Malformed {
                at: end,
                expected: "the end of the PDU after h.payload_length octets",
            }));
        }
        let mut r = Reader::new(bytes, HEADER_LEN, header.byte_order());
        let payload = Payload::decode(&mut r, &header).map_err(fail)?;
        r.finish().map_err(fail)?;
        Ok(Pdu {
            session_id: header.session_id,
            transaction_id: header.transaction_id,
            packet_id: header.packet_id,
            byte_order: header.byte_order(),
            payload,
        })
    }

    /// Encodes the PDU in `self.byte_order`, computing `h.payload_length`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::new(self.byte_order);
        let flags = self.byte_order.flag() | self.payload.flags();
        w.bytes(&[VERSION, self.payload.pdu_type().code(), flags, 0]);
        w.u32(self.session_id);
        w.u32(self.transaction_id);
        w.u32(self.packet_id);
        w.u32(0);
        if let Some(context) = self.payload.context() {
            w.octet_string(context)?;
        }
        self.payload.encode(&mut w)?;
        let octets = w.len() - HEADER_LEN;
        let length = u32::try_from(octets).map_err(|_| EncodeError::PayloadTooLong { octets })?;
        w.patch_u32(16, length);
        Ok(w.into_bytes())
    }

    /// The Response to this PDU: same session, transaction and packet ids and byte order
    /// (section 6.2.16).
    pub fn respond(&self, response: Response) -> Pdu {
        Pdu {
            session_id: self.session_id,
            transaction_id: self.transaction_id,
            packet_id: self.packet_id,
            byte_order: self.byte_order,
            payload: Payload::Response(response),
        }
    }

    pub fn pdu_type(&self) -> PduType {
        self.payload.pdu_type()
    }
}

impl Payload {
    pub fn pdu_type(&self) -> PduType {
        match self {
            Payload::Open(_) => PduType::Open,
            Payload::Close(_) => PduType::Close,
            Payload::Register(_) => PduType::Register,
            Payload::Unregister(_) => PduType::Unregister,
            Payload::Get(_) => PduType::Get,
            Payload::GetNext(_) => PduType::GetNext,
            Payload::GetBulk(_) => PduType::GetBulk,
            Payload::TestSet(_) => PduType::TestSet,
            Payload::CommitSet => PduType::CommitSet,
            Payload::UndoSet => PduType::UndoSet,
            Payload::CleanupSet => PduType::CleanupSet,
            Payload::Notify(_) => PduType::Notify,
            Payload::Ping(_) => PduType::Ping,
            Payload::IndexAllocate(_) => PduType::IndexAllocate,
            Payload::IndexDeallocate(_) => PduType::IndexDeallocate,
            Payload::AddAgentCaps(_) => PduType::AddAgentCaps,
            Payload::RemoveAgentCaps(_) => PduType::RemoveAgentCaps,
            Payload::Response(_) => PduType::Response,
        }
    }

    /// The non-default context (section 6.1.1), for the PDU types that can have one.
    pub fn context(&self) -> Option<&[u8]> {
        match self {
            Payload::Register(p) => p.context.as_deref(),
            Payload::Unregister(p) => p.context.as_deref(),
            Payload::Get(p) => p.context.as_deref(),
            Payload::GetNext(p) => p.context.as_deref(),
            Payload::GetBulk(p) => p.context.as_deref(),
            Payload::TestSet(p) => p.context.as_deref(),
            Payload::Notify(p) => p.context.as_deref(),
            Payload::Ping(p) => p.context.as_deref(),
            Payload::IndexAllocate(p) | Payload::IndexDeallocate(p) => p.context.as_deref(),
            Payload::AddAgentCaps(p) => p.context.as_deref(),
            Payload::RemoveAgentCaps(p) => p.context.as_deref(),
            Payload::Open(_)
            | Payload::Close(_)
            | Payload::CommitSet
            | Payload::UndoSet
            | Payload::CleanupSet
            | Payload::Response(_) => None,
        }
    }

    /// The `h.flags` bits other than NETWORK_BYTE_ORDER.
    fn flags(&self) -> u8 {
        let mut f = 0;
        if self.context().is_some() {
            f |= flags::NON_DEFAULT_CONTEXT;
        }
        match self {
            Payload::Register(p) if p.instance_registration => f |= flags::INSTANCE_REGISTRATION,
            Payload::IndexAllocate(p) | Payload::IndexDeallocate(p) => {
                if p.new_index {
                    f |= flags::NEW_INDEX;
                }
                if p.any_index {
                    f |= flags::ANY_INDEX;
                }
            }
            _ => {}
        }
        f
    }

    fn decode(r: &mut Reader<'_>, header: &Header) -> Step<Payload> {
        let t = header.pdu_type;
        let has = |bit: u8| header.flags & bit != 0;
        let context = if t.has_context() && has(flags::NON_DEFAULT_CONTEXT) {
            Some(r.octet_string("a context Octet String")?)
        } else {
            None
        };
        let index = |r: &mut Reader<'_>, context| -> Step<IndexAllocation> {
            Ok(IndexAllocation {
                context,
                new_index: has(flags::NEW_INDEX),
                any_index: has(flags::ANY_INDEX),
                varbinds: VarBind::decode_list(r)?,
            })
        };
        Ok(match t {
            PduType::Open => Payload::Open(Open::decode(r)?),
            PduType::Close => Payload::Close(Close::decode(r)?),
            PduType::Register => Payload::Register(Register::decode(
                r,
                context,
                has(flags::INSTANCE_REGISTRATION),
            )?),
            PduType::Unregister => Payload::Unregister(Unregister::decode(r, context)?),
            PduType::Get => Payload::Get(Get {
                context,
                ranges: SearchRange::decode_list(r)?,
            }),
            PduType::GetNext => Payload::GetNext(GetNext {
                context,
                ranges: SearchRange::decode_list(r)?,
            }),
            PduType::GetBulk => Payload::GetBulk(GetBulk::decode(r, context)?),
            PduType::TestSet => Payload::TestSet(TestSet {
                context,
                varbinds: VarBind::decode_list(r)?,
            }),
            PduType::CommitSet => Payload::CommitSet,
            PduType::UndoSet => Payload::UndoSet,
            PduType::CleanupSet => Payload::CleanupSet,
            PduType::Notify => Payload::Notify(Notify {
                context,
                varbinds: VarBind::decode_list(r)?,
            }),
            PduType::Ping => Payload::Ping(Ping { context }),
            PduType::IndexAllocate => Payload::IndexAllocate(index(r, context)?),
            PduType::IndexDeallocate => Payload::IndexDeallocate(index(r, context)?),
            PduType::AddAgentCaps => Payload::AddAgentCaps(AddAgentCaps::decode(r, context)?),
            PduType::RemoveAgentCaps => Payload::RemoveAgentCaps(RemoveAgentCaps {
                context,
                id: Oid::decode(r)?.0,
            }),
            PduType::Response => Payload::Response(Response::decode(r)?),
        })
    }

    /// Everything after the context.
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        let ranges = |w: &mut Writer, list: &[SearchRange]| list.iter().for_each(|sr| sr.encode(w));
        match self {
            Payload::Open(p) => p.encode(w)?,
            Payload::Close(p) => p.encode(w),
            Payload::Register(p) => p.encode(w),
            Payload::Unregister(p) => p.encode(w),
            Payload::Get(p) => ranges(w, &p.ranges),
            Payload::GetNext(p) => ranges(w, &p.ranges),
            Payload::GetBulk(p) => p.encode(w),
            Payload::TestSet(p) => VarBind::encode_list(&p.varbinds, w)?,
            Payload::CommitSet | Payload::UndoSet | Payload::CleanupSet | Payload::Ping(_) => {}
            Payload::Notify(p) => VarBind::encode_list(&p.varbinds, w)?,
            Payload::IndexAllocate(p) | Payload::IndexDeallocate(p) => {
                VarBind::encode_list(&p.varbinds, w)?
            }
            Payload::AddAgentCaps(p) => p.encode(w)?,
            Payload::RemoveAgentCaps(p) => p.id.encode(w, false),
            Payload::Response(p) => p.encode(w)?,
        }
        Ok(())
    }
}
