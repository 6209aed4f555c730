//! Golden results over a fixed corpus: words, phrases, boolean, fuzzy,
//! prefix, CJK, Thai, emoji, filters, pagination, and the bounds.

use std::collections::BTreeMap;
use std::sync::Arc;

use verbatim_schema::{ConversationId, Event, EventTime, Offset, Record, RecordFlags, SiteId, SourceId, UnixNanos};

use super::*;
use crate::index::indexer::{add_from, commit, SearchIndex};
use crate::index::{document, in_ram};
use crate::metrics::IndexMetrics;

const S: i64 = 1_000_000_000;

#[allow(clippy::too_many_arguments)]
pub fn record(network: &str, from: &str, to: &str, channel: Option<&str>, body: &str, ts: i64, conv: u64) -> Record {
    Record {
        received_at: UnixNanos(ts * S),
        site: SiteId::new("hq"),
        conversation_id: Some(ConversationId(conv)),
        flags: RecordFlags::default(),
        event: Event {
            source: SourceId::new("test"),
            seq: ts as u64,
            network: network.into(),
            kind: "message".into(),
            ts: EventTime { instant: UnixNanos(ts * S), utc_offset_secs: 0 },
            from: from.into(),
            to: vec![to.into()],
            channel: channel.map(Into::into),
            body: body.into(),
            direction: None,
            attrs: BTreeMap::new(),
        },
    }
}

fn corpus() -> Vec<Record> {
    let mut v = vec![
        record("irc", "alice", "bob", Some("#ops"), "The quick brown fox jumps over the lazy dog", 1000, 1),
        record("irc", "bob", "alice", Some("#ops"), "quick question: is the deploy done?", 1010, 1),
        record("xmpp", "carol", "dave", None, "Let's meet in 東京都 next week", 1020, 2),
        record("xmpp", "dave", "carol", None, "東京は楽しい 🎉🎉", 1030, 2),
        record("sip", "erin", "frank", None, "ตลาดนัดจตุจักร เปิดวันเสาร์", 1040, 3),
        record("irc", "alice", "bob", Some("#ops"), "deployment finished, ship it 🚀", 1050, 1),
        record("irc", "Mallory", "alice", Some("#random"), "colour colours color", 1060, 4),
        record("xmpp", "carol", "alice", None, "Quick brown bears", 1070, 5),
        record("irc", "bob", "alice", Some("#ops"), "THE LAZY DOG sleeps", 1080, 1),
    ];
    for i in 0..25 {
        v.push(record("irc", "bot", "room", Some("#pages"), &format!("page filler number {i}"), 2000 + i, 6));
    }
    v
}

fn build(records: &[Record]) -> Arc<SearchIndex> {
    let (index, fields) = in_ram();
    let mut w = index.writer_with_num_threads(1, 20 << 20).expect("writer");
    for (i, r) in records.iter().enumerate() {
        w.add_document(document(&fields, Offset(i as u64), r)).expect("add");
    }
    commit(&mut w, Offset(records.len() as u64)).expect("commit");
    let s = SearchIndex::new(index, fields, Arc::new(IndexMetrics::default()), 1).expect("search index");
    s.reader.reload().expect("reload");
    s
}

fn run(ix: &SearchIndex, cfg: &SearchConfig, q: &str, filters: Filters) -> Result<Vec<u64>, SearchError> {
    let req = SearchRequest { q: q.into(), filters, limit: 100, ..SearchRequest::default() };
    Ok(search(ix, cfg, &req)?.hits.iter().map(|h| h.offset.0).collect())
}

fn hits(ix: &SearchIndex, q: &str) -> Vec<u64> {
    run(ix, &SearchConfig::default(), q, Filters::default()).unwrap_or_else(|e| panic!("{q}: {e}"))
}

fn refused(ix: &SearchIndex, cfg: &SearchConfig, q: &str) -> String {
    match run(ix, cfg, q, Filters::default()) {
        Err(SearchError::Bad(m)) => m,
        other => panic!("{q:?} was not refused: {other:?}"),
    }
}

