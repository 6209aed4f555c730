//! Verbatim: an archival database server for enterprise instant messaging.
//! This crate is the server and its storage engine; `main.rs` only calls
//! [`cli::main`]. See `docs/ARCHITECTURE.md` for the map.

pub mod audit;
pub mod auth;
pub mod background;
pub mod cli;
pub mod config;
pub mod http;
pub mod import;
pub mod index;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod paths;
pub mod pg;
pub mod rollup;
pub mod server;
pub mod ship;
pub mod sites;
pub mod sizing;
pub mod sql;
pub mod state;
pub mod tls;
