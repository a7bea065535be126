//! Variable bindings (RFC 2741 section 5.4): a name and a typed value.
//!
//! Octet strings are octets, not text: a DateAndTime (`07 EA 0B 16 ...`) or any binary
//! smScriptSource fragment must survive a TestSet unchanged. TimeTicks and the other
//! unsigned SMI types are `u32`, so a sysUpTime past 2^31 hundredths (249 days) is a value
//! like any other.

use super::error::{EncodeError, Malformed};
use super::oid::Oid;
use super::wire::{Reader, Step, Writer};

const UNKNOWN_TYPE: &str = "v.type 2, 4, 5, 6, 64-68, 70 or 128-130";

/// A `v.type` with its `v.data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Integer (2): INTEGER and Integer32, also enumerations such as RowStatus.
    Integer(i32),
    /// Octet String (4).
    OctetString(Vec<u8>),
    /// Null (5).
    Null,
    /// Object Identifier (6).
    ObjectIdentifier(Oid),
    /// IpAddress (64): four octets, most significant first in either byte order.
    IpAddress([u8; 4]),
    /// Counter32 (65).
    Counter32(u32),
    /// Gauge32 (66), also Unsigned32.
    Gauge32(u32),
    /// TimeTicks (67): hundredths of a second.
    TimeTicks(u32),
    /// Opaque (68): the BER of the wrapped value, as octets.
    Opaque(Vec<u8>),
    /// Counter64 (70).
    Counter64(u64),
    /// noSuchObject (128): no such object at this name (a Get's answer).
    NoSuchObject,
    /// noSuchInstance (129): the object exists, this instance does not.
    NoSuchInstance,
    /// endOfMibView (130): nothing follows in the range (a GetNext's answer).
    EndOfMibView,
}

impl Value {
    /// The `v.type` code.
    pub fn type_code(&self) -> u16 {
        match self {
            Value::Integer(_) => 2,
            Value::OctetString(_) => 4,
            Value::Null => 5,
            Value::ObjectIdentifier(_) => 6,
            Value::IpAddress(_) => 64,
            Value::Counter32(_) => 65,
            Value::Gauge32(_) => 66,
            Value::TimeTicks(_) => 67,
            Value::Opaque(_) => 68,
            Value::Counter64(_) => 70,
            Value::NoSuchObject => 128,
            Value::NoSuchInstance => 129,
            Value::EndOfMibView => 130,
        }
    }
}

/// One VarBind: `name` bound to `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarBind {
    pub name: Oid,
    pub value: Value,
}

impl VarBind {
    pub fn new(name: Oid, value: Value) -> VarBind {
        VarBind { name, value }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Step<VarBind> {
        let at = r.pos();
        let (code, _reserved) = r.u16_pair("a VarBind type")?;
        if !matches!(code, 2 | 4..=6 | 64..=68 | 70 | 128..=130) {
            return Err(Malformed {
                at,
                expected: UNKNOWN_TYPE,
            });
        }
        // The name's include octet is "0" (section 5.4); like reserved octets it is not checked.
        let (name, _) = Oid::decode(r)?;
        let data = "the VarBind's data";
        let value = match code {
            2 => Value::Integer(r.u32(data)?.cast_signed()),
            4 => Value::OctetString(r.octet_string(data)?),
            5 => Value::Null,
            6 => Value::ObjectIdentifier(Oid::decode(r)?.0),
            64 => {
                let s_at = r.pos();
                let s = r.octet_string(data)?;
                let ip = <[u8; 4]>::try_from(s.as_slice()).map_err(|_| Malformed {
                    at: s_at,
                    expected: "an IpAddress of 4 octets",
                })?;
                Value::IpAddress(ip)
            }
            65 => Value::Counter32(r.u32(data)?),
            66 => Value::Gauge32(r.u32(data)?),
            67 => Value::TimeTicks(r.u32(data)?),
            68 => Value::Opaque(r.octet_string(data)?),
            70 => Value::Counter64(r.u64(data)?),
            128 => Value::NoSuchObject,
            129 => Value::NoSuchInstance,
            130 => Value::EndOfMibView,
            _ => {
                return Err(Malformed {
                    at,
                    expected: UNKNOWN_TYPE,
                });
            }
        };
        Ok(VarBind { name, value })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u16_pair(self.value.type_code(), 0);
        self.name.encode(w, false);
        match &self.value {
            Value::Integer(i) => w.u32(i.cast_unsigned()),
            Value::OctetString(s) | Value::Opaque(s) => w.octet_string(s)?,
            Value::ObjectIdentifier(o) => o.encode(w, false),
            Value::IpAddress(ip) => w.octet_string(ip)?,
            Value::Counter32(v) | Value::Gauge32(v) | Value::TimeTicks(v) => w.u32(*v),
            Value::Counter64(v) => w.u64(*v),
            Value::Null | Value::NoSuchObject | Value::NoSuchInstance | Value::EndOfMibView => {}
        }
        Ok(())
    }

    /// A VarBindList: VarBinds up to the end of the payload.
    pub(crate) fn decode_list(r: &mut Reader<'_>) -> Step<Vec<VarBind>> {
        let mut v = Vec::new();
        while !r.is_empty() {
            v.push(VarBind::decode(r)?);
        }
        Ok(v)
    }

    pub(crate) fn encode_list(list: &[VarBind], w: &mut Writer) -> Result<(), EncodeError> {
        list.iter().try_for_each(|vb| vb.encode(w))
    }
}
