//! SQL end to end against the real binary: `POST /v1/sql` in three formats,
//! an acknowledged event visible at once, rollups catching up with the same
//! answers, `verbatim sql`, the Postgres endpoint through Debian's `psql`
//! (simple protocol, catalog introspection) and tokio-postgres (extended
//! protocol), refusals, and one audit record per query.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn event(seq: u64, network: &str, from: &str, to: &str, body: &str) -> String {
    json!({"source": "proxy-1", "seq": seq, "network": network, "kind": "message",
           "ts": format!("2026-11-22T10:{:02}:{:02}Z", (seq / 60) % 60, seq % 60),
           "from": from, "to": [to], "body": body})
    .to_string()
        + "\n"
}

fn sql(server: &Server, token: &str, accept: &str, query: &str) -> (u16, String, String) {
    let body = json!({ "sql": query }).to_string();
    let auth = format!("Bearer {token}");
    server
        .request(
            "POST",
            "/v1/sql",
            &[("Authorization", &auth), ("Content-Type", "application/json"), ("Accept", accept)],
            body.as_bytes(),
        )
        .expect("request")
}

fn sql_json(server: &Server, token: &str, query: &str) -> (u16, Value) {
    let (status, _, body) = sql(server, token, "application/json", query);
    (status, serde_json::from_str(&body).unwrap_or_else(|_| json!(body)))
}

fn psql(server: &Server, password: &str, args: &[&str]) -> std::process::Output {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &server.pg.port().to_string(), "-U", "auditor", "-d", "verbatim"])
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("running psql (tools/setup-test-machine.sh installs postgresql-client)")
}

fn audit_sql_records(data: &std::path::Path) -> Vec<Value> {
    let out = run(data, &["audit", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            let mut r = serde_json::from_str::<Value>(l).expect("audit json");
            // The record's body is the audit entry as JSON text.
            r["body"] = serde_json::from_str(r["body"].as_str().expect("body")).expect("audit body");
            r
        })
        .filter(|r| r["kind"] == "audit.sql")
        .collect()
}

