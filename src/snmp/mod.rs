//! DISMAN-SCRIPT-MIB over SNMP: smx as an AgentX (RFC 2741) subagent of the device's snmpd.
//!
//! The wire format is [`crate::agentx`] (sans-IO); the tables are [`crate::mib`]. This
//! module joins them:
//!
//! - `settings`: the `[agentx]` configuration section;
//! - `index`: SMI instance identifiers (length-prefixed SnmpAdminString indexes);
//! - `view`: Get/GetNext/GetBulk over the Script MIB's objects, in OID order (pure);
//! - `set`: TestSet/CommitSet/UndoSet/CleanupSet as one staged change set of the model;
//! - `notify`: host events as smScriptAbort/Result/Exception notifications;
//! - `session`: the IO: connect, Open, Register, serve, reconnect, Close.

pub mod index;
pub mod notify;
pub mod session;
pub mod set;
pub mod settings;
pub mod view;

pub use settings::{AgentxSettings, MasterAddr};
