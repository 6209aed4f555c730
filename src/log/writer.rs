//! The synchronous writer core. It owns the active segment: it stamps each
//! record with the server clock, encodes it, extends the hash chain, writes one
//! block per call, `fdatasync`s, and only then makes the records visible and
//! returns. A failed write or sync is never retried: the writer stops
//! accepting, because after a failed fsync the kernel may have dropped the
//! dirty pages and a later "successful" fsync proves nothing.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tracing::info;
use verbatim_schema::{encode_record, Offset, Record, UnixNanos};

use super::chain::ChainHash;
use super::frame::BlockBuilder;
use super::io::{create_dir_durable, AppendFile, Storage};
use super::reader::LogReader;
use super::recovery::open_segments;
use super::segment::{self, BlockEntry, FileKind, SegmentHeader, HEADER_SIZE};
use super::{io_err, seal, LogConfig, LogError, LogShared, SegmentTail, SegmentView};

/// What one block write did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub records: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sync_nanos: u64,
}

struct Active {
    file: Box<dyn AppendFile>,
    view: Arc<SegmentView>,
    /// Where the next block goes; the file (`file.file_len()`) may hold reserved
    /// zeros after it.
    size: u64,
    opened: Instant,
}

/// The log, open for writing. There is one per data directory.
pub struct Log {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    config: LogConfig,
    shared: Arc<LogShared>,
    active: Active,
    last_received_at: i64,
    failed: Option<String>,
    encode_buf: Vec<u8>,
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.dir).field("head", &self.head()).finish()
    }
}