#[test]
fn sql_over_http_cli_and_postgres_with_every_query_audited() {
    // Fields bind in order and drop in reverse: the server stops before the directory goes.
    let Archive { tmp: _tmp, data, server, ingest, auditor, admin } = Archive::start();
    let mut body = String::new();
    for seq in 1..=40 {
        body += &event(seq, "irc", "alice", "bob", &format!("message {seq}"));
    }
    for seq in 41..=50 {
        body += &event(seq, "xmpp", "carol@corp", "dave@ext", "早上好 🌅 \u{202e}reversed");
    }
    let (status, _, reply) = server.post_events(&ingest, body.as_bytes()).expect("post");
    assert_eq!(status, 200, "{reply}");
    let mut http_queries = 0;

    // Acknowledged means visible: the rollups have not run yet, the log tail answers.
    let q = "SELECT network, count(*) AS n, sum(body_len) AS bytes FROM events GROUP BY network ORDER BY network";
    let (s, v) = sql_json(&server, &auditor, q);
    http_queries += 1;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["columns"], json!(["network", "n", "bytes"]));
    assert_eq!(v["rows"], json!([["irc", 40, 391], ["xmpp", 10, 260]]));
    let fresh = v.clone();

    // Roles.
    assert_eq!(sql_json(&server, &ingest, q).0, 403);
    assert_eq!(sql_json(&server, &admin, q).0, 403);

    // CSV and Arrow by Accept; anything else is 406.
    let (s, head, csv) = sql(&server, &auditor, "text/csv", q);
    http_queries += 1;
    assert_eq!(s, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/csv"), "{head}");
    assert_eq!(csv, "network,n,bytes\nirc,40,391\nxmpp,10,260\n");
    let (s, head, arrow) = sql(&server, &auditor, "application/vnd.apache.arrow.stream", q);
    http_queries += 1;
    assert_eq!(s, 200);
    assert!(head.contains("application/vnd.apache.arrow.stream"), "{head}");
    assert!(arrow.len() > 100, "an IPC stream with a schema and a batch");
    assert_eq!(sql(&server, &auditor, "application/xml", q).0, 406);

    // Bodies come from the log, byte-exact.
    let (s, v) = sql_json(&server, &auditor, "SELECT body, recipients FROM events WHERE \"offset\" = 45");
    http_queries += 1;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rows"], json!([["早上好 🌅 \u{202e}reversed", ["dave@ext"]]]));

    // Refused, with the reason, and still audited.
    for bad in ["DROP TABLE events", "COPY events TO '/tmp/x.csv'", "SET datafusion.execution.batch_size = 1"] {
        let (s, v) = sql_json(&server, &auditor, bad);
        http_queries += 1;
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(v["error"].as_str().expect("error").contains("read-only"), "{v}");
    }

    // The rollups catch up; the same answer comes from Parquet.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, st) = server.get_with("/v1/status", &auditor).expect("status");
        let st: Value = serde_json::from_str(&st).expect("json");
        if st["rollups"]["watermark"] == 50 {
            assert!(st["rollups"]["files"].as_u64().expect("files") >= 1, "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "rollups did not catch up: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, v) = sql_json(&server, &auditor, q);
    http_queries += 1;
    assert_eq!(v, fresh);
    let (_, v) = sql_json(&server, &auditor, "SELECT count(*) AS n FROM conversations");
    http_queries += 1;
    assert_eq!(v["rows"], json!([[2]]));

    // `verbatim sql`: a table, control characters escaped; --csv as is.
    let out = Command::new(bin())
        .args(["--data-dir", data.to_str().expect("utf-8"), "sql", "--url", &format!("http://{}", server.addr)])
        .arg("SELECT sender, body FROM events WHERE \"offset\" IN (0, 45) ORDER BY \"offset\"")
        .env("VERBATIM_TOKEN", &auditor)
        .output()
        .expect("verbatim sql");
    http_queries += 1;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("alice"), "{text}");
    assert!(text.contains("\\u{202e}reversed"), "{text}");
    assert!(!text.contains('\u{202e}'), "{text}");
    assert!(text.contains("(2 rows)"), "{text}");

    // psql, simple protocol.
    let out = psql(&server, &auditor, &["-At", "-c", "SELECT count(*) FROM events WHERE network = 'irc'"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "40");
    let out = psql(&server, &auditor, &["-A", "-F", "|", "-c", q]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "network|n|bytes\nirc|40|391\nxmpp|10|260\n(2 rows)");
    // psql's catalog introspection.
    let out = psql(&server, &auditor, &["-c", "\\d"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for view in ["events", "conversations", "daily_usage"] {
        assert!(stdout(&out).contains(&format!("public | {view}")), "{}", stdout(&out));
    }
    let out = psql(&server, &auditor, &["-c", "\\d events"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("conversation_id"), "{}", stdout(&out));
    // Refused and bad passwords.
    let out = psql(&server, &auditor, &["-c", "DELETE FROM events"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
    let out = psql(&server, "not-a-token", &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("token"), "{}", stderr(&out));
    let out = psql(&server, &ingest, &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("auditor"), "{}", stderr(&out));

    // The extended protocol (every tokio-postgres query is Parse/Bind/Execute).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let conn = format!(
            "host=127.0.0.1 port={} user=auditor dbname=verbatim password={auditor} connect_timeout=10",
            server.pg.port()
        );
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("connect");
        let task = tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT sender, body_len FROM events WHERE network = $1 AND \"offset\" < $2 ORDER BY \"offset\"",
                &[&"xmpp", &42i64],
            )
            .await
            .expect("query");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].get::<_, String>(0), "carol@corp");
        assert_eq!(rows[0].get::<_, i64>(1), 26);
        let e = client.query("DROP TABLE events", &[]).await.expect_err("refused");
        assert!(e.to_string().contains("read-only") || format!("{e:?}").contains("read-only"), "{e:?}");
        drop(client);
        let _ = task.await;
    });

    // Reports by name, over HTTP and through the CLI.
    let (s, _, body) = server
        .request(
            "GET",
            "/v1/reports/top_talkers?from=2026-11-22",
            &[("Authorization", &format!("Bearer {auditor}"))],
            b"",
        )
        .expect("report");
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["rows"][0][0], "alice");
    assert_eq!(v["rows"][0][1], 40);
    let (s, _, _) = server
        .request("GET", "/v1/reports/nope", &[("Authorization", &format!("Bearer {auditor}"))], b"")
        .expect("report");
    assert_eq!(s, 404);
    let out = Command::new(bin())
        .args(["--data-dir", data.to_str().expect("utf-8"), "report", "volume_per_network_per_day", "--csv"])
        .args(["--url", &format!("http://{}", server.addr)])
        .env("VERBATIM_TOKEN", &auditor)
        .output()
        .expect("verbatim report");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "day,network,events,messages,bytes\n2026-11-22,irc,40,40,391\n2026-11-22,xmpp,10,10,260\n"
    );

    // Capacity: the formula with measured parameters, beside the bytes really used.
    let (s, c) = {
        let (s, b) = server.get_with("/v1/capacity?retention_days=365", &admin).expect("capacity");
        (s, serde_json::from_str::<Value>(&b).unwrap_or(json!(b)))
    };
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["measured"]["parameters"]["seats"], 2.0, "{c}");
    assert_eq!(c["measured"]["parameters"]["messages"], 50.0, "{c}");
    assert!(c["measured"]["bytes_per_user_per_day"].as_f64().expect("measured") > 0.0, "{c}");
    assert!(c["formula"]["literal"]["daily_mb"].as_f64().is_some(), "{c}");
    assert!(c["forecast"]["steady_state_bytes"].as_f64().is_some(), "{c}");
    assert_eq!(server.get_with("/v1/capacity", &ingest).expect("capacity").0, 403);
    let out = Command::new(bin())
        .args(["sizing", "--seats", "1000", "--avg-dur", "300", "--msg-length", "50", "--avg-number", "4", "--json"])
        .output()
        .expect("verbatim sizing");
    assert!(out.status.success(), "{}", stderr(&out));
    let sizing: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(sizing["consistent"]["bytes_per_conversation"], 1650.0);
    assert_eq!(sizing["literal"]["bytes_per_conversation"], 90150.0);

    // One audit record per HTTP query, refused ones included; psql's and
    // tokio-postgres's queries are there too, marked `pg`.
    let (status, _) = server.stop();
    assert!(status.success());
    let records = audit_sql_records(&data);
    let via = |v: &str| records.iter().filter(|r| r["body"]["query"]["via"] == v).count();
    assert_eq!(via("http"), http_queries, "{records:#?}");
    assert!(via("pg") >= 5, "{records:#?}");
    let refused = records.iter().filter(|r| r["body"]["query"]["outcome"] == "refused").count();
    assert!(refused >= 4, "three over HTTP, one or more over psql");
    let first = records.iter().find(|r| r["body"]["query"]["via"] == "http").expect("an http record");
    assert_eq!(first["body"]["query"]["sql"], q);
    assert_eq!(first["attrs"]["results"], "2");
}
