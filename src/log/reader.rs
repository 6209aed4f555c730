//! Reads from the log: a record by offset through the sparse block index
//! (segment by binary search over first offsets, block by binary search over
//! the segment's index — no scan), and iteration from any offset. Every block
//! read is checked (header CRC, payload CRC, the offset the index expects), so
//! a damaged block is an error, never wrong data. Only durable records are
//! visible.

use std::sync::Arc;

use verbatim_schema::{decode_record, decode_view, Offset, Record, RecordView};

use super::frame;
use super::segment;
use super::{LogError, LogShared};

/// The records of one block: the offset of the first and each record's bytes.
#[derive(Clone, Debug)]
pub struct BlockRecords {
    pub first: Offset,
    raw: Vec<u8>,
    spans: Vec<std::ops::Range<usize>>,
}

impl BlockRecords {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The bytes of the `i`-th record of the block.
    pub fn bytes(&self, i: usize) -> &[u8] {
        &self.raw[self.spans[i].clone()]
    }

    /// Bytes of the decoded block.
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    pub fn end(&self) -> Offset {
        self.first.plus(self.spans.len() as u64)
    }

    /// Whether the block holds the record at `offset`.
    pub fn holds(&self, offset: Offset) -> bool {
        self.first <= offset && offset < self.end()
    }

    /// The record at `offset`, decoded; the block must hold it.
    pub fn record(&self, offset: Offset) -> Result<Record, LogError> {
        self.view(offset).map(|v| v.to_record())
    }

    /// One byte from each end of the record at `offset` (0 if the block
    /// does not hold it): reading it brings the record's memory in.
    fn touch(&self, offset: Offset) -> u8 {
        let span = offset.0.checked_sub(self.first.0).and_then(|i| self.spans.get(i as usize));
        span.and_then(|s| Some(self.raw.get(s.start)? ^ self.raw.get(s.end.checked_sub(1)?)?)).unwrap_or(0)
    }

    /// The record at `offset`, decoded in place; the block must hold it.
    pub fn view(&self, offset: Offset) -> Result<RecordView<'_>, LogError> {
        decode_view(self.bytes((offset.0 - self.first.0) as usize)).map_err(|error| LogError::Record { offset, error })
    }
}

/// The records at the offsets of `held`, each decoded in place from the
/// block paired with it (as [`super::cache::BlockCache::blocks`] pairs them).
pub fn views(held: &[(Arc<BlockRecords>, Offset)]) -> Result<Vec<RecordView<'_>>, LogError> {
    // A page of hits lies scattered over megabytes of cached blocks, and a
    // decode waits for each record's memory in turn. Reading a byte at each
    // end of every record first lets the CPU fetch them all at once: 76
    // records in 0.047 ms instead of 0.069-0.079 (docs/benchmarks.md,
    // "Records decoded in place for the render").
    let touched = held.iter().fold(0u8, |acc, (b, o)| acc ^ b.touch(*o));
    std::hint::black_box(touched);
    held.iter().map(|(b, o)| b.view(*o)).collect()
}

/// A cheap, cloneable read handle on a log.
#[derive(Clone, Debug)]
pub struct LogReader {
    shared: Arc<LogShared>,
}

