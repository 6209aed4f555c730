//! Indexing benchmark (release; not run in CI). On the same events, in the
//! same run, alternating passes:
//! - **bare tantivy**: the same fields through tantivy's own tokenizers
//!   (`default` for the body, `raw` for identities), documents built in
//!   memory before the clock starts, 1 thread, commit every 100k;
//! - **Verbatim's indexer path**: read and decode the records from a real
//!   log, build documents with the Verbatim schema and tokenizer, 1 thread,
//!   commit every 100k with the watermark payload.
//!
//! Both use the same writer memory. Prints events/s, the ratio, and index
//! bytes per event after merges.
//!
//! With `--search INDEX_DIR --queries FILE`, it instead runs the queries with
//! tantivy alone on an existing Verbatim index (tantivy's `QueryParser`,
//! newest first by the `ts` fast field, offsets from the fast field, no
//! HTTP, no bodies, no audit), 1 and 4 threads: the reference for search latency.
//!
//! `tools/bench-search.sh` runs it: `cargo bench --bench index -- --events FILE [--n N] [--dir DIR] [--passes P]`

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tantivy::schema::{IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED};
use tantivy::{Index, IndexWriter, TantivyDocument};
use verbatim::index::indexer::{add_from, commit};
use verbatim::log::io::FsStorage;
use verbatim::log::{Log, LogConfig};
use verbatim_schema::{parse_ndjson, ConversationId, Limits, Offset, Record, RecordFlags, SiteId, UnixNanos};

const COMMIT_EVERY: usize = 100_000;
const MEMORY: usize = 128 << 20;

struct Args {
    search: Option<(PathBuf, PathBuf)>,
    events: PathBuf,
    n: usize,
    dir: PathBuf,
    passes: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut events = std::env::var_os("VERBATIM_BENCH_EVENTS").map(PathBuf::from);
    let (mut n, mut dir, mut passes) = (1_000_000, std::env::temp_dir(), 2);
    let (mut search, mut queries) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--events" => events = it.next().map(PathBuf::from),
            "--n" => n = it.next().context("--n N")?.parse()?,
            "--dir" => dir = it.next().context("--dir DIR")?.into(),
            "--passes" => passes = it.next().context("--passes P")?.parse()?,
            "--search" => search = it.next().map(PathBuf::from),
            "--queries" => queries = it.next().map(PathBuf::from),
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    if let Some(index) = search {
        let queries = queries.context("--search needs --queries FILE")?;
        return Ok(Args { search: Some((index, queries)), events: PathBuf::new(), n, dir, passes });
    }
    Ok(Args { search: None, events: events.context("give --events FILE")?, n, dir, passes })
}

fn parse(line: &[u8], i: usize, limits: &Limits) -> anyhow::Result<Record> {
    let w = parse_ndjson(line, 1)?.pop().context("empty line")?;
    Ok(Record {
        received_at: UnixNanos(0),
        site: SiteId::new("bench"),
        conversation_id: Some(ConversationId(i as u64 / 20)),
        flags: RecordFlags::default(),
        event: limits.validate(w).map_err(|e| anyhow::anyhow!("{e}"))?,
    })
}

