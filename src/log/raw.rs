//! Blocks as stored, for log shipping: a reader hands out the bytes of
//! durable blocks unchanged, and a writer appends blocks another log wrote
//! after checking them — CRCs, contiguous offsets, every record decodable, the
//! hash chain continued from its own last link, `received_at` never going
//! back — so a replica holds the same records at the same offsets with the
//! same chain (`docs/replication.md`).

use verbatim_schema::{decode_record, Offset, UnixNanos};

use super::chain::ChainHash;
use super::frame::{self, BlockBuilder, BlockHeader, HEADER_LEN};
use super::reader::LogReader;
use super::segment::{self, BlockEntry};
use super::writer::{BlockStats, Log};
use super::{io_err, LogError};

/// One block: its header, as decoded, and its bytes as stored (header and payload).
#[derive(Clone, Debug)]
pub struct RawBlock {
    pub header: BlockHeader,
    pub bytes: Vec<u8>,
}

/// A block whose payload was checked and decompressed.
#[derive(Debug)]
pub struct CheckedBlock {
    pub raw: RawBlock,
    payload: Vec<u8>,
    spans: Vec<std::ops::Range<usize>>,
}

impl CheckedBlock {
    pub fn first(&self) -> Offset {
        self.raw.header.first_offset
    }

    pub fn end(&self) -> Offset {
        self.raw.header.end_offset()
    }

    /// The records of the block, in offset order.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|s| &self.payload[s.clone()])
    }

    /// The chain after the records before `upto`, starting from `prev`
    /// (the link before the block's first record).
    pub fn chain_through(&self, prev: ChainHash, upto: Offset) -> ChainHash {
        let mut chain = prev;
        for (i, r) in self.records().enumerate() {
            let o = self.first().plus(i as u64);
            if o >= upto {
                break;
            }
            chain = chain.next(o, r);
        }
        chain
    }
}

/// Splits a body of back-to-back blocks and checks each one on its own
/// (header and payload CRCs, decompression, record framing, every record
/// decodable). The error names the block (0-based) and what is wrong.
pub fn parse_blocks(mut body: &[u8]) -> Result<Vec<CheckedBlock>, (usize, String)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let i = out.len();
        let hb: &[u8; HEADER_LEN] = body
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or((i, "cut short inside a block header".into()))?;
        let header = frame::decode_header(hb).map_err(|e| (i, e.to_string()))?;
        let len = header.total_len() as usize;
        let bytes = body.get(..len).ok_or((i, "cut short inside a block payload".into()))?;
        let payload = frame::decode_payload(&header, &bytes[HEADER_LEN..]).map_err(|e| (i, e.to_string()))?;
        let spans = frame::record_spans(&header, &payload).map_err(|e| (i, e.to_string()))?;
        if spans.is_empty() {
            return Err((i, "a block without records".into()));
        }
        let block = CheckedBlock { raw: RawBlock { header, bytes: bytes.to_vec() }, payload, spans };
        let mut received = Vec::with_capacity(block.spans.len());
        for (k, r) in block.records().enumerate() {
            let rec = decode_record(r).map_err(|e| (i, format!("record {}: {e}", block.first().plus(k as u64))))?;
            received.push(rec.received_at);
        }
        if received.windows(2).any(|w| w[1] < w[0])
            || received.first() != Some(&header.first_received_at)
            || received.last() != Some(&header.last_received_at)
        {
            return Err((i, "received_at of the records disagrees with the header or goes back".into()));
        }
        out.push(block);
        body = &body[len..];
    }
    Ok(out)
}

impl LogReader {
    /// The link of the hash chain after the records before `offset`
    /// (`offset` ≤ head): a block's stored link, or the links recomputed from
    /// the block before it over the records up to `offset`.
    pub fn chain_at(&self, offset: Offset) -> Result<ChainHash, LogError> {
        if offset > self.head() {
            return Err(LogError::NoSuchOffset(offset));
        }
        let Some(last) = offset.0.checked_sub(1).map(Offset) else {
            return Ok(self.shared().segments().first().map_or(ChainHash::GENESIS, |s| s.prev_chain));
        };
        let seg = self.shared().segment_for(last).ok_or(LogError::NoSuchOffset(last))?;
        let (i, entries, end) = {
            let tail = seg.tail();
            let i = tail
                .blocks
                .partition_point(|b| b.first_offset <= last)
                .checked_sub(1)
                .ok_or(LogError::NoSuchOffset(last))?;
            (i, tail.blocks.clone(), tail.data_end)
        };
        let corrupt = |pos: u64, what: String| LogError::Corrupt { path: seg.path.clone(), pos, what };
        let header_at =
            |e: &BlockEntry| segment::read_header(&*seg.file, e.pos, end).map_err(|x| corrupt(e.pos, x.to_string()));
        let h = header_at(&entries[i])?;
        if h.end_offset() == offset {
            return Ok(h.chain);
        }
        let prev = match i.checked_sub(1) {
            Some(j) => header_at(&entries[j])?.chain,
            None => seg.prev_chain,
        };
        let block = self.block_at(last)?;
        let mut chain = prev;
        for k in 0..(offset.0 - block.first.0) as usize {
            chain = chain.next(block.first.plus(k as u64), block.bytes(k));
        }
        Ok(chain)
    }

    /// Bytes of the stored blocks from the one holding `from` to the head.
    pub fn stored_bytes_from(&self, from: Offset) -> u64 {
        let mut total = 0;
        for seg in self.shared().segments() {
            let tail = seg.tail();
            if tail.end_offset <= from {
                continue;
            }
            let start = tail.blocks.partition_point(|b| b.first_offset <= from).saturating_sub(1);
            if let Some(b) = tail.blocks.get(start) {
                total += tail.data_end.saturating_sub(b.pos);
            }
        }
        total
    }

