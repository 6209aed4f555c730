//! The indexer: one thread tailing the log from the index watermark. It adds
//! documents as records become durable, commits on a timer with the new
//! watermark as the commit payload, reloads the searchers, and reconciles
//! the index against the log after every commit (document count) and on a
//! schedule (every offset below the watermark present exactly once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tantivy::indexer::UserOperation;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument};
use tracing::{error, info, warn};
use verbatim_schema::{Offset, UnixNanos};

use super::{committed_watermark, document, payload, Fields, IndexConfig};
use crate::background::{self, BackgroundConfig, Exit, Mode};
use crate::log::LogReader;
use crate::metrics::IndexMetrics;

/// What the last reconciliation found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    /// When it ran (RFC 3339).
    pub at: String,
    /// The watermark it checked against: offsets 0..watermark must each be indexed once.
    pub watermark: u64,
    pub docs: u64,
    /// Whether every offset was counted (the scheduled check) or only documents.
    pub offsets_checked: bool,
    pub ok: bool,
    pub detail: Option<String>,
}

/// The index as the server reports it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IndexState {
    pub watermark: u64,
    pub docs: u64,
    pub last_commit: Option<String>,
    pub last_reconciliation: Option<Reconciliation>,
    /// The indexer's last error, cleared by the next successful commit.
    pub error: Option<String>,
}

/// The open index, shared by the indexer and the request handlers.
pub struct SearchIndex {
    pub index: Index,
    pub fields: Fields,
    pub reader: IndexReader,
    pub state: Mutex<IndexState>,
    pub metrics: Arc<IndexMetrics>,
    /// Per segment, the columns newest-first search sorts by.
    pub sort_columns: super::search::SortColumnCache,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").field("state", &self.state).finish_non_exhaustive()
    }
}

impl SearchIndex {
    /// `search_threads` > 1 searches the segments of one query in parallel.
    pub fn new(
        mut index: Index,
        fields: Fields,
        metrics: Arc<IndexMetrics>,
        search_threads: usize,
    ) -> anyhow::Result<Arc<Self>> {
        if search_threads > 1 {
            index.set_multithread_executor(search_threads)?;
        }
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let watermark = committed_watermark(&index)?;
        let s = Arc::new(Self {
            index,
            fields,
            reader,
            state: Mutex::default(),
            metrics,
            sort_columns: Default::default(),
        });
        let docs = s.reader.searcher().num_docs();
        s.set(|st| {
            st.watermark = watermark.0;
            st.docs = docs;
        });
        Ok(s)
    }

    pub fn searcher(&self) -> Searcher {
        self.reader.searcher()
    }

    pub fn state(&self) -> IndexState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, f: impl FnOnce(&mut IndexState)) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut st);
        self.metrics.watermark.set(st.watermark as i64);
        self.metrics.docs.set(st.docs as i64);
    }

    /// Updates the lag figures against the log's head; returns (events, seconds).
    pub fn lag(&self, log: &LogReader) -> (u64, f64) {
        let watermark = Offset(self.state().watermark);
        let head = log.head();
        let events = head.0.saturating_sub(watermark.0);
        let seconds = if events == 0 {
            0.0
        } else {
            log.get(watermark)
                .map(|r| (UnixNanos::now().0.saturating_sub(r.received_at.0)).max(0) as f64 / 1e9)
                .unwrap_or(0.0)
        };
        self.metrics.log_head.set(head.0 as i64);
        self.metrics.lag_events.set(events as i64);
        self.metrics.lag_seconds.set(seconds);
        (events, seconds)
    }
}