#[test]
fn words_phrases_and_boolean() {
    let ix = build(&corpus());
    assert_eq!(hits(&ix, "quick"), [7, 1, 0], "newest first");
    assert_eq!(hits(&ix, "QUICK"), [7, 1, 0]);
    assert_eq!(hits(&ix, "\"brown fox\""), [0]);
    assert_eq!(hits(&ix, "\"lazy dog\""), [8, 0]);
    assert_eq!(hits(&ix, "\"dog lazy\""), Vec::<u64>::new());
    assert_eq!(hits(&ix, "quick brown"), [7, 0], "words are ANDed by default");
    assert_eq!(hits(&ix, "quick AND brown"), [7, 0]);
    assert_eq!(hits(&ix, "quick -brown"), [1]);
    assert_eq!(hits(&ix, "fox OR bears"), [7, 0]);
    assert_eq!(hits(&ix, "(quick OR lazy) AND network:irc"), [8, 1, 0]);
    assert_eq!(hits(&ix, "-quick AND network:xmpp"), [3, 2]);
    assert_eq!(hits(&ix, "from:mallory"), [6], "identity fields ignore case");
    assert_eq!(hits(&ix, "participant:alice AND quick"), [7, 1, 0]);
    assert_eq!(hits(&ix, "conversation:2"), [3, 2]);
    assert_eq!(hits(&ix, "channel:\"#ops\" AND dog"), [8, 0]);
    assert_eq!(hits(&ix, "ts:[1000 TO 1020]").len(), 0, "ts is in nanoseconds");
    assert_eq!(hits(&ix, &format!("ts:[{} TO {}]", 1000 * S, 1020 * S)), [2, 1, 0]);
    assert_eq!(hits(&ix, "ts:[1970-01-01T00:16:40Z TO 1970-01-01T00:17:00Z}"), [1, 0]);
}

#[test]
fn fuzzy_and_prefix() {
    let ix = build(&corpus());
    assert_eq!(hits(&ix, "colr~1"), [6]);
    assert_eq!(hits(&ix, "deploi~1"), [1]);
    assert_eq!(hits(&ix, "deploy*"), [5, 1]);
    assert_eq!(hits(&ix, "qu*"), [7, 1, 0]);
    assert_eq!(hits(&ix, "from:mal*"), [6]);
    assert_eq!(hits(&ix, "\"lazy do\"*"), [8, 0]);
    assert_eq!(hits(&ix, "zzz*"), Vec::<u64>::new());
}

#[test]
fn scripts_without_spaces_and_emoji() {
    let ix = build(&corpus());
    assert_eq!(hits(&ix, "東京"), [3, 2]);
    assert_eq!(hits(&ix, "東京都"), [2]);
    assert_eq!(hits(&ix, "楽しい"), [3]);
    assert_eq!(hits(&ix, "東*"), [3, 2]);
    assert_eq!(hits(&ix, "ตลาด"), [4]);
    assert_eq!(hits(&ix, "จตุจักร"), [4]);
    assert_eq!(hits(&ix, "🎉"), [3]);
    assert_eq!(hits(&ix, "🚀 AND ship"), [5]);
}

#[test]
fn filters_are_required_and_cannot_be_widened() {
    let ix = build(&corpus());
    let cfg = SearchConfig::default();
    let net = |n: &str| Filters { network: Some(n.into()), ..Filters::default() };
    assert_eq!(run(&ix, &cfg, "quick", net("irc")).expect("ok"), [1, 0]);
    assert_eq!(run(&ix, &cfg, "quick", net("IRC")).expect("ok"), [1, 0]);
    assert_eq!(run(&ix, &cfg, "network:irc OR quick", net("xmpp")).expect("ok"), [7]);
    assert_eq!(run(&ix, &cfg, "* OR network:irc", net("sip")).expect("ok"), [4]);
    assert_eq!(run(&ix, &cfg, "-network:xmpp", net("xmpp")).expect("ok"), Vec::<u64>::new());
    let who = Filters { participant: Some("alice".into()), ..Filters::default() };
    assert_eq!(run(&ix, &cfg, "quick", who).expect("ok"), [7, 1, 0]);
    let ch = Filters { channel: Some("#ops".into()), ..Filters::default() };
    assert_eq!(run(&ix, &cfg, "", ch).expect("ok"), [8, 5, 1, 0]);
    let conv = Filters { conversation: Some(2), ..Filters::default() };
    assert_eq!(run(&ix, &cfg, "", conv).expect("ok"), [3, 2]);
    let time = Filters { from: Some(1000 * S), to: Some(1030 * S), ..Filters::default() };
    assert_eq!(run(&ix, &cfg, "", time).expect("ok"), [2, 1, 0], "from inclusive, to exclusive");
}

