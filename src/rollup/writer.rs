//! The rollup thread: tails the log from the manifest's watermark, writes a
//! batch of Parquet files (one per UTC day the batch touches), commits them
//! with the new watermark in one manifest replacement, and compacts runs of
//! small files into one.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::{Array, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tracing::{error, info};
use verbatim_schema::Offset;

use super::{by_day, events_batch, events_schema, span_path, write_file, FileEntry, Manifest, RollupConfig, Rollups};
use crate::background::{self, BackgroundConfig, Exit, Mode};
use crate::log::LogReader;

/// Rolls up one batch from the watermark: at most `config.max_batch_events`
/// records. Returns the number of records rolled up.
pub fn roll_once(rollups: &Rollups, log: &LogReader, config: &RollupConfig) -> anyhow::Result<u64> {
    let t = Instant::now();
    let m = rollups.manifest();
    let from = Offset(m.watermark);
    let head = log.head();
    if from >= head {
        return Ok(0);
    }
    let want = (head.0 - from.0).min(config.max_batch_events.max(1));
    let mut records = Vec::with_capacity(want as usize);
    let mut next = from;
    for item in log.iter_from(from).take(want as usize) {
        let (offset, record) = item?;
        anyhow::ensure!(offset == next, "the log skipped from {next} to {offset}");
        records.push((offset, record));
        next = offset.plus(1);
    }
    let end = next;
    let mut files = Vec::new();
    for (day, last_day, rows) in day_spans(by_day(&records), config.row_group_rows as u64) {
        let rel = span_path(&day, &last_day, from.0, end.0, 0);
        let batch = events_batch(&rows)?;
        let bytes = write_file(&rollups.dir().join(&rel), &[batch], config, from.0, end.0)
            .with_context(|| format!("writing {rel}"))?;
        let last_day = (last_day != day).then_some(last_day);
        files.push(FileEntry { path: rel, day, last_day, first: from.0, end: end.0, rows: rows.len() as u64, bytes });
    }
    let mut next_manifest = Manifest::clone(&m);
    next_manifest.watermark = end.0;
    next_manifest.files.extend(files);
    rollups.commit(next_manifest)?;
    let n = end.0 - from.0;
    rollups.metrics.batches.inc();
    rollups.metrics.rows.inc_by(n);
    rollups.metrics.batch_seconds.observe(t.elapsed().as_secs_f64());
    Ok(n)
}

/// Rows of a batch, sorted by `(ts, offset)`.
type Rows<'a> = Vec<(Offset, &'a verbatim_schema::Record)>;

/// A batch's days, each sorted by `(ts, offset)`, cut into the files it
/// writes: consecutive days share a file while it holds at most `limit` rows
/// (a row group), so a batch over many quiet days writes one file, not one
/// per day; a busier day gets files of its own (ADR 0009).
fn day_spans(days: std::collections::BTreeMap<String, Rows<'_>>, limit: u64) -> Vec<(String, String, Rows<'_>)> {
    let mut spans: Vec<(String, String, Rows)> = Vec::new();
    for (day, rows) in days {
        match spans.last_mut() {
            Some((_, last, span)) if (span.len() + rows.len()) as u64 <= limit => {
                *last = day;
                span.extend(rows);
            }
            _ => spans.push((day.clone(), day, rows)),
        }
    }
    spans
}

