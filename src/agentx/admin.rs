//! The "administrative" PDUs (RFC 2741 section 6.1, types 1-4 and 12-17): the ones a
//! subagent sends to open and close its session, register MIB regions, allocate indexes,
//! advertise capabilities, send notifications and ping.

use std::num::NonZeroU8;

use super::error::EncodeError;
use super::oid::Oid;
use super::value::VarBind;
use super::wire::{Reader, Step, Writer};

/// The priority a subagent without particular knowledge registers with (section 6.2.3).
pub const DEFAULT_PRIORITY: u8 = 127;

/// agentx-Open-PDU (section 6.2.1): asks the master for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// `o.timeout`: seconds the master should wait for this subagent; 0 means no
    /// session-wide default (net-snmp's master ignores it and uses its agentXTimeout).
    pub timeout: u8,
    /// `o.id`: identifies the subagent; may be the null OID.
    pub id: Oid,
    /// `o.descr`: a DisplayString describing the subagent.
    pub descr: Vec<u8>,
}

impl Open {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Step<Open> {
        let [timeout, ..] = r.quad("o.timeout")?;
        let (id, _) = Oid::decode(r)?;
        let descr = r.octet_string("o.descr")?;
        Ok(Open { timeout, id, descr })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.bytes(&[self.timeout, 0, 0, 0]);
        self.id.encode(w, false);
        w.octet_string(&self.descr)
    }
}

/// `c.reason` of an agentx-Close-PDU (section 6.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    Other,
    ParseError,
    ProtocolError,
    Timeouts,
    Shutdown,
    ByManager,
    /// A value RFC 2741 does not define, kept so it can be logged.
    Unknown(u8),
}

impl CloseReason {
    pub fn from_code(code: u8) -> CloseReason {
        match code {
            1 => CloseReason::Other,
            2 => CloseReason::ParseError,
            3 => CloseReason::ProtocolError,
            4 => CloseReason::Timeouts,
            5 => CloseReason::Shutdown,
            6 => CloseReason::ByManager,
            n => CloseReason::Unknown(n),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            CloseReason::Other => 1,
            CloseReason::ParseError => 2,
            CloseReason::ProtocolError => 3,
            CloseReason::Timeouts => 4,
            CloseReason::Shutdown => 5,
            CloseReason::ByManager => 6,
            CloseReason::Unknown(n) => n,
        }
    }
}

/// agentx-Close-PDU (section 6.2.2): ends the session, from either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub reason: CloseReason,
}

impl Close {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Step<Close> {
        let [reason, ..] = r.quad("c.reason")?;
        Ok(Close {
            reason: CloseReason::from_code(reason),
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.bytes(&[self.reason.code(), 0, 0, 0]);
    }
}

/// `r.range_subid` and `r.upper_bound`: the `range_subid`-th sub-identifier (1-based, in
/// the full OID even when it is sent with a prefix) of the subtree is a lower bound, and
/// the region is the union of the subtrees up to `upper_bound` in that position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubidRange {
    pub range_subid: NonZeroU8,
    pub upper_bound: u32,
}

/// Decodes `range_subid` (already read) and the `upper_bound` present only when it is not 0.
fn decode_range(r: &mut Reader<'_>, range_subid: u8) -> Step<Option<SubidRange>> {
    match NonZeroU8::new(range_subid) {
        None => Ok(None),
        Some(range_subid) => Ok(Some(SubidRange {
            range_subid,
            upper_bound: r.u32("upper_bound (range_subid is not 0)")?,
        })),
    }
}

fn range_subid(range: Option<SubidRange>) -> u8 {
    range.map_or(0, |r| r.range_subid.get())
}

/// agentx-Register-PDU (section 6.2.3): claims a MIB region for this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// `r.context`: `None` is the default context.
    pub context: Option<Vec<u8>>,
    /// `r.timeout` in seconds for this region; 0 means no override.
    pub timeout: u8,
    /// `r.priority`: 1-255, smaller wins among overlapping registrations.
    pub priority: u8,
    pub subtree: Oid,
    pub range: Option<SubidRange>,
    /// INSTANCE_REGISTRATION: `subtree` names a single instance.
    pub instance_registration: bool,
}

