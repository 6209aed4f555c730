//! The server's [`Sequencer`]: deduplication by `(source, seq)` and
//! sessionization, on the writer thread in log order (ADR 0003). Its state is
//! derived from the log ([`crate::state`]); [`IngestSequencer::open`] brings
//! it up to date from the log before the first append.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tracing::info;
use verbatim_schema::codec::event_digest;
use verbatim_schema::{ConversationId, Offset, Record, UnixNanos};

use crate::log::reader::BlockRecords;
use crate::log::{AppendError, LogReader, Sequencer};
use crate::state::{conversation_key, dedup_key, Session, StateBatch, StateDb};

/// When a conversation ends (`[sessions]` in the config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Seconds without an event after which the next event starts a new conversation.
    pub idle_timeout_secs: u64,
    /// Per-network overrides, e.g. `msn = 300`.
    pub network_idle_timeout_secs: BTreeMap<String, u64>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        // IM Director's defaults: 15 minutes (AIM, Yahoo), 5 minutes (MSN).
        Self { idle_timeout_secs: 900, network_idle_timeout_secs: [("msn".to_string(), 300)].into() }
    }
}

impl SessionConfig {
    fn idle_nanos(&self, network: &str) -> i64 {
        let secs = self.network_idle_timeout_secs.get(network).copied().unwrap_or(self.idle_timeout_secs);
        i64::try_from(secs).unwrap_or(i64::MAX / 1_000_000_000).saturating_mul(1_000_000_000)
    }

    /// The session after `r`, given the one before it.
    fn next(&self, before: Option<Session>, r: &Record, offset: Offset) -> Session {
        let ts = r.event.ts.instant;
        match before {
            Some(s) if ts.0.saturating_sub(s.last_ts.0) <= self.idle_nanos(&r.event.network) => {
                Session { id: s.id, last_ts: UnixNanos(s.last_ts.0.max(ts.0)) }
            }
            _ => Session { id: ConversationId(offset.0), last_ts: ts },
        }
    }
}

/// Most conversations kept in memory before the cache is dropped (they stay in RocksDB).
const SESSION_CACHE: usize = 1 << 20;

/// Most sources whose highest seq is kept in memory before the map is
/// dropped at a commit (it is read again from RocksDB, one seek per source).
const HIGHEST_CACHE: usize = 1 << 16;

/// An idempotency key admitted in a block that is not durable yet, with
/// the digest of its event, since the log cannot be read back for it.
#[derive(Clone, Copy, Debug)]
struct Pending {
    offset: Offset,
    digest: [u8; 16],
}

#[derive(Debug)]
pub struct IngestSequencer {
    state: StateDb,
    /// Reads back stored events, to compare a retry with what was stored.
    reader: LogReader,
    /// The block last read back: a retried batch's events lie together.
    last_block: Option<BlockRecords>,
    config: SessionConfig,
    sessions: HashMap<Vec<u8>, Session>,
    pending_keys: HashMap<Vec<u8>, Pending>,
    pending_sessions: HashMap<Vec<u8>, Session>,
    /// Per source, a seq at or above every seq it has stored or pending
    /// (`None`: nothing). A capture front end numbers its events upwards,
    /// so a new event's seq is above it and needs no lookup; the bound is
    /// only ever raised, so a failed block leaves it merely high.
    highest: HashMap<String, Option<u64>>,
    /// Set when the state could not record a durable block.
    broken: Option<String>,
}

enum Decision {
    New,
    Duplicate(Offset),
    DuplicateOf(usize),
}

impl IngestSequencer {
    /// Opens the state and replays the log from its watermark to `reader`'s head.
    pub fn open(state: StateDb, config: SessionConfig, reader: &LogReader) -> anyhow::Result<Self> {
        let mut seq = Self {
            state,
            reader: reader.clone(),
            last_block: None,
            config,
            sessions: HashMap::new(),
            pending_keys: HashMap::new(),
            pending_sessions: HashMap::new(),
            highest: HashMap::new(),
            broken: None,
        };
        seq.catch_up(reader)?;
        Ok(seq)
    }

