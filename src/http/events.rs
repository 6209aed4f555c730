//! `POST /v1/events`: a batch of events v1 (JSON array or NDJSON), all or
//! nothing, acknowledged only once it is durable in the log.

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use verbatim_schema::{parse_batch, BatchError, Record, RecordFlags, UnixNanos};

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::auth::Role;
use crate::config::IngestConfig;
use crate::log::AppendError;

/// Bodies up to this size, uncompressed, are parsed on the request's own task.
const INLINE_PARSE_BYTES: usize = 16 * 1024;

fn too_large(what: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, what)
}

/// Reads at most `cap` bytes of a decoder; more is an error, not a truncation.
fn read_capped(mut r: impl Read, cap: usize, what: &str) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    r.by_ref()
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request(format!("body is not valid {what}: {e}")))?;
    if out.len() > cap {
        return Err(too_large(format!("body decompresses to more than {cap} bytes")));
    }
    Ok(out)
}

/// Undoes `Content-Encoding`, bounded by `max_decoded_bytes`.
fn decode(headers: &HeaderMap, body: Vec<u8>, limits: &IngestConfig) -> Result<Vec<u8>, ApiError> {
    let encoding = headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(body),
        Some("gzip") => read_capped(flate2::read::GzDecoder::new(&body[..]), limits.max_decoded_bytes, "gzip"),
        Some("zstd") => {
            let d = zstd::stream::read::Decoder::new(&body[..])
                .map_err(|e| ApiError::bad_request(format!("body is not valid zstd: {e}")))?;
            read_capped(d, limits.max_decoded_bytes, "zstd")
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding `{other}` is not supported (use gzip, zstd or none)"),
        )),
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json"
        | "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type `{ct}` is not accepted: send application/json (an array) or application/x-ndjson"),
        )),
    }
}

/// Decodes, parses and validates a body into records; CPU work, run off the async threads.
fn to_records(
    state: &AppState,
    caller: &crate::auth::Principal,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Result<Vec<Record>, ApiError> {
    let limits = &state.ingest;
    let bytes = decode(headers, body, limits)?;
    let events = parse_batch(&bytes, limits.max_batch_events).map_err(|e| match e {
        BatchError::TooMany { limit } => too_large(format!("more than {limit} events in one batch")),
        BatchError::Syntax { index, message } => {
            ApiError::bad_request("malformed event").detail(json!({"index": index, "message": message}))
        }
        BatchError::Invalid { index, error } => ApiError::bad_request("invalid event")
            .detail(json!({"index": index, "field": error.field, "problem": error.problem})),
        BatchError::Empty => ApiError::bad_request("the batch holds no events"),
    })?;
    let mut records = Vec::with_capacity(events.len());
    for (index, w) in events.into_iter().enumerate() {
        if !caller.may_write(&w.source) {
            return Err(ApiError::forbidden(format!("this token may not write events of source `{}`", w.source))
                .detail(json!({"index": index, "source": w.source})));
        }
        let event = state.limits.validate(w).map_err(|e| {
            ApiError::bad_request("invalid event")
                .detail(json!({"index": index, "field": e.field, "problem": e.problem}))
        })?;
        records.push(Record {
            received_at: UnixNanos(0),
            site: state.site.clone(),
            conversation_id: None,
            flags: RecordFlags::default(),
            event,
        });
    }
    Ok(records)
}

pub async fn post_events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let principal = caller.require(&[Role::Ingest])?.clone();
    check_content_type(&headers)?;
    let max = state.ingest.max_body_bytes;
    let announced =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large(format!("body of {} bytes is over the limit of {max}", announced.unwrap_or(0))));
    }
    let body = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large(format!("body is over the limit of {max} bytes")))?
        .to_vec();
    let started = std::time::Instant::now();
    // A small plain body parses in microseconds: on this task, sparing the
    // request two thread hand-offs. Larger or compressed ones go to the
    // blocking pool so they never hold up the async workers.
    let records = if body.len() <= INLINE_PARSE_BYTES && !headers.contains_key(header::CONTENT_ENCODING) {
        to_records(&state, &principal, &headers, body)?
    } else {
        let st = state.clone();
        tokio::task::spawn_blocking(move || to_records(&st, &principal, &headers, body))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("ingest task failed: {e}")))??
    };
    let n = records.len();
    let parsed = started.elapsed();
    let retry = state.ingest.retry_after_secs;
    let appended = state.log.append(records).await;
    tracing::debug!(
        parse_ms = parsed.as_secs_f64() * 1e3,
        acked_ms = started.elapsed().as_secs_f64() * 1e3,
        events = n,
        "batch answered"
    );
    let appended = appended.map_err(|e| match e {
        AppendError::QueueFull => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "the server is at capacity; retry later").retry_after(retry)
        }
        AppendError::Unavailable(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the archive cannot make data durable now; retry later")
                .detail(json!(why))
                .retry_after(retry)
        }
        AppendError::TooLarge(why) => too_large(why),
        AppendError::Conflict { index, offset } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency key reused with a different payload")
                .detail(json!({"index": index, "stored_at_offset": offset.0}))
        }
        AppendError::ConflictInBatch { index } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the same (source, seq) twice in the batch with different payloads",
        )
        .detail(json!({"index": index})),
    })?;
    let mut offsets: Vec<u64> = appended.duplicates.iter().map(|(_, o)| o.0).collect();
    if !appended.new.is_empty() {
        offsets.extend([appended.new.start.0, appended.new.end.0 - 1]);
    }
    Ok(Json(json!({
        "accepted": n - appended.duplicates.len(),
        "duplicates": appended.duplicates.len(),
        "first_offset": offsets.iter().min(),
        "last_offset": offsets.iter().max(),
    })))
}
