//! The daemon's local control API: protocol types and the server behind `smx daemon`.

mod admission;
mod log_limit;
mod outbox;
pub mod proto;
pub mod server;
