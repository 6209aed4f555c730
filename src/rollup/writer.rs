//! The rollup thread: tails the log from the manifest's watermark, writes a
//! batch of Parquet files (one per UTC day the batch touches), commits them
//! with the new watermark in one manifest replacement, and compacts a day's
//! small files into one.

use std::collections::BTreeMap;
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

use super::{by_day, events_batch, events_schema, file_path, write_file, FileEntry, Manifest, RollupConfig, Rollups};
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
        files.push(FileEntry { path: rel, day, first: from.0, end: end.0, rows: rows.len() as u64, bytes });
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

/// Merges the small files of one day into one where a day has at least
/// `compact_min_files` of them. Returns the number of files merged away.
pub fn compact(rollups: &Rollups, config: &RollupConfig) -> anyhow::Result<usize> {
    let m = rollups.manifest();
    let target = config.compact_target_rows.max(1) as u64;
    let mut small: BTreeMap<&str, Vec<&FileEntry>> = BTreeMap::new();
    for f in &m.files {
        if f.rows < target {
            small.entry(f.day.as_str()).or_default().push(f);
        }
    }
    let mut merged_away = 0;
    let mut manifest = Manifest::clone(&m);
    let mut obsolete = Vec::new();
    for (day, mut files) in small {
        if files.len() < config.compact_min_files.max(2) {
            continue;
        }
        files.sort_by_key(|f| f.first);
        // The oldest files first, up to the target size.
        let mut group = Vec::new();
        let mut rows = 0;
        for f in files {
            if !group.is_empty() && rows + f.rows > target {
                break;
            }
            rows += f.rows;
            group.push(f);
        }
        if group.len() < 2 {
            continue;
        }
        let mut batches = Vec::new();
        for f in &group {
            batches.extend(read_file(&rollups.dir().join(&f.path))?);
        }
        let all = concat_batches(&events_schema(), &batches)?;
        let sorted = sort_by_time(&all)?;
        let first = group.iter().map(|f| f.first).min().unwrap_or(0);
        let end = group.iter().map(|f| f.end).max().unwrap_or(0);
        let rel = file_path(day, first, end);
        let bytes = write_file(&rollups.dir().join(&rel), &[sorted], config, first, end)?;
        let gone: std::collections::HashSet<&str> = group.iter().map(|f| f.path.as_str()).collect();
        manifest.files.retain(|f| !gone.contains(f.path.as_str()));
        manifest.files.push(FileEntry { path: rel, day: day.to_string(), first, end, rows, bytes });
        obsolete.extend(group.iter().map(|f| rollups.dir().join(&f.path)));
        merged_away += group.len();
    }
    if merged_away == 0 {
        return Ok(0);
    }
    manifest.files.sort_by(|a, b| (a.day.as_str(), a.first).cmp(&(b.day.as_str(), b.first)));
    rollups.commit(manifest)?;
    // Only now, with the new manifest durable, are the merged files garbage.
    for p in obsolete {
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(file = %p.display(), "removing a compacted rollup file: {e}");
        }
    }
    rollups.metrics.compactions.inc();
    Ok(merged_away)
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
    let mut last = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let pending = log.head().0.saturating_sub(rollups.watermark().0);
        rollups.metrics.lag_events.set(pending as i64);
        let due = pending >= config.max_pending_events || (pending > 0 && last.elapsed() >= interval);
        if !due {
            std::thread::sleep(POLL);
            continue;
        }
        let step = roll_once(rollups, log, config).and_then(|n| compact(rollups, config).map(|_| n));
        match step {
            Ok(_) => last = Instant::now(),
            Err(e) => {
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
        assert!(merged >= 6, "merged {merged}");
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
                    assert_eq!(super::super::day_of(ts.value(i)), f.day);
                    offsets.push(o.value(i));
                }
            }
        }
        offsets.sort_unstable();
        assert_eq!(offsets, (0..1000).collect::<Vec<i64>>());
    }
}
