//! A cache of decoded blocks for the read path. A search hit or a transcript
//! reads records by offset; without a cache every hit in another block costs
//! a block decompression (a sealed block holds about 1 MiB of records).
//! Records never change at an offset, so an entry stays correct even after
//! its segment is sealed into other block boundaries; eviction is first in,
//! first out, within a byte budget. One cache serves every log of the
//! process (HQ reads its own and each site's): entries are keyed by log.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use verbatim_schema::{Offset, Record};

use super::reader::{BlockRecords, LogReader};
use super::LogError;

#[derive(Debug, Default)]
struct Inner {
    /// (log id, first offset of the block) → the block.
    blocks: BTreeMap<(u64, u64), Arc<BlockRecords>>,
    order: VecDeque<(u64, u64)>,
    bytes: usize,
}

#[derive(Debug)]
pub struct BlockCache {
    budget: usize,
    inner: Mutex<Inner>,
}

impl BlockCache {
    /// A cache holding at most `budget` bytes of decoded records (0 disables it).
    pub fn new(budget: usize) -> Self {
        Self { budget, inner: Mutex::default() }
    }

    fn lookup(&self, log: u64, offset: Offset) -> Option<Arc<BlockRecords>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (&(id, _), b) = inner.blocks.range(..=(log, offset.0)).next_back()?;
        (id == log && offset < b.end()).then(|| b.clone())
    }

    fn insert(&self, log: u64, b: Arc<BlockRecords>) {
        let key = (log, b.first.0);
        let size = b.raw_len();
        if size > self.budget {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while inner.bytes + size > self.budget {
            let Some(k) = inner.order.pop_front() else { break };
            if let Some(old) = inner.blocks.remove(&k) {
                inner.bytes -= old.raw_len();
            }
        }
        if let Some(old) = inner.blocks.insert(key, b.clone()) {
            inner.bytes -= old.raw_len();
            inner.order.retain(|k| *k != key);
        }
        inner.bytes += size;
        inner.order.push_back(key);
    }

    /// The block holding `offset`, from the cache or the log.
    pub fn block(&self, log: &LogReader, offset: Offset) -> Result<Arc<BlockRecords>, LogError> {
        let id = log.shared().id();
        if let Some(b) = self.lookup(id, offset) {
            return Ok(b);
        }
        let b = Arc::new(log.block_at(offset)?);
        self.insert(id, b.clone());
        Ok(b)
    }

    /// The records at `offsets`, in the order given.
    pub fn records(&self, log: &LogReader, offsets: &[Offset]) -> Result<Vec<Record>, LogError> {
        self.blocks(log, offsets)?.iter().map(|(b, o)| b.record(*o)).collect()
    }

    /// Each of `offsets`, in the order given, paired with the block that
    /// holds it: what [`super::reader::views`] decodes in place.
    pub fn blocks(&self, log: &LogReader, offsets: &[Offset]) -> Result<Vec<(Arc<BlockRecords>, Offset)>, LogError> {
        let mut out: Vec<(Arc<BlockRecords>, Offset)> = Vec::with_capacity(offsets.len());
        for &o in offsets {
            let b = match out.last() {
                Some((b, _)) if b.holds(o) => b.clone(),
                _ => self.block(log, o)?,
            };
            out.push((b, o));
        }
        Ok(out)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::log::io::MemStorage;
    use crate::log::{Log, LogConfig};

    /// A log of `blocks` blocks of ten records each; bodies `m{block}.{i}`.
    fn log_of(blocks: usize) -> Log {
        let mut log =
            Log::open(Arc::new(MemStorage::new()), std::path::Path::new("/log"), LogConfig::default()).expect("open");
        for b in 0..blocks {
            let batch: Vec<Record> = (0..10)
                .map(|i| crate::index::search::tests::record("irc", "a", "b", None, &format!("m{b}.{i}"), 1000 + i, 1))
                .collect();
            log.append(&mut [batch]).expect("append");
        }
        log
    }

    #[test]
    fn serves_records_from_cached_blocks_within_its_budget() {
        let log = log_of(4);
        let reader = log.reader();
        let one_block = reader.block_at(Offset(0)).expect("block").raw_len();
        let cache = BlockCache::new(one_block * 2 + 1);
        let got = cache.records(&reader, &[Offset(35), Offset(0), Offset(12), Offset(1)]).expect("records");
        let bodies: Vec<&str> = got.iter().map(|r| r.event.body.as_str()).collect();
        assert_eq!(bodies, ["m3.5", "m0.0", "m1.2", "m0.1"]);
        assert!(cache.bytes() <= one_block * 2 + 1, "the budget holds");
        let id = reader.shared().id();
        assert!(cache.lookup(id, Offset(15)).is_some(), "the newest blocks stay");
        assert!(cache.lookup(id, Offset(35)).is_none(), "the oldest entry went first");
        assert!(matches!(cache.records(&reader, &[Offset(40)]), Err(LogError::NoSuchOffset(_))));
    }

    #[test]
    fn views_decode_the_same_records_in_place() {
        let log = log_of(3);
        let reader = log.reader();
        let cache = BlockCache::new(1 << 20);
        let offsets = [Offset(25), Offset(3), Offset(4), Offset(17)];
        let held = cache.blocks(&reader, &offsets).expect("blocks");
        assert!(Arc::ptr_eq(&held[1].0, &held[2].0), "neighbours share their block");
        let views = crate::log::reader::views(&held).expect("views");
        let bodies: Vec<&str> = views.iter().map(|v| v.body).collect();
        assert_eq!(bodies, ["m2.5", "m0.3", "m0.4", "m1.7"]);
        let owned: Vec<Record> = views.iter().map(|v| v.to_record()).collect();
        assert_eq!(owned, cache.records(&reader, &offsets).expect("records"));
    }

    #[test]
    fn two_logs_never_share_an_entry() {
        let open = |body: &str| {
            let mut log = Log::open(Arc::new(MemStorage::new()), std::path::Path::new("/log"), LogConfig::default())
                .expect("open");
            let batch = vec![crate::index::search::tests::record("irc", "a", "b", None, body, 1000, 1)];
            log.append(&mut [batch]).expect("append");
            log
        };
        let (a, b) = (open("from a"), open("from b"));
        let cache = BlockCache::new(1 << 20);
        let got = |log: &Log| cache.records(&log.reader(), &[Offset(0)]).expect("records")[0].event.body.clone();
        assert_eq!(got(&a), "from a");
        assert_eq!(got(&b), "from b", "offset 0 of another log is another record");
        assert_eq!(got(&a), "from a");
    }
}
