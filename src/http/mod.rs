//! The HTTP API. The router is built by one function over shared state, so
//! handlers are tested with `tower::ServiceExt::oneshot` without a socket.
//! Every route but `/healthz` needs a bearer token.

pub mod auth;
pub mod capacity;
pub mod error;
pub mod events;
pub mod replication;
pub mod search;
pub mod sql;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use verbatim_schema::{Limits, SiteId};

use self::auth::Caller;
use self::error::ApiError;
use crate::audit::Audit;
use crate::auth::{Role, TokenStore};
use crate::config::IngestConfig;
use crate::index::indexer::SearchIndex;
use crate::index::search::SearchConfig;
use crate::log::cache::BlockCache;
use crate::log::LogHandle;
use crate::metrics::Metrics;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub log: LogHandle,
    pub metrics: Arc<Metrics>,
    pub tokens: Arc<TokenStore>,
    pub limits: Limits,
    pub ingest: IngestConfig,
    pub site: SiteId,
    pub index: Arc<SearchIndex>,
    pub search: SearchConfig,
    pub audit: Arc<Audit>,
    pub blocks: Arc<BlockCache>,
    pub rollups: Arc<crate::rollup::Rollups>,
    pub sql: Arc<crate::sql::SqlEngine>,
    /// The data directory, for sizes on disk.
    pub data_dir: std::path::PathBuf,
    pub replication: crate::ship::ReplicationConfig,
    /// The retention the capacity forecast assumes unless a request names one.
    pub capacity: crate::config::CapacityConfig,
    /// On HQ: the replica logs of the sites.
    pub replicas: Option<Arc<crate::ship::Replicas>>,
    /// On a regional site: the shipper to HQ.
    pub shipper: Option<Arc<crate::ship::shipper::Shipper>>,
    /// Every site reads cover: the own site, and on HQ the replicated ones.
    pub sites: Arc<crate::sites::Sites>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        // The handler applies `ingest.max_body_bytes` itself, with a 413 of its own.
        .route("/v1/events", post(events::post_events).layer(DefaultBodyLimit::disable()))
        .route("/v1/search", get(search::get_search))
        .route("/v1/conversations/{id}", get(search::get_conversation))
        .route("/v1/status", get(search::get_status))
        .route("/v1/sql", post(sql::post_sql))
        .route("/v1/reports", get(sql::list_reports))
        .route("/v1/capacity", get(capacity::get_capacity))
        .route("/v1/reports/{name}", get(sql::get_report))
        .route("/v1/replication/{site}", get(replication::get_high_water))
        // The handler applies `replication.max_body_bytes` itself, with a 413 of its own.
        .route("/v1/replication/{site}/blocks", post(replication::post_blocks).layer(DefaultBodyLimit::disable()))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// 200 while the log accepts writes; 503 while the writer is stopped.
async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    let head = s.log.reader().head().0;
    if s.metrics.log.writer_failed.get() != 0 {
        let body = json!({"status": "failing", "detail": "the log writer stopped after an I/O failure and is restarting from the log", "log_head": head});
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], Json(body)).into_response();
    }
    Json(json!({"status": "ok", "log_head": head})).into_response()
}

async fn metrics(State(s): State<Arc<AppState>>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let st = s.clone();
    let _ = tokio::task::spawn_blocking(move || {
        st.index.lag(st.log.reader());
        if let Some(sh) = &st.shipper {
            st.metrics.replication.set_shipping(&sh.status());
        }
        if let Some(r) = &st.replicas {
            st.metrics.replication.set_replicas(&r.status());
            for store in st.sites.all().iter().skip(1) {
                st.metrics.replication.set_replica_derived(store);
            }
        }
    })
    .await;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response())
}
