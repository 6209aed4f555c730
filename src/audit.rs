//! The audit stream: every search and transcript read appends a record to
//! `<data>/audit`, a second log in the same format as the conversation log
//! (segments, blocks, hash chain), before the answer is sent. If the record
//! cannot be made durable, the read fails.
//!
//! An audit record is an event of source `audit`, network `verbatim`, kind
//! `audit.<endpoint>`; `from` is the token id, `to` its role, `channel` the
//! endpoint, and the body a JSON object with the query, the filters and the
//! number of results.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Serialize;
use serde_json::Value;
use verbatim_schema::{Event, EventTime, Offset, Record, RecordFlags, SiteId, SourceId, UnixNanos};

use crate::auth::Principal;
use crate::log::io::{FsStorage, Storage};
use crate::log::sequencer::PassThrough;
use crate::log::{Log, LogConfig, LogHandle, LogReader};
use crate::metrics::LogMetrics;

pub const AUDIT_SOURCE: &str = "audit";
pub const AUDIT_NETWORK: &str = "verbatim";

/// One read, as the audit stream keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub endpoint: String,
    pub query: Value,
    pub results: u64,
}

#[derive(Debug)]
pub struct Audit {
    handle: LogHandle,
    next_seq: AtomicU64,
    site: SiteId,
}

impl Audit {
    /// Opens (or creates) the audit log in `dir` and starts its writer.
    pub fn open(dir: &Path, config: LogConfig, site: SiteId) -> anyhow::Result<(Arc<Self>, JoinHandle<()>)> {
        Self::open_on(Arc::new(FsStorage), dir, config, site)
    }

    /// [`Audit::open`] on any storage (tests inject failures through it).
    pub fn open_on(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
        site: SiteId,
    ) -> anyhow::Result<(Arc<Self>, JoinHandle<()>)> {
        let log = Log::open(storage, dir, config)
            .map_err(|e| anyhow::anyhow!("opening the audit log {}: {e}", dir.display()))?;
        let next_seq = log.head().0 + 1;
        let (handle, thread) = LogHandle::start(log, Box::new(PassThrough), Arc::new(LogMetrics::default()));
        Ok((Arc::new(Self { handle, next_seq: AtomicU64::new(next_seq), site }), thread))
    }

    pub fn reader(&self) -> &LogReader {
        self.handle.reader()
    }

    /// Appends `entry` for `who` and waits until it is durable.
    pub async fn record(&self, who: &Principal, entry: AuditEntry) -> Result<Offset, String> {
        self.submit(who, entry)?.await
    }

    /// Queues `entry` for `who` at once, without blocking, and returns what
    /// to await until it is durable: a read can be answered while its audit
    /// record is being written, and sent only once it is.
    pub fn submit(
        &self,
        who: &Principal,
        entry: AuditEntry,
    ) -> Result<impl std::future::Future<Output = Result<Offset, String>> + Send + 'static, String> {
        let now = UnixNanos::now();
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let mut attrs = BTreeMap::new();
        attrs.insert("results".to_string(), entry.results.to_string());
        let event = Event {
            source: SourceId::new(AUDIT_SOURCE),
            seq,
            network: AUDIT_NETWORK.into(),
            kind: format!("audit.{}", entry.endpoint),
            ts: EventTime { instant: now, utc_offset_secs: 0 },
            from: who.token_id.clone(),
            to: vec![who.role.as_str().to_string()],
            channel: Some(entry.endpoint.clone()),
            body: serde_json::to_string(&entry).map_err(|e| e.to_string())?,
            direction: None,
            attrs,
        };
        let record = Record {
            received_at: now,
            site: self.site.clone(),
            conversation_id: None,
            flags: RecordFlags::default(),
            event,
        };
        let ack = self.handle.submit(vec![record]).map_err(|e| e.to_string())?;
        Ok(async move { Ok(ack.await.map_err(|e| e.to_string())?.new.start) })
    }

    pub async fn close(&self) -> Result<(), String> {
        self.handle.close().await
    }
}
