//! Golden results over a fixed corpus, part rolled up and part in the log
//! tail, and the abuse corpus: everything refused or bounded.

use std::sync::Arc;

use super::*;
use crate::index::indexer::SearchIndex;
use crate::index::indexer::{add_from, commit};
use crate::index::search::tests::record;
use crate::log::io::FsStorage;
use crate::log::{Log, LogConfig};
use crate::metrics::RollupMetrics;
use crate::rollup::writer::roll_once;
use crate::rollup::RollupConfig;
use crate::rollup::Rollups;
use crate::sites::{SiteStore, Sites};
use verbatim_schema::Offset;

const T0: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

struct Fixture {
    _tmp: tempfile::TempDir,
    log: Log,
    rollups: Arc<Rollups>,
    engine: Arc<SqlEngine>,
}

fn corpus() -> Vec<verbatim_schema::Record> {
    let mut private = record("irc", "alice", "bob", None, "hello bob", T0, 1);
    private.event.to = vec!["bob".into()];
    let mut xmpp = record("xmpp", "dave@corp", "erin@ext", None, "早上好 🌅", T0 + 86_400, 3);
    xmpp.event.attrs.insert("client".into(), "slixmpp".into());
    xmpp.event.direction = Some(verbatim_schema::Direction::Outbound);
    let mut join = record("irc", "alice", "#desk", Some("#desk"), "", T0 + 86_400 + 60, 2);
    join.event.kind = "join".into();
    vec![
        private,
        record("irc", "bob", "alice", None, "hi alice", T0 + 60, 1),
        record("irc", "carol", "#desk", Some("#desk"), "market opens", T0 + 3_600, 2),
        xmpp,
        join,
        record("irc", "alice", "#desk", Some("#desk"), "after hours trade", T0 + 86_400 + 600, 2),
    ]
}

/// Six records; the first `rolled` in Parquet, the rest only in the log.
fn fixture(rolled: u64, config: SqlConfig) -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut log = Log::open(Arc::new(FsStorage), &tmp.path().join("log"), LogConfig::default()).expect("log");
    log.append(&mut [corpus()]).expect("append");
    let rollups = Rollups::open(&tmp.path().join("rollup"), Arc::new(RollupMetrics::default())).expect("rollups");
    if rolled > 0 {
        let c = RollupConfig { max_batch_events: rolled, ..Default::default() };
        assert_eq!(roll_once(&rollups, &log.reader(), &c).expect("roll"), rolled);
    }
    let blocks = Arc::new(BlockCache::new(1 << 20));
    let (index, fields) = crate::index::in_ram();
    let mut w = index.writer_with_num_threads(1, 20 << 20).expect("writer");
    let end = add_from(&w, &fields, &log.reader(), Offset(0), 1000).expect("index");
    commit(&mut w, end).expect("commit");
    let index = SearchIndex::new(index, fields, Arc::new(IndexMetrics::default()), 1).expect("index");
    index.reader.reload().expect("reload");
    let own = SiteStore { site: "test".into(), log: log.reader(), index, rollups: rollups.clone() };
    let engine = SqlEngine::new(Sites::local(own), blocks, SearchConfig::default(), config).expect("engine");
    Fixture { _tmp: tmp, log, rollups, engine }
}

fn pretty(out: &SqlOutput) -> String {
    arrow::util::pretty::pretty_format_batches(&out.batches).expect("format").to_string()
}

