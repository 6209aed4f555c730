//! Parquet rollups derived from the log (`<data>/rollup`), for SQL.
//!
//! One table is stored, `events`: one row per log record with every field but
//! the body (the body is read from the log by offset when a query asks for
//! it; ADR 0005). A batch groups its rows by the UTC day of their `ts`;
//! consecutive quiet days share a file up to a row group, a busy day gets
//! its own (`events/day=YYYY-MM-DD/`, `events/days=FIRST..LAST/`).
//! Compaction merges tiered runs of small files in day order (ADR 0009).
//! Files hold whole days' rows of their batches, sorted by `(ts, offset)`
//! inside, and are named by the offset range of the batches that wrote
//! them. `MANIFEST` (JSON, replaced atomically) lists the committed files
//! and the watermark: every record below it is in exactly one listed file.
//! A file not in the manifest is debris of a crash (or merged away and
//! waiting out `keep_compacted_ms`) and is deleted on open, so writing a
//! batch or a compaction is atomic however it is interrupted.

pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use arrow::array::{
    ArrayRef, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use verbatim_schema::{Offset, Record};

use crate::paths::write_atomic;

/// `[rollup]`: when and how the Parquet files are written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RollupConfig {
    /// Longest time an event waits in the log tail before it is rolled up.
    pub interval_ms: u64,
    /// Roll up at once when this many events wait (SQL reads the tail from
    /// the log on every query, so the tail is kept short).
    pub max_pending_events: u64,
    /// Most records one batch reads from the log.
    pub max_batch_events: u64,
    /// Rows per Parquet row group: the unit of pruning by `ts` statistics,
    /// and the most rows a batch puts in one file of several quiet days.
    pub row_group_rows: usize,
    /// A group of this many files smaller than `compact_target_rows`, in
    /// order of their days and of about one size, is compacted into one.
    /// Days older than the newest merge their small files without waiting
    /// for this many (ADR 0009).
    pub compact_min_files: usize,
    /// Largest file a compaction writes, in rows.
    pub compact_target_rows: usize,
    /// How long a compacted file outlives the manifest that listed it: a
    /// query that took that manifest still reads it. Above `sql.timeout_ms`.
    pub keep_compacted_ms: u64,
    /// zstd level of the Parquet pages.
    pub zstd_level: i32,
    /// Roll up at `SCHED_IDLE` while the rollups keep up (ADR 0012).
    pub idle_priority: bool,
    /// Behind the log by more than this, roll up at normal priority until
    /// back within a quarter of it. Above `interval_ms`, which is a lag by design.
    pub max_idle_lag_ms: u64,
}

impl RollupConfig {
    pub fn background(&self) -> crate::background::BackgroundConfig {
        crate::background::BackgroundConfig { idle_priority: self.idle_priority, max_idle_lag_ms: self.max_idle_lag_ms }
    }
}

impl Default for RollupConfig {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            max_pending_events: 100_000,
            max_batch_events: 250_000,
            row_group_rows: 128 * 1024,
            compact_min_files: 8,
            compact_target_rows: 2_000_000,
            keep_compacted_ms: 60_000,
            zstd_level: 3,
            idle_priority: true,
            max_idle_lag_ms: 15_000,
        }
    }
}

pub const MANIFEST: &str = "MANIFEST";
pub const MANIFEST_FORMAT: &str = "verbatim-rollup";
pub const MANIFEST_VERSION: u32 = 1;
/// Parquet key-value metadata naming the table and its version.
pub const FILE_KEY: &str = "verbatim.rollup";
pub const FILE_VALUE: &str = "events/1";

/// One committed Parquet file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the rollup directory.
    pub path: String,
    /// The UTC day of the file's earliest row.
    pub day: String,
    /// The UTC day of its latest row, when that is not `day`: a file of
    /// several quiet days (ADR 0009).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_day: Option<String>,
    /// The offset range of the batch (or the hull of the batches) the file
    /// came from; every row has an offset in it and a `ts` from `day` to
    /// `last_day`.
    pub first: u64,
    pub end: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// The commit point of the rollups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Every record below this offset is in exactly one file.
    pub watermark: u64,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    fn empty() -> Self {
        Self { format: MANIFEST_FORMAT.into(), version: MANIFEST_VERSION, watermark: 0, files: Vec::new() }
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// The schema of the stored `events` rows (the SQL table adds `body`).
pub fn events_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let list = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::Int64, false),
        Field::new("ts", ts.clone(), false),
        Field::new("ts_utc_offset_secs", DataType::Int32, false),
        Field::new("received_at", ts, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("network", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("sender", DataType::Utf8, false),
        Field::new("recipients", list, false),
        Field::new("channel", DataType::Utf8, true),
        Field::new("conversation_id", DataType::Int64, true),
        Field::new("direction", DataType::Utf8, true),
        Field::new("body_len", DataType::Int64, false),
        Field::new("flags", DataType::Utf8, true),
        Field::new("attrs", DataType::Utf8, true),
    ]))
}

