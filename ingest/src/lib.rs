//! Verbatim's capture side: front ends that decode chat protocols and write
//! every event through a local spool to the server's `POST /v1/events`.
//! It links `verbatim-schema` and an HTTP client, never the storage engine.

pub mod capture;
pub mod frontend;
pub mod irc;
pub mod proxy;
pub mod recorder;
pub mod relay;
pub mod sender;
pub mod sip;
pub mod socks;
pub mod spool;
pub mod xmpp;

#[cfg(test)]
mod fuzz;
