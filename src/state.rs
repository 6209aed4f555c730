//! Derived state in RocksDB (`<data>/state`): the idempotency keys and the
//! conversations, with the log offset they cover (the watermark). It is
//! written without RocksDB's WAL because it needs no durability of its own:
//! on start it is brought up to date from the log, from its watermark, and it
//! can be deleted and rebuilt from the log at any time.
//!
//! Keys: `d` source NUL seq(u64 BE) → offset(u64 LE) digest(16);
//! `c` conversation key → conversation id(u64 LE) last ts(i64 LE, ns);
//! `w` → watermark(u64 LE). Source ids and handles never contain NUL.

use std::path::Path;

use rocksdb::{BlockBasedOptions, Options, WriteBatch, WriteOptions, DB};
use verbatim_schema::{ConversationId, Offset, Record, UnixNanos};

const WATERMARK: &[u8] = b"w";

/// What one idempotency key points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub offset: Offset,
    pub digest: [u8; 16],
}

/// A conversation's latest state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: ConversationId,
    pub last_ts: UnixNanos,
}

/// Changes to write together with a new watermark.
#[derive(Debug, Default)]
pub struct StateBatch {
    pub keys: Vec<(Vec<u8>, Stored)>,
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

    pub fn stored(&self, key: &[u8]) -> anyhow::Result<Option<Stored>> {
        let Some(v) = self.db.get(key)? else { return Ok(None) };
        anyhow::ensure!(v.len() == 24, "bad idempotency entry");
        Ok(Some(Stored { offset: Offset(u64::from_le_bytes(v[..8].try_into()?)), digest: v[8..24].try_into()? }))
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
        for (k, s) in &batch.keys {
            let mut v = Vec::with_capacity(24);
            v.extend_from_slice(&s.offset.0.to_le_bytes());
            v.extend_from_slice(&s.digest);
            wb.put(k, v);
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
