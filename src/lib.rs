//! smx: a Script MIB (RFC 3165) runtime host speaking SMX/1.1 (RFC 3179).
//!
//! - [`proto`]: the SMX/1.1 messages, pure and sans-IO.
//! - [`framing`]: bounded line framing over any byte stream.

pub mod config;
pub mod framing;
pub mod proto;
