//! Shipping between two logs over the in-memory storage: a faithful copy,
//! and each kind of bad shipment answered with nothing applied.

use std::path::Path;
use std::sync::Arc;

use verbatim_schema::{Offset, SiteId};

use super::{ReceiveError, Replicas, SiteReport};
use crate::log::io::MemStorage;
use crate::log::raw::RawBlock;
use crate::log::tests::{record, small_config};
use crate::log::{Log, LogReader};

const SITE: &str = "nyc";

/// A log of `n` records of `site` in blocks of `per_block`; `salt` changes the bodies.
fn source(storage: &MemStorage, site: &str, n: u64, per_block: u64, salt: usize) -> Log {
    let mut log = Log::open(Arc::new(storage.clone()), Path::new("/site/log"), small_config()).expect("open");
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + per_block).min(n))
            .map(|k| {
                let mut r = record(k, 30 + salt);
                r.site = SiteId::new(site);
                r
            })
            .collect();
        i += batch.len() as u64;
        log.append(&mut [batch]).expect("append");
    }
    log
}

fn hq() -> (MemStorage, Arc<Replicas>) {
    let storage = MemStorage::new();
    let r = Replicas::open(Arc::new(storage.clone()), Path::new("/hq/replicas"), small_config()).expect("replicas");
    (storage, r)
}

fn body(blocks: &[RawBlock]) -> Vec<u8> {
    blocks.iter().flat_map(|b| b.bytes.iter().copied()).collect()
}

fn all_blocks(r: &LogReader) -> Vec<RawBlock> {
    r.raw_blocks(Offset(0), usize::MAX, 3).expect("blocks")
}

fn replica_reader(storage: &MemStorage) -> LogReader {
    crate::log::open_read_only(storage, &Path::new("/hq/replicas").join(SITE), &small_config()).expect("replica")
}

fn assert_same(a: &LogReader, b: &LogReader) {
    assert_eq!(a.head(), b.head());
    for o in 0..a.head().0 {
        assert_eq!(a.get(Offset(o)).expect("a"), b.get(Offset(o)).expect("b"), "record {o}");
    }
    assert_eq!(a.chain_at(a.head()).expect("chain"), b.chain_at(b.head()).expect("chain"));
}

#[test]
fn chain_at_matches_the_chain_recomputed_record_by_record() {
    let s = MemStorage::new();
    let mut log = source(&s, SITE, 120, 7, 0);
    log.seal_pending().expect("seal");
    let r = log.reader();
    let mut chain = crate::log::ChainHash::GENESIS;
    assert_eq!(r.chain_at(Offset(0)).expect("chain"), chain);
    for o in 0..r.head().0 {
        let block = r.block_at(Offset(o)).expect("block");
        chain = chain.next(Offset(o), block.bytes((o - block.first.0) as usize));
        assert_eq!(r.chain_at(Offset(o + 1)).expect("chain"), chain, "after record {o}");
    }
    assert!(r.chain_at(r.head().plus(1)).is_err());
}

#[test]
fn a_shipped_log_is_record_identical_and_a_resend_changes_nothing() {
    let s = MemStorage::new();
    let mut log = source(&s, SITE, 300, 10, 0);
    log.seal_pending().expect("seal");
    let (hs, hq) = hq();
    let blocks = all_blocks(&log.reader());
    // A first part, with the site's report: HQ's lag figures follow it.
    let total = body(&blocks).len() as u64;
    let part = body(&blocks[..2]);
    let (_, first) = hq.receive(SITE, &part, SiteReport { head: Some(300), lag_bytes: Some(total) }).expect("part");
    let st = &hq.status()[0];
    assert_eq!(st.lag_events, Some(300 - first.high_water));
    assert_eq!(st.lag_bytes, Some(total - part.len() as u64));
    assert!(st.lag_seconds.is_some_and(|s| s >= 0.0), "{st:?}");
    let report = SiteReport { head: Some(300), lag_bytes: Some(total - part.len() as u64) };
    let (got, hw) = hq.receive(SITE, &body(&blocks), report).expect("receive");
    assert_eq!((got.records, got.duplicate_blocks), (300 - first.high_water, 2));
    let st = &hq.status()[0];
    assert_eq!((st.lag_events, st.lag_bytes, st.lag_seconds), (Some(0), Some(0), Some(0.0)));
    assert_eq!(hw.high_water, 300);
    assert_eq!(hw.chain, log.reader().chain_at(Offset(300)).expect("chain").to_hex());
    let (again, hw2) = hq.receive(SITE, &body(&blocks), SiteReport::default()).expect("resend");
    assert_eq!((again.records, again.duplicate_blocks), (0, blocks.len()));
    assert_eq!(hw2, hw);
    hq.close().expect("close");
    assert_same(&log.reader(), &replica_reader(&hs));
    // Reopened (sealed on close), HQ still answers the same.
    let hq = Replicas::open(Arc::new(hs.clone()), Path::new("/hq/replicas"), small_config()).expect("reopen");
    assert_eq!(hq.high_water(SITE).expect("hw"), hw);
    assert_eq!(hq.receive(SITE, &body(&blocks[..3]), SiteReport::default()).expect("old resend").0.duplicate_blocks, 3);
}