/// The rows of `records`, in the order given.
pub fn events_batch(records: &[(Offset, &Record)]) -> anyhow::Result<RecordBatch> {
    let n = records.len();
    let mut offset = Int64Builder::with_capacity(n);
    let mut ts = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut ts_off = Int32Builder::with_capacity(n);
    let mut received = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut site = StringBuilder::new();
    let mut source = StringBuilder::new();
    let mut seq = UInt64Builder::with_capacity(n);
    let mut network = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut sender = StringBuilder::new();
    let mut recipients = ListBuilder::new(StringBuilder::new());
    let mut channel = StringBuilder::new();
    let mut conversation = Int64Builder::with_capacity(n);
    let mut direction = StringBuilder::new();
    let mut body_len = Int64Builder::with_capacity(n);
    let mut flags = StringBuilder::new();
    let mut attrs = StringBuilder::new();
    for (o, r) in records {
        let e = &r.event;
        offset.append_value(i64::try_from(o.0)?);
        ts.append_value(e.ts.instant.0);
        ts_off.append_value(e.ts.utc_offset_secs);
        received.append_value(r.received_at.0);
        site.append_value(r.site.as_str());
        source.append_value(e.source.as_str());
        seq.append_value(e.seq);
        network.append_value(&e.network);
        kind.append_value(&e.kind);
        sender.append_value(&e.from);
        for t in &e.to {
            recipients.values().append_value(t);
        }
        recipients.append(true);
        channel.append_option(e.channel.as_deref());
        conversation.append_option(r.conversation_id.map(|c| i64::try_from(c.0)).transpose()?);
        direction.append_option(e.direction.map(|d| d.as_str()));
        body_len.append_value(e.body.len() as i64);
        let names = r.flags.names();
        flags.append_option((!names.is_empty()).then(|| names.join(",")));
        attrs.append_option((!e.attrs.is_empty()).then(|| serde_json::to_string(&e.attrs)).transpose()?);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(offset.finish()),
        Arc::new(ts.finish()),
        Arc::new(ts_off.finish()),
        Arc::new(received.finish()),
        Arc::new(site.finish()),
        Arc::new(source.finish()),
        Arc::new(seq.finish()),
        Arc::new(network.finish()),
        Arc::new(kind.finish()),
        Arc::new(sender.finish()),
        Arc::new(recipients.finish()),
        Arc::new(channel.finish()),
        Arc::new(conversation.finish()),
        Arc::new(direction.finish()),
        Arc::new(body_len.finish()),
        Arc::new(flags.finish()),
        Arc::new(attrs.finish()),
    ];
    Ok(RecordBatch::try_new(events_schema(), columns)?)
}

/// The UTC day of a timestamp, `YYYY-MM-DD`.
pub fn day_of(ts_nanos: i64) -> String {
    let secs = ts_nanos.div_euclid(1_000_000_000);
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => "invalid".into(),
    }
}

fn writer_properties(config: &RollupConfig, first: u64, end: u64) -> anyhow::Result<WriterProperties> {
    let schema = events_schema();
    let ts_index = schema.index_of("ts")?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(config.zstd_level)?))
        .set_max_row_group_row_count(Some(config.row_group_rows.max(1024)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: i32::try_from(ts_index)?,
            descending: false,
            nulls_first: false,
        }]))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(FILE_KEY.into(), FILE_VALUE.to_string()),
            KeyValue::new("verbatim.offsets".into(), format!("{first}..{end}")),
        ]));
    // Offsets, times and sequence numbers rise: deltas store them in a few bits.
    for c in ["offset", "ts", "received_at", "seq"] {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(c), false)
            .set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
    }
    Ok(b.build())
}

