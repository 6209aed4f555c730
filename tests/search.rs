//! Search, transcripts, status and the audit trail end to end against the
//! real binary; and a kill -9 while indexing, after which the index holds
//! every acknowledged event exactly once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn event(source: &str, seq: u64, network: &str, from: &str, to: &str, channel: Option<&str>, body: &str) -> String {
    let mut e = json!({"source": source, "seq": seq, "network": network, "kind": "message",
                       "ts": format!("2026-11-22T10:{:02}:{:02}Z", (seq / 60) % 60, seq % 60),
                       "from": from, "to": [to], "body": body});
    if let Some(c) = channel {
        e["channel"] = json!(c);
    }
    e.to_string() + "\n"
}

fn get(server: &Server, path: &str, token: &str) -> (u16, Value) {
    let (status, body) = server.get_with(path, token).expect("request");
    (status, serde_json::from_str(&body).unwrap_or_else(|_| json!(body)))
}

/// Waits until the index covers the whole log; returns the status.
fn wait_indexed(server: &Server, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, s) = get(server, "/v1/status", token);
        assert_eq!(status, 200, "{s}");
        if s["index"]["lag_events"] == 0 && s["index"]["watermark"] == s["log"]["head"] {
            return s;
        }
        assert!(Instant::now() < deadline, "the index did not catch up: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn offsets(v: &Value) -> Vec<u64> {
    v["hits"].as_array().expect("hits").iter().map(|h| h["offset"].as_u64().expect("offset")).collect()
}

