//! The log against a `Vec` model: appends, reads, iteration, rolls, seals,
//! clean reopens, crashes that forget unsynced writes and tear the last one,
//! and injected fsync failures — over tiny segments so rolling happens.

use std::path::Path;

use proptest::prelude::*;
use verbatim_schema::{Offset, Record};

use super::*;
use crate::log::verify::verify_dir;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u16>),
    Get(u16),
    IterFrom(u16),
    Roll,
    Seal,
    Crash(u8),
    Reopen,
    FailNextSync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => proptest::collection::vec(0u16..700, 1..6).prop_map(Op::Append),
        3 => any::<u16>().prop_map(Op::Get),
        1 => any::<u16>().prop_map(Op::IterFrom),
        1 => Just(Op::Roll),
        1 => Just(Op::Seal),
        2 => any::<u8>().prop_map(Op::Crash),
        1 => Just(Op::Reopen),
        2 => Just(Op::FailNextSync),
    ]
}

/// Crashes, reopens, and reconciles the model with a batch whose append
/// failed: it is in the log entirely or not at all.
fn crash_and_reconcile(
    storage: &MemStorage,
    config: &LogConfig,
    torn: u8,
    model: &mut Vec<Record>,
    uncertain: &[Record],
) -> Log {
    storage.crash(|n| n * usize::from(torn) / 255);
    let log = open(storage, config).expect("reopen after crash");
    let head = log.head().0 as usize;
    assert!(
        head == model.len() || head == model.len() + uncertain.len(),
        "head {head} after crash, model {} + uncertain {}",
        model.len(),
        uncertain.len()
    );
    for (i, want) in uncertain.iter().enumerate().take(head - model.len()) {
        let got = log.reader().get(Offset((model.len() + i) as u64)).expect("read unacknowledged survivor");
        assert_eq!(got.event, want.event);
    }
    for i in model.len()..head {
        model.push(log.reader().get(Offset(i as u64)).expect("read"));
    }
    log
}

fn run(ops: Vec<Op>) {
    let storage = MemStorage::new();
    // Appends of 1-5 records of 0-699 bytes: blocks on both sides of the
    // threshold, stored uncompressed and compressed.
    let config = LogConfig { compress_min_bytes: 1024, ..small_config() };
    let mut log = open(&storage, &config).expect("open");
    let mut model: Vec<Record> = Vec::new();
    let mut n = 0u64;
    for op in ops {
        match op {
            Op::Append(lens) => {
                let mut batch: Vec<Record> = lens
                    .iter()
                    .map(|&l| {
                        n += 1;
                        record(n, usize::from(l))
                    })
                    .collect();
                match log.append(std::slice::from_mut(&mut batch)) {
                    Ok((ranges, _)) => {
                        assert_eq!(
                            ranges,
                            vec![Offset(model.len() as u64)..Offset((model.len() + batch.len()) as u64)]
                        );
                        model.extend(batch);
                    }
                    Err(e) => {
                        assert!(log.failure().is_some(), "an append failed without stopping the writer: {e}");
                        let mut more = vec![record(0, 1)];
                        assert!(
                            matches!(log.append(std::slice::from_mut(&mut more)), Err(LogError::Failed(_))),
                            "a failed writer accepted more"
                        );
                        if n.is_multiple_of(2) {
                            // Restart in place: the failed block is dropped.
                            storage.clear_faults();
                            log.recover().expect("recover in place");
                            assert_eq!(
                                log.head().0 as usize,
                                model.len(),
                                "the failed batch survived an in-place restart"
                            );
                        } else {
                            drop(log);
                            log = crash_and_reconcile(&storage, &config, (n % 256) as u8, &mut model, &batch);
                        }
                    }
                }
                storage.clear_faults();
            }
            Op::Get(i) if !model.is_empty() => {
                let i = usize::from(i) % model.len();
                assert_eq!(log.reader().get(Offset(i as u64)).expect("get"), model[i]);
            }
            Op::Get(_) => assert!(log.reader().get(Offset(0)).is_err()),
            Op::IterFrom(i) => {
                let from = usize::from(i) % (model.len() + 1);
                let got: Vec<Record> =
                    log.reader().iter_from(Offset(from as u64)).map(|r| r.expect("iter").1).collect();
                assert_eq!(&got[..], &model[from..]);
            }
            Op::Roll => {
                storage.clear_faults();
                log.roll().expect("roll");
            }
            Op::Seal => {
                storage.clear_faults();
                log.seal_pending().expect("seal");
            }
            Op::Crash(torn) => {
                storage.clear_faults();
                drop(log);
                log = crash_and_reconcile(&storage, &config, torn, &mut model, &[]);
            }
            Op::Reopen => {
                storage.clear_faults();
                log.close().expect("close");
                log = open(&storage, &config).expect("reopen");
            }
            Op::FailNextSync => storage.fail_sync_after(0),
        }
        assert_eq!(log.head().0, model.len() as u64);
    }
    storage.clear_faults();
    assert_holds(&log.reader(), &model);
    drop(log);
    let report = verify_dir(&storage, Path::new(DIR), &mut |_| {}).expect("verify runs");
    assert_eq!(report.problem, None);
    assert_eq!(report.records, model.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn log_behaves_like_a_vec(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops);
    }
}

