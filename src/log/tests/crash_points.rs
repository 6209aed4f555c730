//! The process dies at every mutating storage operation in turn (create,
//! write, fsync, rename, remove, directory sync, chmod, truncate) while
//! appending, rolling, sealing and closing; the power then fails, keeping a
//! torn part of what was not synced. Every time, the log must reopen without
//! help and hold every acknowledged record, and `verify` must pass.

use std::path::Path;

use verbatim_schema::{Offset, Record};

use super::*;
use crate::log::verify::verify_dir;

/// Appends, rolls and seals as a server would; returns what was acknowledged.
fn scenario(storage: &MemStorage, config: &LogConfig, acked: &mut Vec<Record>) -> Result<(), LogError> {
    let mut log = open(storage, config)?;
    for i in 0..24u64 {
        let mut batch: Vec<Record> = (0..3).map(|j| record(i * 3 + j, 150 + (i as usize * 37) % 400)).collect();
        log.append(std::slice::from_mut(&mut batch))?;
        acked.extend(batch);
        log.reserve_ahead()?;
        if i % 7 == 6 {
            log.seal_pending()?;
        }
    }
    log.close()
}

#[test]
fn every_crash_point_recovers_every_acknowledged_record() {
    crash_at_every_point(&small_config(), 90);
}

/// Segments of many blocks, with zeros reserved a few blocks at a time: most
/// blocks overwrite reserved zeros, and a crash may keep any prefix of such
/// a write (`MemStorage::crash`).
#[test]
fn every_crash_point_recovers_with_reserved_zeros() {
    crash_at_every_point(&LogConfig { segment_max_bytes: 12 << 10, preallocate_bytes: 2 << 10, ..small_config() }, 75);
}

fn crash_at_every_point(config: &LogConfig, min_points: usize) {
    let mut points = 0;
    for k in 0.. {
        let storage = MemStorage::new();
        storage.die_after(k);
        let mut acked = Vec::new();
        let result = scenario(&storage, config, &mut acked);
        if !storage.died() {
            result.expect("scenario without a crash");
            break;
        }
        points += 1;
        storage.crash(|n| n * (k as usize % 3) / 2);
        let log = open(&storage, config).unwrap_or_else(|e| panic!("crash at operation {k}: reopen failed: {e}"));
        let head = log.head().0 as usize;
        assert!(
            head >= acked.len() && head <= acked.len() + 3,
            "crash at operation {k}: head {head}, acknowledged {}",
            acked.len()
        );
        for (i, want) in acked.iter().enumerate() {
            let got = log
                .reader()
                .get(Offset(i as u64))
                .unwrap_or_else(|e| panic!("crash at operation {k}: offset {i}: {e}"));
            assert_eq!(&got, want, "crash at operation {k}: offset {i}");
        }
        log.close().unwrap_or_else(|e| panic!("crash at operation {k}: close after recovery: {e}"));
        let report = verify_dir(&storage, Path::new(DIR), &mut |_| {}).expect("verify runs");
        assert_eq!(report.problem, None, "crash at operation {k}");
        assert_eq!(report.records as usize, head);
    }
    assert!(points > min_points, "only {points} crash points were exercised");
}
