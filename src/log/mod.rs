//! The conversation log: the archive's single source of truth.
//!
//! Layers, one file each, from the bytes up:
//! - [`io`]: file operations behind a trait (real, and in-memory with crashes);
//! - [`frame`]: a block — one group commit's records, compressed, checksummed;
//! - [`chain`]: the SHA-256 hash chain over the records;
//! - [`segment`]: a segment file — header, blocks, sealed footer;
//! - [`recovery`]: opening a log directory after a clean stop or a crash;
//! - [`writer`]: the synchronous writer core (stamp, encode, write, fsync, roll);
//! - [`seal`]: sealing a rolled segment into large blocks plus a footer;
//! - [`reader`]: reads by offset and iteration through the sparse block index;
//! - [`cache`]: decoded blocks kept for the read path;
//! - [`sequencer`]: what decides, in log order, what each batch appends;
//! - [`handle`]: the one async writer task with group commit;
//! - [`verify`]: the offline deep check of every segment.

pub mod cache;
pub mod chain;
pub mod frame;
pub mod handle;
pub mod io;
pub mod raw;
pub mod reader;
pub mod recovery;
pub mod seal;
pub mod segment;
pub mod sequencer;
pub mod verify;
pub mod writer;

#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use verbatim_schema::{Offset, TimePlausibility};

pub use chain::ChainHash;
pub use handle::LogHandle;
pub use reader::LogReader;
pub use sequencer::{AppendError, Appended, PassThrough, Sequencer};
pub use writer::Log;

use self::io::ReadAt;
use self::segment::{BlockEntry, FileKind};

/// What to do when opening finds a damaged block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryMode {
    /// Cut off a block that a crash left incomplete at the end of the active
    /// segment (nothing after it was ever acknowledged); stop on any other damage.
    #[default]
    TruncateTornTail,
    /// Stop on any damage, a torn tail included, and leave it to the operator.
    Strict,
}

/// Settings of the log (`[log]` in the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Roll the active segment once it holds this many bytes.
    pub segment_max_bytes: u64,
    /// Roll a non-empty active segment after this many seconds, so that a
    /// quiet archive still seals (and compacts) its segments.
    pub segment_max_age_secs: u64,
    /// zstd level of the blocks written at commit time (0 = uncompressed).
    pub compression_level: i32,
    /// Blocks of fewer raw bytes are written uncompressed at commit time:
    /// zstd gains little on a few events and its table building is most of
    /// its cost there, on the ack path. Sealing compresses them later.
    pub compress_min_bytes: usize,
    /// Raw size of the blocks a sealed segment is rewritten into.
    pub sealed_block_bytes: usize,
    /// zstd level used when sealing.
    pub sealed_compression_level: i32,
    /// Most raw bytes one group commit puts into a block; a single batch
    /// larger than this is refused.
    pub max_block_bytes: usize,
    /// Batches the writer queue holds before appenders are told to back off.
    pub queue_depth: usize,
    /// Zeros reserved (written and synced) ahead of the active segment's
    /// end, so that a block's fdatasync has no file size to journal; 0 turns
    /// this off. At most `segment_max_bytes` are reserved at a time.
    pub preallocate_bytes: u64,
    pub recovery: RecoveryMode,
    /// Capture times too far from the server clock are flagged with this.
    #[serde(skip)]
    pub time: TimePlausibility,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_max_bytes: 64 << 20,
            segment_max_age_secs: 3_600,
            compression_level: 1,
            compress_min_bytes: 4096,
            sealed_block_bytes: 1 << 20,
            sealed_compression_level: 3,
            max_block_bytes: 32 << 20,
            queue_depth: 1_024,
            preallocate_bytes: 1 << 20,
            recovery: RecoveryMode::default(),
            time: TimePlausibility::default(),
        }
    }
}