#[test]
fn torn_append_after_failed_fsync_is_cut_off_or_kept_whole() {
    for torn in [0u8, 1, 60, 128, 254, 255] {
        run(vec![
            Op::Append(vec![300, 300]),
            Op::FailNextSync,
            Op::Append(vec![500, 10, 40]),
            Op::Crash(torn),
            Op::Append(vec![5]),
        ]);
    }
}

/// The compression byte of every block of the file `name` in the log directory.
fn compressions(storage: &MemStorage, name: &str) -> Vec<crate::log::frame::Compression> {
    use crate::log::io::Storage;
    let file = storage.open_read(&Path::new(DIR).join(name)).expect("open");
    let end = crate::log::io::read_all(&*file).expect("read").len() as u64;
    let scan = crate::log::segment::scan(&*file, Offset::ZERO, end);
    scan.blocks.iter().map(|(_, h)| h.compression).collect()
}

#[test]
fn blocks_under_the_threshold_are_stored_uncompressed_until_sealed() {
    use crate::log::frame::Compression::{None as Raw, Zstd};
    use crate::log::io::Storage;
    let storage = MemStorage::new();
    let config = LogConfig { compress_min_bytes: 2048, segment_max_bytes: 1 << 20, ..small_config() };
    let mut log = open(&storage, &config).expect("open");
    let mut model = Vec::new();
    let mut n = 0;
    // One short event, three long ones (over 2 KiB together), one short.
    for (count, len) in [(1, 100), (3, 1000), (1, 50)] {
        let mut batch: Vec<Record> = (0..count)
            .map(|_| {
                n += 1;
                record(n, len)
            })
            .collect();
        log.append(std::slice::from_mut(&mut batch)).expect("append");
        model.extend(batch);
    }
    let names = storage.list(Path::new(DIR)).expect("list");
    let [active] = &names[..] else { panic!("want one segment, got {names:?}") };
    assert_eq!(compressions(&storage, active), vec![Raw, Zstd, Raw]);
    assert_holds(&log.reader(), &model);
    log.roll().expect("roll");
    log.seal_pending().expect("seal");
    assert_holds(&log.reader(), &model);
    let sealed = storage.list(Path::new(DIR)).expect("list");
    let sealed = sealed
        .iter()
        .find(|n| matches!(crate::log::segment::parse_name(n), Some((_, crate::log::segment::FileKind::Sealed))))
        .expect("a sealed segment");
    assert_eq!(compressions(&storage, sealed), vec![Zstd], "sealing regroups and compresses the small blocks");
}
