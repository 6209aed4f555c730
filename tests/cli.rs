//! The operator CLI end to end: import, dump, verify, stats on real files.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::{json, Value};

/// Valid but hostile text that must come back byte-exact.
fn hostile_bodies() -> Vec<String> {
    vec![
        "nul \u{0} byte".into(),
        "\u{202E}right-to-left override\u{202C} then \u{2066}isolates\u{2069}".into(),
        "\u{1F469}\u{200D}\u{1F4BB} \u{1F3F3}\u{FE0F}\u{200D}\u{1F308} zwj sequences".into(),
        "\u{301}lone combining mark first, then e\u{301}\u{302}\u{303}".into(),
        "emoji \u{1F600}\u{1F4A9} and CJK 漢字かなカナ한글".into(),
        "tabs\tand\r\nnewlines\u{2028}\u{2029}".into(),
        "\u{FEFF}\u{FFFF}\u{10FFFF} edge code points".into(),
        "x".repeat(100_000),
        "é".repeat(50_000),
        String::new(),
    ]
}

fn event(seq: usize, body: &str) -> Value {
    json!({
        "source": "import-test", "seq": seq, "network": "irc", "kind": "message",
        "ts": "2026-11-22T09:30:00.123+01:00", "from": "alice", "to": ["bob"], "body": body,
        "direction": "internal", "attrs": {"client": "weechat"}
    })
}

fn ndjson(events: &[Value]) -> String {
    events.iter().fold(String::new(), |mut s, e| {
        writeln!(s, "{e}").expect("write");
        s
    })
}

#[test]
fn import_then_dump_is_byte_exact() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let bodies = hostile_bodies();
    let events: Vec<Value> = bodies.iter().enumerate().map(|(i, b)| event(i, b)).collect();
    let file = tmp.path().join("in.ndjson");
    std::fs::write(&file, ndjson(&events)).expect("write input");

    let out = run(&data, &["import", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "import failed: {}", stderr(&out));
    assert!(stdout(&out).contains(&format!("imported {} events", bodies.len())), "{}", stdout(&out));

    let out = run(&data, &["dump", "--from", "0"]);
    assert!(out.status.success(), "dump failed: {}", stderr(&out));
    let lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).expect("dump line is JSON")).collect();
    assert_eq!(lines.len(), bodies.len());
    for (i, (line, body)) in lines.iter().zip(&bodies).enumerate() {
        assert_eq!(line["offset"], json!(i));
        assert_eq!(line["body"].as_str().expect("body").as_bytes(), body.as_bytes(), "body of event {i}");
        assert_eq!(line["ts"], json!("2026-11-22T09:30:00.123+01:00"));
        assert_eq!(line["site"], json!("local"));
        assert_eq!(line["attrs"], json!({"client": "weechat"}));
    }

    let out = run(&data, &["dump", "--from", "7", "--limit", "2"]);
    let offsets: Vec<u64> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, vec![7, 8]);

    let out = run(&data, &["verify"]);
    assert!(out.status.success(), "verify: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains(&format!("records {}", bodies.len())));

    let out = run(&data, &["stats", "--json"]);
    let stats: Value = serde_json::from_str(&stdout(&out)).expect("stats JSON");
    assert_eq!(stats["events"], json!(bodies.len()));
    assert_eq!(stats["sealed_segments"], json!(1), "import seals what it wrote");
}

#[test]
fn a_bad_line_is_named_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let good = event(1, "fine");
    let cases: BTreeMap<&str, String> = [
        ("truncated JSON", "{\"source\": \"s\", \"seq\": 2,".to_string()),
        ("unknown field", event(2, "x").to_string().replace("\"body\"", "\"bodyy\"")),
        ("bad timestamp", event(2, "x").to_string().replace("2026-11-22T09:30:00.123+01:00", "yesterday")),
        ("seq beyond u64", event(2, "x").to_string().replace("\"seq\":2", "\"seq\":18446744073709551616")),
        ("lone surrogate", event(2, "x").to_string().replace("\"x\"", "\"\\udc00\"")),
    ]
    .into_iter()
    .collect();
    for (what, bad) in cases {
        let file = tmp.path().join("bad.ndjson");
        std::fs::write(&file, format!("{good}\n{bad}\n{good}\n")).expect("write");
        let out = run(&data, &["import", file.to_str().expect("path")]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains("bad.ndjson:2:"), "{what}: the line is not named: {}", stderr(&out));
    }
    let file = tmp.path().join("invalid-utf8.ndjson");
    let mut bytes = format!("{good}\n").into_bytes();
    bytes.extend_from_slice(b"{\"body\": \"\xff\xfe\"}\n");
    std::fs::write(&file, bytes).expect("write");
    assert_eq!(run(&data, &["import", file.to_str().expect("path")]).status.code(), Some(2));

    if data.join("log").exists() {
        let out = run(&data, &["stats", "--json"]);
        let stats: Value = serde_json::from_str(&stdout(&out)).expect("stats JSON");
        assert_eq!(stats["events"], json!(0), "a refused import stored something");
    }
}

#[test]
fn verify_reports_damage_with_file_and_byte_and_exit_code_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let events: Vec<Value> =
        (0..500).map(|i| event(i, &format!("message number {i} about the quarterly numbers"))).collect();
    let file = tmp.path().join("in.ndjson");
    std::fs::write(&file, ndjson(&events)).expect("write");
    assert!(run(&data, &["import", file.to_str().expect("path")]).status.success());
    assert!(run(&data, &["verify"]).status.success());

    let sealed = segment_files(&data).into_iter().find(|n| n.ends_with(".seg")).expect("a sealed segment");
    let path = data.join("log").join(&sealed);
    let mode = std::fs::metadata(&path).expect("stat").permissions();
    assert!(mode.readonly(), "sealed segments are read-only");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[300] ^= 0x04;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&path, bytes).expect("damage");

    let out = run(&data, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("DAMAGED") && stdout(&out).contains(&sealed) && stdout(&out).contains("at byte"),
        "{}",
        stdout(&out)
    );
    let out = run(&data, &["dump"]);
    assert!(!out.status.success(), "dump must not print damaged data as if it were fine");
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert_eq!(run(tmp.path(), &["no-such-command"]).status.code(), Some(2));
    assert_eq!(run(&tmp.path().join("nothing-here"), &["verify"]).status.code(), Some(2));
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[log]\nnot_a_key = 1\n").expect("write");
    let out = run(tmp.path(), &["--config", cfg.to_str().expect("path"), "stats"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not_a_key"), "{}", stderr(&out));
    // The same file named by VERBATIM_CONFIG.
    let out = std::process::Command::new(bin())
        .args(["--data-dir", tmp.path().to_str().expect("path"), "stats"])
        .env("VERBATIM_CONFIG", &cfg)
        .output()
        .expect("running verbatim");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not_a_key"), "{}", stderr(&out));
}