/// Errors of the log. Each names the file (and position) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("damaged log: {} at byte {pos}: {what}", path.display())]
    Corrupt { path: PathBuf, pos: u64, what: String },
    #[error("the log writer stopped after a failure and accepts nothing until restart: {0}")]
    Failed(String),
    #[error("batch of {bytes} bytes exceeds the block limit of {limit} bytes")]
    BatchTooLarge { bytes: usize, limit: usize },
    #[error("offset {0} is not in the log")]
    NoSuchOffset(Offset),
    #[error("record at offset {offset}: {error}")]
    Record { offset: Offset, error: verbatim_schema::CodecError },
}

pub(crate) fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::Io { op, path: path.to_owned(), source }
}

/// The part of a segment that grows while it is active.
#[derive(Clone, Debug)]
pub struct SegmentTail {
    pub blocks: Vec<BlockEntry>,
    /// File position after the last durable block (the footer position once sealed).
    pub data_end: u64,
    pub end_offset: Offset,
    pub last_chain: ChainHash,
}

/// One segment as readers see it.
pub struct SegmentView {
    pub first: Offset,
    pub prev_chain: ChainHash,
    pub kind: FileKind,
    pub path: PathBuf,
    pub file: Arc<dyn ReadAt>,
    pub tail: RwLock<SegmentTail>,
}

impl std::fmt::Debug for SegmentView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentView")
            .field("first", &self.first)
            .field("kind", &self.kind)
            .field("path", &self.path)
            .finish()
    }
}

impl SegmentView {
    pub fn tail(&self) -> RwLockReadGuard<'_, SegmentTail> {
        self.tail.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tail_mut(&self) -> RwLockWriteGuard<'_, SegmentTail> {
        self.tail.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// State shared by the writer, the sealer and every reader.
#[derive(Debug)]
pub struct LogShared {
    /// Tells this log from the others of the process (HQ holds one per site),
    /// for caches keyed by offset.
    id: u64,
    segments: RwLock<Vec<Arc<SegmentView>>>,
    /// Offset after the last durable record: readers see nothing past it.
    durable_end: AtomicU64,
}

impl Default for LogShared {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self { id: NEXT.fetch_add(1, Ordering::Relaxed), segments: RwLock::default(), durable_end: AtomicU64::new(0) }
    }
}

impl LogShared {
    /// This log's id within the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn durable_end(&self) -> Offset {
        Offset(self.durable_end.load(Ordering::Acquire))
    }

    fn set_durable_end(&self, o: Offset) {
        self.durable_end.store(o.0, Ordering::Release);
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Vec<Arc<SegmentView>> {
        self.segments.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many segments there are (a roll adds one).
    pub fn segment_count(&self) -> usize {
        self.segments.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The segment holding `offset`, if any.
    pub fn segment_for(&self, offset: Offset) -> Option<Arc<SegmentView>> {
        let segs = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let i = segs.partition_point(|s| s.first <= offset).checked_sub(1)?;
        Some(segs[i].clone())
    }

    fn push(&self, seg: Arc<SegmentView>) {
        self.segments.write().unwrap_or_else(|p| p.into_inner()).push(seg);
    }

    /// Puts a sealed view in place of the unsealed one with the same first offset.
    fn replace(&self, seg: Arc<SegmentView>) {
        let mut segs = self.segments.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = segs.iter_mut().find(|s| s.first == seg.first) {
            *slot = seg;
        }
    }
}

/// Opens a log for reading only (`dump`, `stats`): changes nothing on disk,
/// and leaves out a torn tail instead of cutting it off.
pub fn open_read_only(storage: &dyn io::Storage, dir: &Path, config: &LogConfig) -> Result<LogReader, LogError> {
    let opened = recovery::open_segments(storage, dir, config, false)?;
    let shared = LogShared::default();
    let end = opened.segments.last().map_or(Offset::ZERO, |s| s.tail().end_offset);
    for s in opened.segments {
        shared.push(s);
    }
    shared.set_durable_end(end);
    Ok(LogReader::new(Arc::new(shared)))
}
