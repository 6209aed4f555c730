//! The read path: `GET /v1/search`, `GET /v1/conversations/{id}` (auditor
//! role; no answer is sent before its audit record is durable) and
//! `GET /v1/status`.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::warn;
use verbatim_schema::time::Rfc3339;
use verbatim_schema::{Offset, RecordView};

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::audit::AuditEntry;
use crate::auth::{Principal, Role};
use crate::index::search::{self, parse_time, Filters, SearchError, SearchRequest, Sort};
use crate::index::snippet::{Snippet, Snippets};
use crate::log::reader::views;
use crate::sites::SiteStore;

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
fn params(raw: Vec<(String, String)>, known: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
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

fn number<T: std::str::FromStr>(p: &HashMap<String, String>, k: &str) -> Result<Option<T>, ApiError> {
    p.get(k)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| ApiError::bad_request(format!("`{k}` must be a non-negative integer, not {v:?}")))
        })
        .transpose()
}

fn nonempty(p: &HashMap<String, String>, k: &str) -> Option<String> {
    p.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

async fn audit(s: &AppState, who: &Principal, entry: AuditEntry) -> Result<(), ApiError> {
    audited(s, s.audit.record(who, entry).await)
}

/// A read's audit record, durable or not: counted, and a 503 if not.
fn audited(s: &AppState, durable: Result<Offset, String>) -> Result<(), ApiError> {
    match durable {
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

/// An event as the read endpoints show it.
#[derive(Serialize)]
struct EventJson<'a> {
    offset: u64,
    ts: Rfc3339,
    received_at: Rfc3339,
    conversation_id: Option<u64>,
    network: &'a str,
    kind: &'a str,
    source: &'a str,
    site: &'a str,
    from: &'a str,
    to: &'a [&'a str],
    channel: Option<&'a str>,
    body: &'a str,
}

impl<'a> EventJson<'a> {
    fn new(offset: Offset, r: &'a RecordView<'a>) -> Self {
        Self {
            offset: offset.0,
            ts: r.ts.rfc3339(),
            received_at: r.received_at.rfc3339(),
            conversation_id: r.conversation_id.map(|c| c.0),
            network: r.network,
            kind: r.kind,
            source: r.source,
            site: r.site,
            from: r.from,
            to: &r.to,
            channel: r.channel,
            body: r.body,
        }
    }
}

#[derive(Serialize)]
struct HitJson<'a> {
    #[serde(flatten)]
    event: EventJson<'a>,
    snippet: Snippet<'a>,
    score: Option<f32>,
}

#[derive(Serialize)]
struct SearchJson<'a> {
    hits: Vec<HitJson<'a>>,
    total: usize,
    /// Whether `total` counts every match; if not, it is a lower bound.
    total_exact: bool,
    next_cursor: Option<String>,
    /// This server's own site's index watermark.
    index_watermark: u64,
    /// Every site searched (on HQ, each replicated site too) and the log
    /// offset its index covers.
    sites: Vec<SiteWatermark>,
}

#[derive(Serialize)]
struct SiteWatermark {
    site: String,
    index_watermark: u64,
}

fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub async fn get_search(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(raw): Params,
) -> Result<Response, ApiError> {
    let who = caller.require(&[Role::Auditor])?.clone();
    let p = params(
        raw,
        &[
            "q",
            "from",
            "to",
            "network",
            "participant",
            "channel",
            "conversation",
            "site",
            "sort",
            "limit",
            "cursor",
            "total",
        ],
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
        site: nonempty(&p, "site"),
    };
    let req = SearchRequest {
        q: p.get("q").cloned().unwrap_or_default(),
        filters,
        sort,
        limit: number(&p, "limit")?.unwrap_or(0),
        cursor: nonempty(&p, "cursor"),
        exact_total: match p.get("total").map(|v| v.trim()) {
            None | Some("") | Some("bounded") => false,
            Some("exact") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!("`total` is `exact` or `bounded`, not {other:?}")))
            }
        },
    };
    let started = Instant::now();
    let st = s.clone();
    // One trip to a blocking thread: search, queue the audit record (its
    // writer makes it durable while the hits are read and rendered), render.
    let task = tokio::task::spawn_blocking(move || -> Result<Answered, SearchError> {
        let stores = st.sites.all();
        let out = search::search_sites(&stores, &st.search, &req)?;
        let searched = started.elapsed();
        let n = out.hits.len();
        let query =
            json!({"q": req.q, "filters": req.filters, "sort": req.sort, "limit": req.limit, "cursor": req.cursor});
        let audit = st
            .audit
            .submit(&who, AuditEntry { endpoint: "search".into(), query, results: n as u64 })
            .map(|durable| Box::pin(durable) as Durable);
        // The audit writer, just woken, is likely queued on this CPU (the
        // scheduler tends to place a wakee beside its waker) and would wait
        // out the render before it could start its write and fdatasync.
        // Yielding once lets it issue them first; it then sleeps in the sync
        // and the render goes on. Measured: the handler saw the record durable
        // 0.21-0.31 ms after the render ended at p50 without this, 0.10-0.13
        // ms with it (docs/benchmarks.md, 2026-12-07).
        std::thread::yield_now();
        let body = render(&st, &stores, out);
        Ok(Answered { audit, body, hits: n, searched, rendered: started.elapsed() })
    });
    let answered = match task.await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            if matches!(e, SearchError::Bad(_)) {
                s.metrics.index.rejected_queries.inc();
            }
            return Err(e.into());
        }
        Err(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("search task failed: {e}"))),
    };
    let audited = match answered.audit {
        Ok(durable) => audited(&s, durable.await),
        Err(why) => audited(&s, Err(why)),
    };
    tracing::debug!(
        search_ms = answered.searched.as_secs_f64() * 1e3,
        rendered_ms = answered.rendered.as_secs_f64() * 1e3,
        audited_ms = started.elapsed().as_secs_f64() * 1e3,
        hits = answered.hits,
        "search answered"
    );
    audited?;
    let body = answered.body?;
    s.metrics.index.searches.inc();
    s.metrics.index.search_seconds.observe(started.elapsed().as_secs_f64());
    Ok(json_response(body))
}

/// An audit record on its way to the disk: its offset once durable.
type Durable = Pin<Box<dyn Future<Output = Result<Offset, String>> + Send>>;

/// What the blocking part of a search hands back: the queued audit record,
/// the rendered answer, and when each step was done (from the request's start).
struct Answered {
    audit: Result<Durable, String>,
    body: Result<Vec<u8>, SearchError>,
    hits: usize,
    searched: Duration,
    rendered: Duration,
}

/// The answer's JSON: the hits' records read from the logs, with snippets.
fn render(st: &AppState, stores: &[Arc<SiteStore>], out: search::SitesOutcome) -> Result<Vec<u8>, SearchError> {
    let at: Vec<(usize, Offset)> = out.hits.iter().map(|h| (h.store, h.found.offset)).collect();
    let held = crate::sites::blocks(stores, &st.blocks, &at)?;
    let records = views(&held)?;
    let mut snippets = Vec::with_capacity(out.parts.len());
    for (query, searcher) in &out.parts {
        snippets.push(Snippets::create(searcher, &**query, st.index.fields.body, st.search.snippet_chars)?);
    }
    let hits = out
        .hits
        .iter()
        .zip(&records)
        .map(|(h, rec)| HitJson {
            event: EventJson::new(h.found.offset, rec),
            snippet: snippets[h.store].snippet(rec.body),
            score: h.found.score,
        })
        .collect();
    let answer = SearchJson {
        hits,
        total: out.total,
        total_exact: out.total_exact,
        next_cursor: out.next_cursor,
        index_watermark: st.index.state().watermark,
        sites: stores
            .iter()
            .map(|x| SiteWatermark { site: x.site.clone(), index_watermark: x.index.state().watermark })
            .collect(),
    };
    // Room for the whole answer up front: a page of bodies grows a Vec
    // through six or seven copies otherwise. A hit is its body twice (text
    // and snippet) and under 400 bytes of other fields, for common names.
    let room = 256 + records.iter().map(|r| 2 * r.body.len() + 400).sum::<usize>();
    let mut body = Vec::with_capacity(room);
    serde_json::to_writer(&mut body, &answer).map_err(|e| SearchError::Internal(e.to_string()))?;
    Ok(body)
}

