//! A segment: one file of the log. A 64-byte header, blocks, and — once
//! sealed — a footer holding the sparse block index and the chain head.
//!
//! ```text
//! header   0  8  magic "VRBTMSEG"
//!          8  2  format version (u16 LE, 1)
//!         10  2  reserved, zero
//!         12  4  reserved, zero
//!         16  8  offset of the segment's first record (u64 LE)
//!         24 32  chain hash before that record
//!         56  4  reserved, zero
//!         60  4  CRC32C of bytes 0..60
//! blocks  …
//! footer  per block: first offset (u64 LE), file position (u64 LE), record count (u32 LE)
//! trailer  0  8  file position of the footer's first entry (u64 LE)
//!          8  4  number of blocks (u32 LE)
//!         12  4  reserved, zero
//!         16  8  offset after the segment's last record (u64 LE)
//!         24 32  chain hash after the last record
//!         56  4  CRC32C of the footer entries and trailer bytes 0..56
//!         60  4  magic "VEND"
//! ```
//! Names: `<first offset, 20 digits>.seg` sealed (read-only),
//! `….seg.partial` written or not yet sealed, `….seg.tmp` a seal in progress.

use std::io;

use verbatim_schema::Offset;

use super::chain::ChainHash;
use super::frame::{self, BlockHeader, FrameError, HEADER_LEN};
use super::io::ReadAt;

pub const MAGIC: [u8; 8] = *b"VRBTMSEG";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_SIZE: u64 = 64;
pub const TRAILER_SIZE: u64 = 64;
pub const TRAILER_MAGIC: [u8; 4] = *b"VEND";
const ENTRY_SIZE: u64 = 20;
/// Most blocks a footer may announce (a cap before allocating its index).
const MAX_FOOTER_BLOCKS: u32 = 1 << 24;

/// What a file name says a segment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    Sealed,
    Partial,
    Tmp,
}

pub fn file_name(first: Offset, kind: FileKind) -> String {
    let suffix = match kind {
        FileKind::Sealed => "",
        FileKind::Partial => ".partial",
        FileKind::Tmp => ".tmp",
    };
    format!("{:020}.seg{suffix}", first.0)
}

pub fn parse_name(name: &str) -> Option<(Offset, FileKind)> {
    let (stem, kind) = if let Some(s) = name.strip_suffix(".seg") {
        (s, FileKind::Sealed)
    } else if let Some(s) = name.strip_suffix(".seg.partial") {
        (s, FileKind::Partial)
    } else {
        (name.strip_suffix(".seg.tmp")?, FileKind::Tmp)
    };
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Offset(stem.parse().ok()?), kind))
}

/// The segment header's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_offset: Offset,
    pub prev_chain: ChainHash,
}

impl SegmentHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_SIZE as usize);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&self.first_offset.0.to_le_bytes());
        b.extend_from_slice(&self.prev_chain.0);
        b.extend_from_slice(&[0; 4]);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < HEADER_SIZE as usize {
            return Err("segment header incomplete".into());
        }
        if b[..8] != MAGIC {
            return Err("not a Verbatim segment (bad magic)".into());
        }
        if crc32c::crc32c(&b[..60]) != u32::from_le_bytes(b[60..64].try_into().expect("4")) {
            return Err("segment header checksum mismatch".into());
        }
        let version = u16::from_le_bytes(b[8..10].try_into().expect("2"));
        if version != FORMAT_VERSION {
            return Err(format!(
                "segment format version {version} is not supported (this build reads {FORMAT_VERSION})"
            ));
        }
        Ok(Self {
            first_offset: Offset(u64::from_le_bytes(b[16..24].try_into().expect("8"))),
            prev_chain: ChainHash(b[24..56].try_into().expect("32")),
        })
    }

    pub fn read(file: &dyn ReadAt) -> Result<Self, String> {
        let mut b = [0u8; HEADER_SIZE as usize];
        file.read_exact_at(&mut b, 0).map_err(|e| format!("segment header unreadable: {e}"))?;
        Self::decode(&b)
    }
}

/// Where a block is, for the sparse index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    pub first_offset: Offset,
    pub pos: u64,
    pub count: u32,
}

/// A sealed segment's footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    pub index_pos: u64,
    pub blocks: Vec<BlockEntry>,
    pub end_offset: Offset,
    pub last_chain: ChainHash,
}