/// Reads a rollup file whole.
pub fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Merges runs of small files (fewer rows than `compact_target_rows`): the
/// files in order of their days, then offsets, cut into runs of at most
/// `compact_target_rows` rows at every file that is not small; each group
/// `groups_to_merge` picks from them becomes one file. A run may span
/// several days when each is small (ADR 0009). Returns the files merged
/// away: no longer listed, but a query that took the previous manifest may
/// still read them (`remove_files` deletes them later).
pub fn compact(rollups: &Rollups, config: &RollupConfig) -> anyhow::Result<Vec<PathBuf>> {
    let m = rollups.manifest();
    let target = config.compact_target_rows.max(1) as u64;
    let mut manifest = Manifest::clone(&m);
    let mut obsolete = Vec::new();
    for group in groups_to_merge(&m.files, target, config.compact_min_files) {
        let mut batches = Vec::new();
        for f in &group {
            batches.extend(read_file(&rollups.dir().join(&f.path))?);
        }
        let all = concat_batches(&events_schema(), &batches)?;
        let sorted = sort_by_time(&all)?;
        let first = group.iter().map(|f| f.first).min().unwrap_or(0);
        let end = group.iter().map(|f| f.end).max().unwrap_or(0);
        let day = group.iter().map(|f| f.day.as_str()).min().unwrap_or_default().to_string();
        let last_day = group.iter().map(|f| f.last_day()).max().unwrap_or_default().to_string();
        // Offset hulls of runs across days can coincide. A name in use by a
        // listed file (an input, too) or by a file merged away earlier and
        // not yet deleted would be deleted with it.
        let rel = (0..)
            .map(|n| span_path(&day, &last_day, first, end, n))
            .find(|p| !manifest.files.iter().any(|f| &f.path == p) && !rollups.dir().join(p).exists())
            .expect("an unused name");
        let bytes = write_file(&rollups.dir().join(&rel), &[sorted], config, first, end)?;
        let gone: std::collections::HashSet<&str> = group.iter().map(|f| f.path.as_str()).collect();
        manifest.files.retain(|f| !gone.contains(f.path.as_str()));
        let rows = group.iter().map(|f| f.rows).sum();
        let last_day = (last_day != day).then_some(last_day);
        manifest.files.push(FileEntry { path: rel, day, last_day, first, end, rows, bytes });
        obsolete.extend(group.iter().map(|f| rollups.dir().join(&f.path)));
    }
    if obsolete.is_empty() {
        return Ok(obsolete);
    }
    manifest.files.sort_by(|a, b| (a.day.as_str(), a.first).cmp(&(b.day.as_str(), b.first)));
    rollups.commit(manifest)?;
    rollups.metrics.compactions.inc();
    Ok(obsolete)
}

/// Deletes files compaction merged away, and their directories once empty.
/// A file left behind (a crash first) is deleted at the next start, as
/// every file the manifest does not list.
pub fn remove_files(files: &[PathBuf]) {
    for p in files {
        if let Err(e) = std::fs::remove_file(p) {
            tracing::warn!(file = %p.display(), "removing a compacted rollup file: {e}");
        }
        if let Some(dir) = p.parent() {
            let _ = std::fs::remove_dir(dir); // fails, harmlessly, while not empty
        }
    }
}

/// The groups of files one compaction merges. A run whose days are all
/// older than the newest day listed is settled: the live stream adds no more
/// batch files to it, so its tiers would keep their last few files (fewer
/// than `min_files` of a size) apart for good; at 100M events, four or five
/// beside each day's large file. A settled run of two files or more becomes
/// one file, or, while its largest file holds more than four times the rest,
/// the rest becomes one: a few late events do not rewrite a full file. Other
/// runs merge their tiered groups of at least `min_files` files (ADR 0009).
fn groups_to_merge(files: &[FileEntry], target: u64, min_files: usize) -> Vec<Vec<&FileEntry>> {
    let newest = files.iter().map(FileEntry::last_day).max().unwrap_or_default();
    let mut groups = Vec::new();
    for run in runs(files, target) {
        if run.iter().all(|f| f.last_day() < newest) {
            let total: u64 = run.iter().map(|f| f.rows).sum();
            let largest = run.iter().map(|f| f.rows).max().unwrap_or(0);
            let group = if largest <= 4 * (total - largest) {
                run
            } else {
                let at = run.iter().position(|f| f.rows == largest).unwrap_or(0);
                run.into_iter().enumerate().filter(|&(i, _)| i != at).map(|(_, f)| f).collect()
            };
            if group.len() >= 2 {
                groups.push(group);
            }
        } else {
            groups.extend(tiers(run).into_iter().filter(|g| g.len() >= min_files.max(2)));
        }
    }
    groups
}

