//! Derived state in RocksDB (`<data>/state`): the idempotency keys and the
//! conversations, with the log offset they cover (the watermark). It is
//! written without RocksDB's WAL because it needs no durability of its own:
//! on start it is brought up to date from the log, from its watermark, and it
//! can be deleted and rebuilt from the log at any time.
//!
//! Keys: `d` source NUL seq(u64 BE) → offset (LEB128);
//! `c` conversation key → conversation id(u64 LE) last ts(i64 LE, ns);
//! `w` → watermark(u64 LE). Source ids and handles never contain NUL.
//!
//! An idempotency key holds only the offset of its event: a retry is compared
//! with the event read back from the log (ADR 0010). Entries written before
//! that held the offset (u64 LE) and a 16-byte digest of the event; they
//! still read, by their first 8 bytes.

use std::path::Path;

use rocksdb::{BlockBasedOptions, Options, WriteBatch, WriteOptions, DB};
use verbatim_schema::{varint, ConversationId, Offset, Record, UnixNanos};

const WATERMARK: &[u8] = b"w";

/// A conversation's latest state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: ConversationId,
    pub last_ts: UnixNanos,
}

/// Changes to write together with a new watermark.
#[derive(Debug, Default)]
pub struct StateBatch {
    /// Idempotency keys and the offsets of their events.
    pub keys: Vec<(Vec<u8>, Offset)>,
    pub sessions: Vec<(Vec<u8>, Session)>,
}

pub struct StateDb {
    db: DB,
    write: WriteOptions,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").field("path", &self.db.path()).finish()
    }
}

/// An idempotency entry's value: the offset, LEB128.
fn encode_offset(offset: Offset, out: &mut Vec<u8>) {
    varint::put_u64(out, offset.0);
}

/// The offset of an idempotency entry: LEB128, or the 24 bytes (offset u64 LE,
/// digest) of entries written before ADR 0010. `None` if it is neither.
fn decode_offset(v: &[u8]) -> Option<Offset> {
    if v.len() == 24 {
        return Some(Offset(u64::from_le_bytes(v[..8].try_into().ok()?)));
    }
    let mut rest = v;
    let o = varint::get_u64(&mut rest)?;
    rest.is_empty().then_some(Offset(o))
}

/// The key of an idempotency key.
pub fn dedup_key(source: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + 10);
    k.push(b'd');
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The conversation an event belongs to, as a key: network and channel for
/// group chat, network and the sorted set of participants for private chat.
/// `None` for an event with neither channel nor recipients.
pub fn conversation_key(r: &Record) -> Option<Vec<u8>> {
    let e = &r.event;
    let mut k = vec![b'c'];
    k.extend_from_slice(e.network.as_bytes());
    k.push(0);
    if let Some(channel) = &e.channel {
        k.push(b'#');
        k.extend_from_slice(channel.as_bytes());
        return Some(k);
    }
    if e.to.is_empty() {
        return None;
    }
    let mut people: Vec<&str> = e.to.iter().map(String::as_str).chain([e.from.as_str()]).collect();
    people.sort_unstable();
    people.dedup();
    k.push(b'p');
    for p in people {
        k.extend_from_slice(p.as_bytes());
        k.push(0);
    }
    Some(k)
}

