//! The recorder every front end writes through: a spool thread that owns the
//! spool (group commit: one write and, in recoverable mode, one fsync for all
//! waiting events) and a sender thread that ships it to the server.
//!
//! What a caller learns:
//! - [`Recorder::record`] returns once the events are in the spool (fsynced
//!   in recoverable mode);
//! - [`Recorder::wait_acked`] once the server has acknowledged them;
//! - [`Recorder::submit`] returns at once; if the spool cannot take the
//!   events, a `gap` event saying who lost what and why is recorded as soon as
//!   the spool can take it (relaxed logging never goes silent).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use verbatim_schema::{Limits, UnixNanos, WireEvent};

use crate::frontend::lock;
use crate::sender::{send_loop, SenderConfig};
use crate::spool::{Spool, SpoolConfig, SpoolError, SpoolMode, SpoolReader};

#[derive(Clone, Debug)]
pub struct RecorderConfig {
    /// The capture point's id; the ingest token must be bound to it.
    pub source: String,
    pub spool: SpoolConfig,
    pub sender: SenderConfig,
    /// How often express mode fsyncs what it wrote.
    pub flush_every: Duration,
    /// Requests waiting for the spool thread before submissions are refused.
    pub queue: usize,
}

/// Why events could not be recorded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the spool queue is full")]
    QueueFull,
    #[error("{0}")]
    Spool(String),
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error("the recorder has stopped")]
    Stopped,
    #[error("the server has not acknowledged the event within {0:?}")]
    NotAcked(Duration),
}

/// A snapshot for logs and status pages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecorderStatus {
    pub spool_bytes: u64,
    pub next_seq: u64,
    pub durable_through: u64,
    pub acked_through: u64,
    pub server: String,
    pub last_error: Option<String>,
    /// Events the server refused for their content (kept in `rejected.ndjson`).
    pub refused: u64,
    /// Gap events recorded so far.
    pub gaps: u64,
    /// Set while the spool is above 80 % of its limit.
    pub alarm: Option<String>,
}

/// Who lost what, for a gap event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GapKey {
    network: String,
    from: String,
    why: String,
}

#[derive(Debug)]
struct GapCount {
    events: u64,
    first: UnixNanos,
    last: UnixNanos,
}

pub(crate) enum Request {
    Append { events: Vec<WireEvent>, reply: Option<oneshot::Sender<Result<u64, RecordError>>>, gap_on_failure: bool },
    Ack(u64),
    Stop,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) status: Mutex<RecorderStatus>,
    /// Highest seq the sender may read (written; fsynced in recoverable mode).
    pub(crate) durable: (Mutex<u64>, Condvar),
    /// Submissions that found the queue full, by who, to become gap events.
    overflow: Mutex<BTreeMap<GapKey, GapCount>>,
    pub(crate) stop: AtomicBool,
}

/// A cheap handle (clone it per connection).
#[derive(Clone, Debug)]
pub struct Recorder {
    source: String,
    mode: SpoolMode,
    tx: SyncSender<Request>,
    acked: watch::Receiver<u64>,
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Append { events, .. } => write!(f, "Append({} events)", events.len()),
            Request::Ack(s) => write!(f, "Ack({s})"),
            Request::Stop => write!(f, "Stop"),
        }
    }
}

