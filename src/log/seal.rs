//! Sealing: a rolled segment is rewritten as large blocks with a footer, then
//! made read-only. Small group commits (a quiet archive commits a handful of
//! events per fsync) compress poorly; regrouping them into blocks of
//! `sealed_block_bytes` gives the ratio of a stream. Records are copied as
//! they are, so offsets and the hash chain do not change (`docs/adr/0002`).
//! The chain is recomputed on the way and must match, so a seal is also a check.
//!
//! Crash safety: write `….seg.tmp` → fsync → rename to `….seg` → fsync the
//! directory → mark read-only → remove the `.partial` → fsync the directory.
//! Recovery removes a leftover `.tmp`, and a `.partial` that has a sealed twin.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tracing::info;
use verbatim_schema::Offset;

use super::frame::{self, BlockBuilder, HEADER_LEN};
use super::io::{AppendFile, Storage};
use super::segment::{self, BlockEntry, FileKind, Footer, SegmentHeader};
use super::{io_err, LogConfig, LogError, LogShared, SegmentTail, SegmentView};

/// Seals rolled segments; cheap to clone into a background thread.
#[derive(Clone)]
pub struct Sealer {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    config: LogConfig,
    shared: Arc<LogShared>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("dir", &self.dir).finish()
    }
}

struct Output {
    file: Box<dyn AppendFile>,
    path: PathBuf,
    pos: u64,
    blocks: Vec<BlockEntry>,
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl Output {
    fn write(&mut self, bytes: &[u8], entry: Option<BlockEntry>) -> Result<(), LogError> {
        self.file.append(bytes).map_err(io_err("write", &self.path))?;
        if let Some(e) = entry {
            self.blocks.push(e);
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self, b: &mut BlockBuilder, first: &mut Offset, chain: super::ChainHash) -> Result<(), LogError> {
        if b.is_empty() {
            return Ok(());
        }
        let bytes = b.finish(*first, chain, self.compressor.as_mut()).map_err(io_err("compress", &self.path))?;
        let entry = BlockEntry { first_offset: *first, pos: self.pos, count: b.count() };
        self.write(&bytes, Some(entry))?;
        *first = first.plus(u64::from(b.count()));
        *b = BlockBuilder::default();
        Ok(())
    }
}

impl Sealer {
    pub fn new(storage: Arc<dyn Storage>, dir: PathBuf, config: LogConfig, shared: Arc<LogShared>) -> Self {
        Self { storage, dir, config, shared }
    }

    /// Seals every `.partial` segment before `active_first`. Returns how many.
    pub fn seal_pending(&self, active_first: Offset) -> Result<usize, LogError> {
        let pending: Vec<_> = self
            .shared
            .segments()
            .into_iter()
            .filter(|s| s.kind == FileKind::Partial && s.first < active_first)
            .collect();
        for seg in &pending {
            self.seal(seg)?;
        }
        Ok(pending.len())
    }

    fn seal(&self, seg: &SegmentView) -> Result<(), LogError> {
        let src = seg.tail().clone();
        let corrupt = |pos: u64, what: String| LogError::Corrupt { path: seg.path.clone(), pos, what };
        let tmp = self.dir.join(segment::file_name(seg.first, FileKind::Tmp));
        if self.storage.list(&self.dir).map_err(io_err("list", &self.dir))?.iter().any(|n| tmp.ends_with(n)) {
            self.storage.remove(&tmp).map_err(io_err("remove", &tmp))?;
        }
        let file = self.storage.create(&tmp).map_err(io_err("create", &tmp))?;
        let compressor =
            frame::compressor(self.config.sealed_compression_level).map_err(io_err("start zstd for", &tmp))?;
        let mut out = Output { file, path: tmp.clone(), pos: 0, blocks: Vec::new(), compressor };
        out.write(&SegmentHeader { first_offset: seg.first, prev_chain: seg.prev_chain }.encode(), None)?;

        let target = self.config.sealed_block_bytes;
        let mut chain = seg.prev_chain;
        let mut next = seg.first;
        let mut builder = BlockBuilder::default();
        let mut builder_first = seg.first;
        for e in &src.blocks {
            let h =
                segment::read_header(&*seg.file, e.pos, src.data_end).map_err(|err| corrupt(e.pos, err.to_string()))?;
            let mut stored = vec![0u8; h.stored_len as usize];
            seg.file.read_exact_at(&mut stored, e.pos + HEADER_LEN as u64).map_err(io_err("read", &seg.path))?;
            let raw = frame::decode_payload(&h, &stored).map_err(|err| corrupt(e.pos, err.to_string()))?;
            if h.first_offset != next {
                return Err(corrupt(e.pos, format!("block starts at offset {}, expected {next}", h.first_offset)));
            }
            for rec in frame::split_records(&h, &raw).map_err(|err| corrupt(e.pos, err.to_string()))? {
                chain = chain.next(next, rec);
                next = next.plus(1);
            }
            if chain != h.chain {
                return Err(corrupt(e.pos, "hash chain mismatch".into()));
            }
            if builder.is_empty() && raw.len() >= target / 2 {
                // Already large: keep the block exactly as it was written.
                let mut whole = vec![0u8; HEADER_LEN];
                seg.file.read_exact_at(&mut whole, e.pos).map_err(io_err("read", &seg.path))?;
                whole.extend_from_slice(&stored);
                let entry = BlockEntry { first_offset: h.first_offset, pos: out.pos, count: h.count };
                out.write(&whole, Some(entry))?;
                builder_first = next;
                continue;
            }
            builder.push_raw(&raw, h.count, h.first_received_at, h.last_received_at);
            if builder.raw_len() >= target {
                out.flush(&mut builder, &mut builder_first, chain)?;
            }
        }
        out.flush(&mut builder, &mut builder_first, chain)?;
        if next != src.end_offset || chain != src.last_chain {
            return Err(corrupt(src.data_end, "segment ends other than its index says".into()));
        }
        let footer = Footer { index_pos: out.pos, blocks: out.blocks.clone(), end_offset: next, last_chain: chain };
        out.write(&footer.encode(), None)?;
        out.file.sync_data().map_err(io_err("sync", &tmp))?;
        drop(out.file);

        let sealed = self.dir.join(segment::file_name(seg.first, FileKind::Sealed));
        self.storage.rename(&tmp, &sealed).map_err(io_err("rename", &tmp))?;
        self.storage.sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?;
        self.storage.set_readonly(&sealed).map_err(io_err("chmod", &sealed))?;
        let read = self.storage.open_read(&sealed).map_err(io_err("open", &sealed))?;
        let tail = SegmentTail { blocks: out.blocks, data_end: footer.index_pos, end_offset: next, last_chain: chain };
        let view = SegmentView {
            first: seg.first,
            prev_chain: seg.prev_chain,
            kind: FileKind::Sealed,
            path: sealed.clone(),
            file: read,
            tail: RwLock::new(tail),
        };
        self.shared.replace(Arc::new(view));
        self.storage.remove(&seg.path).map_err(io_err("remove", &seg.path))?;
        self.storage.sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?;
        info!(segment = %sealed.display(), unsealed_bytes = src.data_end, sealed_bytes = footer.index_pos, "sealed segment");
        Ok(())
    }
}
