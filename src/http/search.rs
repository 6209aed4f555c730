//! The read path: `GET /v1/search`, `GET /v1/conversations/{id}` (auditor
//! role; every answer is audited first) and `GET /v1/status`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use tantivy::snippet::SnippetGenerator;
use tracing::warn;
use verbatim_schema::{Offset, Record};

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::audit::AuditEntry;
use crate::auth::{Principal, Role};
use crate::index::search::{self, parse_time, Filters, SearchError, SearchRequest, Sort};

type Params = Query<Vec<(String, String)>>;

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Bad(m) => ApiError::bad_request(m),
            SearchError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            SearchError::Internal(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

/// Query-string parameters, each at most once, none unknown.
fn params(raw: Vec<(String, String)>, known: &[&str]) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let mut out = std::collections::HashMap::new();
    for (k, v) in raw {
        if !known.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter `{k}`; this endpoint takes {}",
                known.join(", ")
            )));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad_request(format!("parameter `{k}` given twice")));
        }
    }
    Ok(out)
}

fn number<T: std::str::FromStr>(p: &std::collections::HashMap<String, String>, k: &str) -> Result<Option<T>, ApiError> {
    p.get(k)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| ApiError::bad_request(format!("`{k}` must be a non-negative integer, not {v:?}")))
        })
        .transpose()
}

fn nonempty(p: &std::collections::HashMap<String, String>, k: &str) -> Option<String> {
    p.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

async fn audit(s: &AppState, who: &Principal, entry: AuditEntry) -> Result<(), ApiError> {
    match s.audit.record(who, entry).await {
        Ok(_) => {
            s.metrics.index.audit_records.inc();
            Ok(())
        }
        Err(why) => {
            s.metrics.index.audit_failures.inc();
            warn!("refusing a read: its audit record could not be made durable: {why}");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the audit stream cannot record this read; retry later")
                .detail(json!(why))
                .retry_after(s.ingest.retry_after_secs))
        }
    }
}

fn record_json(offset: Offset, r: &Record) -> serde_json::Map<String, Value> {
    let e = &r.event;
    let mut m = serde_json::Map::new();
    m.insert("offset".into(), json!(offset.0));
    m.insert("ts".into(), json!(e.ts.to_rfc3339()));
    m.insert("received_at".into(), json!(r.received_at.to_rfc3339()));
    m.insert("conversation_id".into(), json!(r.conversation_id.map(|c| c.0)));
    m.insert("network".into(), json!(e.network));
    m.insert("kind".into(), json!(e.kind));
    m.insert("source".into(), json!(e.source.as_str()));
    m.insert("site".into(), json!(r.site.as_str()));
    m.insert("from".into(), json!(e.from));
    m.insert("to".into(), json!(e.to));
    m.insert("channel".into(), json!(e.channel));
    m.insert("body".into(), json!(e.body));
    m
}

pub async fn get_search(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(raw): Params,
) -> Result<Json<Value>, ApiError> {
    let who = caller.require(&[Role::Auditor])?.clone();
    let p = params(
        raw,
        &["q", "from", "to", "network", "participant", "channel", "conversation", "sort", "limit", "cursor"],
    )?;
    let sort = match p.get("sort").map(|v| v.trim()) {
        None | Some("") | Some("time") => Sort::Time,
        Some("relevance") => Sort::Relevance,
        Some(other) => return Err(ApiError::bad_request(format!("`sort` is `time` or `relevance`, not {other:?}"))),
    };
    let filters = Filters {
        from: p.get("from").map(|v| parse_time(v)).transpose()?,
        to: p.get("to").map(|v| parse_time(v)).transpose()?,
        network: nonempty(&p, "network"),
        participant: nonempty(&p, "participant"),
        channel: nonempty(&p, "channel"),
        conversation: number(&p, "conversation")?,
    };
    let req = SearchRequest {
        q: p.get("q").cloned().unwrap_or_default(),
        filters,
        sort,
        limit: number(&p, "limit")?.unwrap_or(0),
        cursor: nonempty(&p, "cursor"),
    };
    let started = Instant::now();
    let st = s.clone();
    let r = req.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<(Value, usize), SearchError> {
        let out = search::search(&st.index, &st.search, &r)?;
        let offsets: Vec<Offset> = out.hits.iter().map(|h| h.offset).collect();
        let records = st.blocks.records(st.log.reader(), &offsets)?;
        let mut snippets = SnippetGenerator::create(&out.searcher, &*out.query, st.index.fields.body)?;
        snippets.set_max_num_chars(st.search.snippet_chars);
        let hits: Vec<Value> = out
            .hits
            .iter()
            .zip(&records)
            .map(|(h, rec)| {
                let mut m = record_json(h.offset, rec);
                m.insert("snippet".into(), json!(snippets.snippet(&rec.event.body).to_html()));
                m.insert("score".into(), json!(h.score));
                Value::Object(m)
            })
            .collect();
        let n = hits.len();
        let watermark = st.index.state().watermark;
        Ok((json!({"hits": hits, "total": out.total, "next_cursor": out.next_cursor, "index_watermark": watermark}), n))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("search task failed: {e}")))?;
    let (body, n) = match answer {
        Ok(a) => a,
        Err(e) => {
            if matches!(e, SearchError::Bad(_)) {
                s.metrics.index.rejected_queries.inc();
            }
            return Err(e.into());
        }
    };
    let query = json!({"q": req.q, "filters": req.filters, "sort": req.sort, "limit": req.limit, "cursor": req.cursor});
    audit(&s, &who, AuditEntry { endpoint: "search".into(), query, results: n as u64 }).await?;
    s.metrics.index.searches.inc();
    s.metrics.index.search_seconds.observe(started.elapsed().as_secs_f64());
    Ok(Json(body))
}