impl Register {
    /// A registration of `subtree` in the default context, with the default priority 127,
    /// no timeout override and no range: what a subagent registering one MIB sends.
    pub fn new(subtree: Oid) -> Register {
        Register {
            context: None,
            timeout: 0,
            priority: DEFAULT_PRIORITY,
            subtree,
            range: None,
            instance_registration: false,
        }
    }

    pub(crate) fn decode(
        r: &mut Reader<'_>,
        context: Option<Vec<u8>>,
        instance_registration: bool,
    ) -> Step<Register> {
        let [timeout, priority, range_subid, _] =
            r.quad("r.timeout, r.priority and r.range_subid")?;
        let (subtree, _) = Oid::decode(r)?;
        let range = decode_range(r, range_subid)?;
        Ok(Register {
            context,
            timeout,
            priority,
            subtree,
            range,
            instance_registration,
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.bytes(&[self.timeout, self.priority, range_subid(self.range), 0]);
        self.subtree.encode(w, false);
        if let Some(range) = self.range {
            w.u32(range.upper_bound);
        }
    }
}

/// agentx-Unregister-PDU (section 6.2.4): gives up a region registered before, named by
/// the same subtree, range and priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unregister {
    pub context: Option<Vec<u8>>,
    pub priority: u8,
    pub subtree: Oid,
    pub range: Option<SubidRange>,
}

impl Unregister {
    pub(crate) fn decode(r: &mut Reader<'_>, context: Option<Vec<u8>>) -> Step<Unregister> {
        let [_, priority, range_subid, _] = r.quad("u.priority and u.range_subid")?;
        let (subtree, _) = Oid::decode(r)?;
        let range = decode_range(r, range_subid)?;
        Ok(Unregister {
            context,
            priority,
            subtree,
            range,
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.bytes(&[0, self.priority, range_subid(self.range), 0]);
        self.subtree.encode(w, false);
        if let Some(range) = self.range {
            w.u32(range.upper_bound);
        }
    }
}

/// agentx-Notify-PDU (section 6.2.10): a notification for the master to send. The list
/// starts with snmpTrapOID.0, or with sysUpTime.0 and then snmpTrapOID.0; the codec
/// carries whatever list it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub context: Option<Vec<u8>>,
    pub varbinds: Vec<VarBind>,
}

/// agentx-Ping-PDU (section 6.2.11): checks the session; the Response carries sysUpTime.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ping {
    pub context: Option<Vec<u8>>,
}

/// agentx-IndexAllocate-PDU and agentx-IndexDeallocate-PDU (sections 6.2.12, 6.2.13): the
/// index objects and values to allocate or release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexAllocation {
    pub context: Option<Vec<u8>>,
    /// NEW_INDEX: a value never allocated before.
    pub new_index: bool,
    /// ANY_INDEX: any value not allocated now.
    pub any_index: bool,
    pub varbinds: Vec<VarBind>,
}

/// agentx-AddAgentCaps-PDU (section 6.2.14): a sysORID and sysORDescr for the master's
/// sysORTable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddAgentCaps {
    pub context: Option<Vec<u8>>,
    pub id: Oid,
    pub descr: Vec<u8>,
}

impl AddAgentCaps {
    pub(crate) fn decode(r: &mut Reader<'_>, context: Option<Vec<u8>>) -> Step<AddAgentCaps> {
        let (id, _) = Oid::decode(r)?;
        let descr = r.octet_string("a.descr")?;
        Ok(AddAgentCaps { context, id, descr })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        self.id.encode(w, false);
        w.octet_string(&self.descr)
    }
}

/// agentx-RemoveAgentCaps-PDU (section 6.2.15): withdraws a sysORID added before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveAgentCaps {
    pub context: Option<Vec<u8>>,
    pub id: Oid,
}