fn pages(ix: &SearchIndex, q: &str, sort: Sort, limit: usize) -> Vec<Vec<u64>> {
    let cfg = SearchConfig::default();
    let mut cursor = None;
    let mut out = Vec::new();
    loop {
        let req = SearchRequest { q: q.into(), sort, limit, cursor: cursor.clone(), ..SearchRequest::default() };
        let r = search(ix, &cfg, &req).expect("page");
        out.push(r.hits.iter().map(|h| h.offset.0).collect());
        match r.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
        assert!(out.len() < 100, "pagination does not end");
    }
}

#[test]
fn cursor_pagination_visits_every_hit_once() {
    let mut records = corpus();
    // Equal timestamps: the offset breaks the tie, so no hit is skipped or repeated.
    for i in 0..7 {
        records.push(record("irc", "bot", "room", Some("#pages"), &format!("page tie {i}"), 2010, 6));
    }
    let ix = build(&records);
    let all: Vec<u64> = hits(&ix, "page");
    assert_eq!(all.len(), 32);
    let p = pages(&ix, "page", Sort::Time, 10);
    assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 10, 2]);
    assert_eq!(p.concat(), all);
    let r = pages(&ix, "page OR quick OR filler", Sort::Relevance, 7);
    let mut seen = r.concat();
    assert_eq!(seen.len(), 35);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 35, "a hit came twice");
    let bad = SearchRequest { q: "page".into(), cursor: Some("r.1.2".into()), ..SearchRequest::default() };
    assert!(matches!(search(&ix, &SearchConfig::default(), &bad), Err(SearchError::Bad(_))));
}

#[test]
fn relevance_ranks_by_score() {
    let ix = build(&corpus());
    let req =
        SearchRequest { q: "colour OR colours".into(), sort: Sort::Relevance, limit: 10, ..SearchRequest::default() };
    let r = search(&ix, &SearchConfig::default(), &req).expect("search");
    assert_eq!(r.hits.len(), 1);
    assert!(r.hits[0].score.is_some_and(|s| s > 0.0));
    assert_eq!(r.total, 1);
}

#[test]
fn abuse_is_refused_with_a_reason() {
    let ix = build(&corpus());
    let cfg = SearchConfig::default();
    assert!(refused(&ix, &cfg, &"a ".repeat(50_000)).contains("bytes"));
    let wide = SearchConfig { max_query_bytes: 1 << 20, ..SearchConfig::default() };
    let ors = (0..10_000).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" OR ");
    assert!(refused(&ix, &wide, &ors).contains("clauses"));
    assert!(refused(&ix, &cfg, &format!("{}a{}", "(".repeat(40), ")".repeat(40))).contains("nests"));
    assert!(refused(&ix, &cfg, "p*").contains("at least 2"));
    let narrow = SearchConfig { max_expansions: 3, ..SearchConfig::default() };
    assert!(refused(&ix, &narrow, "pa* OR fi* OR nu*").contains("more than 3"));
    assert!(refused(&ix, &cfg, "a*b").contains("trailing"));
    assert!(refused(&ix, &cfg, "colour~3").contains("distance"));
    let few = SearchConfig { max_fuzzy_terms: 2, ..SearchConfig::default() };
    assert!(refused(&ix, &few, "a~1 b~1 c~1").contains("fuzzy"));
    assert!(refused(&ix, &cfg, "body:/reg.*ex/").contains("regular"));
    assert!(refused(&ix, &cfg, "secret:x").contains("unknown field"));
    assert!(refused(&ix, &cfg, "\"unclosed").contains("parse"));
    assert!(refused(&ix, &cfg, "network:irc~1").contains("fuzzy"));
    assert!(refused(&ix, &cfg, "conversation:abc").contains("numbers"));
    assert!(refused(&ix, &cfg, "...").contains("no searchable"));
    let req = SearchRequest { q: "quick".into(), limit: 1001, ..SearchRequest::default() };
    assert!(matches!(search(&ix, &cfg, &req), Err(SearchError::Bad(m)) if m.contains("limit")));
}

