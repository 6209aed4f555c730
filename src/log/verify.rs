//! `verbatim verify`: the deep, read-only check of a log directory. Every
//! block's checksums, every record's encoding, the offsets, the hash chain
//! across blocks and segments, and every sealed footer against the blocks it
//! indexes. It stops at the first problem and names its file and byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use verbatim_schema::{decode_record, Offset};

use super::chain::ChainHash;
use super::io::Storage;
use super::segment::{self, BlockEntry, FileKind, Footer, SegmentHeader, HEADER_SIZE};
use super::{frame, io_err, LogError};

/// The first problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub pos: u64,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}: {}", self.path.display(), self.pos, self.what)
    }
}

/// What verification saw.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub segments: usize,
    pub blocks: u64,
    pub records: u64,
    pub file_bytes: u64,
    pub raw_bytes: u64,
    /// Offset after the last verified record.
    pub head: Offset,
    pub chain_head: ChainHash,
    pub problem: Option<Problem>,
    /// An incomplete block at the end of the active segment: what a crash
    /// mid-write leaves; never acknowledged, and cut off when the log opens.
    pub torn_tail: Option<Problem>,
}

struct Walk<'a> {
    report: VerifyReport,
    progress: &'a mut dyn FnMut(u64),
}

/// Verifies every segment in `dir`. `progress` is told the bytes done so far.
pub fn verify_dir(storage: &dyn Storage, dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<VerifyReport, LogError> {
    let mut files: BTreeMap<Offset, FileKind> = BTreeMap::new();
    for name in storage.list(dir).map_err(io_err("list", dir))? {
        if let Some((first, kind)) = segment::parse_name(&name) {
            // A sealed file wins over a leftover `.partial` or `.tmp` of the same segment.
            let e = files.entry(first).or_insert(kind);
            *e = (*e).min(kind);
        }
    }
    files.retain(|_, k| *k != FileKind::Tmp);
    let mut w = Walk { report: VerifyReport { chain_head: ChainHash::GENESIS, ..Default::default() }, progress };
    let n = files.len();
    for (i, (first, kind)) in files.into_iter().enumerate() {
        let path = dir.join(segment::file_name(first, kind));
        if let Err(p) = w.segment(storage, &path, first, kind, i + 1 == n)? {
            w.report.problem = Some(p);
            break;
        }
    }
    Ok(w.report)
}

impl Walk<'_> {
    fn segment(
        &mut self,
        storage: &dyn Storage,
        path: &Path,
        first: Offset,
        kind: FileKind,
        is_last: bool,
    ) -> Result<Result<(), Problem>, LogError> {
        let problem = |pos: u64, what: String| Err(Problem { path: path.to_owned(), pos, what });
        let file = storage.open_read(path).map_err(io_err("open", path))?;
        let len = file.len().map_err(io_err("stat", path))?;
        self.report.segments += 1;
        self.report.file_bytes += len;
        let header = match SegmentHeader::read(&*file) {
            Ok(h) => h,
            Err(e) => return Ok(problem(0, e)),
        };
        if header.first_offset != first {
            return Ok(problem(
                16,
                format!("header says first offset {}, the file name says {first}", header.first_offset),
            ));
        }
        if first != self.report.head {
            return Ok(problem(
                16,
                format!("segment starts at offset {first}, expected {} (a segment is missing)", self.report.head),
            ));
        }
        if header.prev_chain != self.report.chain_head {
            return Ok(problem(24, "chain hash does not continue the previous segment's".into()));
        }
        let footer = match kind {
            FileKind::Sealed => match Footer::read(&*file) {
                Ok(f) => Some(f),
                Err((pos, what)) => return Ok(problem(pos, what)),
            },
            _ => None,
        };
        let end = footer.as_ref().map_or(len, |f| f.index_pos);
        let mut pos = HEADER_SIZE;
        let mut seen: Vec<BlockEntry> = Vec::new();
        while pos < end {
            let (h, raw) = match segment::read_block(&*file, pos, end) {
                Ok(b) => b,
                Err(_) if footer.is_none() && segment::is_zero_tail(&*file, pos, end) => {
                    // Zeros reserved ahead of the next block: the clean end.
                    (self.progress)(end - pos);
                    break;
                }
                Err(e) => {
                    let torn = segment::is_torn_tail(&*file, pos, &e, end);
                    if torn && is_last && footer.is_none() {
                        self.report.torn_tail = Some(Problem {
                            path: path.to_owned(),
                            pos,
                            what: format!("{e}; {} bytes never acknowledged", end - pos),
                        });
                        break;
                    }
                    return Ok(problem(pos, e.to_string()));
                }
            };
            if h.first_offset != self.report.head {
                return Ok(problem(
                    pos,
                    format!(
                        "block starts at offset {}, expected {} (blocks reordered, lost or duplicated)",
                        h.first_offset, self.report.head
                    ),
                ));
            }
            let records = match frame::split_records(&h, &raw) {
                Ok(r) => r,
                Err(e) => return Ok(problem(pos, e.to_string())),
            };
            let mut chain = self.report.chain_head;
            for (i, rec) in records.iter().enumerate() {
                let offset = h.first_offset.plus(i as u64);
                if let Err(e) = decode_record(rec) {
                    return Ok(problem(pos, format!("record at offset {offset}: {e}")));
                }
                chain = chain.next(offset, rec);
            }
            if chain != h.chain {
                return Ok(problem(pos, "hash chain mismatch: a record was changed, removed or inserted".into()));
            }
            self.report.chain_head = chain;
            self.report.head = h.end_offset();
            self.report.blocks += 1;
            self.report.records += u64::from(h.count);
            self.report.raw_bytes += u64::from(h.raw_len);
            seen.push(BlockEntry { first_offset: h.first_offset, pos, count: h.count });
            pos += h.total_len();
            (self.progress)(h.total_len());
        }
        if let Some(f) = footer {
            if f.blocks != seen {
                return Ok(problem(f.index_pos, "footer index does not match the blocks".into()));
            }
            if f.end_offset != self.report.head || f.last_chain != self.report.chain_head {
                return Ok(problem(f.index_pos, "footer's end offset or chain head does not match the blocks".into()));
            }
        }
        Ok(Ok(()))
    }
}
