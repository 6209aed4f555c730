//! `verbatim serve` end to end: zero-config start on loopback, health and
//! metrics, the data-directory lock, and a clean stop on SIGTERM.

mod common;

use common::*;

#[test]
fn serves_health_and_metrics_holds_the_lock_and_stops_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    // Some history first, so the server opens an existing log.
    let file = tmp.path().join("in.ndjson");
    let line = r#"{"source":"s","seq":1,"network":"xmpp","kind":"message","ts":"2026-11-22T10:00:00Z","from":"a@example.com","to":["b@example.com"],"body":"hello"}"#;
    std::fs::write(&file, format!("{line}\n")).expect("write");
    assert!(run(&data, &["import", file.to_str().expect("path")]).status.success());

    let server = Server::start(&data);
    assert!(server.addr.ip().is_loopback());
    let (status, body) = server.get("/healthz").expect("healthz");
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["log_head"], 1);

    assert_eq!(server.get("/metrics").expect("metrics").0, 401, "metrics need a token");
    let admin = std::fs::read_to_string(data.join("admin.token")).expect("admin.token");
    let (status, metrics) = server.get_with("/metrics", admin.trim()).expect("metrics");
    assert_eq!(status, 200);
    for name in [
        "verbatim_log_events_appended_total",
        "verbatim_log_fsync_seconds_bucket",
        "verbatim_log_block_bytes_bucket",
        "verbatim_log_queue_depth",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    assert_eq!(server.get("/nope").expect("404").0, 404);

    let out = run(&data, &["import", file.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));

    let (status, err) = server.stop();
    assert!(status.success(), "server exit {status}: {err}");
    assert!(err.contains("stopped cleanly"), "{err}");
    let files = segment_files(&data);
    assert!(files.iter().all(|f| !f.ends_with(".tmp")), "{files:?}");
    assert!(run(&data, &["verify"]).status.success());
}

#[test]
fn zero_config_uses_the_documented_defaults() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(bin())
        .current_dir(tmp.path())
        .args(["stats"])
        .env_remove("VERBATIM_DATA_DIR")
        .output()
        .expect("run");
    // No archive yet: the error names the default data directory.
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("verbatim-data/log"), "{}", stderr(&out));
}

/// Each thread of `pid`: its name and scheduling policy (0 normal, 5 idle),
/// from /proc.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks").flatten() {
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(t.path().join("comm")), std::fs::read_to_string(t.path().join("stat")))
        else {
            continue; // the thread ended meanwhile
        };
        // Fields after the parenthesised name; policy is field 41 of stat.
        let rest = &stat[stat.rfind(')').expect("stat") + 2..];
        let policy = rest.split(' ').nth(38).expect("policy").parse().expect("number");
        out.push((comm.trim().to_string(), policy));
    }
    out
}

#[test]
fn derived_stores_run_at_idle_priority_and_the_ack_path_does_not() {
    const IDLE: u32 = 5;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let token = create_token(&data, "ingest", Some("s"));
    let body = r#"{"source":"s","seq":1,"network":"irc","kind":"message","ts":"2026-11-22T10:00:00Z","from":"a","to":["b"],"body":"hi"}"#;
    assert_eq!(server.post_events(&token, body.as_bytes()).expect("post").0, 200);
    let pid = server.child.id();
    let mut threads = Vec::new();
    wait_until(20, "the indexer, tantivy's threads and the rollup writer at idle priority", || {
        threads = thread_policies(pid);
        let idle = |name: &str| threads.iter().any(|(n, p)| n.starts_with(name) && *p == IDLE);
        idle("indexer-idle") && idle("thrd-tantivy") && idle("rollup-idle")
    });
    for (name, policy) in &threads {
        if ["tokio-rt-worker", "log-writer"].iter().any(|n| name.starts_with(n)) {
            assert_ne!(*policy, IDLE, "{name} is on the ack or read path: {threads:?}");
        }
        if name.starts_with("thrd-tantivy") || name.starts_with("merge_thread") {
            assert_eq!(*policy, IDLE, "{name} is the index's: {threads:?}");
        }
    }
    let (status, err) = server.stop();
    assert!(status.success(), "server exit {status}: {err}");
}