/// Counts the offsets of every document: each of 0..watermark must appear
/// exactly once. Count, sum, sum of squares and maximum together catch a
/// missing, a duplicated or a foreign offset.
pub fn reconcile(searcher: &Searcher, fields: &Fields, watermark: Offset, count_offsets: bool) -> Reconciliation {
    let docs = searcher.num_docs();
    let mut detail = None;
    if docs != watermark.0 {
        detail = Some(format!("{docs} documents for {} log records", watermark.0));
    } else if count_offsets {
        let (mut n, mut sum, mut squares, mut max) = (0u64, 0u128, 0u128, None::<u64>);
        let name = searcher.schema().get_field_name(fields.offset).to_string();
        for seg in searcher.segment_readers() {
            let column = match seg.fast_fields().u64(&name) {
                Ok(c) => c,
                Err(e) => {
                    detail = Some(format!("reading the offsets: {e}"));
                    break;
                }
            };
            for doc in seg.doc_ids_alive() {
                for o in column.values_for_doc(doc) {
                    n += 1;
                    sum += u128::from(o);
                    squares += u128::from(o) * u128::from(o);
                    max = max.max(Some(o));
                }
            }
        }
        let w = u128::from(watermark.0);
        let want_sum = if w == 0 { 0 } else { w * (w - 1) / 2 };
        let want_squares = if w == 0 { 0 } else { (w - 1) * w * (2 * w - 1) / 6 };
        if detail.is_none()
            && (u128::from(n) != w || sum != want_sum || squares != want_squares || max != watermark.0.checked_sub(1))
        {
            detail =
                Some(format!("the indexed offsets are not exactly 0..{}: {n} offsets, largest {max:?}", watermark.0));
        }
    }
    Reconciliation {
        at: UnixNanos::now().to_rfc3339(),
        watermark: watermark.0,
        docs,
        offsets_checked: count_offsets,
        ok: detail.is_none(),
        detail,
    }
}

/// Adds the documents of `from..` up to `max` records or the head; returns the new end.
pub fn add_from(
    writer: &IndexWriter<TantivyDocument>,
    fields: &Fields,
    log: &LogReader,
    from: Offset,
    max: usize,
) -> anyhow::Result<Offset> {
    // Documents go to tantivy's indexing thread in batches: one channel send
    // per batch instead of one per document.
    const BATCH: usize = 256;
    let mut next = from;
    let mut batch = Vec::with_capacity(BATCH);
    for item in log.iter_from(from).take(max) {
        let (offset, record) = item?;
        anyhow::ensure!(offset == next, "the log skipped from {next} to {offset}");
        batch.push(UserOperation::Add(document(fields, offset, &record)));
        next = offset.plus(1);
        if batch.len() == BATCH {
            writer.run(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))?;
        }
    }
    if !batch.is_empty() {
        writer.run(batch)?;
    }
    Ok(next)
}

/// Commits with `watermark` as the payload.
pub fn commit(writer: &mut IndexWriter<TantivyDocument>, watermark: Offset) -> anyhow::Result<()> {
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(&payload(watermark));
    prepared.commit()?;
    Ok(())
}

/// The running indexer thread.
#[derive(Debug)]
pub struct Indexer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Records read between two looks at the clock and the stop flag.
const CHUNK: usize = 20_000;
const POLL: Duration = Duration::from_millis(10);
const RETRY: Duration = Duration::from_secs(1);
/// How often the indexer looks at its lag between commits.
const LAG_CHECK: Duration = Duration::from_millis(250);