    /// Whole durable blocks from `from` on, as stored, until `max_bytes` is
    /// reached (at least one block if there is one). If `from` falls inside a
    /// block — a seal regroups small blocks into large ones — the records
    /// from `from` to that block's end are framed into a block of their own
    /// (the records' bytes and the chain are unchanged).
    pub fn raw_blocks(&self, from: Offset, max_bytes: usize, level: i32) -> Result<Vec<RawBlock>, LogError> {
        let mut out: Vec<RawBlock> = Vec::new();
        let mut next = from;
        let mut size = 0;
        while next < self.head() && (out.is_empty() || size < max_bytes) {
            let seg = self.shared().segment_for(next).ok_or(LogError::NoSuchOffset(next))?;
            let (entry, end) = {
                let tail = seg.tail();
                let i = tail.blocks.partition_point(|b| b.first_offset <= next).checked_sub(1);
                match i {
                    Some(i) => (tail.blocks[i], tail.data_end),
                    None => return Err(LogError::NoSuchOffset(next)),
                }
            };
            let corrupt = |what: String| LogError::Corrupt { path: seg.path.clone(), pos: entry.pos, what };
            let header = segment::read_header(&*seg.file, entry.pos, end).map_err(|e| corrupt(e.to_string()))?;
            let mut bytes = vec![0u8; header.total_len() as usize];
            seg.file.read_exact_at(&mut bytes, entry.pos).map_err(io_err("read", &seg.path))?;
            if crc32c::crc32c(&bytes[HEADER_LEN..]) != header.payload_crc {
                return Err(corrupt("block payload checksum mismatch".into()));
            }
            let block =
                if header.first_offset == next { RawBlock { header, bytes } } else { self.reframe(next, level)? };
            next = block.header.end_offset();
            size += block.bytes.len();
            out.push(block);
        }
        Ok(out)
    }

    /// The records from `from` to the end of the block holding it, as a block.
    fn reframe(&self, from: Offset, level: i32) -> Result<RawBlock, LogError> {
        let block = self.block_at(from)?;
        let mut builder = BlockBuilder::default();
        let mut chain = self.chain_at(from)?;
        for k in (from.0 - block.first.0) as usize..block.len() {
            let bytes = block.bytes(k);
            let offset = block.first.plus(k as u64);
            let rec = decode_record(bytes).map_err(|error| LogError::Record { offset, error })?;
            chain = chain.next(offset, bytes);
            builder.push(bytes, rec.received_at);
        }
        let mut compressor = frame::compressor(level).map_err(|e| LogError::Failed(format!("starting zstd: {e}")))?;
        let bytes = builder
            .finish(from, chain, compressor.as_mut())
            .map_err(|e| LogError::Failed(format!("compressing a block: {e}")))?;
        let header = frame::decode_header(bytes[..HEADER_LEN].try_into().expect("header"))
            .map_err(|e| LogError::Failed(format!("a block just built does not decode: {e}")))?;
        Ok(RawBlock { header, bytes })
    }
}

/// Why [`Log::append_blocks`] refused blocks; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum AppendBlocksError {
    #[error("block {block} starts at offset {first}, the log needs {need}")]
    NotContiguous { block: usize, first: Offset, need: Offset },
    #[error("block {block} does not continue the hash chain held at offset {first}")]
    Chain { block: usize, first: Offset },
    #[error("block {block} has a received_at before the last one held")]
    ClockBack { block: usize },
    #[error(transparent)]
    Log(#[from] LogError),
}

impl Log {
    /// Appends checked blocks as they are, in one write and one `fdatasync`:
    /// they must continue the log's offsets, hash chain and clock. All or
    /// nothing; a failed write or sync stops the writer like [`Log::append`].
    pub fn append_blocks(&mut self, blocks: &[&CheckedBlock]) -> Result<BlockStats, AppendBlocksError> {
        if let Some(why) = self.failure() {
            return Err(LogError::Failed(why.to_owned()).into());
        }
        let (mut need, mut chain) = {
            let t = self.active_tail();
            (t.end_offset, t.last_chain)
        };
        let mut clock = UnixNanos(self.last_received_at());
        for (i, b) in blocks.iter().enumerate() {
            if b.first() != need {
                return Err(AppendBlocksError::NotContiguous { block: i, first: b.first(), need });
            }
            let after = b.chain_through(chain, b.end());
            if after != b.raw.header.chain {
                return Err(AppendBlocksError::Chain { block: i, first: b.first() });
            }
            if b.raw.header.first_received_at < clock {
                return Err(AppendBlocksError::ClockBack { block: i });
            }
            clock = b.raw.header.last_received_at;
            need = b.end();
            chain = after;
        }
        if blocks.is_empty() {
            return Ok(BlockStats::default());
        }
        self.maybe_roll()?;
        let mut bytes = Vec::with_capacity(blocks.iter().map(|b| b.raw.bytes.len()).sum());
        for b in blocks {
            bytes.extend_from_slice(&b.raw.bytes);
        }
        let entries = blocks.iter().map(|b| (b.first(), b.raw.header.count, b.raw.bytes.len() as u64));
        let raw_bytes = blocks.iter().map(|b| u64::from(b.raw.header.raw_len)).sum();
        Ok(self.write_blocks(&bytes, entries, need, chain, clock.0, raw_bytes)?)
    }
}
