//! A block: one group commit's records, compressed and checksummed. The layout
//! (`docs/format.md`, "Block") is a fixed 84-byte header and a payload:
//!
//! ```text
//!  0  4  magic "VBLK"
//!  4  1  block format version (1)
//!  5  1  compression: 0 none, 1 zstd
//!  6  2  reserved, zero
//!  8  4  stored payload length (u32 LE)
//! 12  4  raw payload length (u32 LE)
//! 16  4  record count (u32 LE)
//! 20  8  offset of the first record (u64 LE)
//! 28  8  received_at of the first record (i64 LE, ns)
//! 36  8  received_at of the last record (i64 LE, ns)
//! 44 32  chain hash after the last record
//! 76  4  CRC32C of the stored payload
//! 80  4  CRC32C of header bytes 0..80
//! 84  …  payload: per record, a LEB128 length and the record's bytes
//! ```
//! The header has its own CRC so that recovery can tell a block cut short by a
//! crash (header incomplete or payload shorter than announced) from a complete
//! block whose bytes changed (damage). Lengths are checked against fixed caps
//! before anything is allocated, and decompression is bounded by the raw length.

use verbatim_schema::{varint, Offset, UnixNanos};

use super::chain::ChainHash;

pub const MAGIC: [u8; 4] = *b"VBLK";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 84;
/// Largest payload, stored or raw, a block may announce.
pub const MAX_PAYLOAD: u32 = 64 << 20;

/// A reusable compressor for `level` (0 = store uncompressed).
pub fn compressor(level: i32) -> std::io::Result<Option<zstd::bulk::Compressor<'static>>> {
    (level > 0).then(|| zstd::bulk::Compressor::new(level)).transpose()
}

/// How a block's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

/// A block header as decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub compression: Compression,
    pub stored_len: u32,
    pub raw_len: u32,
    pub count: u32,
    pub first_offset: Offset,
    pub first_received_at: UnixNanos,
    pub last_received_at: UnixNanos,
    pub chain: ChainHash,
    pub payload_crc: u32,
}

impl BlockHeader {
    /// Offset after the last record of the block.
    pub fn end_offset(&self) -> Offset {
        self.first_offset.plus(u64::from(self.count))
    }

    /// Bytes the block takes on disk.
    pub fn total_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.stored_len)
    }
}

/// What is wrong with bytes that should be a block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("no block magic")]
    Magic,
    #[error("block header checksum mismatch")]
    HeaderCrc,
    #[error("unknown block version {0}")]
    Version(u8),
    #[error("unknown compression {0}")]
    Compression(u8),
    #[error("block announces {0} bytes, more than the cap")]
    TooLarge(u32),
    #[error("block payload checksum mismatch")]
    PayloadCrc,
    #[error("block payload does not decompress: {0}")]
    Decompress(String),
    #[error("block payload is malformed: {0}")]
    Payload(String),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes and checks a block header.
pub fn decode_header(b: &[u8; HEADER_LEN]) -> Result<BlockHeader, FrameError> {
    if b[0..4] != MAGIC {
        return Err(FrameError::Magic);
    }
    if crc32c::crc32c(&b[..80]) != u32_at(b, 80) {
        return Err(FrameError::HeaderCrc);
    }
    if b[4] != VERSION {
        return Err(FrameError::Version(b[4]));
    }
    let compression = match b[5] {
        0 => Compression::None,
        1 => Compression::Zstd,
        c => return Err(FrameError::Compression(c)),
    };
    let stored_len = u32_at(b, 8);
    let raw_len = u32_at(b, 12);
    for len in [stored_len, raw_len] {
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
    }
    Ok(BlockHeader {
        compression,
        stored_len,
        raw_len,
        count: u32_at(b, 16),
        first_offset: Offset(u64_at(b, 20)),
        first_received_at: UnixNanos(u64_at(b, 28) as i64),
        last_received_at: UnixNanos(u64_at(b, 36) as i64),
        chain: ChainHash(b[44..76].try_into().expect("32 bytes")),
        payload_crc: u32_at(b, 76),
    })
}

/// Records in their raw payload form, being gathered into a block.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    raw: Vec<u8>,
    count: u32,
    first_received_at: Option<UnixNanos>,
    last_received_at: UnixNanos,
}

impl BlockBuilder {
    pub fn push(&mut self, record: &[u8], received_at: UnixNanos) {
        varint::put_u64(&mut self.raw, record.len() as u64);
        self.raw.extend_from_slice(record);
        self.count += 1;
        self.first_received_at.get_or_insert(received_at);
        self.last_received_at = received_at;
    }