impl Indexer {
    pub fn start(index: Arc<SearchIndex>, log: LogReader, config: IndexConfig) -> anyhow::Result<Self> {
        let head = log.head();
        let watermark = Offset(index.state().watermark);
        anyhow::ensure!(
            watermark <= head,
            "the index covers offsets up to {watermark} but the log ends at {head}: an index of another log? run `verbatim reindex`"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread =
            std::thread::Builder::new().name("indexer".into()).spawn(move || run(&index, &log, &config, &s))?;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Commits what has been added and stops.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(index: &SearchIndex, log: &LogReader, config: &IndexConfig, stop: &AtomicBool) {
    let bg = config.background();
    index.metrics.normal_priority.set(i64::from(!bg.idle_priority));
    background::supervise(
        "indexer",
        &bg,
        |mode| Tail { index, log, config, bg, stop }.run_at(mode),
        |mode| {
            index.metrics.normal_priority.set(i64::from(mode != Mode::Idle));
            if mode == Mode::CatchingUp {
                index.metrics.priority_raised.inc();
            }
        },
    );
}

/// What one run of the indexer works with.
struct Tail<'a> {
    index: &'a SearchIndex,
    log: &'a LogReader,
    config: &'a IndexConfig,
    bg: BackgroundConfig,
    stop: &'a AtomicBool,
}

impl Tail<'_> {
    /// Indexes at `mode`'s priority until stopped or until the lag asks for
    /// the other priority; restarts the writer after a failure.
    fn run_at(&self, mode: Mode) -> Exit {
        let &Tail { index, stop, .. } = self;
        loop {
            match self.run_writer(mode) {
                Ok(exit) => return exit,
                Err(e) => {
                    error!("indexer failed, restarting from the last commit: {e:#}");
                    index.metrics.errors.inc();
                    index.set(|st| st.error = Some(format!("{e:#}")));
                    let until = Instant::now() + RETRY;
                    while Instant::now() < until {
                        if stop.load(Ordering::SeqCst) {
                            return Exit::Stopped;
                        }
                        std::thread::sleep(POLL);
                    }
                }
            }
        }
    }

    fn run_writer(&self, mode: Mode) -> anyhow::Result<Exit> {
        let &Tail { index, log, config, bg, stop } = self;
        // Tantivy's indexing and merging threads start here, at this thread's priority.
        let mut writer: IndexWriter<TantivyDocument> =
            index.index.writer_with_num_threads(config.writer_threads.max(1), config.writer_memory_mb.max(16) << 20)?;
        // Anything added but not committed before a failure is gone with the old writer.
        let mut committed = committed_watermark(&index.index)?;
        let mut pending = committed;
        let interval = Duration::from_millis(config.commit_interval_ms);
        let reconcile_every = Duration::from_secs(config.reconcile_interval_secs.max(1));
        let mut last_commit = Instant::now();
        let mut last_reconcile: Option<Instant> = None;
        let mut last_lag_check = Instant::now();
        // Set when the lag asks for the other priority: commit what was added, then switch.
        let mut switching = false;
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            let head = log.head();
            let before = pending;
            if pending < head && !stopping && !switching {
                pending = add_from(&writer, &index.fields, log, pending, CHUNK)?;
            }
            let committing = pending > committed && (stopping || switching || last_commit.elapsed() >= interval);
            if committing {
                let t = Instant::now();
                commit(&mut writer, pending)?;
                index.reader.reload()?;
                index.metrics.commits.inc();
                index.metrics.commit_seconds.observe(t.elapsed().as_secs_f64());
                committed = pending;
                last_commit = Instant::now();
                let searcher = index.reader.searcher();
                let deep = last_reconcile.is_none_or(|t| t.elapsed() >= reconcile_every);
                let check = reconcile(&searcher, &index.fields, committed, deep);
                if deep {
                    last_reconcile = Some(Instant::now());
                }
                report(index, &check);
                index.set(|st| {
                    st.watermark = committed.0;
                    st.docs = check.docs;
                    st.last_commit = Some(UnixNanos::now().to_rfc3339());
                    st.last_reconciliation = Some(check);
                    st.error = None;
                });
            } else if last_reconcile.is_none_or(|t| t.elapsed() >= reconcile_every) && pending == committed {
                let check = reconcile(&index.reader.searcher(), &index.fields, committed, true);
                last_reconcile = Some(Instant::now());
                report(index, &check);
                index.set(|st| st.last_reconciliation = Some(check));
            }
            if stopping && pending == committed {
                info!(watermark = %committed, "indexer stopped");
                return Ok(Exit::Stopped);
            }
            if switching && pending == committed {
                return Ok(Exit::Switch);
            }
            // The lag is checked right after each commit, when an index that has
            // caught up shows it, and on a timer between commits.
            if committing || (mode != Mode::Normal && last_lag_check.elapsed() >= LAG_CHECK) {
                last_lag_check = Instant::now();
                let (_, seconds) = index.lag(log);
                switching = bg.should_switch(mode, seconds);
                if switching {
                    info!(
                        lag_seconds = seconds,
                        max_idle_lag_ms = bg.max_idle_lag_ms,
                        ?mode,
                        "index lag: switching priority"
                    );
                    continue;
                }
            }
            if pending == before {
                std::thread::sleep(POLL);
            }
        }
    }
}