#[test]
fn shipping_in_pieces_across_seals_frames_a_block_at_a_mid_block_cursor() {
    let s = MemStorage::new();
    let mut log = source(&s, SITE, 100, 5, 0);
    let (hs, hq) = hq();
    // Ship the first few small blocks, then seal: sealed blocks regroup them,
    // so HQ's high-water mark now falls inside a block.
    let first = log.reader().raw_blocks(Offset(0), 1, 3).expect("one block");
    assert_eq!(first.len(), 1);
    hq.receive(SITE, &body(&first), SiteReport::default()).expect("first");
    log.roll().expect("roll");
    log.seal_pending().expect("seal");
    let rest = log.reader().raw_blocks(Offset(5), usize::MAX, 3).expect("rest");
    assert_eq!(rest[0].header.first_offset, Offset(5), "framed at the cursor");
    let (got, hw) = hq.receive(SITE, &body(&rest), SiteReport::default()).expect("rest");
    assert_eq!((got.records, hw.high_water), (95, 100));
    // More records after the seal, shipped from the active segment.
    let more = source_more(&mut log, 100, 40);
    let (_, hw) = hq
        .receive(
            SITE,
            &body(&log.reader().raw_blocks(Offset(100), usize::MAX, 3).expect("more")),
            SiteReport::default(),
        )
        .expect("more");
    assert_eq!(hw.high_water, 100 + more);
    assert_same(&log.reader(), &replica_reader(&hs));
}

fn source_more(log: &mut Log, from: u64, n: u64) -> u64 {
    let batch: Vec<_> = (from..from + n)
        .map(|k| {
            let mut r = record(k, 30);
            r.site = SiteId::new(SITE);
            r
        })
        .collect();
    log.append(&mut [batch]).expect("append");
    n
}

/// Bytes of every file of the site's replica log, as stored.
fn replica_bytes(storage: &MemStorage) -> u64 {
    use crate::log::io::Storage;
    let dir = Path::new("/hq/replicas").join(SITE);
    storage
        .list(&dir)
        .expect("list")
        .iter()
        .map(|n| storage.open_read(&dir.join(n)).expect("open").len().expect("len"))
        .sum()
}

/// HQ holds what it held: the same high water and not one byte more on disk.
fn unchanged(hq: &Replicas, storage: &MemStorage, before: u64, bytes: u64) {
    assert_eq!(hq.high_water(SITE).expect("hw").high_water, before, "nothing applied");
    assert_eq!(replica_bytes(storage), bytes, "0 bytes written");
}