impl Recorder {
    /// Opens the spool (recovering it) and starts the spool and sender threads.
    pub fn start(config: RecorderConfig) -> Result<Recorder, SpoolError> {
        let (spool, recovery) = Spool::open(config.spool.clone())?;
        let mode = spool.mode();
        let acked_through = spool.acked_through();
        let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
        let (acked_tx, acked) = watch::channel(acked_through);
        let status = RecorderStatus {
            spool_bytes: spool.held_bytes(),
            next_seq: spool.next_seq(),
            durable_through: spool.next_seq() - 1,
            acked_through,
            server: config.sender.urls.first().cloned().unwrap_or_default(),
            ..RecorderStatus::default()
        };
        let shared = Arc::new(Shared {
            durable: (Mutex::new(spool.next_seq() - 1), Condvar::new()),
            status: Mutex::new(status),
            overflow: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        });
        let mut pending = BTreeMap::new();
        if recovery.truncated_bytes > 0 {
            tracing::warn!(bytes = recovery.truncated_bytes, "cut a torn tail from the spool");
        }
        if let Some((first, last)) = recovery.maybe_lost {
            let why = format!(
                "the front end stopped without flushing its express spool: events with seq {first}..={last} \
                 may not have been recorded"
            );
            tracing::error!("{why}");
            let now = UnixNanos::now();
            pending.insert(
                GapKey { network: "capture".into(), from: config.source.clone(), why },
                GapCount { events: 0, first: now, last: now },
            );
        }
        let reader = SpoolReader::new(spool.dir(), acked_through);
        let spool_thread = {
            let (shared, source, flush) = (shared.clone(), config.source.clone(), config.flush_every);
            std::thread::Builder::new().name("spool".into()).spawn(move || {
                SpoolThread { spool, shared, source, acked: acked_tx, pending, limits: Limits::default() }
                    .run(rx, flush)
            })?
        };
        let sender_thread = {
            let (shared, tx, cfg) = (shared.clone(), tx.clone(), config.sender.clone());
            let rejected = config.spool.dir.join("rejected.ndjson");
            std::thread::Builder::new()
                .name("sender".into())
                .spawn(move || send_loop(cfg, reader, acked_through, shared, tx, rejected))?
        };
        Ok(Recorder {
            source: config.source,
            mode,
            tx,
            acked,
            shared,
            threads: Arc::new(Mutex::new(vec![spool_thread, sender_thread])),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn mode(&self) -> SpoolMode {
        self.mode
    }

    /// Spools events (their `source` and `seq` are set here) and returns the
    /// last seq once they are written, and fsynced in recoverable mode.
    pub async fn record(&self, events: Vec<WireEvent>, gap_on_failure: bool) -> Result<u64, RecordError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(events, Some(reply), gap_on_failure)?;
        rx.await.map_err(|_| RecordError::Stopped)?
    }

    /// Spools events without waiting; a failure becomes a gap event.
    pub fn submit(&self, events: Vec<WireEvent>) {
        let _ = self.enqueue(events, None, true);
    }

    fn enqueue(
        &self,
        mut events: Vec<WireEvent>,
        reply: Option<oneshot::Sender<Result<u64, RecordError>>>,
        gap_on_failure: bool,
    ) -> Result<(), RecordError> {
        for e in &mut events {
            e.source.clone_from(&self.source);
        }
        match self.tx.try_send(Request::Append { events, reply, gap_on_failure }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Request::Append { events, gap_on_failure: true, .. })) => {
                let now = UnixNanos::now();
                let mut overflow = lock(&self.shared.overflow);
                for e in events {
                    let k = GapKey { network: e.network, from: e.from, why: "the spool queue was full".into() };
                    let c = overflow.entry(k).or_insert(GapCount { events: 0, first: now, last: now });
                    c.events += 1;
                    c.last = now;
                }
                Err(RecordError::QueueFull)
            }
            Err(TrySendError::Full(_)) => Err(RecordError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(RecordError::Stopped),
        }
    }

    /// Waits until the server has acknowledged every event through `seq`.
    pub async fn wait_acked(&self, seq: u64, within: Duration) -> Result<(), RecordError> {
        let mut acked = self.acked.clone();
        let waited = tokio::time::timeout(within, acked.wait_for(|&a| a >= seq)).await.map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(RecordError::Stopped),
            Err(_) => Err(RecordError::NotAcked(within)),
        }
    }

    pub fn status(&self) -> RecorderStatus {
        lock(&self.shared.status).clone()
    }

    /// Stops both threads; the spool is closed cleanly (what was not yet
    /// acknowledged is sent after the next start).
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Request::Stop);
        self.shared.durable.1.notify_all();
        // Only the spool thread is waited for (it closes the spool); the
        // sender may be inside a request, whose answer no longer matters:
        // what it sent is sent again after the next start.
        let threads = std::mem::take(&mut *lock(&self.threads));
        if let Some(spool) = threads.into_iter().next() {
            let _ = spool.join();
        }
    }
}

struct SpoolThread {
    spool: Spool,
    shared: Arc<Shared>,
    source: String,
    acked: watch::Sender<u64>,
    pending: BTreeMap<GapKey, GapCount>,
    limits: Limits,
}