fn report(index: &SearchIndex, check: &Reconciliation) {
    index.metrics.reconciliations.inc();
    if check.ok {
        index.metrics.consistent.set(1);
    } else {
        index.metrics.consistent.set(0);
        index.metrics.reconcile_failures.inc();
        warn!(
            watermark = check.watermark,
            docs = check.docs,
            "the index does not match the log: {}; run `verbatim reindex`",
            check.detail.as_deref().unwrap_or("")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::search::tests::record;
    use crate::index::{in_ram, Fields};

    fn index_offsets(offsets: &[u64]) -> (Index, Fields) {
        let (index, fields) = in_ram();
        let mut w: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, 20 << 20).expect("writer");
        for &o in offsets {
            w.add_document(document(&fields, Offset(o), &record("irc", "a", "b", None, "hi", 1, 1))).expect("add");
        }
        commit(&mut w, Offset(offsets.len() as u64)).expect("commit");
        (index, fields)
    }

    fn check(offsets: &[u64], watermark: u64, deep: bool) -> Reconciliation {
        let (index, fields) = index_offsets(offsets);
        let searcher = index.reader().expect("reader").searcher();
        reconcile(&searcher, &fields, Offset(watermark), deep)
    }

    #[test]
    fn reconciliation_finds_missing_repeated_and_foreign_offsets() {
        assert!(check(&[0, 1, 2, 3], 4, true).ok);
        assert!(check(&[], 0, true).ok);
        assert!(!check(&[0, 1, 2], 4, false).ok, "a missing document");
        let repeated = check(&[0, 1, 1, 3], 4, true);
        assert!(!repeated.ok, "an offset twice, another missing");
        assert!(repeated.detail.expect("detail").contains("not exactly 0..4"));
        assert!(check(&[0, 1, 1, 3], 4, false).ok, "the count alone cannot see it: the scheduled check can");
        assert!(!check(&[0, 1, 2, 9], 4, true).ok, "an offset beyond the watermark");
        assert!(!check(&[1, 2, 0, 2], 4, true).ok);
    }

    #[test]
    fn a_lagging_indexer_commits_then_asks_for_normal_priority_and_hands_it_back_once_caught_up() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut log = crate::log::Log::open(
            Arc::new(crate::log::io::FsStorage),
            &tmp.path().join("log"),
            crate::log::LogConfig::default(),
        )
        .expect("log");
        let records = (0..5).map(|_| record("irc", "a", "b", None, "hi", 1, 1)).collect();
        log.append(&mut [records]).expect("append");
        // The oldest record not yet indexed is now older than the lag allowed.
        std::thread::sleep(Duration::from_millis(100));
        let (index, fields) = crate::index::in_ram();
        let ix = SearchIndex::new(index, fields, Arc::new(IndexMetrics::default()), 1).expect("index");
        // No commit on the timer: only the switch commits.
        let config = IndexConfig { commit_interval_ms: 600_000, ..IndexConfig::default() };
        let bg = BackgroundConfig { idle_priority: true, max_idle_lag_ms: 50 };
        let stop = AtomicBool::new(false);
        let reader = log.reader();
        let tail = Tail { index: &ix, log: &reader, config: &config, bg, stop: &stop };
        let exit = tail.run_writer(Mode::Idle).expect("idle run");
        assert_eq!(exit, Exit::Switch);
        assert_eq!(ix.state().watermark, 5, "what was added is committed before the switch");
        assert_eq!(committed_watermark(&ix.index).expect("wm"), Offset(5));
        let started = Instant::now();
        let exit = tail.run_writer(Mode::CatchingUp).expect("catching-up run");
        assert_eq!(exit, Exit::Switch, "caught up: back to idle priority");
        assert!(started.elapsed() < Duration::from_secs(5));
        // At normal priority for good, only stopping ends a run.
        stop.store(true, Ordering::SeqCst);
        assert_eq!(tail.run_writer(Mode::Normal).expect("run"), Exit::Stopped);
    }

    #[test]
    fn the_watermark_is_the_commit_payload_and_survives_reopening() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (index, fields) = crate::index::open(tmp.path()).expect("open");
        assert_eq!(committed_watermark(&index).expect("wm"), Offset::ZERO);
        let mut w: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, 20 << 20).expect("writer");
        for o in 0..3 {
            w.add_document(document(&fields, Offset(o), &record("irc", "a", "b", None, "hi", 1, 1))).expect("add");
        }
        commit(&mut w, Offset(3)).expect("commit");
        // Added but never committed: a crash here must leave no trace.
        w.add_document(document(&fields, Offset(3), &record("irc", "a", "b", None, "hi", 1, 1))).expect("add");
        drop(w);
        drop(index);
        let (index, fields) = crate::index::open(tmp.path()).expect("reopen");
        assert_eq!(committed_watermark(&index).expect("wm"), Offset(3));
        let searcher = index.reader().expect("reader").searcher();
        let r = reconcile(&searcher, &fields, Offset(3), true);
        assert!(r.ok, "{r:?}");
    }
}