#[test]
fn a_search_past_its_deadline_is_stopped() {
    let records: Vec<Record> =
        (0..20_000).map(|i| record("irc", "bot", "room", None, &format!("filler {i}"), 3000 + i, 9)).collect();
    let ix = build(&records);
    let late = SearchConfig { deadline_ms: 0, ..SearchConfig::default() };
    assert!(refused(&ix, &late, "filler").contains("deadline"));
    assert_eq!(run(&ix, &SearchConfig::default(), "filler", Filters::default()).expect("in time").len(), 100);
}

#[test]
fn transcripts_come_oldest_first() {
    let ix = build(&corpus());
    let (offsets, more) = conversation_offsets(&ix, 1, 100).expect("offsets");
    assert_eq!(offsets.iter().map(|o| o.0).collect::<Vec<_>>(), [0, 1, 5, 8]);
    assert!(!more);
    let (offsets, more) = conversation_offsets(&ix, 6, 10).expect("offsets");
    assert_eq!(offsets.iter().map(|o| o.0).collect::<Vec<_>>(), (9..19).collect::<Vec<_>>());
    assert!(more);
}

#[test]
fn add_from_indexes_a_log_range() {
    // The indexer's path from the log: every record once, in offset order.
    let tmp = tempfile::tempdir().expect("tmp");
    let log = crate::log::Log::open(
        Arc::new(crate::log::io::FsStorage),
        &tmp.path().join("log"),
        crate::log::LogConfig::default(),
    )
    .expect("log");
    let mut log = log;
    log.append(&mut [corpus()]).expect("append");
    let (index, fields) = in_ram();
    let mut w = index.writer_with_num_threads(1, 20 << 20).expect("writer");
    let end = add_from(&w, &fields, &log.reader(), Offset(0), 5).expect("add");
    assert_eq!(end, Offset(5));
    let end = add_from(&w, &fields, &log.reader(), end, 1000).expect("add");
    assert_eq!(end, Offset(34));
    commit(&mut w, end).expect("commit");
    let s = SearchIndex::new(index, fields, Arc::new(IndexMetrics::default()), 1).expect("index");
    s.reader.reload().expect("reload");
    assert_eq!(hits(&s, "quick"), [7, 1, 0]);
    let cache = crate::log::cache::BlockCache::new(1 << 20);
    let records = cache.records(&log.reader(), &[Offset(7), Offset(0), Offset(33)]).expect("fetch");
    assert_eq!(records[0].event.body, "Quick brown bears");
    assert_eq!(records[1].event.from, "alice");
    assert_eq!(records[2].event.body, "page filler number 24");
}

