//! Handler tests through the router with `oneshot`: every status code of
//! `POST /v1/events`, and that a refused request stores nothing.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::auth::TokenStore;
use crate::ingest::{IngestSequencer, SessionConfig};
use crate::log::io::MemStorage;
use crate::log::{Log, LogConfig};
use crate::paths::DataDir;
use crate::state::StateDb;

struct Fixture {
    _tmp: tempfile::TempDir,
    state: Arc<AppState>,
    storage: MemStorage,
    audit_storage: MemStorage,
    ingest: String,
    other_ingest: String,
    auditor: String,
}

fn fixture(queue_depth: usize) -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(tmp.path());
    let storage = MemStorage::new();
    let audit_storage = MemStorage::new();
    let config = LogConfig { queue_depth, ..LogConfig::default() };
    let log = Log::open(Arc::new(storage.clone()), Path::new("/data/log"), config).expect("open log");
    let seq =
        IngestSequencer::open(StateDb::open(&data.state()).expect("state"), SessionConfig::default(), &log.reader())
            .expect("seq");
    let metrics = Arc::new(Metrics::default());
    let blocks = Arc::new(crate::log::cache::BlockCache::new(1 << 20));
    let rollups = crate::rollup::Rollups::open(&data.rollup(), metrics.rollup.clone()).expect("rollups");
    let index = {
        let (index, fields) = crate::index::in_ram();
        crate::index::indexer::SearchIndex::new(index, fields, metrics.index.clone(), 1).expect("index")
    };
    let own = crate::sites::SiteStore {
        site: "test".into(),
        log: log.reader(),
        index: index.clone(),
        rollups: rollups.clone(),
    };
    let sites = crate::sites::Sites::local(own);
    let sql =
        crate::sql::SqlEngine::new(sites.clone(), blocks.clone(), Default::default(), Default::default()).expect("sql");
    let (handle, _) = LogHandle::start(log, Box::new(seq), metrics.log.clone());
    let tokens = Arc::new(TokenStore::new(&data));
    let ingest = tokens.create(Role::Ingest, vec!["proxy-*".into()], None).expect("token").0;
    let other_ingest = tokens.create(Role::Ingest, vec!["sip-1".into()], None).expect("token").0;
    let auditor = tokens.create(Role::Auditor, vec![], None).expect("token").0;
    let ingest_limits = IngestConfig {
        max_body_bytes: 64 << 10,
        max_decoded_bytes: 256 << 10,
        max_batch_events: 100,
        retry_after_secs: 2,
    };
    let state = Arc::new(AppState {
        log: handle,
        metrics: metrics.clone(),
        tokens,
        limits: Limits { max_recipients: 50, ..Limits::default() },
        ingest: ingest_limits,
        site: SiteId::new("test"),
        index,
        search: crate::index::search::SearchConfig::default(),
        audit: crate::audit::Audit::open_on(
            Arc::new(audit_storage.clone()),
            Path::new("/data/audit"),
            LogConfig::default(),
            SiteId::new("test"),
        )
        .expect("audit")
        .0,
        blocks,
        rollups,
        sql,
        data_dir: tmp.path().to_path_buf(),
        replication: crate::ship::ReplicationConfig::default(),
        capacity: crate::config::CapacityConfig { retention_days: Some(2557.0) },
        replicas: None,
        shipper: None,
        sites,
    });
    Fixture { _tmp: tmp, state, storage, audit_storage, ingest, other_ingest, auditor }
}

fn event(seq: u64, body: &str) -> Value {
    json!({"source": "proxy-1", "seq": seq, "network": "irc", "kind": "message", "ts": "2026-11-22T10:00:00Z", "from": "alice", "to": ["bob"], "body": body})
}

fn ndjson(events: &[Value]) -> Vec<u8> {
    events.iter().map(|e| format!("{e}\n")).collect::<String>().into_bytes()
}

struct Post {
    body: Vec<u8>,
    token: Option<String>,
    content_type: &'static str,
    encoding: Option<&'static str>,
    content_length: Option<u64>,
}

impl Post {
    fn new(body: Vec<u8>, token: &str) -> Self {
        Self {
            body,
            token: Some(token.to_string()),
            content_type: "application/x-ndjson",
            encoding: None,
            content_length: None,
        }
    }
}

async fn send(f: &Fixture, p: Post) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::post("/v1/events").header(header::CONTENT_TYPE, p.content_type);
    if let Some(t) = &p.token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(e) = p.encoding {
        req = req.header(header::CONTENT_ENCODING, e);
    }
    if let Some(n) = p.content_length {
        req = req.header(header::CONTENT_LENGTH, n);
    }
    let resp = router(f.state.clone()).oneshot(req.body(Body::from(p.body)).expect("request")).await.expect("response");
    let status = resp.status();
    let retry = resp.headers().get(header::RETRY_AFTER).map(|v| v.to_str().expect("ascii").to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (status, retry, json)
}