/// The runs of small files (fewer than `target` rows) in order of day, then
/// offset: each of at most `target` rows, cut at every file that is not small.
fn runs(files: &[FileEntry], target: u64) -> Vec<Vec<&FileEntry>> {
    let mut files: Vec<&FileEntry> = files.iter().collect();
    files.sort_by(|a, b| (a.day.as_str(), a.first).cmp(&(b.day.as_str(), b.first)));
    let mut runs = Vec::new();
    let mut run: Vec<&FileEntry> = Vec::new();
    let mut rows = 0;
    for f in files {
        let small = f.rows < target;
        if !run.is_empty() && (!small || rows + f.rows > target) {
            runs.push(std::mem::take(&mut run));
            rows = 0;
        }
        if small {
            rows += f.rows;
            run.push(f);
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Splits a run into the groups compaction may merge, from its newest days
/// back: a file joins the group after it only while it holds at most twice
/// that group's rows (batches of about one size group together; a file
/// already merged from many waits for about as many rows after it), so a
/// row is rewritten a few times before its file is full, not once per batch
/// (ADR 0009).
fn tiers(run: Vec<&FileEntry>) -> Vec<Vec<&FileEntry>> {
    let mut groups = Vec::new();
    let mut group: Vec<&FileEntry> = Vec::new();
    let mut rows = 0;
    for f in run.into_iter().rev() {
        if !group.is_empty() && f.rows > 2 * rows {
            group.reverse();
            groups.push(std::mem::take(&mut group));
            rows = 0;
        }
        rows += f.rows;
        group.push(f);
    }
    if !group.is_empty() {
        group.reverse();
        groups.push(group);
    }
    groups.reverse();
    groups
}

fn sort_by_time(b: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let schema = b.schema();
    let ts = b.column(schema.index_of("ts")?);
    let offset = b.column(schema.index_of("offset")?);
    debug_assert!(ts.as_any().is::<TimestampNanosecondArray>() && offset.as_any().is::<Int64Array>());
    let indices = lexsort_to_indices(
        &[SortColumn { values: ts.clone(), options: None }, SortColumn { values: offset.clone(), options: None }],
        None,
    )?;
    Ok(take_record_batch(b, &indices)?)
}

/// The running rollup thread.
#[derive(Debug)]
pub struct RollupWriter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const POLL: Duration = Duration::from_millis(50);
const RETRY: Duration = Duration::from_secs(1);
/// How often the rollup writer looks at its lag between batches.
const LAG_CHECK: Duration = Duration::from_millis(250);

impl RollupWriter {
    pub fn start(rollups: Arc<Rollups>, log: LogReader, config: RollupConfig) -> anyhow::Result<Self> {
        let head = log.head();
        let watermark = rollups.watermark();
        anyhow::ensure!(
            watermark <= head,
            "the rollups cover offsets up to {watermark} but the log ends at {head}: rollups of another log? \
             delete {} to rebuild them from the log",
            rollups.dir().display()
        );
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread =
            std::thread::Builder::new().name("rollup".into()).spawn(move || run(&rollups, &log, &config, &s))?;
        Ok(Self { stop, thread: Some(thread) })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rollups: &Rollups, log: &LogReader, config: &RollupConfig, stop: &AtomicBool) {
    let bg = config.background();
    rollups.metrics.normal_priority.set(i64::from(!bg.idle_priority));
    let mut state = RunState {
        last: Instant::now(),
        merged_away: VecDeque::new(),
        // Compaction follows every batch, and runs once at start: the files may
        // come from a crash between a batch and its compaction, or from a
        // version that compacted otherwise.
        compact_due: true,
    };
    background::supervise(
        "rollup",
        &bg,
        |mode| run_at(rollups, log, config, &bg, stop, mode, &mut state),
        |mode| {
            rollups.metrics.normal_priority.set(i64::from(mode != Mode::Idle));
            if mode == Mode::CatchingUp {
                rollups.metrics.priority_raised.inc();
            }
        },
    );
    info!(watermark = %rollups.watermark(), "rollup stopped");
}

/// What the rollup loop keeps across its runs at either priority.
struct RunState {
    last: Instant,
    /// Files merged away, with when: deleted once no query can still read them.
    merged_away: VecDeque<(Instant, Vec<PathBuf>)>,
    compact_due: bool,
}

/// Rolls up at `mode`'s priority until stopped or until the lag asks for
/// the other priority.
fn run_at(
    rollups: &Rollups,
    log: &LogReader,
    config: &RollupConfig,
    bg: &BackgroundConfig,
    stop: &AtomicBool,
    mode: Mode,
    st: &mut RunState,
) -> Exit {
    let interval = Duration::from_millis(config.interval_ms);
    let keep = Duration::from_millis(config.keep_compacted_ms);
    let mut last_lag_check = Instant::now();
    let mut rolled_up = false;
    while !stop.load(Ordering::SeqCst) {
        while st.merged_away.front().is_some_and(|(at, _)| at.elapsed() >= keep) {
            let (_, files) = st.merged_away.pop_front().expect("checked");
            remove_files(&files);
        }
        let pending = log.head().0.saturating_sub(rollups.watermark().0);
        rollups.metrics.lag_events.set(pending as i64);
        let due = pending >= config.max_pending_events || (pending > 0 && st.last.elapsed() >= interval);
        // The lag is checked after each batch, when a writer that has caught
        // up shows it, and on a timer between batches.
        if std::mem::take(&mut rolled_up) || (mode != Mode::Normal && last_lag_check.elapsed() >= LAG_CHECK) {
            last_lag_check = Instant::now();
            let lag = lag_seconds(rollups, log);
            if bg.should_switch(mode, lag) {
                info!(lag_seconds = lag, max_idle_lag_ms = bg.max_idle_lag_ms, ?mode, "rollup lag: switching priority");
                return Exit::Switch;
            }
        }
        if !due && !st.compact_due {
            std::thread::sleep(POLL);
            continue;
        }
        let rolled = if due { roll_once(rollups, log, config).map(Some) } else { Ok(None) };
        let step = rolled.and_then(|n| {
            let gone = compact(rollups, config)?;
            if !gone.is_empty() {
                st.merged_away.push_back((Instant::now(), gone));
            }
            Ok(n)
        });
        match step {
            Ok(n) => {
                st.compact_due = false;
                if n.is_some() {
                    st.last = Instant::now();
                    rolled_up = true;
                }
            }
            Err(e) => {
                st.compact_due = true;
                error!("rollup failed, retrying from the manifest: {e:#}");
                rollups.metrics.errors.inc();
                std::thread::sleep(RETRY);
            }
        }
    }
    Exit::Stopped
}

/// Age of the oldest record not yet rolled up, in seconds (0 when none).
fn lag_seconds(rollups: &Rollups, log: &LogReader) -> f64 {
    let watermark = rollups.watermark();
    if watermark >= log.head() {
        return 0.0;
    }
    log.get(watermark)
        .map(|r| (verbatim_schema::UnixNanos::now().0.saturating_sub(r.received_at.0)).max(0) as f64 / 1e9)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::search::tests::record;
    use crate::log::io::FsStorage;
    use crate::log::{Log, LogConfig};
    use crate::metrics::RollupMetrics;

    fn log_of(dir: &std::path::Path, records: Vec<verbatim_schema::Record>) -> Log {
        let mut log = Log::open(Arc::new(FsStorage), dir, LogConfig::default()).expect("log");
        log.append(&mut [records]).expect("append");
        log
    }

    fn open(dir: &std::path::Path) -> Arc<Rollups> {
        Rollups::open(dir, Arc::new(RollupMetrics::default())).expect("open")
    }

    /// Rolls up batches until the rollups cover the log.
    fn roll_all(rollups: &Rollups, log: &LogReader, config: &RollupConfig) {
        while rollups.watermark() < log.head() {
            roll_once(rollups, log, config).expect("roll");
        }
    }

    /// Checks every listed file (rows sorted by time, inside its days and
    /// offset range) and returns the offsets they hold, sorted.
    fn listed_offsets(dir: &std::path::Path, m: &Manifest) -> Vec<i64> {
        let mut offsets = Vec::new();
        for f in &m.files {
            let mut last_ts = i64::MIN;
            for b in read_file(&dir.join(&f.path)).expect("read") {
                let o = b.column(0).as_any().downcast_ref::<Int64Array>().expect("offset");
                let ts = b.column(1).as_any().downcast_ref::<TimestampNanosecondArray>().expect("ts");
                for i in 0..b.num_rows() {
                    assert!(ts.value(i) >= last_ts, "sorted by time in {}", f.path);
                    last_ts = ts.value(i);
                    let day = super::super::day_of(ts.value(i));
                    assert!(f.day.as_str() <= day.as_str() && day.as_str() <= f.last_day(), "{day} in {f:?}");
                    assert!(f.first <= o.value(i) as u64 && (o.value(i) as u64) < f.end, "offset range of {f:?}");
                    offsets.push(o.value(i));
                }
            }
        }
        offsets.sort_unstable();
        offsets
    }

    #[test]
    fn batches_and_compactions_keep_every_offset_exactly_once_and_survive_crash_debris() {
        let tmp = tempfile::tempdir().expect("tmp");
        let records = (0..1000u64)
            .map(|i| {
                // Three days, out of order inside each batch (`record` takes seconds).
                let ts = 1_700_000_000 + (i as i64 % 3) * 86_400 + (i as i64 * 7919 % 1000);
                record("irc", "alice", "bob", Some("#desk"), &format!("message {i}"), ts, i + 1)
            })
            .collect();
        let log = log_of(&tmp.path().join("log"), records);
        let dir = tmp.path().join("rollup");
        let rollups = open(&dir);
        let config = RollupConfig {
            max_batch_events: 100,
            // Days never share a batch's file here.
            row_group_rows: 1,
            compact_min_files: 4,
            compact_target_rows: 150,
            ..Default::default()
        };
        roll_all(&rollups, &log.reader(), &config);
        assert_eq!(rollups.watermark(), Offset(1000));
        assert_eq!(rollups.manifest().files.len(), 30, "ten batches over three days");
        let merged = compact(&rollups, &config).expect("compact");
        assert!(merged.len() >= 6, "merged {merged:?}");
        assert!(merged.iter().all(|p| p.exists()), "kept until remove_files");
        remove_files(&merged);
        // Debris of an interrupted batch: a file no manifest lists.
        let stray = dir.join(span_path("2023-11-14", "2023-11-14", 1000, 1100, 0));
        std::fs::write(&stray, b"torn").expect("stray");
        drop(rollups);
        let rollups = open(&dir);
        assert!(!stray.exists(), "unlisted files are removed on open");
        assert_eq!(listed_offsets(&dir, &rollups.manifest()), (0..1000).collect::<Vec<i64>>());
    }

    #[test]
    fn a_lagging_rollup_writer_asks_for_normal_priority_and_hands_it_back_once_caught_up() {
        let tmp = tempfile::tempdir().expect("tmp");
        let records = (0..10u64).map(|i| record("irc", "alice", "bob", None, "hi", 1_700_000_000, i + 1)).collect();
        let log = log_of(&tmp.path().join("log"), records);
        std::thread::sleep(Duration::from_millis(100));
        let rollups = open(&tmp.path().join("rollup"));
        // Never due by the timer or the count: only the lag moves the writer.
        let config = RollupConfig { interval_ms: 600_000, max_pending_events: 1_000_000, ..Default::default() };
        let bg = BackgroundConfig { idle_priority: true, max_idle_lag_ms: 50 };
        let stop = AtomicBool::new(false);
        let mut st = RunState { last: Instant::now(), merged_away: VecDeque::new(), compact_due: false };
        let reader = log.reader();
        assert_eq!(run_at(&rollups, &reader, &config, &bg, &stop, Mode::Idle, &mut st), Exit::Switch);
        assert_eq!(rollups.watermark(), Offset::ZERO);
        // Still behind at normal priority: it rolls up (the interval has not
        // passed, so only once due by count), so make it due now.
        let config = RollupConfig { max_pending_events: 1, ..config };
        assert_eq!(run_at(&rollups, &reader, &config, &bg, &stop, Mode::CatchingUp, &mut st), Exit::Switch);
        assert_eq!(rollups.watermark(), Offset(10), "caught up before handing back");
        stop.store(true, Ordering::SeqCst);
        assert_eq!(run_at(&rollups, &reader, &config, &bg, &stop, Mode::Normal, &mut st), Exit::Stopped);
    }

    #[test]
    fn runs_of_small_days_merge_into_files_spanning_them() {
        let tmp = tempfile::tempdir().expect("tmp");
        // 60 days with 10 events each, in time order, then 50 late events of day 30.
        let mut records: Vec<_> = (0..600u64)
            .map(|i| {
                record("irc", "alice", "bob", None, &format!("m{i}"), 1_700_000_000 + (i / 10) as i64 * 86_400, i + 1)
            })
            .collect();
        records.extend(
            (600..650u64).map(|i| record("irc", "carol", "bob", None, "late", 1_700_000_000 + 30 * 86_400 + 5, i + 1)),
        );
        let log = log_of(&tmp.path().join("log"), records);
        let dir = tmp.path().join("rollup");
        let rollups = open(&dir);
        let config = RollupConfig {
            max_batch_events: 100,
            compact_min_files: 2,
            compact_target_rows: 250,
            ..Default::default()
        };
        roll_all(&rollups, &log.reader(), &config);
        let spans = |m: &Manifest| -> Vec<(u64, String, String)> {
            m.files.iter().map(|f| (f.rows, f.day.clone(), f.last_day().to_string())).collect()
        };
        let s = |rows: u64, day: &str, last: &str| (rows, day.to_string(), last.to_string());
        // A batch's quiet days share one file: six batches of ten days, and the late batch.
        assert_eq!(rollups.manifest().files.len(), 7);
        let f = &rollups.manifest().files[3];
        assert_eq!(
            (f.path.as_str(), f.day.as_str(), f.last_day(), f.rows),
            (span_path("2023-12-14", "2023-12-23", 300, 400, 0).as_str(), "2023-12-14", "2023-12-23", 100)
        );
        // A file merged away earlier and not yet deleted holds the name the
        // first run's output would take: the output takes another.
        let waiting = dir.join(span_path("2023-11-14", "2023-12-03", 0, 200, 0));
        std::fs::create_dir_all(waiting.parent().expect("dir")).expect("mkdir");
        std::fs::write(&waiting, b"merged away, not yet deleted").expect("write");
        let merged = compact(&rollups, &config).expect("compact");
        assert_eq!(merged.len(), 7);
        remove_files(&merged);
        assert_eq!(std::fs::read(&waiting).expect("still there"), b"merged away, not yet deleted");
        let m = rollups.manifest();
        assert_eq!(m.files[0].path, span_path("2023-11-14", "2023-12-03", 0, 200, 1));
        // Runs of at most 250 rows in day order: [days 0-9, 10-19], [20-29, 30-39 and the
        // late rows of day 30], [40-49, 50-59].
        assert_eq!(
            spans(&m),
            vec![
                s(200, "2023-11-14", "2023-12-03"),
                s(250, "2023-12-04", "2023-12-23"),
                s(200, "2023-12-24", "2024-01-12"),
            ]
        );
        let dirs = std::fs::read_dir(dir.join("events")).expect("events").count();
        assert_eq!(dirs, 3, "the directories of the merged files are gone");
        assert!(compact(&rollups, &config).expect("again").is_empty(), "no run holds a group to merge");
        assert_eq!(listed_offsets(&dir, &m), (0..650).collect::<Vec<i64>>());
    }

    /// A manifest entry of one day, `rows` rows from offset `first`.
    fn entry(day: &str, first: u64, rows: u64) -> FileEntry {
        FileEntry {
            path: span_path(day, day, first, first + rows, 0),
            day: day.into(),
            last_day: None,
            first,
            end: first + rows,
            rows,
            bytes: 0,
        }
    }

    #[test]
    fn a_file_that_is_not_small_cuts_the_runs() {
        let f = entry;
        let files = vec![
            f("2026-01-03", 0, 10),
            f("2026-01-01", 0, 10),
            f("2026-01-02", 0, 100),
            f("2026-01-03", 50, 30),
            f("2026-01-04", 0, 40),
            f("2026-01-05", 0, 40),
        ];
        let days = |r: &Vec<&FileEntry>| r.iter().map(|f| (f.day.clone(), f.first)).collect::<Vec<_>>();
        let got: Vec<_> = runs(&files, 100).iter().map(days).collect();
        let d = |day: &str, first: u64| (day.to_string(), first);
        assert_eq!(
            got,
            vec![
                vec![d("2026-01-01", 0)],
                vec![d("2026-01-03", 0), d("2026-01-03", 50), d("2026-01-04", 0)],
                vec![d("2026-01-05", 0)]
            ]
        );
    }

    #[test]
    fn a_file_is_merged_only_with_about_as_many_rows_after_it() {
        let f = |day: u32, rows: u64| entry(&format!("2026-01-{day:02}"), 0, rows);
        let sizes = |run: Vec<FileEntry>| -> Vec<Vec<u64>> {
            tiers(run.iter().collect()).iter().map(|g| g.iter().map(|f| f.rows).collect()).collect()
        };
        // A binary counter: 200 + 100 + ten files of 10 merge into one.
        let mut run = vec![f(1, 200), f(2, 100)];
        run.extend((3..13).map(|d| f(d, 10)));
        assert_eq!(sizes(run), vec![[vec![200, 100], vec![10; 10]].concat()]);
        // Batches of about one size group together.
        assert_eq!(sizes(vec![f(1, 101), f(2, 103), f(3, 67)]), vec![vec![101, 103, 67]]);
        // 400 and 100 wait until about as many rows come after them.
        let mut run = vec![f(1, 400), f(2, 100)];
        run.extend((3..7).map(|d| f(d, 10)));
        assert_eq!(sizes(run), vec![vec![400], vec![100], vec![10; 4]]);
    }

    #[test]
    fn the_last_few_files_of_a_past_day_merge_and_the_newest_day_waits_for_a_full_group() {
        let f = |day: u32, first: u64, rows: u64| entry(&format!("2026-01-{day:02}"), first, rows);
        let d = |day: u32, rows: u64| (format!("2026-01-{day:02}"), rows);
        let merged = |files: &[FileEntry]| -> Vec<Vec<(String, u64)>> {
            groups_to_merge(files, 2000, 8)
                .iter()
                .map(|g| g.iter().map(|f| (f.day.clone(), f.rows)).collect())
                .collect()
        };
        // As the 100M loadgen archive left them: per day one large merged
        // file and a few batch files after it, too few of a size for a group
        // of 8; runs of at most 2,000 rows.
        let files = vec![
            f(1, 0, 1500),
            f(1, 1500, 200),
            f(1, 1700, 250),
            f(1, 1950, 40),
            f(2, 2000, 1900),
            f(2, 3900, 20),
            f(2, 3920, 10),
            f(3, 4000, 1500),
            f(3, 5500, 200),
            f(3, 5700, 150),
        ];
        // Day 1 is one file of 1,990 rows; day 2's 1,900 rows hold more than
        // four times the rest, so only the rest merges; day 3, the newest,
        // waits for six more files of a size.
        assert_eq!(merged(&files), vec![vec![d(1, 1500), d(1, 200), d(1, 250), d(1, 40)], vec![d(2, 20), d(2, 10)]]);
        let after =
            vec![f(1, 0, 1990), f(2, 2000, 1900), f(2, 3900, 30), f(3, 4000, 1500), f(3, 5500, 200), f(3, 5700, 150)];
        assert!(merged(&after).is_empty(), "a settled layout merges no more");
        // Once day 4 arrives, day 3 is settled: its large file holds more
        // than four times the rest, which merges.
        let mut later = after.clone();
        later.push(f(4, 6000, 500));
        assert_eq!(merged(&later), vec![vec![d(3, 200), d(3, 150)]]);
    }

    #[test]
    fn a_batch_puts_consecutive_quiet_days_in_one_file_and_a_busy_day_in_its_own() {
        let recs: Vec<(Offset, verbatim_schema::Record)> = [(1, 10), (2, 10), (3, 50), (4, 10)]
            .iter()
            .flat_map(|&(day, n)| (0..n).map(move |i| (day, i)))
            .enumerate()
            .map(|(o, (day, i))| {
                let r = record("irc", "a", "b", None, "x", 1_700_000_000 + day * 86_400 + i, o as u64 + 1);
                (Offset(o as u64), r)
            })
            .collect();
        let got: Vec<_> = day_spans(by_day(&recs), 30).into_iter().map(|(a, b, rows)| (a, b, rows.len())).collect();
        let s = |a: &str, b: &str, n: usize| (a.to_string(), b.to_string(), n);
        assert_eq!(
            got,
            vec![
                s("2023-11-15", "2023-11-16", 20),
                s("2023-11-17", "2023-11-17", 50),
                s("2023-11-18", "2023-11-18", 10)
            ]
        );
    }
}