#[test]
fn corrupted_reordered_duplicated_gapped_forked_and_foreign_shipments_apply_nothing() {
    let s = MemStorage::new();
    let log = source(&s, SITE, 60, 10, 0);
    let blocks = all_blocks(&log.reader());
    assert_eq!(blocks.len(), 6);
    let (storage, hq) = hq();
    hq.receive(SITE, &body(&blocks[..2]), SiteReport::default()).expect("first two");
    let held = replica_bytes(&storage);
    assert!(held > 0);
    let unchanged = |hq: &Replicas| unchanged(hq, &storage, 20, held);

    // A flipped payload byte: the CRC catches it.
    let mut bad = blocks[2].clone();
    let last = bad.bytes.len() - 1;
    bad.bytes[last] ^= 1;
    let e = hq.receive(SITE, &body(&[bad, blocks[3].clone()]), SiteReport::default()).expect_err("corrupt");
    assert!(matches!(e, ReceiveError::Corrupt { block: 0, .. }), "{e}");
    unchanged(&hq);

    // Cut short.
    let b = body(&blocks[2..4]);
    let e = hq.receive(SITE, &b[..b.len() - 3], SiteReport::default()).expect_err("short");
    assert!(matches!(e, ReceiveError::Corrupt { block: 1, .. }), "{e}");
    unchanged(&hq);

    // Reordered: the first block of the shipment is past the high-water mark.
    let e =
        hq.receive(SITE, &body(&[blocks[3].clone(), blocks[2].clone()]), SiteReport::default()).expect_err("reordered");
    assert!(matches!(e, ReceiveError::Gap { block: 0, need: 20, .. }), "{e}");
    unchanged(&hq);

    // A gap inside a shipment: good block, then one that skips.
    let e = hq.receive(SITE, &body(&[blocks[2].clone(), blocks[4].clone()]), SiteReport::default()).expect_err("gap");
    assert!(matches!(e, ReceiveError::Gap { block: 1, need: 30, .. }), "{e}");
    unchanged(&hq);

    // The same new block twice in one shipment.
    let e = hq.receive(SITE, &body(&[blocks[2].clone(), blocks[2].clone()]), SiteReport::default()).expect_err("dup");
    assert!(matches!(e, ReceiveError::Corrupt { block: 1, .. }), "{e}");
    unchanged(&hq);

    // Another history of the same site: different bytes at offsets HQ holds...
    let other = MemStorage::new();
    let forked = source(&other, SITE, 60, 10, 5);
    let fblocks = all_blocks(&forked.reader());
    let e = hq.receive(SITE, &body(&fblocks[1..2]), SiteReport::default()).expect_err("fork held");
    assert!(matches!(e, ReceiveError::Fork { block: 0, offset: 10 }), "{e}");
    // ...and a next block that does not continue HQ's chain.
    let e = hq.receive(SITE, &body(&fblocks[2..3]), SiteReport::default()).expect_err("fork chain");
    assert!(matches!(e, ReceiveError::Fork { offset: 20, .. }), "{e}");
    unchanged(&hq);

    // Records of another site under this site's name.
    let foreign = MemStorage::new();
    let lon = source(&foreign, "lon", 30, 10, 0);
    let e = hq.receive(SITE, &body(&all_blocks(&lon.reader())[2..3]), SiteReport::default()).expect_err("foreign");
    assert!(matches!(e, ReceiveError::Corrupt { .. }), "{e}");
    unchanged(&hq);

    // The right blocks still go through afterwards.
    let (_, hw) = hq.receive(SITE, &body(&blocks[2..]), SiteReport::default()).expect("rest");
    assert_eq!(hw.high_water, 60);
}

#[test]
fn a_block_straddling_the_high_water_mark_is_answered_with_the_offset_needed() {
    let s = MemStorage::new();
    let mut log = source(&s, SITE, 40, 4, 0);
    let (storage, hq) = hq();
    hq.receive(SITE, &body(&log.reader().raw_blocks(Offset(0), 1, 3).expect("b")), SiteReport::default())
        .expect("first");
    let held = replica_bytes(&storage);
    log.roll().expect("roll");
    log.seal_pending().expect("seal");
    // A shipper that ignored the mark would send the sealed block from 0.
    let sealed = log.reader().raw_blocks(Offset(0), 1, 3).expect("sealed");
    assert!(sealed[0].header.end_offset().0 > 4);
    let e = hq.receive(SITE, &body(&sealed), SiteReport::default()).expect_err("straddle");
    assert!(matches!(e, ReceiveError::Gap { need: 4, .. }), "{e}");
    unchanged(&hq, &storage, 4, held);
}