#[test]
fn search_transcripts_status_and_every_read_audited() {
    // Fields bind in order and drop in reverse: the server stops before the directory goes.
    let Archive { tmp: _tmp, data, server, ingest, auditor, admin } = Archive::start();
    let mut body = String::new();
    body += &event("proxy-1", 1, "irc", "alice", "bob", Some("#ops"), "The quick brown fox jumps over the lazy dog");
    body += &event("proxy-1", 2, "irc", "bob", "alice", Some("#ops"), "quick question: is the deploy done?");
    body += &event("proxy-1", 3, "xmpp", "carol", "dave", None, "Let's meet in 東京都 next week 🎉");
    body += &event("proxy-1", 4, "irc", "alice", "bob", Some("#ops"), "deployment finished <script>alert(1)</script>");
    for seq in 5..30 {
        body += &event("proxy-2", seq, "irc", "bot", "room", Some("#pages"), &format!("page filler {seq}"));
    }
    let (status, _, reply) = server.post_events(&ingest, body.as_bytes()).expect("post");
    assert_eq!(status, 200, "{reply}");
    let status = wait_indexed(&server, &auditor);
    assert_eq!(status["index"]["docs"], 29);
    assert_eq!(status["index"]["coverage"], 1.0);
    assert_eq!(status["index"]["consistent"], true);
    let mut reads = 0;

    // Roles: only auditors read content; admins see status, not content.
    assert_eq!(server.get("/v1/search?q=quick").expect("req").0, 401);
    assert_eq!(get(&server, "/v1/search?q=quick", &ingest).0, 403);
    assert_eq!(get(&server, "/v1/search?q=quick", &admin).0, 403);
    assert_eq!(get(&server, "/v1/conversations/1", &admin).0, 403);
    assert_eq!(get(&server, "/v1/status", &admin).0, 200);
    assert_eq!(get(&server, "/v1/status", &ingest).0, 403);

    let (s, v) = get(&server, "/v1/search?q=quick", &auditor);
    reads += 1;
    assert_eq!(s, 200, "{v}");
    assert_eq!(offsets(&v), [1, 0]);
    let hit = &v["hits"][0];
    assert_eq!(hit["body"], "quick question: is the deploy done?");
    assert_eq!(hit["from"], "bob");
    assert_eq!(hit["network"], "irc");
    assert_eq!(hit["channel"], "#ops");
    assert!(hit["snippet"].as_str().expect("snippet").contains("<b>quick</b>"), "{hit}");
    assert!(hit["conversation_id"].is_u64());

    let (_, v) = get(&server, &format!("/v1/search?q={}", enc("東京")), &auditor);
    reads += 1;
    assert_eq!(offsets(&v), [2]);
    let (_, v) = get(&server, &format!("/v1/search?q={}", enc("deploy*")), &auditor);
    reads += 1;
    assert_eq!(offsets(&v), [3, 1]);
    assert!(v["hits"][0]["snippet"].as_str().expect("snippet").contains("&lt;script&gt;"), "snippets are escaped");
    // A filter holds whatever the query says.
    let (_, v) = get(&server, &format!("/v1/search?q={}&network=xmpp", enc("network:irc OR quick OR meet")), &auditor);
    reads += 1;
    assert_eq!(offsets(&v), [2]);
    let (_, v) = get(&server, "/v1/search?q=quick&participant=ALICE&sort=relevance", &auditor);
    reads += 1;
    assert_eq!(offsets(&v).len(), 2);
    assert!(v["hits"][0]["score"].as_f64().is_some_and(|s| s > 0.0));

    // Cursor pagination over 25 hits, 10 at a time.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let c = cursor.as_deref().map(|c| format!("&cursor={}", enc(c))).unwrap_or_default();
        let (s, v) = get(&server, &format!("/v1/search?q=page&limit=10{c}"), &auditor);
        reads += 1;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["total"], 25);
        seen.extend(offsets(&v));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, (4..29).rev().collect::<Vec<u64>>());

    // Bounds and bad parameters: 400 with a reason, and no audit record.
    for (path, why) in [
        (format!("/v1/search?q={}", "a".repeat(5000)), "bytes"),
        (
            format!("/v1/search?q={}", enc(&(0..300).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" OR "))),
            "clauses",
        ),
        ("/v1/search?q=p*".to_string(), "prefix"),
        ("/v1/search?q=quick&limit=5000".to_string(), "limit"),
        ("/v1/search?q=quick&sort=random".to_string(), "sort"),
        ("/v1/search?q=quick&from=yesterday".to_string(), "time"),
        ("/v1/search?q=quick&bogus=1".to_string(), "unknown parameter"),
        (format!("/v1/search?q={}", enc("secret:x")), "unknown field"),
        ("/v1/search?q=page&cursor=xyz".to_string(), "cursor"),
        ("/v1/conversations/abc".to_string(), "numbers"),
    ] {
        let (s, v) = get(&server, &path, &auditor);
        let short: String = path.chars().take(80).collect();
        assert_eq!(s, 400, "{short}: {v}");
        assert!(v["error"].as_str().expect("error").contains(why), "{short}: {v}");
    }
    let (s, _) = server.get_with(&format!("/v1/search?q={}", "a".repeat(100_000)), &auditor).expect("req");
    assert!((400..500).contains(&s), "a 100 KB query is refused, got {s}");

    // A transcript, whole and around a hit.
    let (_, v) = get(&server, "/v1/search?q=fox", &auditor);
    reads += 1;
    let conv = v["hits"][0]["conversation_id"].as_u64().expect("conversation");
    let (s, t) = get(&server, &format!("/v1/conversations/{conv}"), &auditor);
    reads += 1;
    assert_eq!(s, 200, "{t}");
    let events: Vec<u64> =
        t["events"].as_array().expect("events").iter().map(|e| e["offset"].as_u64().expect("o")).collect();
    assert_eq!(events, [0, 1, 3], "the #ops conversation, in order");
    assert_eq!(t["conversation"]["participants"], json!(["alice", "bob"]));
    assert_eq!(t["conversation"]["channel"], "#ops");
    assert_eq!(t["conversation"]["started_at"], "2026-11-22T10:00:01Z");
    assert_eq!(t["conversation"]["ended_at"], "2026-11-22T10:00:04Z");
    let (_, t) = get(&server, &format!("/v1/conversations/{conv}?around=1&context=0"), &auditor);
    reads += 1;
    assert_eq!(t["events"].as_array().expect("events").len(), 1);
    assert_eq!(t["events"][0]["offset"], 1);
    assert_eq!(get(&server, "/v1/conversations/999999", &auditor).0, 404);
    assert_eq!(get(&server, &format!("/v1/conversations/{conv}?around=2"), &auditor).0, 404);

    // The CLI goes through the same endpoint, so it is audited too.
    let url = format!("http://{}", server.addr);
    let out = run(&data, &["search", "quick", "--url", &url, "--token", &auditor]);
    reads += 1;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("bob -> alice: quick question"), "{}", stdout(&out));
    let out = run(&data, &["conversation", &conv.to_string(), "--url", &url, "--token", &auditor, "--json"]);
    reads += 1;
    let t: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(t["events"].as_array().expect("events").len(), 3);
    let out = run(&data, &["search", "quick", "--url", &url, "--token", &ingest]);
    assert_eq!(out.status.code(), Some(2), "a refused read is an error");

    let (_, metrics) = server.get_with("/metrics", &admin).expect("metrics");
    assert!(metrics.contains("verbatim_index_docs 29"), "{metrics}");
    assert!(metrics.contains("verbatim_index_lag_events 0"));
    assert!(metrics.contains(&format!("verbatim_audit_records_total {reads}")), "{metrics}");
    let (status, err) = server.stop();
    assert!(status.success(), "{err}");

    // Every read is in the audit stream, with who, what and how many.
    let out = run(&data, &["audit", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let records: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(records.len(), reads, "one audit record per read");
    let first: Value = serde_json::from_str(records[0]["body"].as_str().expect("body")).expect("audit body");
    assert_eq!(records[0]["kind"], "audit.search");
    assert_eq!(records[0]["to"], json!(["auditor"]));
    assert_eq!(first["query"]["q"], "quick");
    assert_eq!(first["results"], 2);
    assert!(records.iter().any(|r| r["kind"] == "audit.conversation"));
    let out = run(&data, &["audit"]);
    assert!(stdout(&out).contains("search"), "{}", stdout(&out));
    let out = run(&data, &["verify"]);
    assert!(out.status.success());

    // The index is derived: rebuilt from the log, it answers the same.
    let out = run(&data, &["reindex"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("indexed 29 events"), "{}", stdout(&out));
    assert!(stdout(&out).contains("every offset checked"), "{}", stdout(&out));
    let server = Server::start(&data);
    let out = run(&data, &["reindex"]);
    assert_eq!(out.status.code(), Some(2), "reindex refuses a data directory in use: {}", stderr(&out));
    let status = wait_indexed(&server, &auditor);
    assert_eq!(status["index"]["docs"], 29);
    let (_, v) = get(&server, "/v1/search?q=quick", &auditor);
    assert_eq!(offsets(&v), [1, 0]);
    let (status, err) = server.stop();
    assert!(status.success(), "{err}");
}

#[test]
fn kill9_while_indexing_then_every_event_indexed_exactly_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let ingest = create_token(&data, "ingest", Some("proxy-*"));
    let auditor = create_token(&data, "auditor", None);
    let mut seq = 0u64;
    for round in 0..3 {
        let server = Server::start(&data);
        for _ in 0..20 {
            let body: String = (0..500)
                .map(|_| {
                    seq += 1;
                    event("proxy-1", seq, "irc", "alice", "bob", None, &format!("round{round} token{seq} some chatter"))
                })
                .collect();
            let (status, _, reply) = server.post_events(&ingest, body.as_bytes()).expect("post");
            assert_eq!(status, 200, "{reply}");
        }
        // Killed while the indexer is still working on what was just acknowledged.
        server.kill9();
    }
    let server = Server::start(&data);
    let status = wait_indexed(&server, &auditor);
    assert_eq!(status["log"]["head"], seq);
    assert_eq!(status["index"]["docs"], seq, "{status}");
    assert_eq!(status["index"]["consistent"], true, "{status}");
    let rec = &status["index"]["last_reconciliation"];
    assert_eq!(rec["ok"], true, "{status}");
    assert_eq!(rec["offsets_checked"], true, "the first check after a start counts every offset: {status}");
    for probe in [1, 499, 500, 501, 10_000, 15_000, seq] {
        let (_, v) = get(&server, &format!("/v1/search?q=token{probe}"), &auditor);
        assert_eq!(offsets(&v), [probe - 1], "token{probe}: {v}");
    }
    let (_, v) = get(&server, "/v1/search?q=round1&limit=1", &auditor);
    assert_eq!(v["total"], 10_000);
    server.stop();
}