fn load(path: &Path, n: usize) -> anyhow::Result<(Vec<Vec<u8>>, Vec<Record>)> {
    let limits = Limits::default();
    let lines: Vec<Vec<u8>> =
        BufReader::new(std::fs::File::open(path)?).split(b'\n').take(n).collect::<Result<_, _>>()?;
    let records = lines.iter().enumerate().map(|(i, l)| parse(l, i, &limits)).collect::<anyhow::Result<_>>()?;
    Ok((lines, records))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// The Verbatim fields through tantivy's stock tokenizers. With `lines`, the
/// clock also covers parsing the NDJSON and building the documents.
fn bare_index(dir: &Path, records: &[Record], lines: Option<&[Vec<u8>]>) -> anyhow::Result<(f64, u64)> {
    let mut b = Schema::builder();
    let body = b.add_text_field(
        "body",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        ),
    );
    let raw = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false),
    );
    let names = ["from", "to", "participant", "channel", "network", "kind", "site", "source"];
    let ids: Vec<_> = names.iter().map(|n| b.add_text_field(n, raw.clone())).collect();
    let conversation = b.add_u64_field("conversation", NumericOptions::default() | INDEXED);
    let ts = b.add_i64_field("ts", FAST);
    let received = b.add_i64_field("received_at", FAST);
    let offset = b.add_u64_field("offset", FAST);
    std::fs::create_dir_all(dir)?;
    let index = Index::create_in_dir(dir, b.build())?;
    let doc = |i: usize, r: &Record| {
        let e = &r.event;
        let mut d = TantivyDocument::default();
        d.add_text(body, &e.body);
        d.add_text(ids[0], &e.from);
        d.add_text(ids[2], &e.from);
        for t in &e.to {
            d.add_text(ids[1], t);
            d.add_text(ids[2], t);
        }
        if let Some(c) = &e.channel {
            d.add_text(ids[3], c);
        }
        d.add_text(ids[4], &e.network);
        d.add_text(ids[5], &e.kind);
        d.add_text(ids[6], r.site.as_str());
        d.add_text(ids[7], e.source.as_str());
        d.add_u64(conversation, r.conversation_id.map_or(0, |c| c.0));
        d.add_i64(ts, e.ts.instant.0);
        d.add_i64(received, r.received_at.0);
        d.add_u64(offset, i as u64);
        d
    };
    let mut w: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, MEMORY)?;
    let limits = Limits::default();
    let mut add = |i: usize, d: TantivyDocument| -> anyhow::Result<()> {
        w.add_document(d)?;
        if (i + 1).is_multiple_of(COMMIT_EVERY) {
            w.commit()?;
        }
        Ok(())
    };
    let t = match lines {
        None => {
            let docs: Vec<TantivyDocument> = records.iter().enumerate().map(|(i, r)| doc(i, r)).collect();
            let t = Instant::now();
            for (i, d) in docs.into_iter().enumerate() {
                add(i, d)?;
            }
            t
        }
        Some(lines) => {
            let t = Instant::now();
            for (i, l) in lines.iter().enumerate() {
                add(i, doc(i, &parse(l, i, &limits)?))?;
            }
            t
        }
    };
    w.commit()?;
    let secs = t.elapsed().as_secs_f64();
    w.wait_merging_threads()?;
    Ok((secs, dir_bytes(dir)))
}

