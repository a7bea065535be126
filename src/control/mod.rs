//! The daemon's local control API: protocol types and the server behind `smx daemon`.

pub mod proto;
pub mod server;
