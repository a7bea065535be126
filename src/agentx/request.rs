//! The "SNMP request processing" PDUs that carry data (RFC 2741 section 6.1, types 5-8):
//! what the master asks a subagent on behalf of a manager's Get, GetNext, GetBulk and Set.
//! CommitSet, UndoSet and CleanupSet (9-11) are header-only and have no type of their own.

use super::oid::SearchRange;
use super::value::VarBind;
use super::wire::{Reader, Step, Writer};

/// agentx-Get-PDU (section 6.2.5): the values of exactly the `start` names of `ranges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Get {
    pub context: Option<Vec<u8>>,
    pub ranges: Vec<SearchRange>,
}

/// agentx-GetNext-PDU (section 6.2.6): for each range, the first name in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetNext {
    pub context: Option<Vec<u8>>,
    pub ranges: Vec<SearchRange>,
}

/// agentx-GetBulk-PDU (section 6.2.7). net-snmp's master never sends it (it turns a
/// manager's GetBulk into GetNexts); it is here so every PDU decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetBulk {
    pub context: Option<Vec<u8>>,
    /// `g.non_repeaters`: how many of the first ranges are asked once.
    pub non_repeaters: u16,
    /// `g.max_repetitions`: how often the others are repeated at most.
    pub max_repetitions: u16,
    pub ranges: Vec<SearchRange>,
}

/// agentx-TestSet-PDU (section 6.2.8): all varbinds of one SNMP Set for this subagent,
/// to be checked together before CommitSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSet {
    pub context: Option<Vec<u8>>,
    pub varbinds: Vec<VarBind>,
}

impl GetBulk {
    pub(crate) fn decode(r: &mut Reader<'_>, context: Option<Vec<u8>>) -> Step<GetBulk> {
        let (non_repeaters, max_repetitions) =
            r.u16_pair("g.non_repeaters and g.max_repetitions")?;
        Ok(GetBulk {
            context,
            non_repeaters,
            max_repetitions,
            ranges: SearchRange::decode_list(r)?,
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u16_pair(self.non_repeaters, self.max_repetitions);
        self.ranges.iter().for_each(|sr| sr.encode(w));
    }
}