fn create_segment(storage: &dyn Storage, dir: &Path, first: Offset, prev: ChainHash) -> Result<Active, LogError> {
    let path = dir.join(segment::file_name(first, FileKind::Partial));
    let mut file = storage.create(&path).map_err(io_err("create", &path))?;
    file.append(&SegmentHeader { first_offset: first, prev_chain: prev }.encode()).map_err(io_err("write", &path))?;
    file.sync_data().map_err(io_err("sync", &path))?;
    storage.sync_dir(dir).map_err(io_err("sync", dir))?;
    let read = storage.open_read(&path).map_err(io_err("open", &path))?;
    let tail = SegmentTail { blocks: Vec::new(), data_end: HEADER_SIZE, end_offset: first, last_chain: prev };
    let view = Arc::new(SegmentView {
        first,
        prev_chain: prev,
        kind: FileKind::Partial,
        path,
        file: read,
        tail: RwLock::new(tail),
    });
    Ok(Active { file, view, size: HEADER_SIZE, opened: Instant::now() })
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering from a crash as
    /// `config.recovery` says, and seals segments a crash left unsealed.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path, config: LogConfig) -> Result<Self, LogError> {
        create_dir_durable(&*storage, dir).map_err(io_err("create", dir))?;
        let opened = open_segments(&*storage, dir, &config, true)?;
        let shared = Arc::new(LogShared::default());
        let mut last_received_at = i64::MIN;
        for s in &opened.segments {
            shared.push(s.clone());
        }
        let active = match opened.segments.last() {
            Some(last) if opened.last_is_open => {
                let file = storage.open_append(&last.path).map_err(io_err("open", &last.path))?;
                // Recovery cut any reserved zeros off, so the file ends at its data.
                let size = last.tail().data_end;
                Active { file, view: last.clone(), size, opened: Instant::now() }
            }
            last => {
                let (first, prev) =
                    last.map_or((Offset::ZERO, ChainHash::GENESIS), |s| (s.tail().end_offset, s.tail().last_chain));
                let active = create_segment(&*storage, dir, first, prev)?;
                shared.push(active.view.clone());
                active
            }
        };
        // The newest durable record's received_at keeps the clock monotonic
        // across restarts even if the wall clock stepped back.
        if let Some(b) =
            opened.segments.iter().rev().find_map(|s| s.tail().blocks.last().copied().map(|b| (s.clone(), b)))
        {
            let (seg, entry) = b;
            let end = seg.tail().data_end;
            let h = segment::read_header(&*seg.file, entry.pos, end).map_err(|e| LogError::Corrupt {
                path: seg.path.clone(),
                pos: entry.pos,
                what: e.to_string(),
            })?;
            last_received_at = h.last_received_at.0;
        }
        shared.set_durable_end(active.view.tail().end_offset);
        let compressor = super::frame::compressor(config.compression_level).map_err(io_err("start zstd for", dir))?;
        let mut log = Self {
            storage,
            dir: dir.to_owned(),
            config,
            shared,
            active,
            last_received_at,
            failed: None,
            encode_buf: Vec::new(),
            compressor,
        };
        log.seal_pending()?;
        Ok(log)
    }

    /// The offset the next record will get.
    pub fn head(&self) -> Offset {
        self.active.view.tail().end_offset
    }

    pub fn reader(&self) -> LogReader {
        LogReader::new(self.shared.clone())
    }

    pub fn shared(&self) -> Arc<LogShared> {
        self.shared.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Why the writer stopped, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Restarts a stopped writer from the log: cuts the active segment back
    /// to the end of its last acknowledged block, makes that durable, removes
    /// what a failed roll left behind, and accepts appends again. The block
    /// whose write or fsync failed is not trusted, whatever the page cache
    /// now says: it is dropped, and its appenders (told it failed) retry.
    /// On error the writer stays stopped and this may be tried again later.
    pub fn recover(&mut self) -> Result<(), LogError> {
        if self.failed.is_none() {
            return Ok(());
        }
        let path = self.active.view.path.clone();
        let acked = self.active.view.tail().data_end;
        self.storage.truncate(&path, acked).map_err(io_err("truncate", &path))?;
        let mut removed = false;
        for name in self.storage.list(&self.dir).map_err(io_err("list", &self.dir))? {
            if segment::parse_name(&name).is_some_and(|(first, _)| first > self.active.view.first) {
                let stray = self.dir.join(name);
                self.storage.remove(&stray).map_err(io_err("remove", &stray))?;
                removed = true;
            }
        }
        if removed {
            self.storage.sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?;
        }
        self.active.file = self.storage.open_append(&path).map_err(io_err("open", &path))?;
        self.active.size = acked;
        info!(segment = %path.display(), at = acked, "log writer restarted from the last acknowledged block");
        self.failed = None;
        Ok(())
    }

    /// Appends batches as one block: stamps `received_at` (monotonic) and the
    /// time-plausibility flags, writes, fsyncs. Returns each batch's offsets.
    /// On error nothing is acknowledged and, unless the batches were refused
    /// before any I/O, the writer accepts nothing more.
    pub fn append(&mut self, batches: &mut [Vec<Record>]) -> Result<(Vec<Range<Offset>>, BlockStats), LogError> {
        if let Some(why) = &self.failed {
            return Err(LogError::Failed(why.clone()));
        }
        if self.should_roll() {
            self.roll()?;
        }
        let first = self.head();
        let mut chain = self.active.view.tail().last_chain;
        let mut builder = BlockBuilder::default();
        let mut ranges = Vec::with_capacity(batches.len());
        let mut next = first;
        let mut clock = self.last_received_at;
        let now = UnixNanos::now().0;
        for batch in batches.iter_mut() {
            let start = next;
            for r in batch.iter_mut() {
                clock = now.max(clock.saturating_add(1));
                r.received_at = UnixNanos(clock);
                r.flags = self.config.time.flags(r.event.ts, r.received_at);
                self.encode_buf.clear();
                encode_record(r, &mut self.encode_buf);
                chain = chain.next(next, &self.encode_buf);
                builder.push(&self.encode_buf, r.received_at);
                next = next.plus(1);
            }
            ranges.push(start..next);
        }
        if builder.raw_len() > self.config.max_block_bytes {
            return Err(LogError::BatchTooLarge { bytes: builder.raw_len(), limit: self.config.max_block_bytes });
        }
        if builder.count() == 0 {
            return Ok((ranges, BlockStats::default()));
        }
        let path = self.active.view.path.clone();
        let compressor = self.compressor.as_mut().filter(|_| builder.raw_len() >= self.config.compress_min_bytes);
        let block = match builder.finish(first, chain, compressor) {
            Ok(b) => b,
            Err(e) => return Err(io_err("compress", &path)(e)),
        };
        let entry = (first, builder.count(), block.len() as u64);
        let stats = self.write_blocks(&block, [entry], next, chain, clock, builder.raw_len() as u64)?;
        Ok((ranges, stats))
    }

    /// Writes encoded blocks (`entries`: first offset, record count and
    /// length of each, in order) and fsyncs once; only then are they visible,
    /// up to `end`, with `chain` and `clock` as the log's last link and
    /// received_at. A failure stops the writer.
    pub(super) fn write_blocks(
        &mut self,
        bytes: &[u8],
        entries: impl IntoIterator<Item = (Offset, u32, u64)>,
        end: Offset,
        chain: ChainHash,
        clock: i64,
        raw_bytes: u64,
    ) -> Result<BlockStats, LogError> {
        self.reserve(self.active.size + bytes.len() as u64)?;
        let path = self.active.view.path.clone();
        let started = Instant::now();
        if let Err(e) = self.active.file.append(bytes).and_then(|()| self.active.file.sync_data()) {
            let err = io_err("write and sync", &path)(e);
            self.failed = Some(err.to_string());
            return Err(err);
        }
        let sync_nanos = started.elapsed().as_nanos() as u64;
        self.last_received_at = clock;
        let records = end.0 - self.head().0;
        {
            let mut tail = self.active.view.tail_mut();
            let mut pos = self.active.size;
            for (first_offset, count, len) in entries {
                tail.blocks.push(BlockEntry { first_offset, pos, count });
                pos += len;
            }
            self.active.size += bytes.len() as u64;
            tail.data_end = self.active.size;
            tail.end_offset = end;
            tail.last_chain = chain;
        }
        self.shared.set_durable_end(end);
        Ok(BlockStats { records, raw_bytes, stored_bytes: bytes.len() as u64, sync_nanos })
    }

    /// Makes sure the active segment's file reaches `need` bytes with
    /// reserved zeros, and a further chunk beyond them, so that appends
    /// overwrite zeros already on disk (`AppendFile::reserve`) and a block
    /// written into them always has zeros after it (how recovery tells a
    /// torn one). A block that would end past `segment_max_bytes` is simply
    /// appended. A failure stops the writer, as a failed append does:
    /// nothing after an unsuccessful fsync is trusted.
    fn reserve(&mut self, need: u64) -> Result<(), LogError> {
        let chunk = self.reserve_chunk();
        let reserved = self.active.file.file_len();
        if chunk == 0 || need <= reserved || need > self.config.segment_max_bytes {
            return Ok(());
        }
        let target = need.saturating_add(chunk);
        let started = Instant::now();
        if let Err(e) = self.active.file.reserve(target) {
            let err = io_err("reserve zeros in", &self.active.view.path)(e);
            self.failed = Some(err.to_string());
            return Err(err);
        }
        tracing::debug!(
            bytes = target - reserved,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "reserved zeros ahead of the active segment's end"
        );
        Ok(())
    }

    /// Extends the reserved zeros once fewer than half a chunk is left, so
    /// that an append rarely waits for a reservation. The
    /// writer thread calls it after answering a block; a failure stops the
    /// writer (and is for the next append to report).
    pub fn reserve_ahead(&mut self) -> Result<(), LogError> {
        if self.failed.is_some() {
            return Ok(());
        }
        self.reserve(self.active.size + self.reserve_chunk() / 2)
    }

    /// Zeros reserved at a time: `preallocate_bytes`, at most a segment's worth.
    fn reserve_chunk(&self) -> u64 {
        self.config.preallocate_bytes.min(self.config.segment_max_bytes)
    }

    /// The active segment's tail: the log's head and last link.
    pub(super) fn active_tail(&self) -> SegmentTail {
        self.active.view.tail().clone()
    }

    /// The received_at of the newest record (`i64::MIN` for an empty log).
    pub(super) fn last_received_at(&self) -> i64 {
        self.last_received_at
    }

    fn should_roll(&self) -> bool {
        let t = self.active.view.tail();
        !t.blocks.is_empty()
            && (self.active.size >= self.config.segment_max_bytes
                || self.active.opened.elapsed().as_secs() >= self.config.segment_max_age_secs)
    }

    /// Rolls if the active segment is full or old. Returns whether it did.
    pub fn maybe_roll(&mut self) -> Result<bool, LogError> {
        if self.failed.is_none() && self.should_roll() {
            self.roll()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Starts a new active segment. The old one stays a `.partial` until
    /// [`Log::seal_pending`] (or the sealer thread) seals it.
    /// Does nothing while the active segment is empty.
    pub fn roll(&mut self) -> Result<(), LogError> {
        let (first, prev) = {
            let t = self.active.view.tail();
            if t.blocks.is_empty() {
                return Ok(());
            }
            (t.end_offset, t.last_chain)
        };
        let next = create_segment(&*self.storage, &self.dir, first, prev)
            .inspect_err(|e| self.failed = Some(e.to_string()))?;
        info!(segment = %next.view.path.display(), "rolled to a new segment");
        self.shared.push(next.view.clone());
        self.active = next;
        Ok(())
    }

    /// A sealer for the segments this log rolls, usable from another thread.
    pub fn sealer(&self) -> seal::Sealer {
        seal::Sealer::new(self.storage.clone(), self.dir.clone(), self.config.clone(), self.shared.clone())
    }

    /// Seals every rolled, not yet sealed segment.
    pub fn seal_pending(&mut self) -> Result<usize, LogError> {
        self.sealer().seal_pending(self.active.view.first)
    }

    /// Seals every segment, the active one too if it holds records, and
    /// leaves a log that opens cleanly. Every append is already durable, so
    /// there is nothing to flush; an empty active segment is left as it is.
    pub fn close(self) -> Result<(), LogError> {
        if self.failed.is_some() {
            return Ok(());
        }
        let until = if self.active.view.tail().blocks.is_empty() { self.active.view.first } else { Offset(u64::MAX) };
        self.sealer().seal_pending(until)?;
        Ok(())
    }
}