#[test]
fn several_sites_merge_into_one_order_and_their_pages_visit_every_hit_once() {
    // Three sites with the same offsets and, for the `tie` records, the same
    // timestamps: only the (key, site, offset) order tells them apart.
    let tmp = tempfile::tempdir().expect("tmp");
    let store = |site: &str, shift: i64| {
        let mut records = corpus();
        for i in 0..5 {
            records.push(record("irc", "bot", "room", Some("#pages"), &format!("page tie {i}"), 2010, 6));
        }
        for r in &mut records {
            r.site = SiteId::new(site);
            r.event.ts.instant = UnixNanos(r.event.ts.instant.0 + shift * S);
        }
        let mut log = crate::log::Log::open(
            Arc::new(crate::log::io::MemStorage::new()),
            std::path::Path::new("/log"),
            crate::log::LogConfig::default(),
        )
        .expect("log");
        log.append(&mut [records.clone()]).expect("append");
        let rollups =
            crate::rollup::Rollups::open(&tmp.path().join(site), Arc::new(crate::metrics::RollupMetrics::default()))
                .expect("rollups");
        Arc::new(crate::sites::SiteStore { site: site.into(), log: log.reader(), index: build(&records), rollups })
    };
    let stores = vec![store("hq", 0), store("ams", 0), store("nyc", 0)];
    let cfg = SearchConfig::default();
    let every = |sort: Sort, limit: usize, q: &str| {
        let mut cursor = None;
        let mut out: Vec<(String, u64)> = Vec::new();
        let mut total = None;
        loop {
            let req = SearchRequest { q: q.into(), sort, limit, cursor: cursor.clone(), ..SearchRequest::default() };
            let r = search_sites(&stores, &cfg, &req).expect("page");
            assert!(r.hits.len() <= limit);
            assert_eq!(*total.get_or_insert(r.total), r.total, "the total is the same on every page");
            out.extend(r.hits.iter().map(|h| (stores[h.store].site.clone(), h.found.offset.0)));
            match r.next_cursor {
                Some(c) => cursor = Some(c),
                None => return (out, total.unwrap_or(0)),
            }
            assert!(out.len() < 1000, "pagination does not end");
        }
    };
    let (one_page, total) = every(Sort::Time, 1000, "page");
    assert_eq!(total, 3 * 30);
    assert_eq!(one_page.len(), 90);
    // Newest first; at equal time the greater site id, then the greater offset.
    assert_eq!(&one_page[..3], &[("nyc".into(), 33), ("hq".into(), 33), ("ams".into(), 33)]);
    let ties: Vec<(String, u64)> = one_page.iter().filter(|(_, o)| (34..39).contains(o)).take(6).cloned().collect();
    assert_eq!(
        ties,
        [
            ("nyc".into(), 38),
            ("nyc".into(), 37),
            ("nyc".into(), 36),
            ("nyc".into(), 35),
            ("nyc".into(), 34),
            ("hq".into(), 38)
        ]
    );
    for limit in [1, 4, 7, 30] {
        assert_eq!(every(Sort::Time, limit, "page").0, one_page, "pages of {limit}");
    }
    let (best, _) = every(Sort::Relevance, 1000, "page OR quick");
    for limit in [1, 6] {
        let paged = every(Sort::Relevance, limit, "page OR quick").0;
        assert_eq!(paged, best, "relevance pages of {limit}");
    }
    // A site filter is a clause like the others.
    let req = SearchRequest {
        q: "quick".into(),
        filters: Filters { site: Some("AMS".into()), ..Filters::default() },
        ..SearchRequest::default()
    };
    let r = search_sites(&stores, &cfg, &req).expect("site filter");
    assert_eq!(r.total, 3);
    assert!(r.hits.iter().all(|h| stores[h.store].site == "ams"));
    let bad = SearchRequest { q: "page".into(), cursor: Some("t.1.2".into()), ..SearchRequest::default() };
    assert!(matches!(search_sites(&stores, &cfg, &bad), Err(SearchError::Bad(_))));
}