/// Writes `batches` to `path` through a temporary file, fsynced and renamed
/// into place. Returns the file's size.
pub fn write_file(
    path: &Path,
    batches: &[RecordBatch],
    config: &RollupConfig,
    first: u64,
    end: u64,
) -> anyhow::Result<u64> {
    let dir = path.parent().context("a rollup file has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = ArrowWriter::try_new(file, events_schema(), Some(writer_properties(config, first, end)?))?;
    for b in batches {
        w.write(b)?;
    }
    let file = w.into_inner()?;
    file.sync_all()?;
    let bytes = file.metadata()?.len();
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(bytes)
}

/// The rollups as the SQL engine sees them: the committed manifest.
#[derive(Debug)]
pub struct Rollups {
    dir: PathBuf,
    current: Mutex<Arc<Manifest>>,
    pub metrics: Arc<crate::metrics::RollupMetrics>,
}

impl Rollups {
    /// Opens `dir`, creating it; deletes every file the manifest does not list.
    pub fn open(dir: &Path, metrics: Arc<crate::metrics::RollupMetrics>) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(MANIFEST);
        let manifest = match std::fs::read(&path) {
            Ok(bytes) => {
                let m: Manifest = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a rollup manifest", path.display()))?;
                anyhow::ensure!(
                    m.format == MANIFEST_FORMAT && m.version == MANIFEST_VERSION,
                    "{} is {} version {}; this server reads {MANIFEST_FORMAT} version {MANIFEST_VERSION}",
                    path.display(),
                    m.format,
                    m.version
                );
                m
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::empty(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let r = Arc::new(Self { dir: dir.to_path_buf(), current: Mutex::new(Arc::new(manifest)), metrics });
        r.remove_unlisted()?;
        r.publish_metrics();
        Ok(r)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> Arc<Manifest> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn watermark(&self) -> Offset {
        Offset(self.manifest().watermark)
    }

    /// Makes `m` the committed state: the manifest file first, then memory.
    fn commit(&self, m: Manifest) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(&m)?;
        write_atomic(&self.dir.join(MANIFEST), &bytes, 0o644).context("writing the rollup manifest")?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(m);
        self.publish_metrics();
        Ok(())
    }

    fn publish_metrics(&self) {
        let m = self.manifest();
        self.metrics.watermark.set(m.watermark as i64);
        self.metrics.files.set(m.files.len() as i64);
        self.metrics.bytes.set(m.bytes() as i64);
    }

    /// Deletes files under the directory that the manifest does not list
    /// (a batch or a compaction interrupted before its manifest commit).
    fn remove_unlisted(&self) -> anyhow::Result<()> {
        let m = self.manifest();
        let listed: std::collections::HashSet<PathBuf> = m.files.iter().map(|f| self.dir.join(&f.path)).collect();
        let events = self.dir.join("events");
        let Ok(days) = std::fs::read_dir(&events) else { return Ok(()) };
        for day in days {
            let day = day?.path();
            if !day.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&day)? {
                let f = f?.path();
                if !listed.contains(&f) {
                    tracing::info!(file = %f.display(), "removing a rollup file no manifest lists");
                    std::fs::remove_file(&f)?;
                }
            }
            if std::fs::read_dir(&day)?.next().is_none() {
                let _ = std::fs::remove_dir(&day);
            }
        }
        Ok(())
    }
}

impl FileEntry {
    /// The UTC day of the file's latest row.
    pub fn last_day(&self) -> &str {
        self.last_day.as_deref().unwrap_or(&self.day)
    }
}

/// The file of a batch, or of a compaction, holding the days
/// `day..=last_day`; `n` tells apart compaction outputs that would otherwise
/// share a name.
pub fn span_path(day: &str, last_day: &str, first: u64, end: u64, n: usize) -> String {
    let dir = if day == last_day { format!("day={day}") } else { format!("days={day}..{last_day}") };
    let suffix = if n == 0 { String::new() } else { format!("-{n}") };
    format!("events/{dir}/{first:020}-{end:020}{suffix}.parquet")
}

/// Groups `records` by UTC day, each day sorted by `(ts, offset)`.
pub fn by_day(records: &[(Offset, Record)]) -> BTreeMap<String, Vec<(Offset, &Record)>> {
    let mut days: BTreeMap<String, Vec<(Offset, &Record)>> = BTreeMap::new();
    let mut last: Option<(i64, String)> = None;
    for (o, r) in records {
        let ts = r.event.ts.instant.0;
        let day_start = ts.div_euclid(86_400_000_000_000);
        let day = match &last {
            Some((d, name)) if *d == day_start => name.clone(),
            _ => {
                let name = day_of(ts);
                last = Some((day_start, name.clone()));
                name
            }
        };
        days.entry(day).or_default().push((*o, r));
    }
    for rows in days.values_mut() {
        rows.sort_by_key(|(o, r)| (r.event.ts.instant.0, o.0));
    }
    days
}