    /// Appends a whole block's raw payload (records already framed).
    pub fn push_raw(&mut self, raw: &[u8], count: u32, first_received_at: UnixNanos, last_received_at: UnixNanos) {
        self.raw.extend_from_slice(raw);
        self.count += count;
        self.first_received_at.get_or_insert(first_received_at);
        self.last_received_at = last_received_at;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Encodes the block; `chain` is the link after its last record.
    /// Without a compressor the payload is stored uncompressed.
    pub fn finish(
        &self,
        first_offset: Offset,
        chain: ChainHash,
        compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    ) -> std::io::Result<Vec<u8>> {
        let (compression, payload) = match compressor {
            None => (Compression::None, None),
            Some(c) => (Compression::Zstd, Some(c.compress(&self.raw)?)),
        };
        let payload = payload.as_deref().unwrap_or(&self.raw);
        let mut b = Vec::with_capacity(HEADER_LEN + payload.len());
        b.extend_from_slice(&MAGIC);
        b.push(VERSION);
        b.push(match compression {
            Compression::None => 0,
            Compression::Zstd => 1,
        });
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.raw.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.count.to_le_bytes());
        b.extend_from_slice(&first_offset.0.to_le_bytes());
        b.extend_from_slice(&self.first_received_at.unwrap_or_default().0.to_le_bytes());
        b.extend_from_slice(&self.last_received_at.0.to_le_bytes());
        b.extend_from_slice(&chain.0);
        b.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        let header_crc = crc32c::crc32c(&b);
        b.extend_from_slice(&header_crc.to_le_bytes());
        b.extend_from_slice(payload);
        Ok(b)
    }
}

/// Checks a payload's CRC and returns its raw form.
pub fn decode_payload(h: &BlockHeader, stored: &[u8]) -> Result<Vec<u8>, FrameError> {
    if crc32c::crc32c(stored) != h.payload_crc {
        return Err(FrameError::PayloadCrc);
    }
    let raw = match h.compression {
        Compression::None => stored.to_vec(),
        Compression::Zstd => {
            zstd::bulk::decompress(stored, h.raw_len as usize).map_err(|e| FrameError::Decompress(e.to_string()))?
        }
    };
    if raw.len() != h.raw_len as usize {
        return Err(FrameError::Payload(format!("{} raw bytes, header says {}", raw.len(), h.raw_len)));
    }
    Ok(raw)
}

/// Where each record lies in a raw payload; checks the count.
pub fn record_spans(h: &BlockHeader, raw: &[u8]) -> Result<Vec<std::ops::Range<usize>>, FrameError> {
    let mut spans = Vec::with_capacity((h.count as usize).min(raw.len()));
    let mut rest = raw;
    while !rest.is_empty() {
        let len = varint::get_u64(&mut rest).ok_or_else(|| FrameError::Payload("bad record length".into()))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= rest.len())
            .ok_or_else(|| FrameError::Payload("record length past the payload".into()))?;
        let start = raw.len() - rest.len();
        spans.push(start..start + len);
        rest = &rest[len..];
    }
    if spans.len() != h.count as usize {
        return Err(FrameError::Payload(format!("{} records, header says {}", spans.len(), h.count)));
    }
    Ok(spans)
}

/// Splits a raw payload into its records; checks the count.
pub fn split_records<'a>(h: &BlockHeader, raw: &'a [u8]) -> Result<Vec<&'a [u8]>, FrameError> {
    Ok(record_spans(h, raw)?.into_iter().map(|s| &raw[s]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(level: i32) -> Vec<u8> {
        let mut b = BlockBuilder::default();
        b.push(b"first", UnixNanos(10));
        b.push(b"second record", UnixNanos(20));
        let mut c = compressor(level).expect("compressor");
        b.finish(Offset(7), ChainHash([9; 32]), c.as_mut()).expect("encode")
    }

    #[test]
    fn round_trips_with_and_without_compression() {
        for level in [0, 1, 3] {
            let b = block(level);
            let h = decode_header(b[..HEADER_LEN].try_into().expect("header")).expect("header");
            assert_eq!((h.first_offset, h.count, h.end_offset()), (Offset(7), 2, Offset(9)));
            assert_eq!((h.first_received_at, h.last_received_at), (UnixNanos(10), UnixNanos(20)));
            assert_eq!(h.total_len(), b.len() as u64);
            let raw = decode_payload(&h, &b[HEADER_LEN..]).expect("payload");
            assert_eq!(split_records(&h, &raw).expect("records"), vec![&b"first"[..], b"second record"]);
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let b = block(3);
        for bit in 0..b.len() * 8 {
            let mut d = b.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            let ok = decode_header(d[..HEADER_LEN].try_into().expect("header"))
                .and_then(|h| decode_payload(&h, &d[HEADER_LEN..]).map(|_| h));
            assert!(ok.is_err(), "flip of bit {bit} went unnoticed");
        }
    }
}
