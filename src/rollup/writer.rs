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

use super::{
    by_day, events_batch, events_schema, file_path, span_path, write_file, FileEntry, Manifest, RollupConfig, Rollups,
};
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
    for (day, rows) in by_day(&records) {
        let rel = file_path(&day, from.0, end.0);
        let batch = events_batch(&rows)?;
        let bytes = write_file(&rollups.dir().join(&rel), &[batch], config, from.0, end.0)
            .with_context(|| format!("writing {rel}"))?;
        files.push(FileEntry {
            path: rel,
            day,
            last_day: None,
            first: from.0,
            end: end.0,
            rows: rows.len() as u64,
            bytes,
        });
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

/// Reads a rollup file whole.
pub fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Merges runs of small files (fewer rows than `compact_target_rows`): the
/// files in order of their days, then offsets, cut into runs of at most
/// `compact_target_rows` rows at every file that is not small; a run of at
/// least `compact_min_files` files becomes one. A run may span several days
/// when each is small (ADR 0009). Returns the files merged away: no longer
/// listed, but a query that took the previous manifest may still read them
/// (`remove_files` deletes them later).
pub fn compact(rollups: &Rollups, config: &RollupConfig) -> anyhow::Result<Vec<PathBuf>> {
    let m = rollups.manifest();
    let target = config.compact_target_rows.max(1) as u64;
    let mut manifest = Manifest::clone(&m);
    let mut obsolete = Vec::new();
    for group in runs(&m.files, target).into_iter().filter(|r| r.len() >= config.compact_min_files.max(2)) {
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
        // Offset hulls of runs across days can coincide; a name already in
        // use (by an input, too) would be deleted with the inputs.
        let rel = (0..)
            .map(|n| span_path(&day, &last_day, first, end, n))
            .find(|p| !manifest.files.iter().any(|f| &f.path == p))
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

/// The runs of small files (fewer than `target` rows) in order of day, then
/// offset: each of at most `target` rows, cut at every file that is not small.
fn runs(files: &[FileEntry], target: u64) -> Vec<Vec<&FileEntry>> {
    let mut files: Vec<&FileEntry> = files.iter().collect();
    files.sort_by(|a, b| (a.day.as_str(), a.first).cmp(&(b.day.as_str(), b.first)));
    let mut runs: Vec<Vec<&FileEntry>> = vec![Vec::new()];
    let mut rows = 0;
    for f in files {
        let small = f.rows < target;
        if runs.last().is_some_and(|r| !r.is_empty()) && (!small || rows + f.rows > target) {
            runs.push(Vec::new());
            rows = 0;
        }
        if small {
            rows += f.rows;
            runs.last_mut().expect("never empty").push(f);
        }
    }
    runs
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
    let interval = Duration::from_millis(config.interval_ms);
    let keep = Duration::from_millis(config.keep_compacted_ms);
    let mut last = Instant::now();
    // Files merged away, with when: deleted once no query can still read them.
    let mut merged_away: VecDeque<(Instant, Vec<PathBuf>)> = VecDeque::new();
    // Compaction follows every batch, and runs once at start: the files may
    // come from a crash between a batch and its compaction, or from a
    // version that compacted otherwise.
    let mut compact_due = true;
    while !stop.load(Ordering::SeqCst) {
        while merged_away.front().is_some_and(|(at, _)| at.elapsed() >= keep) {
            let (_, files) = merged_away.pop_front().expect("checked");
            remove_files(&files);
        }
        let pending = log.head().0.saturating_sub(rollups.watermark().0);
        rollups.metrics.lag_events.set(pending as i64);
        let due = pending >= config.max_pending_events || (pending > 0 && last.elapsed() >= interval);
        if !due && !compact_due {
            std::thread::sleep(POLL);
            continue;
        }
        let rolled = if due { roll_once(rollups, log, config).map(Some) } else { Ok(None) };
        let step = rolled.and_then(|n| {
            let gone = compact(rollups, config)?;
            if !gone.is_empty() {
                merged_away.push_back((Instant::now(), gone));
            }
            Ok(n)
        });
        match step {
            Ok(n) => {
                compact_due = false;
                if n.is_some() {
                    last = Instant::now();
                }
            }
            Err(e) => {
                compact_due = true;
                error!("rollup failed, retrying from the manifest: {e:#}");
                rollups.metrics.errors.inc();
                std::thread::sleep(RETRY);
            }
        }
    }
    info!(watermark = %rollups.watermark(), "rollup stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::search::tests::record;
    use crate::log::io::FsStorage;
    use crate::log::{Log, LogConfig};
    use crate::metrics::RollupMetrics;

    fn log_with(dir: &std::path::Path, n: u64) -> Log {
        let mut log = Log::open(Arc::new(FsStorage), dir, LogConfig::default()).expect("log");
        let records: Vec<_> = (0..n)
            .map(|i| {
                // Three days, out of order inside each batch (`record` takes seconds).
                let ts = 1_700_000_000 + (i as i64 % 3) * 86_400 + (i as i64 * 7919 % 1000);
                record("irc", "alice", "bob", Some("#desk"), &format!("message {i}"), ts, i + 1)
            })
            .collect();
        log.append(&mut [records]).expect("append");
        log
    }

    #[test]
    fn batches_and_compactions_keep_every_offset_exactly_once_and_survive_crash_debris() {
        let tmp = tempfile::tempdir().expect("tmp");
        let log = log_with(&tmp.path().join("log"), 1000);
        let reader = log.reader();
        let dir = tmp.path().join("rollup");
        let rollups = Rollups::open(&dir, Arc::new(RollupMetrics::default())).expect("open");
        let config = RollupConfig {
            max_batch_events: 100,
            compact_min_files: 4,
            compact_target_rows: 150,
            ..Default::default()
        };
        let mut total = 0;
        while total < 1000 {
            total += roll_once(&rollups, &reader, &config).expect("roll");
        }
        assert_eq!(rollups.watermark(), Offset(1000));
        assert_eq!(rollups.manifest().files.len(), 30, "ten batches over three days");
        let merged = compact(&rollups, &config).expect("compact");
        assert!(merged.len() >= 6, "merged {merged:?}");
        assert!(merged.iter().all(|p| p.exists()), "kept until remove_files");
        remove_files(&merged);
        // Debris of an interrupted batch: a file no manifest lists.
        let stray = dir.join(file_path("2023-11-14", 1000, 1100));
        std::fs::write(&stray, b"torn").expect("stray");
        drop(rollups);
        let rollups = Rollups::open(&dir, Arc::new(RollupMetrics::default())).expect("reopen");
        assert!(!stray.exists(), "unlisted files are removed on open");
        let mut offsets = Vec::new();
        for f in &rollups.manifest().files {
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
        assert_eq!(offsets, (0..1000).collect::<Vec<i64>>());
    }

    #[test]
    fn runs_of_small_days_merge_into_files_spanning_them() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut log = Log::open(Arc::new(FsStorage), &tmp.path().join("log"), LogConfig::default()).expect("log");
        // 60 days with 10 events each, in time order, then 50 late events of day 30.
        let mut records: Vec<_> = (0..600u64)
            .map(|i| {
                record("irc", "alice", "bob", None, &format!("m{i}"), 1_700_000_000 + (i / 10) as i64 * 86_400, i + 1)
            })
            .collect();
        records.extend(
            (600..650u64).map(|i| record("irc", "carol", "bob", None, "late", 1_700_000_000 + 30 * 86_400 + 5, i + 1)),
        );
        log.append(&mut [records]).expect("append");
        let reader = log.reader();
        let dir = tmp.path().join("rollup");
        let rollups = Rollups::open(&dir, Arc::new(RollupMetrics::default())).expect("open");
        let config = RollupConfig {
            max_batch_events: 100,
            compact_min_files: 4,
            compact_target_rows: 250,
            ..Default::default()
        };
        let mut total = 0;
        while total < 650 {
            total += roll_once(&rollups, &reader, &config).expect("roll");
        }
        assert_eq!(rollups.manifest().files.len(), 61, "one file per day and batch");
        let merged = compact(&rollups, &config).expect("compact");
        assert_eq!(merged.len(), 61);
        remove_files(&merged);
        let m = rollups.manifest();
        let spans: Vec<(u64, &str, &str)> = m.files.iter().map(|f| (f.rows, f.day.as_str(), f.last_day())).collect();
        // Runs of at most 250 rows in day order; day 30's 60 rows (two files) stay in one run.
        assert_eq!(
            spans,
            vec![
                (250, "2023-11-14", "2023-12-08"),
                (250, "2023-12-09", "2023-12-28"),
                (150, "2023-12-29", "2024-01-12"),
            ]
        );
        assert!(m.files.iter().all(|f| f.path.starts_with("events/days=")), "{m:?}");
        let dirs = std::fs::read_dir(dir.join("events")).expect("events").count();
        assert_eq!(dirs, 3, "the directories of the merged files are gone");
        assert!(compact(&rollups, &config).expect("again").is_empty(), "full runs and a lone file stay");
        let mut offsets = Vec::new();
        for f in &m.files {
            for b in read_file(&dir.join(&f.path)).expect("read") {
                let o = b.column(0).as_any().downcast_ref::<Int64Array>().expect("offset");
                offsets.extend((0..b.num_rows()).map(|i| o.value(i)));
            }
        }
        offsets.sort_unstable();
        assert_eq!(offsets, (0..650).collect::<Vec<i64>>());
    }

    #[test]
    fn a_file_that_is_not_small_cuts_the_runs() {
        let f = |day: &str, first: u64, rows: u64| FileEntry {
            path: file_path(day, first, first + rows),
            day: day.into(),
            last_day: None,
            first,
            end: first + rows,
            rows,
            bytes: 0,
        };
        let files = vec![
            f("2026-01-03", 0, 10),
            f("2026-01-01", 0, 10),
            f("2026-01-02", 0, 100),
            f("2026-01-03", 50, 30),
            f("2026-01-04", 0, 40),
            f("2026-01-05", 0, 40),
        ];
        let days = |r: &Vec<&FileEntry>| r.iter().map(|f| (f.day.clone(), f.first)).collect::<Vec<_>>();
        let got: Vec<_> = runs(&files, 100).iter().map(days).filter(|r| !r.is_empty()).collect();
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
}
