//! `verbatim serve`: open the archive, start the writer, serve HTTP until
//! SIGTERM or SIGINT, then write what is queued and seal the log.

use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use crate::config::Config;
use crate::http::{router, AppState};
use crate::log::io::FsStorage;
use crate::log::{Log, LogHandle};
use crate::metrics::Metrics;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let data = config.data();
    let _lock = data.lock()?;
    let log = Log::open(Arc::new(FsStorage), &data.log(), config.log_config()).context("opening the log")?;
    let metrics = Arc::new(Metrics::default());
    let (handle, writer) = LogHandle::start(log, metrics.log.clone());
    let state = Arc::new(AppState { log: handle.clone(), metrics });
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding {}", config.http.listen))?;
    info!(listen = %listener.local_addr()?, data_dir = %data.root().display(), site = %config.site.id, "verbatim serving");
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await?;
    info!("shutting down: writing queued batches and sealing the log");
    handle.close().await.map_err(|e| anyhow::anyhow!("closing the log: {e}"))?;
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