pub async fn get_conversation(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(raw): Params,
) -> Result<Json<Value>, ApiError> {
    let who = caller.require(&[Role::Auditor])?.clone();
    let p = params(raw, &["around", "context", "site"])?;
    let site = nonempty(&p, "site");
    let id: u64 = id.parse().map_err(|_| ApiError::bad_request(format!("conversation ids are numbers, not {id:?}")))?;
    let around: Option<u64> = number(&p, "around")?;
    let context: usize = number(&p, "context")?.unwrap_or(10);
    let max = s.search.max_transcript_events;
    if context > max {
        return Err(ApiError::bad_request(format!("`context` {context} is over the maximum of {max}")));
    }
    let st = s.clone();
    let wanted = site.clone();
    let body = tokio::task::spawn_blocking(move || -> Result<(Value, usize), SearchError> {
        // Conversation ids are per site: on HQ, `site` names the one meant,
        // and without it the id must be found at exactly one site.
        let stores = match &wanted {
            Some(w) => vec![st
                .sites
                .get(w)
                .ok_or_else(|| SearchError::NotFound(format!("this server holds no site `{w}`")))?],
            None => st.sites.all(),
        };
        let mut found = Vec::new();
        for store in stores {
            let (offsets, truncated) = search::conversation_offsets(&store.index, id, max)?;
            if !offsets.is_empty() {
                found.push((store, offsets, truncated));
            }
        }
        if found.len() > 1 {
            let sites: Vec<&str> = found.iter().map(|(x, ..)| x.site.as_str()).collect();
            return Err(SearchError::Bad(format!(
                "conversation {id} exists at sites {}: name one with `site`",
                sites.join(", ")
            )));
        }
        let Some((store, offsets, truncated)) = found.pop() else {
            let covered: Vec<String> = st
                .sites
                .all()
                .iter()
                .map(|x| format!("{} below offset {}", x.site, x.index.state().watermark))
                .collect();
            return Err(SearchError::NotFound(format!(
                "no conversation {id} in the index (it covers {})",
                covered.join(", ")
            )));
        };
        let watermark = store.index.state().watermark;
        let held = st.blocks.blocks(&store.log, &offsets)?;
        let records = views(&held)?;
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
            participants.insert(r.from);
            participants.extend(r.to.iter().copied());
        }
        let first = &records[0];
        let started = records.iter().map(|r| r.ts.instant).min().unwrap_or(first.ts.instant);
        let ended = records.iter().map(|r| r.ts.instant).max().unwrap_or(first.ts.instant);
        let events: Vec<Value> = window
            .clone()
            .map(|i| serde_json::to_value(EventJson::new(offsets[i], &records[i])))
            .collect::<Result<_, _>>()
            .map_err(|e| SearchError::Internal(e.to_string()))?;
        let n = events.len();
        Ok((
            json!({
                "conversation": {
                    "id": id,
                    "site": store.site,
                    "network": first.network,
                    "channel": first.channel,
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
    let query = json!({"conversation": id, "site": site, "around": around, "context": around.map(|_| context)});
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
            "rollups": {
                "watermark": st.rollups.watermark().0,
                "lag_events": head.saturating_sub(st.rollups.watermark().0),
                "files": st.rollups.manifest().files.len(),
                "bytes": st.rollups.manifest().bytes(),
            },
            "site": {"id": st.site.as_str()},
            "shipping": st.shipper.as_ref().map(|sh| {
                let x = sh.status();
                st.metrics.replication.set_shipping(&x);
                json!(x)
            }),
            "replicas": st.replicas.as_ref().map(|r| {
                let sites = r.status();
                st.metrics.replication.set_replicas(&sites);
                let with_derived: Vec<Value> = sites
                    .iter()
                    .map(|x| {
                        let mut v = json!(x);
                        if let Some(store) = st.sites.get(&x.site).filter(|_| x.site != st.site.as_str()) {
                            let ix = store.index.state();
                            let rw = store.rollups.watermark().0;
                            st.metrics.replication.set_replica_derived(&store);
                            v["index"] = json!({
                                "watermark": ix.watermark,
                                "docs": ix.docs,
                                "lag_events": x.high_water.saturating_sub(ix.watermark),
                                "consistent": ix.last_reconciliation.as_ref().is_none_or(|r| r.ok),
                                "error": ix.error,
                            });
                            v["rollups"] = json!({
                                "watermark": rw,
                                "lag_events": x.high_water.saturating_sub(rw),
                            });
                        }
                        v
                    })
                    .collect();
                json!(with_derived)
            }),
        })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("status task failed: {e}")))?;
    Ok(Json(body))
}