pub async fn get_conversation(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(raw): Params,
) -> Result<Json<Value>, ApiError> {
    let who = caller.require(&[Role::Auditor])?.clone();
    let p = params(raw, &["around", "context"])?;
    let id: u64 = id.parse().map_err(|_| ApiError::bad_request(format!("conversation ids are numbers, not {id:?}")))?;
    let around: Option<u64> = number(&p, "around")?;
    let context: usize = number(&p, "context")?.unwrap_or(10);
    let max = s.search.max_transcript_events;
    if context > max {
        return Err(ApiError::bad_request(format!("`context` {context} is over the maximum of {max}")));
    }
    let st = s.clone();
    let body = tokio::task::spawn_blocking(move || -> Result<(Value, usize), SearchError> {
        let (offsets, truncated) = search::conversation_offsets(&st.index, id, max)?;
        let watermark = st.index.state().watermark;
        if offsets.is_empty() {
            return Err(SearchError::NotFound(format!(
                "no conversation {id} in the index (it covers log offsets below {watermark})"
            )));
        }
        let records = st.blocks.records(st.log.reader(), &offsets)?;
        let window = match around {
            None => 0..offsets.len(),
            Some(a) => {
                let i = offsets
                    .binary_search(&Offset(a))
                    .map_err(|_| SearchError::NotFound(format!("offset {a} is not part of conversation {id}")))?;
                i.saturating_sub(context)..(i + context + 1).min(offsets.len())
            }
        };
        let mut participants = BTreeSet::new();
        for r in &records {
            participants.insert(r.event.from.clone());
            participants.extend(r.event.to.iter().cloned());
        }
        let first = &records[0];
        let started = records.iter().map(|r| r.event.ts.instant).min().unwrap_or(first.event.ts.instant);
        let ended = records.iter().map(|r| r.event.ts.instant).max().unwrap_or(first.event.ts.instant);
        let events: Vec<Value> = window.clone().map(|i| Value::Object(record_json(offsets[i], &records[i]))).collect();
        let n = events.len();
        Ok((
            json!({
                "conversation": {
                    "id": id,
                    "network": first.event.network,
                    "channel": first.event.channel,
                    "participants": participants,
                    "started_at": started.to_rfc3339(),
                    "ended_at": ended.to_rfc3339(),
                    "events": records.len(),
                    "truncated": truncated,
                },
                "events": events,
                "index_watermark": watermark,
            }),
            n,
        ))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("transcript task failed: {e}")))??;
    let query = json!({"conversation": id, "around": around, "context": around.map(|_| context)});
    audit(&s, &who, AuditEntry { endpoint: "conversation".into(), query, results: body.1 as u64 }).await?;
    s.metrics.index.transcripts.inc();
    Ok(Json(body.0))
}

pub async fn get_status(State(s): State<Arc<AppState>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    let st = s.clone();
    let body = tokio::task::spawn_blocking(move || {
        let head = st.log.reader().head().0;
        let (lag_events, lag_seconds) = st.index.lag(st.log.reader());
        let ix = st.index.state();
        let coverage = if head == 0 { 1.0 } else { ix.watermark as f64 / head as f64 };
        let consistent = ix.last_reconciliation.as_ref().is_none_or(|r| r.ok);
        json!({
            "log": {"head": head},
            "index": {
                "watermark": ix.watermark,
                "docs": ix.docs,
                "lag_events": lag_events,
                "lag_seconds": lag_seconds,
                "coverage": coverage,
                "consistent": consistent,
                "last_commit": ix.last_commit,
                "last_reconciliation": ix.last_reconciliation,
                "error": ix.error,
            },
            "audit": {"head": st.audit.reader().head().0},
            "rollups": null,
            "shipping": null,
        })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("status task failed: {e}")))?;
    Ok(Json(body))
}