impl Footer {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.blocks.len() * ENTRY_SIZE as usize + TRAILER_SIZE as usize);
        for e in &self.blocks {
            b.extend_from_slice(&e.first_offset.0.to_le_bytes());
            b.extend_from_slice(&e.pos.to_le_bytes());
            b.extend_from_slice(&e.count.to_le_bytes());
        }
        b.extend_from_slice(&self.index_pos.to_le_bytes());
        b.extend_from_slice(&(self.blocks.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.end_offset.0.to_le_bytes());
        b.extend_from_slice(&self.last_chain.0);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&TRAILER_MAGIC);
        b
    }

    /// Reads and checks the footer of a sealed segment.
    pub fn read(file: &dyn ReadAt) -> Result<Self, (u64, String)> {
        let len = file.len().map_err(|e| (0, e.to_string()))?;
        if len < HEADER_SIZE + TRAILER_SIZE {
            return Err((len, "file too short for a sealed segment (truncated?)".into()));
        }
        let tpos = len - TRAILER_SIZE;
        let mut t = [0u8; TRAILER_SIZE as usize];
        file.read_exact_at(&mut t, tpos).map_err(|e| (tpos, e.to_string()))?;
        if t[60..64] != TRAILER_MAGIC {
            return Err((tpos, "no footer magic at the end (truncated or damaged)".into()));
        }
        let index_pos = u64::from_le_bytes(t[0..8].try_into().expect("8"));
        let n = u32::from_le_bytes(t[8..12].try_into().expect("4"));
        if n > MAX_FOOTER_BLOCKS || index_pos < HEADER_SIZE || index_pos + u64::from(n) * ENTRY_SIZE != tpos {
            return Err((tpos, "footer lengths do not match the file".into()));
        }
        let mut entries = vec![0u8; (tpos - index_pos) as usize];
        file.read_exact_at(&mut entries, index_pos).map_err(|e| (index_pos, e.to_string()))?;
        let mut crc = crc32c::crc32c(&entries);
        crc = crc32c::crc32c_append(crc, &t[..56]);
        if crc != u32::from_le_bytes(t[56..60].try_into().expect("4")) {
            return Err((index_pos, "footer checksum mismatch".into()));
        }
        let blocks = entries
            .chunks_exact(ENTRY_SIZE as usize)
            .map(|c| BlockEntry {
                first_offset: Offset(u64::from_le_bytes(c[0..8].try_into().expect("8"))),
                pos: u64::from_le_bytes(c[8..16].try_into().expect("8")),
                count: u32::from_le_bytes(c[16..20].try_into().expect("4")),
            })
            .collect();
        Ok(Self {
            index_pos,
            blocks,
            end_offset: Offset(u64::from_le_bytes(t[16..24].try_into().expect("8"))),
            last_chain: ChainHash(t[24..56].try_into().expect("32")),
        })
    }
}

/// Why reading a block at a position failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockReadError {
    /// The file ends inside the block: what a crash mid-write leaves.
    #[error("block cut short by the end of the file")]
    Incomplete,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Reads the header of the block at `pos`, given the end of the region blocks may occupy.
pub fn read_header(file: &dyn ReadAt, pos: u64, end: u64) -> Result<BlockHeader, BlockReadError> {
    if pos + HEADER_LEN as u64 > end {
        return Err(BlockReadError::Incomplete);
    }
    let mut hb = [0u8; HEADER_LEN];
    file.read_exact_at(&mut hb, pos)?;
    let h = frame::decode_header(&hb)?;
    if pos + h.total_len() > end {
        return Err(BlockReadError::Incomplete);
    }
    Ok(h)
}

/// Reads, checks and decompresses the block at `pos`.
pub fn read_block(file: &dyn ReadAt, pos: u64, end: u64) -> Result<(BlockHeader, Vec<u8>), BlockReadError> {
    let h = read_header(file, pos, end)?;
    let mut stored = vec![0u8; h.stored_len as usize];
    file.read_exact_at(&mut stored, pos + HEADER_LEN as u64)?;
    let raw = frame::decode_payload(&h, &stored)?;
    Ok((h, raw))
}

/// What stopped a scan of blocks before the end of its region.
#[derive(Debug)]
pub struct ScanStop {
    pub pos: u64,
    pub error: BlockReadError,
}

/// The blocks found by walking a segment from its header.
#[derive(Debug)]
pub struct Scan {
    pub blocks: Vec<(BlockEntry, BlockHeader)>,
    /// Position after the last good block.
    pub end_pos: u64,
    pub stop: Option<ScanStop>,
}