impl LogReader {
    pub fn new(shared: Arc<LogShared>) -> Self {
        Self { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<LogShared> {
        &self.shared
    }

    /// The offset after the last durable record.
    pub fn head(&self) -> Offset {
        self.shared.durable_end()
    }

    /// The block holding `offset`, decoded.
    pub fn block_at(&self, offset: Offset) -> Result<BlockRecords, LogError> {
        if offset >= self.head() {
            return Err(LogError::NoSuchOffset(offset));
        }
        let seg = self.shared.segment_for(offset).ok_or(LogError::NoSuchOffset(offset))?;
        let (entry, end) = {
            let tail = seg.tail();
            let i = tail
                .blocks
                .partition_point(|b| b.first_offset <= offset)
                .checked_sub(1)
                .ok_or(LogError::NoSuchOffset(offset))?;
            (tail.blocks[i], tail.data_end)
        };
        let corrupt = |what: String| LogError::Corrupt { path: seg.path.clone(), pos: entry.pos, what };
        let (h, raw) = segment::read_block(&*seg.file, entry.pos, end).map_err(|e| corrupt(e.to_string()))?;
        if h.first_offset != entry.first_offset || h.count != entry.count {
            return Err(corrupt(format!(
                "block holds offsets {}..{}, the index expects {}..{}",
                h.first_offset,
                h.end_offset(),
                entry.first_offset,
                entry.first_offset.plus(u64::from(entry.count))
            )));
        }
        let spans = frame::record_spans(&h, &raw).map_err(|e| corrupt(e.to_string()))?;
        Ok(BlockRecords { first: h.first_offset, raw, spans })
    }

    /// The record at `offset`.
    pub fn get(&self, offset: Offset) -> Result<Record, LogError> {
        self.block_at(offset)?.record(offset)
    }

    /// Records from `from` up to the head as it is when the iteration reaches it.
    pub fn iter_from(&self, from: Offset) -> LogIter {
        LogIter { reader: self.clone(), next: from, block: None }
    }
}

/// Iterator over `(offset, record)`; stops at the first error after yielding it.
#[derive(Debug)]
pub struct LogIter {
    reader: LogReader,
    next: Offset,
    block: Option<BlockRecords>,
}

impl LogIter {
    /// The next record's raw bytes, without decoding.
    pub fn next_raw(&mut self) -> Option<Result<(Offset, &[u8]), LogError>> {
        if self.next >= self.reader.head() {
            return None;
        }
        if !self.block.as_ref().is_some_and(|b| b.holds(self.next)) {
            match self.reader.block_at(self.next) {
                Ok(b) => self.block = Some(b),
                Err(e) => {
                    self.next = Offset(u64::MAX);
                    return Some(Err(e));
                }
            }
        }
        let offset = self.next;
        self.next = offset.plus(1);
        let b = self.block.as_ref()?;
        Some(Ok((offset, b.bytes((offset.0 - b.first.0) as usize))))
    }
}

impl Iterator for LogIter {
    type Item = Result<(Offset, Record), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_raw()?.and_then(|(offset, bytes)| {
            decode_record(bytes).map(|r| (offset, r)).map_err(|error| LogError::Record { offset, error })
        }))
    }
}

/// Sizes of a log, for `verbatim stats`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LogStats {
    pub segments: usize,
    pub sealed_segments: usize,
    pub events: u64,
    pub blocks: u64,
    /// Bytes of the segments' data: sealed files whole, unsealed ones up to
    /// their last block (not the zeros reserved after it).
    pub file_bytes: u64,
    pub raw_bytes: u64,
    pub compression_ratio: f64,
    pub bytes_per_event: f64,
}

/// Reads every block header (not payloads) to add up the log's sizes.
pub fn stats(reader: &LogReader) -> Result<LogStats, LogError> {
    let mut s = LogStats { events: reader.head().0, ..Default::default() };
    for seg in reader.shared.segments() {
        s.segments += 1;
        if seg.kind == segment::FileKind::Sealed {
            s.sealed_segments += 1;
        }
        let tail = seg.tail().clone();
        s.file_bytes += match seg.kind {
            segment::FileKind::Sealed => seg.file.len().map_err(super::io_err("stat", &seg.path))?,
            _ => tail.data_end,
        };
        for b in &tail.blocks {
            let h = segment::read_header(&*seg.file, b.pos, tail.data_end).map_err(|e| LogError::Corrupt {
                path: seg.path.clone(),
                pos: b.pos,
                what: e.to_string(),
            })?;
            s.blocks += 1;
            s.raw_bytes += u64::from(h.raw_len);
        }
    }
    if s.file_bytes > 0 {
        s.compression_ratio = s.raw_bytes as f64 / s.file_bytes as f64;
    }
    if s.events > 0 {
        s.bytes_per_event = s.file_bytes as f64 / s.events as f64;
    }
    Ok(s)
}
