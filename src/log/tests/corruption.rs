//! Damage at rest in sealed segments — a flipped bit, a truncation, a zeroed
//! page, two blocks swapped, a segment removed — is reported by `verify` every
//! time, and reads never return wrong data: a read either fails or returns
//! exactly what was written.

use std::path::{Path, PathBuf};

use verbatim_schema::{Offset, Record};

use super::*;
use crate::log::open_read_only;
use crate::log::segment::{self, FileKind, Footer};
use crate::log::verify::verify_dir;

struct Archive {
    storage: MemStorage,
    config: LogConfig,
    records: Vec<Record>,
    sealed: Vec<PathBuf>,
}

fn archive() -> Archive {
    let storage = MemStorage::new();
    let config = LogConfig { segment_max_bytes: 16 << 10, sealed_block_bytes: 4096, ..small_config() };
    let mut log = open(&storage, &config).expect("open");
    let mut records = Vec::new();
    for i in 0..120u64 {
        let mut batch: Vec<Record> = (0..4).map(|j| record(i * 4 + j, 200 + (j as usize) * 50)).collect();
        log.append(std::slice::from_mut(&mut batch)).expect("append");
        records.extend(batch);
    }
    log.close().expect("close");
    let dir = Path::new(DIR);
    let sealed: Vec<PathBuf> = storage
        .list(dir)
        .expect("list")
        .into_iter()
        .filter(|n| matches!(segment::parse_name(n), Some((_, FileKind::Sealed))))
        .map(|n| dir.join(n))
        .collect();
    assert!(sealed.len() >= 2, "want several sealed segments, got {}", sealed.len());
    Archive { storage, config, records, sealed }
}

use crate::log::io::Storage;

fn file_bytes(s: &MemStorage, path: &Path) -> Vec<u8> {
    crate::log::io::read_all(&*s.open_read(path).expect("open")).expect("read")
}

impl Archive {
    /// Applies `damage` to a copy and checks detection and reads. Returns
    /// false if the damage changed no byte (nothing to detect).
    fn check(&self, path: &Path, what: &str, damage: impl FnOnce(&mut Vec<u8>)) -> bool {
        let s = self.storage.snapshot();
        let before = file_bytes(&s, path);
        s.modify(path, damage).expect("modify");
        if file_bytes(&s, path) == before {
            return false;
        }
        let report = verify_dir(&s, Path::new(DIR), &mut |_| {}).expect("verify runs");
        assert!(report.problem.is_some(), "verify missed: {what} in {}", path.display());
        self.reads_are_right_or_fail(&s);
        true
    }

    fn reads_are_right_or_fail(&self, s: &MemStorage) {
        let Ok(reader) = open_read_only(s, Path::new(DIR), &self.config) else {
            return;
        };
        for item in reader.iter_from(Offset(0)) {
            match item {
                Ok((o, r)) => assert_eq!(&r, &self.records[o.0 as usize], "wrong data returned at offset {o}"),
                Err(_) => break,
            }
        }
        for o in (0..self.records.len()).step_by(37) {
            if let Ok(r) = reader.get(Offset(o as u64)) {
                assert_eq!(&r, &self.records[o], "wrong data returned at offset {o}");
            }
        }
    }
}

#[test]
fn the_undamaged_archive_verifies() {
    let a = archive();
    let report = verify_dir(&a.storage, Path::new(DIR), &mut |_| {}).expect("verify");
    assert_eq!(report.problem, None);
    assert_eq!(report.records, a.records.len() as u64);
    a.reads_are_right_or_fail(&a.storage);
}

#[test]
fn bit_flips_are_always_detected() {
    let a = archive();
    let mut trials = 0;
    for path in &a.sealed {
        let len = file_bytes(&a.storage, path).len();
        for pos in (0..len).step_by(11) {
            trials += usize::from(a.check(path, &format!("bit flip at byte {pos}"), |b| b[pos] ^= 1 << (pos % 8)));
        }
    }
    assert!(trials > 1000, "{trials} trials");
}

#[test]
fn truncations_are_always_detected() {
    let a = archive();
    for path in &a.sealed {
        let len = file_bytes(&a.storage, path).len();
        for cut in (0..len).step_by(97).chain([len - 1, len - 64, 64]) {
            a.check(path, &format!("truncation to {cut} bytes"), |b| b.truncate(cut));
        }
    }
}

#[test]
fn zeroed_pages_are_always_detected() {
    let a = archive();
    for path in &a.sealed {
        let len = file_bytes(&a.storage, path).len();
        for page in (0..len).step_by(4096) {
            a.check(path, &format!("zeroed page at {page}"), |b| b[page..(page + 4096).min(len)].fill(0));
        }
    }
}

#[test]
fn swapped_blocks_are_always_detected() {
    let a = archive();
    let mut swaps = 0;
    for path in &a.sealed {
        let footer = Footer::read(&*a.storage.open_read(path).expect("open")).expect("footer");
        let mut bounds: Vec<u64> = footer.blocks.iter().map(|b| b.pos).collect();
        bounds.push(footer.index_pos);
        for i in 0..footer.blocks.len().saturating_sub(1) {
            let (x, y, z) = (bounds[i] as usize, bounds[i + 1] as usize, bounds[i + 2] as usize);
            swaps += usize::from(a.check(path, &format!("blocks {i} and {} swapped", i + 1), |b| {
                let mut swapped = b[y..z].to_vec();
                swapped.extend_from_slice(&b[x..y]);
                b[x..z].copy_from_slice(&swapped);
            }));
        }
    }
    assert!(swaps >= 2, "{swaps} swaps");
}

