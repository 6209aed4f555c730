//! Verbatim's capture side: front ends that decode chat protocols and write
//! every event through a local spool to the server's `POST /v1/events`.
//! It links `verbatim-schema` and an HTTP client, never the storage engine.

pub mod capture;
pub mod irc;
pub mod proxy;
pub mod recorder;
pub mod relay;
pub mod sender;
pub mod sip;
pub mod socks;
pub mod spool;
pub mod xmpp;

/// Waits for SIGTERM or SIGINT (the front ends then close their spool).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod fuzz;