    fn catch_up(&mut self, reader: &LogReader) -> anyhow::Result<()> {
        let from = self.state.watermark()?;
        let head = reader.head();
        anyhow::ensure!(from <= head, "the state covers offset {from} but the log ends at {head}: state from another log? delete <data>/state to rebuild it");
        if from == head {
            return Ok(());
        }
        info!(from = %from, to = %head, "bringing the ingest state up to date from the log");
        let mut batch = StateBatch::default();
        let mut sessions: HashMap<Vec<u8>, Session> = HashMap::new();
        for item in reader.iter_from(from) {
            let (offset, r) = item?;
            batch.keys.push((dedup_key(r.event.source.as_str(), r.event.seq), offset));
            if let (Some(k), Some(id)) = (conversation_key(&r), r.conversation_id) {
                let before = match sessions.get(&k) {
                    Some(s) => Some(*s),
                    None => self.state.session(&k)?,
                };
                let ts = r.event.ts.instant;
                let s = match before {
                    Some(s) if s.id == id => Session { id, last_ts: UnixNanos(s.last_ts.0.max(ts.0)) },
                    _ => Session { id, last_ts: ts },
                };
                sessions.insert(k, s);
            }
            if batch.keys.len() >= 50_000 {
                batch.sessions = sessions.drain().collect();
                self.state.write(&batch, offset.plus(1))?;
                batch = StateBatch::default();
            }
        }
        batch.sessions = sessions.into_iter().collect();
        self.state.write(&batch, head)?;
        self.state.flush()?;
        Ok(())
    }

    /// The bound on `source`'s stored and pending seqs, read from RocksDB
    /// the first time.
    fn highest(&mut self, source: &str) -> Result<&mut Option<u64>, AppendError> {
        if !self.highest.contains_key(source) {
            let h =
                self.state.highest_seq(source).map_err(|e| AppendError::Unavailable(format!("ingest state: {e}")))?;
            self.highest.insert(source.to_string(), h);
        }
        Ok(self.highest.get_mut(source).expect("just inserted"))
    }

    /// The offset and digest of the event already stored under `key`, if
    /// any: from the block being written, or read back from the log for a
    /// key the state holds.
    fn stored(&mut self, key: &[u8]) -> Result<Option<(Offset, [u8; 16])>, AppendError> {
        if let Some(p) = self.pending_keys.get(key) {
            return Ok(Some((p.offset, p.digest)));
        }
        match self.state.stored(key).map_err(|e| AppendError::Unavailable(format!("ingest state: {e}")))? {
            Some(offset) => Ok(Some((offset, self.logged_digest(key, offset)?))),
            None => Ok(None),
        }
    }

    /// The digest of the durable event at `offset`, read back from the log;
    /// it must be the event stored under `key`.
    fn logged_digest(&mut self, key: &[u8], offset: Offset) -> Result<[u8; 16], AppendError> {
        let unreadable = |e: crate::log::LogError| {
            AppendError::Unavailable(format!("reading back the stored event at offset {offset}: {e}"))
        };
        let block = match self.last_block.take() {
            Some(b) if b.holds(offset) => b,
            _ => self.reader.block_at(offset).map_err(unreadable)?,
        };
        let record = block.record(offset).map_err(unreadable);
        self.last_block = Some(block);
        let event = record?.event;
        if dedup_key(event.source.as_str(), event.seq) != key {
            return Err(AppendError::Unavailable(format!(
                "the ingest state points at offset {offset}, which holds another event; \
                 stop the server and delete <data>/state to rebuild it from the log"
            )));
        }
        Ok(event_digest(&event))
    }

    fn session(&mut self, key: &[u8]) -> Result<Option<Session>, AppendError> {
        if let Some(s) = self.pending_sessions.get(key).or_else(|| self.sessions.get(key)) {
            return Ok(Some(*s));
        }
        self.state.session(key).map_err(|e| AppendError::Unavailable(format!("ingest state: {e}")))
    }
}

