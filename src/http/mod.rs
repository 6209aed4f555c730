//! The HTTP API. The router is built by one function over shared state, so
//! handlers are tested with `tower::ServiceExt::oneshot` without a socket.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::log::LogHandle;
use crate::metrics::Metrics;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub log: LogHandle,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(state)
}

/// 200 while the log accepts writes; 503 once the writer has stopped.
async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    let head = s.log.reader().head().0;
    if s.metrics.log.writer_failed.get() != 0 {
        let body = json!({"status": "failing", "detail": "the log writer stopped after an I/O failure and is restarting from the log", "log_head": head});
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "30")], Json(body)).into_response();
    }
    Json(json!({"status": "ok", "log_head": head})).into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response()
}