fn head(f: &Fixture) -> u64 {
    f.state.log.reader().head().0
}

#[tokio::test]
async fn accepts_then_deduplicates_a_retried_batch() {
    let f = fixture(64);
    let batch = ndjson(&[event(1, "a"), event(2, "b"), event(3, "c")]);
    let (status, _, body) = send(&f, Post::new(batch.clone(), &f.ingest)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"accepted": 3, "duplicates": 0, "first_offset": 0, "last_offset": 2}));
    for _ in 0..100 {
        let (status, _, body) = send(&f, Post::new(batch.clone(), &f.ingest)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"accepted": 0, "duplicates": 3, "first_offset": 0, "last_offset": 2}));
    }
    // A JSON array works the same way, and mixes new and old.
    let arr = serde_json::to_vec(&json!([event(3, "c"), event(4, "d")])).expect("json");
    let mut p = Post::new(arr, &f.ingest);
    p.content_type = "application/json";
    let (status, _, body) = send(&f, p).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"accepted": 1, "duplicates": 1, "first_offset": 2, "last_offset": 3}));
    assert_eq!(head(&f), 4);
}

#[tokio::test]
async fn gzip_and_zstd_bodies_are_accepted() {
    let f = fixture(64);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&ndjson(&[event(1, "gzip")])).expect("gzip");
    let mut p = Post::new(gz.finish().expect("gzip"), &f.ingest);
    p.encoding = Some("gzip");
    assert_eq!(send(&f, p).await.0, StatusCode::OK);
    let mut p = Post::new(zstd::encode_all(&ndjson(&[event(2, "zstd")])[..], 3).expect("zstd"), &f.ingest);
    p.encoding = Some("zstd");
    assert_eq!(send(&f, p).await.0, StatusCode::OK);
    assert_eq!(head(&f), 2);
}

