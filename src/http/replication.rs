//! HQ's replication endpoints (`docs/replication.md`):
//! `GET /v1/replication/{site}` — where HQ stands for a site;
//! `POST /v1/replication/{site}/blocks` — a shipment of log blocks as stored.
//! Both take a replica token bound to that site (the GET also an admin
//! token); a server that is not an HQ answers 404.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::audit::AuditEntry;
use crate::auth::{Principal, Role};
use crate::ship::{valid_site, HighWater, ReceiveError, Replicas, SiteReport};

fn replicas(s: &AppState) -> Result<Arc<Replicas>, ApiError> {
    s.replicas.clone().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "this server is not an HQ (site.role); it does not receive shipments")
    })
}

/// The caller must be a replica token for `site` (or, if `admin_too`, an admin).
fn for_site<'a>(caller: &'a Caller, site: &str, admin_too: bool) -> Result<&'a Principal, ApiError> {
    let roles: &[Role] = if admin_too { &[Role::Replica, Role::Admin] } else { &[Role::Replica] };
    let who = caller.require(roles)?;
    if who.role == Role::Replica && who.site.as_deref() != Some(site) {
        return Err(ApiError::forbidden(format!(
            "this replica token ships site `{}`, not `{site}`",
            who.site.as_deref().unwrap_or("")
        )));
    }
    if !valid_site(site) {
        return Err(ApiError::bad_request(format!("`{site}` is not a site id")));
    }
    Ok(who)
}

fn task_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("replication task failed: {e}"))
}

pub async fn get_high_water(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(site): Path<String>,
) -> Result<Json<HighWater>, ApiError> {
    let replicas = replicas(&s)?;
    for_site(&caller, &site, true)?;
    let hw = tokio::task::spawn_blocking(move || replicas.high_water(&site)).await.map_err(task_failed)?;
    hw.map(Json).map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).retry_after(1))
}

pub async fn post_blocks(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(site): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let replicas = replicas(&s)?;
    let who = for_site(&caller, &site, false)?.clone();
    let max = s.replication.max_body_bytes;
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("a shipment is at most {max} bytes"));
    let announced =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, max).await.map_err(|_| too_large())?;
    let number = |name: &str| match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{name} must be a whole number"))),
    };
    let report = SiteReport { head: number("x-verbatim-site-head")?, lag_bytes: number("x-verbatim-site-lag-bytes")? };
    let r = replicas.clone();
    let st = site.clone();
    let result = tokio::task::spawn_blocking(move || r.receive(&st, &body, report)).await.map_err(task_failed)?;
    match result {
        Ok((received, hw)) => {
            // A site's first shipment: HQ starts indexing and rolling up its
            // log. The shipment is durable already; a failure here is retried
            // with the next one and does not refuse this one.
            if s.sites.get(&site).is_none() {
                if let Some(reader) = replicas.reader(&site) {
                    let sites = s.sites.clone();
                    let name = site.clone();
                    let attached = tokio::task::spawn_blocking(move || sites.attach(&name, reader)).await;
                    if let Ok(Err(e)) = attached {
                        tracing::error!(site, "{e:#}");
                    }
                }
            }
            Ok(Json(json!({
            "site": hw.site,
            "high_water": hw.high_water,
            "chain": hw.chain,
            "blocks": received.blocks,
            "records": received.records,
            "duplicate_blocks": received.duplicate_blocks,
            })))
        }
        Err(e) => {
            let need = replicas.high_water(&site).map(|h| h.high_water).ok();
            Err(match e {
                ReceiveError::Corrupt { block, .. } => {
                    ApiError::bad_request(e.to_string()).detail(json!({"block": block, "need": need}))
                }
                ReceiveError::Gap { block, need, .. } => {
                    ApiError::new(StatusCode::CONFLICT, e.to_string()).detail(json!({"block": block, "need": need}))
                }
                ReceiveError::Fork { block, offset } => {
                    let entry = AuditEntry {
                        endpoint: "replication.fork".into(),
                        query: json!({"site": site, "block": block, "offset": offset, "error": e.to_string()}),
                        results: 0,
                    };
                    // The refusal stands whether or not the audit write succeeds;
                    // the fork is also in the log, the status and the metrics.
                    if let Err(a) = s.audit.record(&who, entry).await {
                        tracing::error!(error = %a, "could not audit a replication fork");
                    }
                    ApiError::new(StatusCode::CONFLICT, e.to_string())
                        .detail(json!({"fork": true, "block": block, "offset": offset, "need": need}))
                }
                ReceiveError::Failed(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).retry_after(1),
            })
        }
    }
}
