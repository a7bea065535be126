//! smx: a Script MIB (RFC 3165) runtime host speaking SMX/1.1 (RFC 3179).
//!
//! - [`proto`]: the SMX/1.1 messages, pure and sans-IO.
//! - [`framing`]: bounded line framing over any byte stream.
//! - [`config`]: the runtime registry, OS profiles and owner map.
//! - [`host`]: the supervisor and run table (RFC 3179 section 6.2).
//! - [`security`]: OS security profiles applied to runtime processes.
//! - [`storage`]: the script storage the host writes and runtimes read.
//! - [`exec`]: the built-in runtime for executable files.
//! - [`fdlimit`]: the open-file limit of smx's processes and what their children get.
//! - [`conform`]: the conformance suite for any runtime (`smx conform`).
//! - [`snmp`]: the AgentX subagent serving DISMAN-SCRIPT-MIB through snmpd.
//! - [`control`]: the daemon and its local control protocol; [`client`] talks to it.

pub mod agentx;
pub mod client;
pub mod config;
pub mod conform;
pub mod contain;
pub mod control;
pub mod exec;
pub mod fdlimit;
pub mod framing;
pub mod host;
pub mod mib;
pub mod process;
pub mod proto;
pub mod security;
pub mod snmp;
pub mod storage;
