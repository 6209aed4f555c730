//! The next segment's file made ahead (`spare.rs`): asked for once the
//! active segment is half full, made off the writer's path, installed at the
//! roll, and never mistaken for data after a crash or a clean close.

use std::path::Path;

use super::*;
use crate::log::io::Storage;
use crate::log::spare::SPARE_NAME;
use crate::log::verify::verify_dir;

fn names(s: &MemStorage) -> Vec<String> {
    s.list(Path::new(DIR)).expect("list")
}

fn file_len(s: &MemStorage, name: &str) -> u64 {
    s.open_read(&Path::new(DIR).join(name)).expect("open").len().expect("len")
}

fn active_name(log: &Log) -> String {
    let seg = log.shared().segments().last().expect("active").clone();
    seg.path.file_name().expect("name").to_string_lossy().into_owned()
}

/// The first segment reserves its own zeros until a spare is wanted (at
/// four chunks here, under half a segment) and ready; it then rolls into
/// the spare at once. A segment made from a spare wants the next one at the
/// same size, but keeps its blocks until it is full.
#[test]
fn the_next_segment_is_made_ahead_and_installed_at_the_roll() {
    let storage = MemStorage::new();
    let config = LogConfig { segment_max_bytes: 64 << 10, preallocate_bytes: 4 << 10, ..small_config() };
    let mut log = open(&storage, &config).expect("open");
    let maker = log.spare_maker();
    let mut model = Vec::new();
    let mut n = 0;
    let mut append = |log: &mut Log, model: &mut Vec<Record>| {
        let mut batch = vec![record(n, 300)];
        n += 1;
        log.append(std::slice::from_mut(&mut batch)).expect("append");
        model.extend(batch);
        log.reserve_ahead().expect("reserve ahead");
    };
    let data_end = |log: &Log| log.shared().segments().last().expect("active").tail().data_end;

    // Under four chunks nothing is asked for.
    while data_end(&log) < 15 << 10 {
        append(&mut log, &mut model);
        assert!(!maker.make_wanted().expect("make"), "a spare made at {} bytes", data_end(&log));
    }
    let first = active_name(&log);
    while data_end(&log) < 16 << 10 {
        append(&mut log, &mut model);
    }
    assert!(maker.make_wanted().expect("make"), "four chunks in: a spare is wanted");
    assert!(!maker.make_wanted().expect("make"), "one spare at a time");
    assert!(names(&storage).contains(&SPARE_NAME.to_string()));
    assert_eq!(file_len(&storage, SPARE_NAME), 64 << 10, "the spare is a whole segment of zeros");
    assert!(file_len(&storage, &first) < 64 << 10, "the first segment reserved its own zeros");

    // The next block's reserve_ahead rolls the short first segment into it.
    append(&mut log, &mut model);
    let second = active_name(&log);
    assert_ne!(second, first, "rolled into the spare early");
    assert!(!names(&storage).contains(&SPARE_NAME.to_string()), "the spare became {second}");
    assert_eq!(file_len(&storage, &second), 64 << 10, "the new segment is the spare, zeros and all");

    // A segment made from a spare: the next spare is made, but no early roll.
    while data_end(&log) < 16 << 10 {
        append(&mut log, &mut model);
    }
    assert!(maker.make_wanted().expect("make"));
    for _ in 0..10 {
        append(&mut log, &mut model);
    }
    assert_eq!(active_name(&log), second, "a segment made from a spare rolls only when full");
    assert_eq!(file_len(&storage, &second), 64 << 10, "its blocks went into its zeros");
    while active_name(&log) == second {
        append(&mut log, &mut model);
    }
    let third = active_name(&log);
    assert_eq!(file_len(&storage, &third), 64 << 10);
    assert!(!names(&storage).contains(&SPARE_NAME.to_string()));
    assert_holds(&log.reader(), &model);

    // A crash: what was acknowledged is there, and the zeros are cut.
    drop(log);
    storage.crash(|n| n / 2);
    let log = open(&storage, &config).expect("reopen");
    assert_holds(&log.reader(), &model);
    assert_eq!(file_len(&storage, &third), data_end(&log));
    let report = verify_dir(&storage, Path::new(DIR), &mut |_| {}).expect("verify runs");
    assert_eq!((report.problem, report.records), (None, model.len() as u64));
    log.close().expect("close");
}

#[test]
fn a_spare_left_behind_is_removed_and_never_read() {
    let storage = MemStorage::new();
    let config = LogConfig { segment_max_bytes: 8 << 10, preallocate_bytes: 2 << 10, ..small_config() };
    let mut log = open(&storage, &config).expect("open");
    let maker = log.spare_maker();
    let mut model = Vec::new();
    for i in 0.. {
        let mut batch = vec![record(i, 400)];
        log.append(std::slice::from_mut(&mut batch)).expect("append");
        model.extend(batch);
        log.reserve_ahead().expect("reserve ahead");
        maker.make_wanted().expect("make");
        if log.shared().segment_count() > 2 {
            break;
        }
    }
    // A clean close removes a spare that was made and not used.
    assert!(maker.make_wanted().is_ok());
    log.close().expect("close");
    assert!(!names(&storage).contains(&SPARE_NAME.to_string()), "close leaves no spare: {:?}", names(&storage));

    // One left by a crash (here: planted, with bytes that look like a
    // segment's) is ignored by readers and removed by the next open.
    let mut f = storage.create(&Path::new(DIR).join(SPARE_NAME)).expect("create");
    f.append(&[0xAB; 1000]).expect("write");
    f.sync_data().expect("sync");
    storage.sync_dir(Path::new(DIR)).expect("sync dir");
    let report = verify_dir(&storage, Path::new(DIR), &mut |_| {}).expect("verify runs");
    assert_eq!((report.problem, report.records), (None, model.len() as u64));
    let log = open(&storage, &config).expect("open");
    assert!(!names(&storage).contains(&SPARE_NAME.to_string()), "open removes a leftover spare");
    assert_holds(&log.reader(), &model);
}

/// With preallocation off, no spare is ever asked for.
#[test]
fn no_spare_without_preallocation() {
    let storage = MemStorage::new();
    let config = LogConfig { segment_max_bytes: 8 << 10, preallocate_bytes: 0, ..small_config() };
    let mut log = open(&storage, &config).expect("open");
    let maker = log.spare_maker();
    for i in 0.. {
        log.append(&mut [vec![record(i, 400)]]).expect("append");
        log.reserve_ahead().expect("reserve ahead");
        assert!(!maker.make_wanted().expect("make"));
        if log.shared().segment_count() > 2 {
            break;
        }
    }
}