#[test]
fn newest_first_over_many_segments_is_a_full_sort_by_time_and_offset() {
    // Segments committed out of time order, with overlapping ranges and equal
    // timestamps, and two larger than one run of documents whose times go
    // backwards or jump around inside them: pruning by a segment's or a
    // run's newest `ts` must never drop or reorder a hit.
    let mut segments: Vec<Vec<i64>> =
        [(5000, 5100), (1000, 1100), (9000, 9100), (1050, 1150), (9000, 9050), (3000, 3010)]
            .iter()
            .map(|&(from, to)| (from..to).collect())
            .collect();
    segments.push((0..7000).map(|i| 20_000 + (i * 7919) % 7000).collect());
    segments.push((0..5000).rev().map(|i| 30_000 + i).collect());
    let (index, fields) = in_ram();
    let mut w = index.writer_with_num_threads(1, 20 << 20).expect("writer");
    let mut records = Vec::new();
    for times in segments {
        for ts in times {
            let body = match (ts % 3 == 0, ts % 997 == 0) {
                (true, true) => "tick tock rare",
                (true, false) => "tick tock",
                (false, true) => "tick rare",
                (false, false) => "tick",
            };
            let r = record("irc", "bot", "room", None, body, ts, 7);
            w.add_document(document(&fields, Offset(records.len() as u64), &r)).expect("add");
            records.push(r);
        }
        commit(&mut w, Offset(records.len() as u64)).expect("commit");
    }
    let ix = SearchIndex::new(index, fields, Arc::new(IndexMetrics::default()), 1).expect("search index");
    ix.reader.reload().expect("reload");
    assert!(ix.searcher().segment_readers().len() > 1, "the test needs several segments");
    let cfg = SearchConfig { exact_total_limit: 1000, ..SearchConfig::default() };
    for (q, matches) in [
        ("tick", &(|_: &str| true) as &dyn Fn(&str) -> bool),
        ("tock", &|b| b.contains("tock")),
        // Sparse: a few matches per segment, fewer than a page in all.
        ("rare", &|b| b.contains("rare")),
        ("tock AND rare", &|b| b.contains("tock") && b.contains("rare")),
    ] {
        let mut expected: Vec<(i64, u64)> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| matches(&r.event.body))
            .map(|(i, r)| (r.event.ts.instant.0, i as u64))
            .collect();
        expected.sort_unstable_by(|a, b| b.cmp(a));
        let expected: Vec<u64> = expected.into_iter().map(|(_, o)| o).collect();
        for (limit, exact_total) in [(7, false), (100, false), (1000, false), (100, true), (1000, true)] {
            let mut cursor = None;
            let mut seen = Vec::new();
            loop {
                let req =
                    SearchRequest { q: q.into(), limit, cursor: cursor.clone(), exact_total, ..Default::default() };
                let r = search(&ix, &cfg, &req).expect("page");
                if r.total_exact {
                    assert_eq!(r.total, expected.len(), "{q}: an exact total counts every match on every page");
                } else {
                    assert!(!exact_total, "{q}: asked for an exact total");
                    assert!(
                        r.total > 1000 && r.total <= expected.len(),
                        "{q}: a lower bound past the limit: {}",
                        r.total
                    );
                }
                seen.extend(r.hits.iter().map(|h| h.offset.0));
                match r.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(seen, expected, "{q}, pages of {limit}");
        }
    }
    // The sparse queries above span more than one range of runs only because
    // their ranges grow with what the page still wants.
    assert_eq!(next_width(1, 1, 150, 0), 2, "a full page doubles");
    assert_eq!(next_width(4, 7, 20, 80), 56, "20 matches in 7 runs: 28 runs hold 80, twice that");
    assert_eq!(next_width(1, 1, 0, 100), 200, "no match yet: at least one per run read");
    assert_eq!(next_width(8, 15, 1000, 1), 16, "never less than double");
    assert_eq!(next_width(usize::MAX / 2, 3, 0, usize::MAX), usize::MAX, "saturates");
    // Below the counting limit the total is exact; past it a lower bound; the hits are the same.
    let req = SearchRequest { q: "tock".into(), limit: 10, ..SearchRequest::default() };
    let exact = search(&ix, &SearchConfig::default(), &req).expect("exact");
    assert!(exact.total_exact);
    let bounded = SearchConfig { exact_total_limit: 50, ..SearchConfig::default() };
    let r = search(&ix, &bounded, &req).expect("bounded");
    assert!(!r.total_exact && r.total > 50 && r.total < exact.total, "a lower bound: {}", r.total);
    assert_eq!(r.hits, exact.hits);
    let r = search(&ix, &bounded, &SearchRequest { exact_total: true, ..req }).expect("asked for exactly");
    assert!(r.total_exact);
    assert_eq!(r.total, exact.total);
}
