//! `POST /v1/sql` and `GET /v1/reports/{name}` (auditor role): `{"sql": "..."}`, answered as JSON, CSV or
//! an Arrow IPC stream by `Accept`. Every query, refused ones included, is
//! in the audit stream before anything is answered.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::auth::Role;
use crate::index::search::parse_time;
use crate::sql::format::{self, ARROW_STREAM};
use crate::sql::reports;
use crate::sql::SqlError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

enum Wanted {
    Json,
    Csv,
    Arrow,
}

/// The first of JSON, CSV and Arrow that `Accept` names; JSON without one.
fn wanted(headers: &HeaderMap) -> Result<Wanted, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT) else { return Ok(Wanted::Json) };
    let accept = accept.to_str().map_err(|_| ApiError::bad_request("`Accept` is not ASCII"))?;
    for t in accept.split(',').map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase()) {
        match t.as_str() {
            "application/json" | "*/*" | "application/*" => return Ok(Wanted::Json),
            "text/csv" | "text/*" => return Ok(Wanted::Csv),
            ARROW_STREAM => return Ok(Wanted::Arrow),
            _ => {}
        }
    }
    Err(ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        format!("cannot answer as {accept:?}; ask for application/json, text/csv or {ARROW_STREAM}"),
    ))
}

impl From<SqlError> for ApiError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Refused(m) | SqlError::Failed(m) => ApiError::bad_request(m),
            SqlError::Busy(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, m).retry_after(1),
            SqlError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m).retry_after(1),
        }
    }
}

/// The answer in the format asked for.
fn respond(want: Wanted, out: &crate::sql::SqlOutput) -> Result<Response, ApiError> {
    let internal = |e: arrow::error::ArrowError| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    Ok(match want {
        Wanted::Json => Json(format::to_json(out)).into_response(),
        Wanted::Csv => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], format::to_csv(out).map_err(internal)?)
            .into_response(),
        Wanted::Arrow => {
            ([(header::CONTENT_TYPE, ARROW_STREAM)], format::to_arrow(out).map_err(internal)?).into_response()
        }
    })
}

/// `GET /v1/reports`: the reports' names and descriptions.
pub async fn list_reports(caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(&[Role::Auditor])?;
    let list: Vec<serde_json::Value> = reports::REPORTS
        .iter()
        .map(|r| serde_json::json!({"name": r.name, "description": reports::description(r)}))
        .collect();
    Ok(Json(serde_json::json!({ "reports": list })))
}

/// `GET /v1/reports/{name}?from=&to=`: a canned report over `[from, to)`.
pub async fn get_report(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller.require(&[Role::Auditor])?.clone();
    let want = wanted(&headers)?;
    let (mut from, mut to) = (None, None);
    for (k, v) in q {
        let slot = match k.as_str() {
            "from" => &mut from,
            "to" => &mut to,
            _ => return Err(ApiError::bad_request(format!("unknown parameter `{k}`; reports take from and to"))),
        };
        if slot.replace(parse_time(&v).map_err(|e| ApiError::bad_request(format!("`{k}`: {e}")))?).is_some() {
            return Err(ApiError::bad_request(format!("parameter `{k}` given twice")));
        }
    }
    let sql = reports::render(&name, from, to).map_err(|e| match e {
        SqlError::Refused(m) if m.starts_with("no report") => ApiError::new(StatusCode::NOT_FOUND, m),
        other => other.into(),
    })?;
    let out = s.sql.run_audited(&s.audit, &s.metrics.index, &who, &sql, None, &format!("report:{name}")).await?;
    respond(want, &out)
}

pub async fn post_sql(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = caller.require(&[Role::Auditor])?.clone();
    let want = wanted(&headers)?;
    let req: SqlRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body must be {{\"sql\": \"...\"}}: {e}")))?;
    let out = s.sql.run_audited(&s.audit, &s.metrics.index, &who, &req.sql, None, "http").await?;
    respond(want, &out)
}