#[tokio::test]
async fn small_and_large_bodies_are_parsed_alike() {
    // Bodies up to 16 KiB are parsed on the request's task, larger ones on
    // the blocking pool: both paths store, and both refuse with the index.
    let f = fixture(64);
    let small = ndjson(&[event(1, "small")]);
    let large_events: Vec<Value> = (2..102).map(|i| event(i, &"x".repeat(200))).collect();
    let large = ndjson(&large_events);
    assert!(small.len() < 16 * 1024 && large.len() > 16 * 1024, "{} {}", small.len(), large.len());
    assert_eq!(send(&f, Post::new(small, &f.ingest)).await.0, StatusCode::OK);
    let (status, _, body) = send(&f, Post::new(large, &f.ingest)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 100);
    let mut bad = large_events.clone();
    bad[75]["seq"] = json!("one");
    let (status, _, body) = send(&f, Post::new(ndjson(&bad), &f.ingest)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"]["index"], 75, "{body}");
    assert_eq!(head(&f), 101);
}

#[tokio::test]
async fn bad_input_is_a_clear_400_and_stores_nothing() {
    let f = fixture(64);
    let good = event(1, "fine").to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated JSON", format!("{good}\n{{\"source\": \"proxy-1\", \"seq\": 2").into_bytes()),
        ("trailing garbage", format!("{good} garbage").into_bytes()),
        ("wrong type", good.replace("\"seq\":1", "\"seq\":\"one\"").into_bytes()),
        ("invalid UTF-8", [good.as_bytes(), b"\n{\"body\": \"\xff\"}"].concat()),
        ("lone surrogate", good.replace("\"fine\"", "\"\\ud800\"").into_bytes()),
        ("1e400", good.replace("\"seq\":1", "\"seq\":1e400").into_bytes()),
        ("seq of 2^64", good.replace("\"seq\":1", "\"seq\":18446744073709551616").into_bytes()),
        ("duplicate keys", good.replace("\"seq\":1", "\"seq\":1,\"seq\":1").into_bytes()),
        ("empty batch", b"\n\n".to_vec()),
        ("empty array", b"[]".to_vec()),
        ("missing field", good.replace("\"from\":\"alice\",", "").into_bytes()),
        ("unknown field", good.replace("\"body\"", "\"bodyy\"").into_bytes()),
        ("bad timestamp", good.replace("2026-11-22T10:00:00Z", "22/11/2026").into_bytes()),
        (
            "too many recipients",
            event(1, "x")
                .to_string()
                .replace("[\"bob\"]", &serde_json::to_string(&vec!["bob"; 51]).expect("json"))
                .into_bytes(),
        ),
    ];
    for (what, body) in cases {
        let (status, _, reply) = send(&f, Post::new(body, &f.ingest)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: no message: {reply}");
    }
    let (_, _, reply) = send(&f, Post::new(ndjson(&[event(1, "a"), json!({"source": "proxy-1"})]), &f.ingest)).await;
    assert_eq!(reply["detail"]["index"], 1, "the failing event is named: {reply}");
    let mut bad = event(1, "a");
    bad["direction"] = json!("sideways");
    let (_, _, reply) = send(&f, Post::new(ndjson(&[event(0, "ok"), bad]), &f.ingest)).await;
    assert_eq!(
        (reply["detail"]["index"].clone(), reply["detail"]["field"].clone()),
        (json!(1), json!("direction")),
        "{reply}"
    );
    assert_eq!(head(&f), 0, "a refused batch stored something");
}

#[tokio::test]
async fn auth_401_and_403() {
    let f = fixture(64);
    let body = ndjson(&[event(1, "a")]);
    let mut p = Post::new(body.clone(), "");
    p.token = None;
    assert_eq!(send(&f, p).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&f, Post::new(body.clone(), "vbt_not-a-token")).await.0, StatusCode::UNAUTHORIZED);
    let (status, _, reply) = send(&f, Post::new(body.clone(), &f.auditor)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    let (status, _, reply) = send(&f, Post::new(body.clone(), &f.other_ingest)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a token for another source: {reply}");
    assert_eq!(head(&f), 0);
    // Only /healthz is open.
    let resp = router(f.state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = router(f.state.clone())
        .oneshot(Request::get("/healthz").body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn limits_413_and_media_type_415() {
    let f = fixture(64);
    // Announced too large: refused before reading.
    let mut p = Post::new(ndjson(&[event(1, "a")]), &f.ingest);
    p.content_length = Some(64 << 20);
    assert_eq!(send(&f, p).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // One byte over the limit, without a Content-Length to trust.
    let mut body = ndjson(&[event(1, "a")]);
    body.resize((64 << 10) + 1, b' ');
    assert_eq!(send(&f, Post::new(body, &f.ingest)).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly at the limit is fine.
    let mut body = ndjson(&[event(1, "a")]);
    body.resize(64 << 10, b'\n');
    assert_eq!(send(&f, Post::new(body, &f.ingest)).await.0, StatusCode::OK);
    // A compression bomb: small on the wire, far past max_decoded_bytes.
    let mut p = Post::new(zstd::encode_all(&vec![b' '; 50 << 20][..], 19).expect("zstd"), &f.ingest);
    p.encoding = Some("zstd");
    assert!(p.body.len() < 64 << 10);
    assert_eq!(send(&f, p).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // Too many events in one batch.
    let many: Vec<Value> = (10..111).map(|i| event(i, "x")).collect();
    assert_eq!(send(&f, Post::new(ndjson(&many), &f.ingest)).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // Wrong media type and unknown encoding.
    let mut p = Post::new(ndjson(&[event(2, "a")]), &f.ingest);
    p.content_type = "text/plain";
    assert_eq!(send(&f, p).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut p = Post::new(ndjson(&[event(2, "a")]), &f.ingest);
    p.encoding = Some("br");
    assert_eq!(send(&f, p).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(head(&f), 1);
}

#[tokio::test]
async fn reused_key_with_other_content_is_422() {
    let f = fixture(64);
    assert_eq!(send(&f, Post::new(ndjson(&[event(1, "original")]), &f.ingest)).await.0, StatusCode::OK);
    let (status, _, reply) = send(&f, Post::new(ndjson(&[event(2, "new"), event(1, "changed")]), &f.ingest)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert_eq!(reply["detail"], json!({"index": 1, "stored_at_offset": 0}));
    let (status, _, _) = send(&f, Post::new(ndjson(&[event(3, "x"), event(3, "y")]), &f.ingest)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(head(&f), 1, "a 422 batch stored something");
}

#[tokio::test]
async fn undurable_is_503_with_retry_after_and_a_retry_is_stored_once() {
    let f = fixture(64);
    f.storage.fail_sync_after(0);
    let batch = ndjson(&[event(1, "a"), event(2, "b")]);
    let (status, retry, reply) = send(&f, Post::new(batch.clone(), &f.ingest)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(retry.as_deref(), Some("2"));
    assert_eq!(head(&f), 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _, reply) = send(&f, Post::new(batch.clone(), &f.ingest)).await;
        if status == StatusCode::OK {
            assert_eq!(reply, json!({"accepted": 2, "duplicates": 0, "first_offset": 0, "last_offset": 1}));
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(std::time::Instant::now() < deadline, "the writer did not restart");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(head(&f), 2);
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    let f = fixture(1);
    let body = "x".repeat(20_000);
    let tasks: Vec<_> = (0..60u64)
        .map(|i| {
            let state = f.state.clone();
            let token = f.ingest.clone();
            let body = ndjson(&[event(i, &body)]);
            tokio::spawn(async move {
                let req = Request::post("/v1/events")
                    .header(header::CONTENT_TYPE, "application/x-ndjson")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::from(body))
                    .expect("request");
                let resp = router(state).oneshot(req).await.expect("response");
                (resp.status(), resp.headers().get(header::RETRY_AFTER).is_some())
            })
        })
        .collect();
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        match t.await.expect("task") {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::TOO_MANY_REQUESTS, true) => busy += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(busy > 0, "a queue of one was never full");
    assert_eq!(head(&f), ok, "every 200 is stored, nothing else");
}

async fn get(f: &Fixture, path: &str, token: &str) -> (StatusCode, Value) {
    let req = Request::get(path).header(header::AUTHORIZATION, format!("Bearer {token}"));
    let resp = router(f.state.clone()).oneshot(req.body(Body::empty()).expect("request")).await.expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_read_whose_audit_record_cannot_be_made_durable_fails() {
    let f = fixture(16);
    let audit_head = || f.state.audit.reader().head().0;
    let (status, body) = get(&f, "/v1/search?q=anything", &f.auditor).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(audit_head(), 1);
    f.audit_storage.fail_sync_after(0);
    let (status, body) = get(&f, "/v1/search?q=anything", &f.auditor).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().expect("error").contains("audit"), "{body}");
    assert!(body.get("hits").is_none(), "no content without an audit record");
    assert_eq!(audit_head(), 1);
    // Once the audit log's writer has restarted from its last durable block, reads work again.
    f.audit_storage.clear_faults();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _) = get(&f, "/v1/search?q=anything", &f.auditor).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "audit log did not recover");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(audit_head(), 2);
}

async fn post_sql(f: &Fixture, token: &str, sql: &str) -> (StatusCode, Option<String>, Value) {
    let req = Request::post("/v1/sql")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "sql": sql }).to_string()))
        .expect("request");
    let resp = router(f.state.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let retry = resp.headers().get(header::RETRY_AFTER).map(|v| v.to_str().expect("ascii").to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    (status, retry, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn sql_answers_auditors_only_and_never_without_a_durable_audit_record() {
    let f = fixture(16);
    let (status, _, reply) = send(&f, Post::new(ndjson(&[event(1, "hi there")]), &f.ingest)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let audit_head = || f.state.audit.reader().head().0;
    let (status, _, body) = post_sql(&f, &f.auditor, "SELECT sender, body, recipients FROM events").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], json!([["alice", "hi there", ["bob"]]]));
    assert_eq!(audit_head(), 1);
    let (status, _, _) = post_sql(&f, &f.ingest, "SELECT 1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = post_sql(&f, &f.auditor, "DROP TABLE events").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(audit_head(), 2, "refused queries are audited too");
    f.audit_storage.fail_sync_after(0);
    let (status, retry, body) = post_sql(&f, &f.auditor, "SELECT body FROM events").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(body["error"].as_str().expect("error").contains("audit"), "{body}");
    assert!(body.get("rows").is_none(), "no rows without an audit record");
    assert_eq!(audit_head(), 2);
    assert_eq!(f.state.metrics.index.audit_failures.get(), 1);
}

#[tokio::test]
async fn the_capacity_forecast_uses_the_configured_retention_unless_the_request_names_one() {
    let f = fixture(16);
    let (status, _, reply) = send(&f, Post::new(ndjson(&[event(1, "hi there"), event(2, "hello")]), &f.ingest)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, c) = get(&f, "/v1/capacity", &f.auditor).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let fc = &c["forecast"];
    assert_eq!((fc["retention_days"].clone(), fc["retention_from"].clone()), (json!(2557.0), json!("config")), "{c}");
    let growth = fc["growth_bytes_per_day"].as_f64().expect("growth");
    assert!(growth > 0.0, "{c}");
    assert_eq!(fc["steady_state_bytes"].as_f64(), Some(growth * 2557.0), "{c}");
    let (status, c) = get(&f, "/v1/capacity?retention_days=30", &f.auditor).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let fc = &c["forecast"];
    assert_eq!((fc["retention_days"].clone(), fc["retention_from"].clone()), (json!(30.0), json!("query")), "{c}");
    let (status, c) = get(&f, "/v1/capacity?retention_days=-1", &f.auditor).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{c}");
}