async fn table(f: &Fixture, sql: &str) -> String {
    let out = f.engine.run(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty(&out)
}

fn lines(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn golden_results_span_the_rollups_and_the_log_tail() {
    let f = fixture(3, SqlConfig::default());
    assert_eq!(f.rollups.watermark().0, 3);
    assert_eq!(f.log.reader().head().0, 6);
    let got = table(
        &f,
        "SELECT \"offset\", network, sender, recipients, channel, body, body_len FROM events ORDER BY \"offset\"",
    )
    .await;
    let want = "
+--------+---------+-----------+------------+---------+-------------------+----------+
| offset | network | sender    | recipients | channel | body              | body_len |
+--------+---------+-----------+------------+---------+-------------------+----------+
| 0      | irc     | alice     | [bob]      |         | hello bob         | 9        |
| 1      | irc     | bob       | [alice]    |         | hi alice          | 8        |
| 2      | irc     | carol     | [#desk]    | #desk   | market opens      | 12       |
| 3      | xmpp    | dave@corp | [erin@ext] |         | 早上好 🌅         | 14       |
| 4      | irc     | alice     | [#desk]    | #desk   |                   | 0        |
| 5      | irc     | alice     | [#desk]    | #desk   | after hours trade | 17       |
+--------+---------+-----------+------------+---------+-------------------+----------+";
    assert_eq!(lines(&got), lines(want), "\n{got}");

    let got = table(
        &f,
        "SELECT network, count(*) AS events, sum(body_len) AS bytes FROM events GROUP BY network ORDER BY network",
    )
    .await;
    let want = "
+---------+--------+-------+
| network | events | bytes |
+---------+--------+-------+
| irc     | 5      | 46    |
| xmpp    | 1      | 14    |
+---------+--------+-------+";
    assert_eq!(lines(&got), lines(want), "\n{got}");

    let got = table(
        &f,
        "SELECT id, network, channel, participants, started_at, ended_at, events, bytes FROM conversations ORDER BY id",
    )
    .await;
    let want = "
+----+---------+---------+-----------------------+----------------------+----------------------+--------+-------+
| id | network | channel | participants          | started_at           | ended_at             | events | bytes |
+----+---------+---------+-----------------------+----------------------+----------------------+--------+-------+
| 1  | irc     |         | [alice, bob]          | 2023-11-14T22:13:20Z | 2023-11-14T22:14:20Z | 2      | 17    |
| 2  | irc     | #desk   | [#desk, alice, carol] | 2023-11-14T23:13:20Z | 2023-11-15T22:23:20Z | 3      | 29    |
| 3  | xmpp    |         | [dave@corp, erin@ext] | 2023-11-15T22:13:20Z | 2023-11-15T22:13:20Z | 1      | 14    |
+----+---------+---------+-----------------------+----------------------+----------------------+--------+-------+";
    assert_eq!(lines(&got), lines(want), "\n{got}");

    let got = table(&f, "SELECT day, network, participant, conversations, messages, bytes FROM daily_usage WHERE participant IN ('alice', '#desk') ORDER BY day, participant").await;
    let want = "
+------------+---------+-------------+---------------+----------+-------+
| day        | network | participant | conversations | messages | bytes |
+------------+---------+-------------+---------------+----------+-------+
| 2023-11-14 | irc     | #desk       | 1             | 1        | 12    |
| 2023-11-14 | irc     | alice       | 1             | 2        | 17    |
| 2023-11-15 | irc     | #desk       | 1             | 1        | 17    |
| 2023-11-15 | irc     | alice       | 1             | 1        | 17    |
+------------+---------+-------------+---------------+----------+-------+";
    assert_eq!(lines(&got), lines(want), "\n{got}");

    // Every field survives: attrs as JSON text, kinds, sites, time filters pruning by `ts`.
    let got = table(&f, "SELECT \"offset\", kind, site, source, attrs FROM events WHERE ts >= TIMESTAMP '2023-11-15T00:00:00Z' ORDER BY \"offset\"").await;
    let want = r#"
+--------+---------+------+--------+----------------------+
| offset | kind    | site | source | attrs                |
+--------+---------+------+--------+----------------------+
| 3      | message | hq   | test   | {"client":"slixmpp"} |
| 4      | join    | hq   | test   |                      |
| 5      | message | hq   | test   |                      |
+--------+---------+------+--------+----------------------+"#;
    assert_eq!(lines(&got), lines(want), "\n{got}");
}

#[tokio::test]
async fn search_is_a_table_to_join() {
    let f = fixture(3, SqlConfig::default());
    let got = table(&f, "SELECT s.\"offset\", s.participants, s.conversation_id, e.network, s.score > 0 AS scored \
                          FROM search('hours OR hello') s JOIN events e ON s.site = e.site AND s.\"offset\" = e.\"offset\" ORDER BY s.\"offset\"").await;
    let want = "
+--------+----------------+-----------------+---------+--------+
| offset | participants   | conversation_id | network | scored |
+--------+----------------+-----------------+---------+--------+
| 0      | [alice, bob]   | 1               | irc     | true   |
| 5      | [alice, #desk] | 2               | irc     | true   |
+--------+----------------+-----------------+---------+--------+";
    assert_eq!(lines(&got), lines(want), "\n{got}");
    assert!(table(&f, "SELECT count(*) AS n FROM search('hours OR hello', 1)").await.contains("| 1 |"));
    assert!(failed(f.engine.run("SELECT * FROM search(sender)").await).contains("string literal"));
    assert!(failed(f.engine.run("SELECT * FROM search('/regex/')").await).contains("search()"));
}

#[tokio::test]
async fn the_same_answers_whether_rolled_up_or_not() {
    let q = "SELECT \"offset\", ts, conversation_id, body FROM events ORDER BY \"offset\"";
    let mut answers = Vec::new();
    for rolled in [0, 2, 6] {
        let f = fixture(rolled, SqlConfig::default());
        answers.push(table(&f, q).await);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
}

#[tokio::test]
async fn an_appended_event_is_visible_to_the_next_query() {
    let mut f = fixture(6, SqlConfig::default());
    assert!(table(&f, "SELECT count(*) AS n FROM events").await.contains("| 6 |"));
    f.log.append(&mut [vec![record("irc", "zoe", "yan", None, "fresh", T0 + 7, 9)]]).expect("append");
    let got = table(&f, "SELECT sender, body FROM events WHERE \"offset\" = 6").await;
    assert!(got.contains("| zoe    | fresh |"), "{got}");
}

fn refused(r: Result<SqlOutput, SqlError>) -> String {
    match r {
        Err(SqlError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn failed(r: Result<SqlOutput, SqlError>) -> String {
    match r {
        Err(SqlError::Failed(m)) => m,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn anything_but_a_read_only_query_is_refused_by_name() {
    let f = fixture(3, SqlConfig::default());
    for (sql, named) in [
        ("DROP TABLE events", "DROP TABLE"),
        ("CREATE TABLE x AS SELECT * FROM events", "CREATE TABLE"),
        ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
        ("INSERT INTO events (sender) VALUES ('x')", "INSERT"),
        ("DELETE FROM events", "DELETE"),
        ("UPDATE events SET sender = 'x'", "UPDATE"),
        ("COPY events TO '/tmp/verbatim-copy.csv'", "COPY"),
        ("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'", "CREATE EXTERNAL TABLE"),
        ("SET datafusion.execution.batch_size = 1", "SET"),
        ("RESET datafusion.execution.batch_size", "RESET"),
        ("EXPLAIN DELETE FROM events", "DELETE"),
        ("BEGIN", "BEGIN"),
    ] {
        let m = refused(f.engine.run(sql).await);
        assert!(m.contains(named), "{sql}: {m}");
        assert!(m.contains("read-only"), "{sql}: {m}");
    }
    assert!(refused(f.engine.run("SELECT 1; SELECT 2").await).contains("one statement"));
    assert!(refused(f.engine.run("").await).contains("empty"));
    let deep = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(refused(f.engine.run(&deep).await).contains("parse"));
    let long = format!("SELECT '{}'", "x".repeat(70_000));
    assert!(refused(f.engine.run(&long).await).contains("sql.max_query_bytes"));
    // Files are not tables: only the registered ones are.
    assert!(failed(f.engine.run("SELECT * FROM '/etc/passwd'").await).contains("passwd"));
    // The engine still answers, and nothing was created.
    assert!(table(&f, "SHOW TABLES").await.contains("events"));
    assert!(!table(&f, "SHOW TABLES").await.contains("| x "));
    assert!(table(&f, "SELECT count(*) AS n FROM events").await.contains("| 6 |"));
}

#[tokio::test]
async fn bombs_are_bounded_by_rows_time_and_memory() {
    let config = SqlConfig { timeout_ms: 1_000, memory_limit_mb: 16, max_rows: 10_000, ..Default::default() };
    let f = fixture(3, config);
    let m = failed(f.engine.run("SELECT * FROM generate_series(1, 10000000)").await);
    assert!(m.contains("sql.max_rows"), "{m}");
    let t = Instant::now();
    let m = failed(
        f.engine
            .run("SELECT sum(a.value * b.value) AS s FROM generate_series(1, 1000000) a, generate_series(1, 1000000) b")
            .await,
    );
    assert!(m.contains("sql.timeout_ms"), "{m}");
    assert!(t.elapsed() < Duration::from_secs(10), "cancelled in {:?}", t.elapsed());
    // Memory: a pool of 16 MiB, and time enough to fill it.
    let f = fixture(3, SqlConfig { timeout_ms: 120_000, memory_limit_mb: 16, ..Default::default() });
    let t = Instant::now();
    let m = failed(
        f.engine
            .run("SELECT (value * 7919) % 19999999 AS k, count(*) AS n FROM generate_series(1, 20000000) GROUP BY 1 ORDER BY n DESC LIMIT 1")
            .await,
    );
    assert!(m.contains("sql.memory_limit_mb"), "{m} after {:?}", t.elapsed());
    assert!(table(&f, "SELECT count(*) AS n FROM events").await.contains("| 6 |"));
}

#[tokio::test]
async fn concurrent_queries_past_the_cap_are_told_to_retry() {
    let config = SqlConfig { max_concurrent: 4, ..Default::default() };
    let f = fixture(3, config);
    let q = "SELECT sum(value) AS s FROM generate_series(1, 3000000)";
    let runs = (0..20).map(|_| f.engine.run(q));
    let results = futures::future::join_all(runs).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let busy = results.iter().filter(|r| matches!(r, Err(SqlError::Busy(_)))).count();
    assert_eq!(ok + busy, 20, "{results:?}");
    assert!(ok >= 4 && busy >= 1, "ok {ok}, busy {busy}");
    assert!(f.engine.run(q).await.is_ok(), "the cap is released");
}

/// top_talkers counts distinct networks by grouping, not with
/// count(DISTINCT network): on events with several networks per sender,
/// conversations with the same id at two sites and events without a
/// conversation, it answers as that plainer formulation does.
#[tokio::test]
async fn top_talkers_answers_as_count_distinct_would() {
    let ctx = datafusion::prelude::SessionContext::new();
    let rows = [
        ("alice", "irc", "hq", "1", "message", 5),
        ("alice", "irc", "hq", "1", "message", 7),
        ("alice", "irc", "hq", "2", "message", 11),
        ("alice", "xmpp", "hq", "3", "message", 13),
        ("alice", "irc", "nyc", "1", "message", 17),
        ("alice", "irc", "hq", "NULL", "message", 19),
        ("alice", "irc", "hq", "1", "join", 0),
        ("bob", "xmpp", "hq", "3", "message", 23),
        ("bob", "irc", "hq", "4", "message", 29),
        ("bob", "xmpp", "nyc", "9", "message", 31),
        ("carol", "irc", "hq", "NULL", "message", 37),
    ];
    let values: Vec<String> =
        rows.iter().map(|(s, n, site, c, k, b)| format!("('{s}', '{n}', '{site}', {c}, '{k}', {b})")).collect();
    let view = format!(
        "CREATE VIEW events AS SELECT column1 AS sender, column2 AS network, column3 AS site, \
         CAST(column4 AS BIGINT) AS conversation_id, column5 AS kind, CAST(column6 AS BIGINT) AS body_len, \
         arrow_cast(1700000000000000000, 'Timestamp(Nanosecond, Some(\"UTC\"))') AS ts FROM (VALUES {})",
        values.join(", ")
    );
    ctx.sql(&view).await.expect("view").collect().await.expect("view");
    let run = |sql: String| {
        let ctx = ctx.clone();
        async move {
            let batches = ctx.sql(&sql).await.expect("plan").collect().await.expect("run");
            arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string()
        }
    };
    let got = run(reports::render("top_talkers", None, None).expect("render")).await;
    let plain = run("WITH per_conversation AS (
            SELECT sender, site, conversation_id, network, count(*) AS messages, sum(body_len) AS bytes
            FROM events WHERE kind = 'message'
            GROUP BY sender, site, conversation_id, network)
        SELECT sender, sum(messages) AS messages, sum(bytes) AS bytes,
               count(conversation_id) AS conversations, count(DISTINCT network) AS networks
        FROM per_conversation GROUP BY sender ORDER BY messages DESC, sender LIMIT 100"
        .into())
    .await;
    let want = "
+--------+----------+-------+---------------+----------+
| sender | messages | bytes | conversations | networks |
+--------+----------+-------+---------------+----------+
| alice  | 6        | 72    | 4             | 2        |
| bob    | 3        | 83    | 3             | 2        |
| carol  | 1        | 37    | 0             | 1        |
+--------+----------+-------+---------------+----------+";
    assert_eq!(lines(&got), lines(want), "\n{got}");
    assert_eq!(lines(&plain), lines(want), "\n{plain}");
}

#[tokio::test]
async fn every_report_runs_and_counts_what_it_says() {
    let f = fixture(3, SqlConfig::default());
    for r in reports::REPORTS {
        let sql = reports::render(r.name, None, None).expect("render");
        f.engine.run(&sql).await.unwrap_or_else(|e| panic!("report {}: {e}", r.name));
        assert!(!reports::description(r).is_empty(), "{} says what it is", r.name);
    }
    let run = |name: &str, from: Option<i64>| {
        let sql = reports::render(name, from, None).expect("render");
        let engine = f.engine.clone();
        async move { pretty(&engine.run(&sql).await.expect("report")) }
    };
    let got = run("top_talkers", None).await;
    let want = "
+-----------+----------+-------+---------------+----------+
| sender    | messages | bytes | conversations | networks |
+-----------+----------+-------+---------------+----------+
| alice     | 2        | 26    | 2             | 1        |
| bob       | 1        | 8     | 1             | 1        |
| carol     | 1        | 12    | 1             | 1        |
| dave@corp | 1        | 14    | 1             | 1        |
+-----------+----------+-------+---------------+----------+";
    assert_eq!(lines(&got), lines(want), "\n{got}");
    // The period bounds `ts`: from 2023-11-15 only the second day counts.
    let day2 = (T0 + 86_400 - 22 * 3_600 - 13 * 60 - 20) * 1_000_000_000;
    let got = run("top_talkers", Some(day2)).await;
    assert!(got.contains("| alice     | 1        | 17"), "\n{got}");
    assert!(!got.contains("bob"), "\n{got}");
    let got = run("external_contacts", None).await;
    assert!(got.contains("| dave@corp | erin@ext | 1        | 1    | 0        |"), "\n{got}");
    // Every message of the corpus is sent after 18:00 UTC.
    let got = run("off_hours", None).await;
    assert!(got.contains("| alice     | 2        | 0       | 2         | 2             |"), "\n{got}");
    // `received_at` is the log's clock: all six arrived today.
    let got = run("storage_growth", None).await;
    assert!(got.contains("| 6      | 60    | 6            | 60          |"), "\n{got}");
    let got = run("volume_per_network_per_day", None).await;
    assert!(got.contains("| 2023-11-15 | irc     | 2      | 1        | 17    |"), "\n{got}");
    let got = run("conversations_per_employee", None).await;
    assert!(got.contains("| alice       | 2             | 3           |"), "\n{got}");
    assert!(got.contains("| erin@ext    | 1             | 0           |"), "\n{got}");
    assert!(matches!(reports::render("nope", None, None), Err(SqlError::Refused(m)) if m.contains("top_talkers")));
    assert!(reports::render("top_talkers", Some(5), Some(5)).is_err());
}

/// HQ with its own site and one replicated site whose log repeats HQ's
/// offsets and conversation ids: every table and report sees both, apart.
#[tokio::test]
async fn on_hq_tables_and_reports_keep_sites_apart_when_their_ids_collide() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut own_log = Log::open(Arc::new(FsStorage), &tmp.path().join("log"), LogConfig::default()).expect("log");
    own_log.append(&mut [corpus()]).expect("append");
    let mut nyc_log =
        Log::open(Arc::new(FsStorage), &tmp.path().join("replicas/nyc"), LogConfig::default()).expect("replica");
    let nyc: Vec<_> = corpus()
        .into_iter()
        .map(|mut r| {
            r.site = verbatim_schema::SiteId::new("nyc");
            r.event.body = format!("nyc: {}", r.event.body);
            r
        })
        .collect();
    nyc_log.append(&mut [nyc]).expect("append");
    let rollups = Rollups::open(&tmp.path().join("rollup"), Arc::new(RollupMetrics::default())).expect("rollups");
    let (index, fields) = crate::index::in_ram();
    let index = SearchIndex::new(index, fields, Arc::new(IndexMetrics::default()), 1).expect("index");
    let own = SiteStore { site: "hq".into(), log: own_log.reader(), index, rollups };
    let stores = crate::sites::ReplicaStores {
        dir: tmp.path().join("sites"),
        index: Default::default(),
        rollup: Default::default(),
        search_threads: 1,
    };
    let sites = Sites::hq(own, stores);
    sites.attach("nyc", nyc_log.reader()).expect("attach");
    let engine = SqlEngine::new(
        sites.clone(),
        Arc::new(BlockCache::new(1 << 20)),
        SearchConfig::default(),
        SqlConfig::default(),
    )
    .expect("engine");
    let run = |sql: String| {
        let engine = engine.clone();
        async move { pretty(&engine.run(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))) }
    };
    // The same offset at each site, each body from its own log.
    let got = run("SELECT site, body FROM events WHERE \"offset\" = 0 ORDER BY site".into()).await;
    let want = "
+------+----------------+
| site | body           |
+------+----------------+
| hq   | hello bob      |
| nyc  | nyc: hello bob |
+------+----------------+";
    assert_eq!(lines(&got), lines(want), "\n{got}");
    let got = run("SELECT site, count(*) AS n FROM conversations GROUP BY site ORDER BY site".into()).await;
    assert!(got.contains("| hq   | 3 |") && got.contains("| nyc  | 3 |"), "one row per (site, id)\n{got}");
    // alice sent 2 messages in 2 conversations at each site (the same ids): 4
    // conversations, not 2; the replica's bodies are 5 bytes longer ("nyc: ").
    let report = |name: &str| run(reports::render(name, None, None).expect("render"));
    let got = report("top_talkers").await;
    assert!(got.contains("| alice     | 4        | 62    | 4             | 1        |"), "\n{got}");
    let got = report("conversations_per_employee").await;
    assert!(got.contains("| alice       | 4             | 6           |"), "\n{got}");
    let got = report("off_hours").await;
    assert!(got.contains("| alice     | 4        | 0       | 4         | 4             |"), "\n{got}");
    sites.stop();
}
