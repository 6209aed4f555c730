//! `GET /v1/capacity` (admin or auditor): the sizing formula with parameters
//! measured from the archive, beside the bytes the archive really uses per
//! user per day, and a forecast of the data volume.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::audit::AuditEntry;
use crate::auth::Role;
use crate::sizing::{self, SizingInput, DEFAULT_COMPRESSION};

/// What the archive's rows say about the formula's parameters. Messages are
/// events of kind `message`; a user is a distinct sender of one.
pub const MEASURE_SQL: &str = "
WITH m AS (SELECT sender, conversation_id, ts, body_len FROM events WHERE kind = 'message'),
per_conv AS (
    SELECT conversation_id, count(*) AS n,
           CAST(max(ts) AS BIGINT) - CAST(min(ts) AS BIGINT) AS dur_ns
    FROM m WHERE conversation_id IS NOT NULL GROUP BY conversation_id),
user_days AS (
    SELECT sender, date_trunc('day', ts) AS d, count(DISTINCT conversation_id) AS convs
    FROM m GROUP BY 1, 2)
SELECT CAST((SELECT count(DISTINCT sender) FROM m) AS DOUBLE) AS seats,
       CAST((SELECT count(DISTINCT date_trunc('day', ts)) FROM m) AS DOUBLE) AS days,
       CAST((SELECT sum(convs) FROM user_days) AS DOUBLE) AS user_day_conversations,
       CAST((SELECT avg(dur_ns) FROM per_conv) AS DOUBLE) / 1e9 AS avg_dur_secs,
       CAST((SELECT sum(n - 1) FROM per_conv WHERE dur_ns > 0) AS DOUBLE)
           / (CAST((SELECT sum(dur_ns) FROM per_conv WHERE dur_ns > 0) AS DOUBLE) / 1e9) AS msg_rate,
       CAST((SELECT avg(body_len) FROM m) AS DOUBLE) AS msg_length,
       CAST((SELECT count(*) FROM m) AS DOUBLE) AS messages,
       CAST((SELECT CAST(max(received_at) AS BIGINT) - CAST(min(received_at) AS BIGINT) FROM events) AS DOUBLE)
           / 86400e9 AS received_days";

/// Bytes of the files under `dir`, recursively (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// (available, total) bytes of the file system holding `dir`.
pub fn volume(dir: &Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize))
}

fn number(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

pub async fn get_capacity(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let who = caller.require(&[Role::Admin, Role::Auditor])?.clone();
    // The configured retention, unless the request names one.
    let mut retention_days = s.capacity.retention_days;
    let mut retention_from = retention_days.map(|_| "config");
    let mut compression = DEFAULT_COMPRESSION;
    for (k, v) in q {
        let n: f64 =
            v.trim().parse().map_err(|_| ApiError::bad_request(format!("`{k}` must be a number, not {v:?}")))?;
        match k.as_str() {
            "retention_days" if n > 0.0 && n.is_finite() => {
                retention_days = Some(n);
                retention_from = Some("query");
            }
            "compression" if (0.0..1.0).contains(&n) => compression = n,
            "retention_days" | "compression" => {
                return Err(ApiError::bad_request(format!("`{k}` is out of range: {v}")));
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{k}`; this takes retention_days, compression"
                )))
            }
        }
    }
    let out = s.sql.run(MEASURE_SQL).await?;
    let mut row = serde_json::Map::new();
    if let Some(b) = out.batches.first() {
        for (i, f) in out.schema.fields().iter().enumerate() {
            let c = arrow::compute::cast(b.column(i), &DataType::Float64)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let c = c.as_primitive::<Float64Type>();
            let v = if c.is_null(0) || !c.value(0).is_finite() { 0.0 } else { c.value(0) };
            row.insert(f.name().clone(), json!(v));
        }
    }
    let row = Value::Object(row);
    let seats = number(&row, "seats");
    let days = number(&row, "days");
    let input = SizingInput {
        seats,
        avg_dur_secs: number(&row, "avg_dur_secs"),
        msg_rate: number(&row, "msg_rate"),
        msg_length: number(&row, "msg_length"),
        avg_number: if seats * days > 0.0 { number(&row, "user_day_conversations") / (seats * days) } else { 0.0 },
        compression,
    };
    let data = s.data_dir.clone();
    let disk = tokio::task::spawn_blocking(move || {
        let bytes = |p: &str| dir_bytes(&data.join(p));
        (bytes("log"), bytes("index"), bytes("rollup"), bytes("state"), volume(&data))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (log, index, rollup, state, vol) = disk;
    let used = (log + index + rollup + state) as f64;
    let per_user_day = if seats * days > 0.0 { used / (seats * days) } else { 0.0 };
    // Growth: what the archive holds, over the days it took to receive it.
    let received_days = number(&row, "received_days").max(1.0);
    let growth = used / received_days;
    let (free, total) = vol.map_or((None, None), |(a, t)| (Some(a), Some(t)));
    let answer = json!({
        "formula": sizing::SizingInput::sizing(&input),
        "measured": {
            "parameters": row,
            "bytes_on_disk": {"log": log, "index": index, "rollups": rollup, "state": state, "total": used},
            "bytes_per_user_per_day": per_user_day,
            "mb_per_user_per_month": 30.0 * per_user_day / sizing::MB,
            "consistent_formula_bytes_per_user_per_day": input.consistent().bytes_per_user_per_day,
            "literal_formula_bytes_per_user_per_day": input.literal().bytes_per_user_per_day,
        },
        "forecast": {
            "growth_bytes_per_day": growth,
            "volume_free_bytes": free,
            "volume_total_bytes": total,
            "days_until_full": free.and_then(|f| sizing::days_until_full(f as f64, growth)),
            "retention_days": retention_days,
            "retention_from": retention_from,
            "steady_state_bytes": retention_days.map(|r| sizing::steady_state_bytes(growth, r)),
        },
        "notes": [
            "literal: the formula as printed (60 × AvgDur, AvgNumber counted twice)",
            "consistent: AvgDur in seconds, AvgNumber counted once",
            "seats: distinct senders of messages; avg_number: conversations per seat per day over the days with messages",
            "compression is the formula's parameter (default 0.05), not measured",
            "growth: bytes on disk over the days spanned by received_at, at least one day (an archive imported in one run shows its whole size as one day)",
        ],
    });
    let entry =
        AuditEntry { endpoint: "capacity".into(), query: json!({"retention_days": retention_days}), results: 1 };
    match s.audit.record(&who, entry).await {
        Ok(_) => {
            s.metrics.index.audit_records.inc();
        }
        Err(e) => {
            s.metrics.index.audit_failures.inc();
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the audit record could not be made durable: {e}"),
            )
            .retry_after(1));
        }
    }
    Ok(Json(answer))
}