impl Scan {
    pub fn end_offset(&self, first: Offset) -> Offset {
        self.blocks.last().map_or(first, |(_, h)| h.end_offset())
    }

    pub fn last_chain(&self, prev: ChainHash) -> ChainHash {
        self.blocks.last().map_or(prev, |(_, h)| h.chain)
    }
}

/// Walks the blocks in `[HEADER_SIZE, end)`, checking each header, payload
/// CRC and offset continuity, and stops at the first problem.
pub fn scan(file: &dyn ReadAt, first: Offset, end: u64) -> Scan {
    let mut blocks = Vec::new();
    let mut pos = HEADER_SIZE;
    let mut next = first;
    while pos < end {
        let h = match read_block(file, pos, end) {
            Ok((h, _)) => h,
            Err(error) => return Scan { blocks, end_pos: pos, stop: Some(ScanStop { pos, error }) },
        };
        if h.first_offset != next {
            let msg = format!("block starts at offset {}, expected {next}", h.first_offset);
            return Scan { blocks, end_pos: pos, stop: Some(ScanStop { pos, error: FrameError::Payload(msg).into() }) };
        }
        blocks.push((BlockEntry { first_offset: h.first_offset, pos, count: h.count }, h));
        next = h.end_offset();
        pos += h.total_len();
    }
    Scan { blocks, end_pos: pos, stop: None }
}

/// Whether a bad block at `pos` is what a crash mid-append leaves:
/// - the file ends inside it;
/// - its header is not a valid header and no valid block follows;
/// - its header is valid, its payload's checksum is not, and zeros follow
///   it to the end of the file: a block written into reserved zeros
///   (`AppendFile::reserve`, which always leaves some after a block) whose
///   sectors did not all reach the disk.
///
/// Anything else (a bad block with good blocks after it, a payload that
/// fails in another way, a bad payload that ends the file) is damage. Only the last block of the active
/// segment can be torn, since every earlier one was synced before the next.
pub fn is_torn_tail(file: &dyn ReadAt, pos: u64, error: &BlockReadError, end: u64) -> bool {
    match error {
        BlockReadError::Incomplete => true,
        BlockReadError::Frame(FrameError::Magic | FrameError::HeaderCrc) => !valid_block_after(file, pos, end),
        BlockReadError::Frame(FrameError::PayloadCrc) => read_header(file, pos, end).is_ok_and(|h| {
            pos + h.total_len() < end
                && is_zero_tail(file, pos + h.total_len(), end)
                && !valid_block_after(file, pos, end)
        }),
        _ => false,
    }
}

/// Whether `[from, end)` holds only zeros: what `AppendFile::reserve` left
/// after the last block of an unsealed segment. That is the segment's
/// clean end, not damage and not a torn write.
pub fn is_zero_tail(file: &dyn ReadAt, from: u64, end: u64) -> bool {
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = from;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        if file.read_exact_at(&mut buf[..n], pos).is_err() || buf[..n].iter().any(|&b| b != 0) {
            return false;
        }
        pos += n as u64;
    }
    true
}

/// Whether any complete, checksum-valid block starts in `(from, end)`: after a
/// bad block, that tells damage in the middle from a torn tail.
pub fn valid_block_after(file: &dyn ReadAt, from: u64, end: u64) -> bool {
    let Ok(len) = usize::try_from(end.saturating_sub(from)) else {
        return true;
    };
    let mut buf = vec![0u8; len];
    if file.read_exact_at(&mut buf, from).is_err() {
        return false;
    }
    (1..len.saturating_sub(HEADER_LEN - 1))
        .filter(|&i| buf[i..].starts_with(&frame::MAGIC))
        .any(|i| read_block(file, from + i as u64, end).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in [FileKind::Sealed, FileKind::Partial, FileKind::Tmp] {
            let n = file_name(Offset(42), kind);
            assert_eq!(parse_name(&n), Some((Offset(42), kind)));
        }
        assert_eq!(file_name(Offset(42), FileKind::Sealed), "00000000000000000042.seg");
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("lock"), None);
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = SegmentHeader { first_offset: Offset(9), prev_chain: ChainHash([3; 32]) };
        let mut b = h.encode();
        assert_eq!(b.len() as u64, HEADER_SIZE);
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[20] ^= 1;
        assert!(SegmentHeader::decode(&b).is_err());
    }
}