impl SpoolThread {
    fn run(mut self, rx: mpsc::Receiver<Request>, flush_every: Duration) {
        let mut dirty = false;
        // Gaps are written at most once per tick, so a run of failures
        // becomes one event per (who, why) with a count.
        let mut gaps_written = std::time::Instant::now();
        loop {
            let first = match rx.recv_timeout(flush_every) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.spool.save_acks() {
                        tracing::error!("saving acknowledgements in the spool: {e}");
                    }
                    if dirty {
                        if let Err(e) = self.spool.flush() {
                            tracing::error!("flushing the express spool: {e}");
                        }
                        dirty = false;
                    }
                    self.write_gaps();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < 1024 {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            if self.handle(group) {
                break;
            }
            dirty |= self.spool.mode() == SpoolMode::Express;
            if gaps_written.elapsed() >= flush_every {
                if let Err(e) = self.spool.save_acks() {
                    tracing::error!("saving acknowledgements in the spool: {e}");
                }
                self.write_gaps();
                gaps_written = std::time::Instant::now();
            }
        }
        self.write_gaps();
        if let Err(e) = self.spool.close() {
            tracing::error!("closing the spool: {e}");
        }
    }

    /// Handles a group of requests; true when asked to stop.
    fn handle(&mut self, group: Vec<Request>) -> bool {
        let mut stop = false;
        let mut events = Vec::new();
        let mut waiting = Vec::new();
        for r in group {
            match r {
                Request::Stop => stop = true,
                Request::Ack(seq) => self.ack(seq),
                Request::Append { events: evs, reply, gap_on_failure } => {
                    if let Some(bad) = evs.iter().find_map(|e| self.limits.check(e).err()) {
                        let err = RecordError::Invalid(format!("field `{}`: {}", bad.field, bad.problem));
                        self.failed(&evs, gap_on_failure, &err);
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(err));
                        }
                        continue;
                    }
                    let start = events.len();
                    events.extend(evs);
                    waiting.push((start..events.len(), reply, gap_on_failure));
                }
            }
        }
        if events.is_empty() {
            return stop;
        }
        match self.spool.append(&mut events, false) {
            Ok(()) => {
                for (range, reply, _) in waiting {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(events[range.end - 1].seq));
                    }
                }
                let through = self.spool.next_seq() - 1;
                *lock(&self.shared.durable.0) = through;
                self.shared.durable.1.notify_all();
            }
            Err(e) => {
                let err = RecordError::Spool(e.to_string());
                for (range, reply, gap) in waiting {
                    self.failed(&events[range], gap, &err);
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        }
        self.update_status();
        stop
    }

    fn failed(&mut self, events: &[WireEvent], gap: bool, err: &RecordError) {
        if !gap {
            return;
        }
        let now = UnixNanos::now();
        for e in events {
            let key = GapKey { network: e.network.clone(), from: e.from.clone(), why: err.to_string() };
            let c = self.pending.entry(key).or_insert(GapCount { events: 0, first: now, last: now });
            c.events += 1;
            c.last = now;
        }
    }

    fn ack(&mut self, seq: u64) {
        match self.spool.ack(seq) {
            Ok(()) => {
                let _ = self.acked.send(seq);
            }
            Err(e) => tracing::error!("recording the server's acknowledgement in the spool: {e}"),
        }
        self.update_status();
    }

    /// Writes pending gap events (forced past the size limit: they are small
    /// and say what is missing).
    fn write_gaps(&mut self) {
        self.pending.append(&mut lock(&self.shared.overflow));
        if self.pending.is_empty() {
            return;
        }
        let mut events: Vec<WireEvent> = self.pending.iter().map(|(k, c)| gap_event(&self.source, k, c)).collect();
        match self.spool.append(&mut events, true) {
            Ok(()) => {
                for e in &events {
                    tracing::warn!(network = %e.network, from = %e.from, "recorded a gap: {}", e.body.as_deref().unwrap_or(""));
                }
                lock(&self.shared.status).gaps += events.len() as u64;
                self.pending.clear();
                *lock(&self.shared.durable.0) = self.spool.next_seq() - 1;
                self.shared.durable.1.notify_all();
            }
            Err(e) => tracing::error!("a gap event could not be spooled yet: {e}"),
        }
        self.update_status();
    }

    fn update_status(&self) {
        let mut s = lock(&self.shared.status);
        s.spool_bytes = self.spool.held_bytes();
        s.next_seq = self.spool.next_seq();
        s.durable_through = self.spool.next_seq() - 1;
        s.acked_through = self.spool.acked_through();
        let limit = self.spool_limit();
        let alarm = (s.spool_bytes * 5 >= limit * 4).then(|| {
            format!("the spool holds {} of its {limit} bytes: the server is not taking events", s.spool_bytes)
        });
        if alarm.is_some() && s.alarm.is_none() {
            tracing::error!("ALARM: {}", alarm.as_deref().unwrap_or(""));
        }
        s.alarm = alarm;
    }

    fn spool_limit(&self) -> u64 {
        self.spool.max_bytes()
    }
}

fn gap_event(source: &str, k: &GapKey, c: &GapCount) -> WireEvent {
    let mut attrs = BTreeMap::new();
    attrs.insert("gap.events".to_owned(), c.events.to_string());
    attrs.insert("gap.first".to_owned(), c.first.to_rfc3339());
    attrs.insert("gap.last".to_owned(), c.last.to_rfc3339());
    WireEvent {
        source: source.to_owned(),
        seq: 0,
        network: k.network.clone(),
        kind: "gap".into(),
        ts: c.first.to_rfc3339(),
        from: k.from.clone(),
        to: Vec::new(),
        channel: None,
        body: Some(k.why.clone()),
        direction: None,
        attrs,
    }
}