#[test]
fn a_missing_segment_is_detected() {
    let a = archive();
    let s = a.storage.snapshot();
    s.remove(&a.sealed[0]).expect("remove");
    let report = verify_dir(&s, Path::new(DIR), &mut |_| {}).expect("verify runs");
    assert!(report.problem.expect("a problem").what.contains("missing"));
    assert!(open(&s, &a.config).is_err(), "the writer must not open a log with a hole");
}

#[test]
fn damage_in_the_middle_of_the_active_segment_stops_the_open() {
    let storage = MemStorage::new();
    let config = LogConfig { segment_max_bytes: 1 << 20, ..small_config() };
    let mut log = open(&storage, &config).expect("open");
    for i in 0..5 {
        log.append(&mut [vec![record(i, 100)]]).expect("append");
    }
    let active = log.shared().segments().last().expect("active").path.clone();
    drop(log);
    storage.modify(&active, |b| b[200] ^= 0x10).expect("modify");
    let err = open(&storage, &config).expect_err("must refuse");
    let msg = err.to_string();
    assert!(msg.contains(".seg.partial") && msg.contains("at byte"), "{msg}");
}

#[test]
fn strict_recovery_refuses_a_torn_tail() {
    let storage = MemStorage::new();
    let config = small_config();
    let mut log = open(&storage, &config).expect("open");
    log.append(&mut [vec![record(1, 100)]]).expect("append");
    storage.fail_sync_after(0);
    assert!(log.append(&mut [vec![record(2, 100)]]).is_err());
    drop(log);
    storage.crash(|n| n / 2);
    let strict = LogConfig { recovery: crate::log::RecoveryMode::Strict, ..config.clone() };
    let err = open(&storage, &strict).expect_err("strict refuses");
    assert!(err.to_string().contains("torn tail"), "{err}");
    let log = open(&storage, &config).expect("the default mode cuts the torn tail");
    assert_eq!(log.head(), Offset(1));
}

/// The zeros reserved after the active segment's last block are its clean
/// end in either recovery mode, and `verify` passes over them. A block the
/// crash tore inside them (its header written, its payload not all) is a
/// torn tail: cut in the default mode, refused in the strict one.
#[test]
fn reserved_zeros_are_a_clean_end_and_a_block_torn_in_them_a_torn_tail() {
    let storage = MemStorage::new();
    let config = LogConfig { segment_max_bytes: 1 << 20, preallocate_bytes: 64 << 10, ..small_config() };
    let strict = LogConfig { recovery: crate::log::RecoveryMode::Strict, ..config.clone() };
    let mut log = open(&storage, &config).expect("open");
    let mut model = Vec::new();
    for i in 0..5 {
        let mut batch = vec![record(i, 300)];
        log.append(std::slice::from_mut(&mut batch)).expect("append");
        model.extend(batch);
    }
    let active = log.shared().segments().last().expect("active").path.clone();
    let data_end = log.shared().segments().last().expect("active").tail().data_end;
    drop(log);
    let len = file_bytes(&storage, &active).len() as u64;
    assert!(len >= data_end + (60 << 10), "zeros reserved: file {len} bytes, data {data_end}");

    let report = verify_dir(&storage, Path::new(DIR), &mut |_| {}).expect("verify runs");
    assert_eq!((report.problem, report.torn_tail, report.records), (None, None, 5));
    let mut log = open(&storage, &strict).expect("strict mode opens a segment ending in reserved zeros");
    assert_holds(&log.reader(), &model);
    assert_eq!(file_bytes(&storage, &active).len() as u64, data_end, "opening cuts the zeros off");

    // The next append reserves zeros again (one sync), then writes its block
    // into them; that block's sync fails, and the power fails with half of it.
    storage.fail_sync_after(1);
    assert!(log.append(&mut [vec![record(5, 300)]]).is_err());
    drop(log);
    storage.crash(|n| n / 2);
    let bytes = file_bytes(&storage, &active);
    assert!(
        bytes.len() as u64 > data_end + (64 << 10) && bytes[data_end as usize..][..8] != [0; 8],
        "a torn block in zeros"
    );
    let err = open(&storage, &strict).expect_err("strict mode refuses a torn block");
    assert!(err.to_string().contains("torn tail"), "{err}");
    let report = verify_dir(&storage, Path::new(DIR), &mut |_| {}).expect("verify runs");
    assert_eq!(report.problem, None);
    assert!(report.torn_tail.is_some(), "verify reports the torn block");
    let log = open(&storage, &config).expect("the default mode cuts the torn block");
    assert_holds(&log.reader(), &model);
    assert_eq!(file_bytes(&storage, &active).len() as u64, data_end);
}

/// Without reserved zeros a block ends the file; a bad payload checksum
/// there is damage, as before ADR 0013, not a torn write to cut.
#[test]
fn a_bad_payload_that_ends_the_file_is_damage() {
    let storage = MemStorage::new();
    let config = LogConfig { segment_max_bytes: 1 << 20, preallocate_bytes: 0, ..small_config() };
    let mut log = open(&storage, &config).expect("open");
    for i in 0..3 {
        log.append(&mut [vec![record(i, 300)]]).expect("append");
    }
    let seg = log.shared().segments().last().expect("active").clone();
    let last = *seg.tail().blocks.last().expect("blocks");
    drop(log);
    let len = file_bytes(&storage, &seg.path).len();
    assert_eq!(len as u64, seg.tail().data_end, "no zeros reserved");
    storage.modify(&seg.path, |b| b[len - 3] ^= 0x40).expect("modify");
    let err = open(&storage, &config).expect_err("must refuse");
    assert!(err.to_string().contains("checksum") && !err.to_string().contains("torn"), "{err}");
    assert!(last.pos < len as u64 - 3);
}