impl StateDb {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path).map_err(|e| anyhow::anyhow!("opening state {}: {e}", path.display()))?;
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        Ok(Self { db, write })
    }

    /// The offset after the last record the state covers.
    pub fn watermark(&self) -> anyhow::Result<Offset> {
        Ok(match self.db.get(WATERMARK)? {
            Some(v) => {
                Offset(u64::from_le_bytes(v.as_slice().try_into().map_err(|_| anyhow::anyhow!("bad watermark"))?))
            }
            None => Offset::ZERO,
        })
    }

    /// The offset of the event stored under this idempotency key, if any.
    pub fn stored(&self, key: &[u8]) -> anyhow::Result<Option<Offset>> {
        let Some(v) = self.db.get_pinned(key)? else { return Ok(None) };
        Ok(Some(decode_offset(&v).ok_or_else(|| anyhow::anyhow!("bad idempotency entry of {} bytes", v.len()))?))
    }

    /// The highest `seq` of `source` that holds an idempotency key, if any
    /// (keys sort by source, then by big-endian seq).
    pub fn highest_seq(&self, source: &str) -> anyhow::Result<Option<u64>> {
        let last = dedup_key(source, u64::MAX);
        let prefix = &last[..last.len() - 8];
        let mut it = self.db.raw_iterator();
        it.seek_for_prev(&last);
        it.status()?;
        Ok(match it.key() {
            Some(k) if k.len() == last.len() && k.starts_with(prefix) => {
                Some(u64::from_be_bytes(k[prefix.len()..].try_into()?))
            }
            _ => None,
        })
    }

    pub fn session(&self, key: &[u8]) -> anyhow::Result<Option<Session>> {
        let Some(v) = self.db.get(key)? else { return Ok(None) };
        anyhow::ensure!(v.len() == 16, "bad conversation entry");
        Ok(Some(Session {
            id: ConversationId(u64::from_le_bytes(v[..8].try_into()?)),
            last_ts: UnixNanos(i64::from_le_bytes(v[8..16].try_into()?)),
        }))
    }

    /// Writes `batch` and the new watermark atomically.
    pub fn write(&self, batch: &StateBatch, watermark: Offset) -> anyhow::Result<()> {
        let mut wb = WriteBatch::default();
        let mut v = Vec::with_capacity(10);
        for (k, offset) in &batch.keys {
            v.clear();
            encode_offset(*offset, &mut v);
            wb.put(k, &v);
        }
        for (k, s) in &batch.sessions {
            let mut v = Vec::with_capacity(16);
            v.extend_from_slice(&s.id.0.to_le_bytes());
            v.extend_from_slice(&s.last_ts.0.to_le_bytes());
            wb.put(k, v);
        }
        wb.put(WATERMARK, watermark.0.to_le_bytes());
        self.db.write_opt(wb, &self.write)?;
        Ok(())
    }

    /// Flushes the memtable, so a restart has less to catch up (not needed for correctness).
    pub fn flush(&self) -> anyhow::Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_bad_entries_are_refused() {
        for o in [0, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX - 1, u64::MAX] {
            let mut v = Vec::new();
            encode_offset(Offset(o), &mut v);
            assert_eq!(decode_offset(&v), Some(Offset(o)), "{o}");
        }
        let mut v = Vec::new();
        encode_offset(Offset(1_000_000), &mut v);
        assert_eq!(v.len(), 3);
        // An entry of the format before ADR 0010: offset u64 LE, then a 16-byte digest.
        let mut old = 1_000_000u64.to_le_bytes().to_vec();
        old.extend_from_slice(&[0xab; 16]);
        assert_eq!(decode_offset(&old), Some(Offset(1_000_000)));
        for bad in [&[][..], &[0x80], &[0x80, 0x80], &[0x01, 0x02], &[0x80, 0x00], &[0xff; 10], &[0xff; 11]] {
            assert_eq!(decode_offset(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_of_both_formats_read_back_with_the_watermark() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(tmp.path()).expect("open");
        let (new, old) = (dedup_key("proxy-1", 7), dedup_key("proxy-1", 8));
        db.write(&StateBatch { keys: vec![(new.clone(), Offset(300))], sessions: vec![] }, Offset(301)).expect("write");
        let mut v = 301u64.to_le_bytes().to_vec();
        v.extend_from_slice(&[7; 16]);
        db.db.put(&old, v).expect("put an old-format entry");
        assert_eq!(db.stored(&new).expect("read"), Some(Offset(300)));
        assert_eq!(db.stored(&old).expect("read"), Some(Offset(301)));
        assert_eq!(db.stored(&dedup_key("proxy-1", 9)).expect("read"), None);
        assert_eq!(db.watermark().expect("watermark"), Offset(301));
        db.db.put(dedup_key("proxy-1", 10), [0x80]).expect("put");
        // The highest seq is per source: "proxy-10" and "proxy-" are others.
        db.db.put(dedup_key("proxy-10", 3), [0x01]).expect("put");
        assert_eq!(db.highest_seq("proxy-1").expect("seek"), Some(10));
        assert_eq!(db.highest_seq("proxy-10").expect("seek"), Some(3));
        assert_eq!(db.highest_seq("proxy-").expect("seek"), None);
        assert_eq!(db.highest_seq("proxy-2").expect("seek"), None);
        assert_eq!(db.highest_seq("a").expect("seek"), None);
        assert!(db.stored(&dedup_key("proxy-1", 10)).is_err(), "a damaged entry is an error, not a miss");
    }
}