fn verbatim_index(dir: &Path, log: &verbatim::log::LogReader) -> anyhow::Result<(f64, u64)> {
    let (index, fields) = verbatim::index::open(dir)?;
    let mut w: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, MEMORY)?;
    let t = Instant::now();
    let mut next = Offset::ZERO;
    while next < log.head() {
        next = add_from(&w, &fields, log, next, COMMIT_EVERY)?;
        commit(&mut w, next)?;
    }
    let secs = t.elapsed().as_secs_f64();
    w.wait_merging_threads()?;
    Ok((secs, dir_bytes(dir)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bare_search(index_dir: &Path, queries: &Path, passes: usize) -> anyhow::Result<()> {
    let (index, fields) = verbatim::index::open(index_dir)?;
    let reader = index.reader()?;
    let mut parser = tantivy::query::QueryParser::for_index(&index, vec![fields.body]);
    parser.set_conjunction_by_default();
    let queries: Vec<String> = std::fs::read_to_string(queries)?
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(verbatim::index::search::query_of_queries_line)
        .collect();
    println!(
        "bare tantivy on {} ({} docs, {} segments): {} queries",
        index_dir.display(),
        reader.searcher().num_docs(),
        reader.searcher().segment_readers().len(),
        queries.len()
    );
    for threads in [1usize, 4] {
        let lat = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..threads {
                let (reader, parser, queries, lat) = (&reader, &parser, &queries, &lat);
                s.spawn(move || {
                    let searcher = reader.searcher();
                    let n = queries.len();
                    for pass in 0..=passes {
                        for i in 0..n {
                            let q = &queries[(i + t * n / threads) % n];
                            let start = Instant::now();
                            let Ok(query) = parser.parse_query(q) else { continue };
                            let top = tantivy::collector::TopDocs::with_limit(100)
                                .order_by_fast_field::<i64>("ts", tantivy::Order::Desc);
                            let hits = searcher.search(&query, &top).expect("search");
                            // Each segment's offset column is opened once per query.
                            let mut columns = std::collections::HashMap::new();
                            let mut offsets = Vec::with_capacity(hits.len());
                            for (_, addr) in hits {
                                let col = columns.entry(addr.segment_ord).or_insert_with(|| {
                                    searcher
                                        .segment_reader(addr.segment_ord)
                                        .fast_fields()
                                        .u64("offset")
                                        .expect("offset")
                                });
                                offsets.push(col.first(addr.doc_id));
                            }
                            std::hint::black_box(offsets);
                            if pass > 0 {
                                lat.lock().expect("lock").push(start.elapsed().as_secs_f64() * 1e3);
                            }
                        }
                    }
                });
            }
        });
        let mut lat = lat.into_inner().expect("lock");
        lat.sort_by(f64::total_cmp);
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
        println!(
            "RESULT bare tantivy search, {threads} thread(s), warm: p50 {:.3} ms p99 {:.3} ms ({} queries)",
            p(0.5),
            p(0.99),
            lat.len()
        );
    }
    // Verbatim's own search, in process on the same index: the query compiler,
    // filters, (ts, offset) sort key, total count and deadline; no HTTP, no
    // bodies, no audit. One thread, like the first bare row.
    drop(reader);
    let (index, fields) = verbatim::index::open(index_dir)?;
    let ours = verbatim::index::indexer::SearchIndex::new(index, fields, Arc::default(), 1)?;
    let cfg = verbatim::index::search::SearchConfig::default();
    let mut lat = Vec::new();
    for pass in 0..=passes {
        for q in &queries {
            let req = verbatim::index::search::SearchRequest { q: q.clone(), limit: 100, ..Default::default() };
            let start = Instant::now();
            let out = verbatim::index::search::search(&ours, &cfg, &req).map_err(|e| anyhow::anyhow!("{q}: {e}"))?;
            std::hint::black_box(out.hits);
            if pass > 0 {
                lat.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    println!(
        "RESULT verbatim search() in process, 1 thread, warm: p50 {:.3} ms p99 {:.3} ms ({} queries)",
        p(0.5),
        p(0.99),
        lat.len()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    if let Some((index, queries)) = &a.search {
        return bare_search(index, queries, a.passes);
    }
    let (lines, records) = load(&a.events, a.n)?;
    let n = records.len();
    let work = tempfile::Builder::new().prefix("verbatim-index-bench").tempdir_in(&a.dir)?;
    let log_dir = work.path().join("log");
    let mut log = Log::open(Arc::new(FsStorage), &log_dir, LogConfig::default())?;
    for chunk in records.chunks(1000) {
        log.append(&mut [chunk.to_vec()])?;
    }
    let reader = log.reader();
    println!(
        "events {n}; log written (not timed); commit every {COMMIT_EVERY}; 1 indexing thread; {} MiB",
        MEMORY >> 20
    );
    let (mut bare, mut bare_parse, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bare_bytes, mut our_bytes) = (0, 0);
    for pass in 0..a.passes {
        let d = work.path().join(format!("bare-{pass}"));
        let (s, b) = bare_index(&d, &records, None)?;
        std::fs::remove_dir_all(&d)?;
        println!(
            "pass {pass} bare tantivy, documents prebuilt:  {:>9.0} events/s  ({s:.2} s, {:.1} B/event)",
            n as f64 / s,
            b as f64 / n as f64
        );
        bare.push(n as f64 / s);
        bare_bytes = b;
        let (s, _) = bare_index(&d, &records, Some(&lines))?;
        std::fs::remove_dir_all(&d)?;
        println!("pass {pass} bare tantivy, parsing the NDJSON:  {:>9.0} events/s  ({s:.2} s)", n as f64 / s);
        bare_parse.push(n as f64 / s);
        let d = work.path().join(format!("verbatim-{pass}"));
        let (s, b) = verbatim_index(&d, &reader)?;
        std::fs::remove_dir_all(&d)?;
        println!(
            "pass {pass} verbatim, reading the log:          {:>9.0} events/s  ({s:.2} s, {:.1} B/event)",
            n as f64 / s,
            b as f64 / n as f64
        );
        ours.push(n as f64 / s);
        our_bytes = b;
    }
    let (b, bp, o) = (median(bare), median(bare_parse), median(ours));
    println!(
        "RESULT indexing: verbatim {o:.0} events/s vs bare tantivy {b:.0} (documents prebuilt) = {:.2}x, \
         vs {bp:.0} (parsing the same NDJSON) = {:.2}x (goal >= 0.8x); index {:.1} vs {:.1} B/event",
        o / b,
        o / bp,
        our_bytes as f64 / n as f64,
        bare_bytes as f64 / n as f64
    );
    Ok(())
}
