//! The ingest endpoint end to end over real sockets: the first admin token,
//! idempotency across a restart, bad input that stores nothing, and a failed
//! fdatasync injected with `fiu-run` from Debian's fiu-utils.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn batch(from: u64, n: u64) -> Vec<u8> {
    (from..from + n)
        .map(|seq| {
            json!({"source": "proxy-nyc-1", "seq": seq, "network": "irc", "kind": "message", "ts": "2026-11-22T10:00:00Z",
                   "from": "alice", "to": ["bob"], "body": format!("message {seq} \u{202E} \u{0}")})
            .to_string()
                + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

fn reply(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| json!(body))
}

#[test]
fn first_start_writes_an_admin_token_and_ingest_is_idempotent_across_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let admin = std::fs::read_to_string(data.join("admin.token")).expect("admin.token").trim().to_string();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("admin.token")).expect("stat").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(server.get("/metrics").expect("metrics").0, 401);
    assert_eq!(server.get_with("/metrics", &admin).expect("metrics").0, 200);
    // Tokens are created while the server runs, and work at once.
    let token = create_token(&data, "ingest", Some("proxy-*"));
    let (status, _, body) = server.post_events(&token, &batch(1, 10)).expect("post");
    assert_eq!(
        (status, reply(&body)),
        (200, json!({"accepted": 10, "duplicates": 0, "first_offset": 0, "last_offset": 9}))
    );
    assert_eq!(server.post_events(&admin, &batch(1, 1)).expect("post").0, 403, "admin tokens do not ingest");
    let (status, _) = server.stop();
    assert!(status.success());

    let server = Server::start(&data);
    assert!(!std::fs::read_to_string(data.join("admin.token")).expect("admin").trim().is_empty());
    let (status, _, body) = server.post_events(&token, &batch(1, 10)).expect("post");
    assert_eq!(
        (status, reply(&body)),
        (200, json!({"accepted": 0, "duplicates": 10, "first_offset": 0, "last_offset": 9}))
    );
    let (status, _, body) = server.post_events(&token, &batch(5, 10)).expect("post");
    assert_eq!(
        (status, reply(&body)),
        (200, json!({"accepted": 4, "duplicates": 6, "first_offset": 4, "last_offset": 13}))
    );
    // Revoked tokens stop working on the next request.
    let list = run(&data, &["token", "list"]);
    let id = stdout(&list)
        .lines()
        .find(|l| l.contains("ingest"))
        .and_then(|l| l.split_whitespace().next())
        .expect("id")
        .to_string();
    assert!(run(&data, &["token", "revoke", &id]).status.success());
    assert_eq!(server.post_events(&token, &batch(20, 1)).expect("post").0, 401);
    server.stop();
    assert!(run(&data, &["verify"]).status.success());
}

#[test]
fn bad_requests_over_the_wire_store_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let token = create_token(&data, "ingest", Some("proxy-*"));
    let other = create_token(&data, "ingest", Some("sip-*"));
    let server = Server::start(&data);
    let good = batch(1, 1);
    let cases: Vec<(&str, u16, Vec<u8>)> = vec![
        ("truncated", 400, good[..good.len() / 2].to_vec()),
        ("trailing garbage", 400, [&good[..], b"}}"].concat()),
        ("invalid UTF-8", 400, [&good[..], b"{\"source\":\"\xc3\x28\"}\n"].concat()),
        ("empty", 400, b"".to_vec()),
        (
            "a 2^64 seq",
            400,
            String::from_utf8(good.clone())
                .expect("utf8")
                .replace("\"seq\":1", "\"seq\":18446744073709551616")
                .into_bytes(),
        ),
        ("one byte over 16 MiB", 413, vec![b' '; (16 << 20) + 1]),
    ];
    for (what, want, body) in cases {
        let (status, _, answer) = server.post_events(&token, &body).expect(what);
        assert_eq!(status, want, "{what}: {answer}");
        assert!(answer.contains("\"error\""), "{what}: {answer}");
    }
    let recipients: Vec<String> = (0..100_000).map(|i| format!("user{i}")).collect();
    let crowd = json!({"source": "proxy-nyc-1", "seq": 1, "network": "irc", "kind": "message", "ts": "2026-11-22T10:00:00Z",
                       "from": "alice", "to": recipients, "body": "hi all"});
    let (status, _, answer) = server.post_events(&token, format!("{crowd}\n").as_bytes()).expect("post");
    assert_eq!(status, 400, "100k recipients: {answer}");
    assert!(answer.contains("\"to\""), "{answer}");
    let bomb = zstd::encode_all(&vec![b' '; 200 << 20][..], 19).expect("zstd");
    let auth = format!("Bearer {token}");
    let headers =
        [("Authorization", auth.as_str()), ("Content-Type", "application/x-ndjson"), ("Content-Encoding", "zstd")];
    let (status, _, answer) = server.request("POST", "/v1/events", &headers, &bomb).expect("post");
    assert_eq!(status, 413, "compression bomb of {} bytes: {answer}", bomb.len());
    assert_eq!(server.post_events(&other, &good).expect("post").0, 403);
    assert_eq!(server.post_events("vbt_nope", &good).expect("post").0, 401);
    let (status, _, _) = server
        .request(
            "POST",
            "/v1/events",
            &[("Authorization", &format!("Bearer {token}")), ("Content-Type", "text/csv")],
            &good,
        )
        .expect("post");
    assert_eq!(status, 415);
    let (_, health) = server.get("/healthz").expect("health");
    assert_eq!(reply(&health)["log_head"], 0, "a refused request stored something");
    server.stop();
    assert!(run(&data, &["verify"]).status.success());
}

#[test]
fn a_failed_fdatasync_is_503_and_the_retry_is_stored_exactly_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let token = create_token(&data, "ingest", Some("proxy-*"));
    // fiu-run preloads libfiu's POSIX wrappers; fiu-ctrl flips a failure point by PID.
    let server = Server::start_with(&data, free_addr(), &["fiu-run", "-x"]);
    let pid = server.child.id().to_string();
    let fiu = |cmd: &str| {
        let st = Command::new("fiu-ctrl").args(["-c", cmd, &pid]).status().expect("fiu-ctrl");
        assert!(st.success(), "fiu-ctrl {cmd}");
    };
    assert_eq!(server.post_events(&token, &batch(1, 5)).expect("post").0, 200);

    fiu("enable name=posix/io/sync/fdatasync");
    let (status, head, body) = server.post_events(&token, &batch(6, 5)).expect("post");
    assert_eq!(status, 503, "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    assert_eq!(server.get("/healthz").expect("health").0, 503);
    fiu("disable name=posix/io/sync/fdatasync");

    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let (status, _, body) = server.post_events(&token, &batch(6, 5)).expect("post");
        if status == 200 {
            break reply(&body);
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "the writer did not recover");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        answer,
        json!({"accepted": 5, "duplicates": 0, "first_offset": 5, "last_offset": 9}),
        "the failed block must not count"
    );
    let (_, _, again) = server.post_events(&token, &batch(6, 5)).expect("post");
    assert_eq!(reply(&again)["duplicates"], 5);
    assert_eq!(server.get("/healthz").expect("health").0, 200);
    let (status, err) = server.stop();
    assert!(status.success(), "{err}");
    let dump = run(&data, &["dump"]);
    let seqs: Vec<u64> = stdout(&dump).lines().map(|l| reply(l)["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "every event exactly once, in order");
    assert!(run(&data, &["verify"]).status.success());
}