impl Sequencer for IngestSequencer {
    fn admit(&mut self, batch: &mut Vec<Record>, next: Offset) -> Result<Vec<(usize, Offset)>, AppendError> {
        if let Some(why) = &self.broken {
            return Err(AppendError::Unavailable(format!(
                "ingest state failed, restart to rebuild it from the log: {why}"
            )));
        }
        // First decide everything, so that a conflict leaves no trace.
        let mut decisions = Vec::with_capacity(batch.len());
        let mut in_batch: HashMap<Vec<u8>, (usize, [u8; 16])> = HashMap::new();
        let mut keys = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let (source, seq) = (r.event.source.as_str(), r.event.seq);
            let key = dedup_key(source, seq);
            let digest = event_digest(&r.event);
            let highest = self.highest(source)?;
            let above = highest.is_none_or(|h| seq > h);
            if above {
                *highest = Some(seq);
            }
            let decision = if let Some(&(j, d)) = in_batch.get(&key) {
                if d != digest {
                    return Err(AppendError::ConflictInBatch { index: i });
                }
                Decision::DuplicateOf(j)
            } else if above {
                in_batch.insert(key.clone(), (i, digest));
                Decision::New
            } else if let Some((offset, stored)) = self.stored(&key)? {
                if stored != digest {
                    return Err(AppendError::Conflict { index: i, offset });
                }
                Decision::Duplicate(offset)
            } else {
                in_batch.insert(key.clone(), (i, digest));
                Decision::New
            };
            decisions.push(decision);
            keys.push((key, digest));
        }
        // Then give the new records their offsets and conversations.
        let mut offset_of = vec![Offset::ZERO; batch.len()];
        let mut duplicates = Vec::new();
        let mut next_new = next;
        for (i, d) in decisions.iter().enumerate() {
            match d {
                Decision::New => {
                    offset_of[i] = next_new;
                    next_new = next_new.plus(1);
                }
                Decision::Duplicate(o) => duplicates.push((i, *o)),
                Decision::DuplicateOf(j) => duplicates.push((i, offset_of[*j])),
            }
        }
        let mut kept = Vec::with_capacity(batch.len() - duplicates.len());
        for ((i, mut r), (key, digest)) in std::mem::take(batch).into_iter().enumerate().zip(keys) {
            if !matches!(decisions[i], Decision::New) {
                continue;
            }
            let offset = offset_of[i];
            if let Some(ck) = conversation_key(&r) {
                let before = self.session(&ck)?;
                let s = self.config.next(before, &r, offset);
                r.conversation_id = Some(s.id);
                self.pending_sessions.insert(ck, s);
            } else {
                r.conversation_id = None;
            }
            self.pending_keys.insert(key, Pending { offset, digest });
            kept.push(r);
        }
        *batch = kept;
        Ok(duplicates)
    }

    fn commit(&mut self, head: Offset) -> Result<(), String> {
        let batch = StateBatch {
            keys: self.pending_keys.drain().map(|(k, p)| (k, p.offset)).collect(),
            sessions: self.pending_sessions.drain().collect(),
        };
        if self.sessions.len() > SESSION_CACHE {
            self.sessions.clear();
        }
        self.sessions.extend(batch.sessions.iter().cloned());
        self.state.write(&batch, head).map_err(|e| {
            let why = e.to_string();
            self.broken = Some(why.clone());
            why
        })?;
        // Only here, with nothing pending: RocksDB holds every key.
        if self.highest.len() > HIGHEST_CACHE {
            self.highest.clear();
        }
        Ok(())
    }

    fn abort(&mut self) {
        self.pending_keys.clear();
        self.pending_sessions.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use verbatim_schema::{Event, EventTime, RecordFlags, SiteId, SourceId};

    use super::*;
    use crate::log::io::MemStorage;
    use crate::log::sequencer::write_group;
    use crate::log::{Log, LogConfig};

    /// A chat event `mins:secs` after 09:00 on a fixed day.
    fn ev(seq: u64, network: &str, from: &str, to: &[&str], channel: Option<&str>, at: (i64, i64)) -> Record {
        let t0 = 1_795_856_400i64; // 2026-11-22T09:00:00Z
        Record {
            received_at: UnixNanos(0),
            site: SiteId::new("nyc"),
            conversation_id: None,
            flags: RecordFlags::default(),
            event: Event {
                source: SourceId::new("proxy-1"),
                seq,
                network: network.into(),
                kind: "message".into(),
                ts: EventTime { instant: UnixNanos((t0 + at.0 * 60 + at.1) * 1_000_000_000), utc_offset_secs: 0 },
                from: from.into(),
                to: to.iter().map(|s| s.to_string()).collect(),
                channel: channel.map(str::to_string),
                body: format!("message {seq}"),
                direction: None,
                attrs: Default::default(),
            },
        }
    }

    struct Archive {
        _tmp: tempfile::TempDir,
        storage: MemStorage,
        log: Option<Log>,
        seq: Option<IngestSequencer>,
    }

    impl Archive {
        fn new() -> Self {
            let tmp = tempfile::tempdir().expect("tempdir");
            let storage = MemStorage::new();
            let mut a = Archive { _tmp: tmp, storage, log: None, seq: None };
            a.reopen();
            a
        }

        fn reopen(&mut self) {
            self.seq = None;
            if let Some(log) = self.log.take() {
                log.close().expect("close");
            }
            let log =
                Log::open(Arc::new(self.storage.clone()), Path::new("/d/log"), LogConfig::default()).expect("log");
            let state = StateDb::open(&self._tmp.path().join("state")).expect("state");
            self.seq = Some(IngestSequencer::open(state, SessionConfig::default(), &log.reader()).expect("seq"));
            self.log = Some(log);
        }

        /// Appends one event; returns its conversation id.
        fn add(&mut self, r: Record) -> Option<u64> {
            let log = self.log.as_mut().expect("log");
            let offset = log.head();
            write_group(
                log,
                self.seq.as_mut().expect("seq"),
                vec![(vec![r], Box::new(|r| assert!(r.is_ok(), "{r:?}")))],
                &|| {},
            );
            log.reader().get(offset).expect("read").conversation_id.map(|c| c.0)
        }
    }

    #[test]
    fn conversations_follow_idle_timeouts_channels_and_participant_sets() {
        let mut a = Archive::new();
        // (event, expected conversation id = offset of its conversation's first event)
        let golden: Vec<(Record, Option<u64>)> = vec![
            (ev(1, "irc", "alice", &["bob"], None, (0, 0)), Some(0)), // 0 starts a private chat
            (ev(2, "irc", "bob", &["alice"], None, (14, 59)), Some(0)), // 1 reply, other order, within 15 min
            (ev(3, "irc", "alice", &["bob"], None, (29, 59)), Some(0)), // 2 exactly 15:00 after the last: same
            (ev(4, "irc", "alice", &["bob"], None, (45, 0)), Some(3)), // 3 15:01 idle: a new conversation
            (ev(5, "irc", "carol", &[], Some("#desk"), (0, 0)), Some(4)), // 4 channel chat
            (ev(6, "irc", "alice", &[], Some("#desk"), (1, 0)), Some(4)), // 5 another sender, same channel
            (ev(7, "xmpp", "alice", &["bob"], None, (45, 10)), Some(6)), // 6 same people, other network
            (ev(8, "irc", "alice", &["bob", "carol"], None, (46, 0)), Some(7)), // 7 a three-way chat is its own
            (ev(9, "irc", "carol", &["alice", "bob"], None, (47, 0)), Some(7)), // 8 same set, other sender
            (ev(10, "msn", "dave", &["erin"], None, (0, 0)), Some(9)), // 9 MSN: 5 minutes
            (ev(11, "msn", "erin", &["dave"], None, (5, 0)), Some(9)), // 10 exactly 5:00: same
            (ev(12, "msn", "dave", &["erin"], None, (10, 1)), Some(11)), // 11 5:01 idle: new
            (ev(13, "irc", "alice", &["bob"], None, (44, 0)), Some(3)), // 12 late (ts earlier): continues
            (
                Record {
                    event: Event { kind: "gap".into(), ..ev(14, "irc", "proxy", &[], None, (50, 0)).event },
                    ..ev(14, "irc", "x", &[], None, (0, 0))
                },
                None,
            ),
        ];
        for (i, (r, want)) in golden.into_iter().enumerate() {
            assert_eq!(a.add(r), want, "event at offset {i}");
        }
        // Ids survive a restart...
        a.reopen();
        assert_eq!(a.add(ev(15, "irc", "bob", &["alice"], None, (50, 0))), Some(3));
        // ...and a rebuild of the state from the log.
        a.seq = None;
        std::fs::remove_dir_all(a._tmp.path().join("state")).expect("drop state");
        a.reopen();
        assert_eq!(a.add(ev(16, "irc", "carol", &[], Some("#desk"), (2, 0))), Some(4));
        assert_eq!(a.add(ev(17, "msn", "erin", &["dave"], None, (12, 0))), Some(11));
    }

    #[test]
    fn per_network_timeouts_are_configurable() {
        let c = SessionConfig { idle_timeout_secs: 60, network_idle_timeout_secs: [("sip".to_string(), 10)].into() };
        let first = c.next(None, &ev(1, "sip", "a", &["b"], None, (0, 0)), Offset(5));
        assert_eq!(first.id, ConversationId(5));
        assert_eq!(c.next(Some(first), &ev(2, "sip", "a", &["b"], None, (0, 10)), Offset(6)).id, ConversationId(5));
        assert_eq!(c.next(Some(first), &ev(2, "sip", "a", &["b"], None, (0, 11)), Offset(6)).id, ConversationId(6));
        assert_eq!(c.next(Some(first), &ev(2, "irc", "a", &["b"], None, (1, 0)), Offset(6)).id, ConversationId(5));
    }

    #[test]
    fn a_retry_is_compared_with_the_events_read_back_from_the_log() {
        let mut a = Archive::new();
        for seq in 1..=4 {
            a.add(ev(seq, "irc", "alice", &["bob"], None, (0, seq as i64)));
        }
        a.reopen();
        let log = a.log.as_mut().expect("log");
        let seq = a.seq.as_mut().expect("seq");
        // Out of order, across four blocks, and twice the same: each its stored offset.
        let mut retry: Vec<Record> =
            [3, 1, 4, 1, 2].iter().map(|&s| ev(s, "irc", "alice", &["bob"], None, (0, s as i64))).collect();
        let dups = seq.admit(&mut retry, log.head()).expect("admit");
        assert_eq!(dups, vec![(0, Offset(2)), (1, Offset(0)), (2, Offset(3)), (3, Offset(0)), (4, Offset(1))]);
        assert!(retry.is_empty());
        // One body changed after a block already read back: the whole batch is refused.
        let mut changed =
            vec![ev(4, "irc", "alice", &["bob"], None, (0, 4)), ev(3, "irc", "alice", &["bob"], None, (0, 3))];
        changed[1].event.body.push('!');
        assert_eq!(seq.admit(&mut changed, log.head()), Err(AppendError::Conflict { index: 1, offset: Offset(2) }));
        seq.abort();
        // A state that points a key at another event is refused, never trusted.
        let wrong = StateBatch { keys: vec![(dedup_key("proxy-1", 2), Offset(0))], sessions: vec![] };
        seq.state.write(&wrong, log.head()).expect("write");
        let mut retry = vec![ev(2, "irc", "alice", &["bob"], None, (0, 2))];
        match seq.admit(&mut retry, log.head()) {
            Err(AppendError::Unavailable(why)) => assert!(why.contains("holds another event"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seqs_below_the_highest_are_looked_up_and_seqs_above_it_are_new() {
        let mut a = Archive::new();
        let at = |seq: u64| ev(seq, "irc", "alice", &["bob"], None, (0, seq as i64));
        a.add(at(10));
        for restart in [false, true] {
            if restart {
                a.reopen();
            }
            let log = a.log.as_mut().expect("log");
            let seq = a.seq.as_mut().expect("seq");
            // Below the highest seq: new if never stored, a duplicate if it is.
            let mut batch = vec![at(10), at(5), at(11), at(5)];
            let dups = seq.admit(&mut batch, log.head()).expect("admit");
            assert_eq!(dups, vec![(0, Offset(0)), (3, Offset(1))]);
            assert_eq!(batch.iter().map(|r| r.event.seq).collect::<Vec<_>>(), vec![5, 11]);
            // A block that fails leaves its seqs free: a retry is new again.
            seq.abort();
        }
        // A failed block raised the bound to 11 without storing 11: a
        // lookup finds nothing, and the retry is stored once.
        assert!(a.add(at(11)).is_some());
        let log = a.log.as_mut().expect("log");
        let seq = a.seq.as_mut().expect("seq");
        let mut again = vec![at(11), at(12)];
        assert_eq!(seq.admit(&mut again, log.head()).expect("admit"), vec![(0, Offset(1))]);
    }

    #[test]
    fn duplicates_survive_a_restart_and_a_state_rebuild() {
        let mut a = Archive::new();
        a.add(ev(1, "irc", "alice", &["bob"], None, (0, 0)));
        for rebuild in [false, true] {
            a.seq = None;
            if rebuild {
                std::fs::remove_dir_all(a._tmp.path().join("state")).expect("drop state");
            }
            a.reopen();
            let log = a.log.as_mut().expect("log");
            let seq = a.seq.as_mut().expect("seq");
            let mut same = vec![ev(1, "irc", "alice", &["bob"], None, (0, 0))];
            assert_eq!(seq.admit(&mut same, log.head()).expect("admit"), vec![(0, Offset(0))]);
            assert!(same.is_empty());
            let mut changed = vec![ev(1, "irc", "alice", &["bob"], None, (0, 1))];
            assert_eq!(seq.admit(&mut changed, log.head()), Err(AppendError::Conflict { index: 0, offset: Offset(0) }));
            seq.abort();
        }
    }
}
