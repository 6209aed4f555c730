//! Opening a log directory: finish or undo what a crash interrupted, check
//! that the segments join up, cut a torn tail off the active segment, and
//! build the views readers use. Deep checks of every record are `verify`'s job;
//! opening reads sealed footers and scans only unsealed segments.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use tracing::{info, warn};
use verbatim_schema::Offset;

use super::chain::ChainHash;
use super::io::Storage;
use super::segment::{self, FileKind, Footer, SegmentHeader, HEADER_SIZE};
use super::{io_err, LogConfig, LogError, RecoveryMode, SegmentTail, SegmentView};

/// The segments of a log directory as found, oldest first.
#[derive(Debug)]
pub struct Opened {
    pub segments: Vec<Arc<SegmentView>>,
    /// Whether the last segment is an unsealed `.partial` that can take appends.
    pub last_is_open: bool,
}

fn corrupt(path: &Path, pos: u64, what: impl Into<String>) -> LogError {
    LogError::Corrupt { path: path.to_owned(), pos, what: what.into() }
}

/// Reads the segments of `dir`, repairing only what a crash can leave behind.
/// With `repair` false (read-only tools) nothing is changed on disk, and a
/// torn tail is only left out of the views.
pub fn open_segments(storage: &dyn Storage, dir: &Path, config: &LogConfig, repair: bool) -> Result<Opened, LogError> {
    let mut files: BTreeMap<Offset, Vec<FileKind>> = BTreeMap::new();
    for name in storage.list(dir).map_err(io_err("list", dir))? {
        if let Some((first, kind)) = segment::parse_name(&name) {
            files.entry(first).or_default().push(kind);
        }
    }
    let mut changed_dir = false;
    let mut found = Vec::new();
    for (&first, kinds) in &files {
        if kinds.contains(&FileKind::Tmp) && repair {
            // A seal that did not finish: its source `.partial` is still there.
            let tmp = dir.join(segment::file_name(first, FileKind::Tmp));
            storage.remove(&tmp).map_err(io_err("remove", &tmp))?;
            changed_dir = true;
        }
        let sealed = kinds.contains(&FileKind::Sealed);
        let partial = kinds.contains(&FileKind::Partial);
        if sealed && partial && repair {
            // The seal was renamed into place (after its fsync) but the source
            // was not yet removed; the footer check below vouches for the seal.
            let p = dir.join(segment::file_name(first, FileKind::Partial));
            storage.remove(&p).map_err(io_err("remove", &p))?;
            changed_dir = true;
        }
        if sealed {
            found.push((first, FileKind::Sealed));
        } else if partial {
            found.push((first, FileKind::Partial));
        }
    }
    if changed_dir {
        storage.sync_dir(dir).map_err(io_err("sync", dir))?;
    }

    let mut segments: Vec<Arc<SegmentView>> = Vec::new();
    let mut next = Offset::ZERO;
    let mut chain = ChainHash::GENESIS;
    let count = found.len();
    for (i, (first, kind)) in found.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let path = dir.join(segment::file_name(first, kind));
        let file = storage.open_read(&path).map_err(io_err("open", &path))?;
        let len = file.len().map_err(io_err("stat", &path))?;
        let header = match SegmentHeader::read(&*file) {
            Ok(h) => h,
            Err(e)
                if is_last
                    && kind == FileKind::Partial
                    && len <= HEADER_SIZE
                    && config.recovery == RecoveryMode::TruncateTornTail =>
            {
                // Created, but the crash came before its header was durable.
                warn!(segment = %path.display(), "removing a segment whose creation a crash interrupted ({e})");
                if repair {
                    storage.remove(&path).map_err(io_err("remove", &path))?;
                    storage.sync_dir(dir).map_err(io_err("sync", dir))?;
                }
                break;
            }
            Err(e) => return Err(corrupt(&path, 0, e)),
        };
        if header.first_offset != first {
            return Err(corrupt(
                &path,
                16,
                format!("header says first offset {}, the name says {first}", header.first_offset),
            ));
        }
        if first != next {
            return Err(corrupt(
                &path,
                16,
                format!("segment starts at offset {first}, expected {next} (a segment is missing)"),
            ));
        }
        if header.prev_chain != chain {
            return Err(corrupt(&path, 24, "chain hash does not continue the previous segment's"));
        }
        let tail = match kind {
            FileKind::Sealed => {
                let f = Footer::read(&*file).map_err(|(pos, what)| corrupt(&path, pos, what))?;
                if f.blocks.first().is_some_and(|b| b.first_offset != first || b.pos != HEADER_SIZE) {
                    return Err(corrupt(&path, f.index_pos, "footer's first block does not start the segment"));
                }
                SegmentTail {
                    blocks: f.blocks,
                    data_end: f.index_pos,
                    end_offset: f.end_offset,
                    last_chain: f.last_chain,
                }
            }
            _ => {
                let scan = segment::scan(&*file, first, len);
                if let Some(stop) = scan.stop.as_ref().filter(|s| segment::is_zero_tail(&*file, s.pos, len)) {
                    // Zeros reserved ahead of the next block: the clean end.
                    // They are cut so that the file ends at its data; the
                    // writer reserves again as it appends.
                    if repair {
                        storage.truncate(&path, stop.pos).map_err(io_err("truncate", &path))?;
                    }
                } else if let Some(stop) = &scan.stop {
                    let torn = segment::is_torn_tail(&*file, stop.pos, &stop.error, len);
                    if !(torn && is_last && config.recovery == RecoveryMode::TruncateTornTail) {
                        let what = if torn && is_last {
                            format!("{} (a torn tail; recovery mode is strict)", stop.error)
                        } else {
                            stop.error.to_string()
                        };
                        return Err(corrupt(&path, stop.pos, what));
                    }
                    warn!(segment = %path.display(), pos = stop.pos, cut = len - stop.pos, "cutting off a block a crash left incomplete ({})", stop.error);
                    if repair {
                        storage.truncate(&path, stop.pos).map_err(io_err("truncate", &path))?;
                    }
                }
                let end_offset = scan.end_offset(first);
                let last_chain = scan.last_chain(header.prev_chain);
                SegmentTail {
                    blocks: scan.blocks.into_iter().map(|(e, _)| e).collect(),
                    data_end: scan.end_pos,
                    end_offset,
                    last_chain,
                }
            }
        };
        next = tail.end_offset;
        chain = tail.last_chain;
        segments.push(Arc::new(SegmentView {
            first,
            prev_chain: header.prev_chain,
            kind,
            path,
            file,
            tail: RwLock::new(tail),
        }));
    }
    let last_is_open = segments.last().is_some_and(|s| s.kind == FileKind::Partial);
    if let Some(last) = segments.last() {
        info!(segments = segments.len(), head = %last.tail().end_offset, "log opened");
    }
    Ok(Opened { segments, last_is_open })
}
