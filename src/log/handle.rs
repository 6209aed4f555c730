//! The one writer task: appenders send batches into a bounded queue; a
//! dedicated thread takes everything waiting (up to a block's worth), writes it
//! as one block with one fsync, and then completes every appender's ack. A
//! second thread seals rolled segments so sealing never delays an ack.

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, warn};
use verbatim_schema::{Offset, Record};

use super::reader::LogReader;
use super::sequencer::{write_group, AppendError, Appended, Reply, Sequencer};
use super::writer::Log;
use crate::metrics::LogMetrics;

enum Msg {
    Append(Vec<Record>, oneshot::Sender<Result<Appended, AppendError>>),
    Close(oneshot::Sender<Result<(), String>>),
}

/// How often an idle writer checks whether the active segment is old enough
/// to roll, and how often a stopped writer tries to restart from the log.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Sends batches to the writer thread. Cloneable.
#[derive(Clone, Debug)]
pub struct LogHandle {
    tx: SyncSender<Msg>,
    reader: LogReader,
    metrics: Arc<LogMetrics>,
}

impl LogHandle {
    /// Starts the writer and sealer threads over an open log, with
    /// `sequencer` deciding what each batch appends.
    pub fn start(log: Log, sequencer: Box<dyn Sequencer>, metrics: Arc<LogMetrics>) -> (LogHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::sync_channel(log.config().queue_depth.max(1));
        let reader = log.reader();
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer_loop(log, sequencer, rx, m))
            .expect("spawning the log writer thread");
        (LogHandle { tx, reader, metrics }, thread)
    }

    /// Appends one batch; resolves once it is durable, with what was new and
    /// what was already in the log.
    pub async fn append(&self, records: Vec<Record>) -> Result<Appended, AppendError> {
        self.submit(records)?.await
    }

    /// Queues `records` for the writer at once, without blocking, and
    /// returns what to await for the acknowledgement: a caller on a plain
    /// thread starts the write now and waits for it later.
    pub fn submit(
        &self,
        records: Vec<Record>,
    ) -> Result<impl std::future::Future<Output = Result<Appended, AppendError>> + Send + 'static, AppendError> {
        let (reply, ack) = oneshot::channel();
        match self.tx.try_send(Msg::Append(records, reply)) {
            Ok(()) => self.metrics.queue_depth.inc(),
            Err(TrySendError::Full(_)) => return Err(AppendError::QueueFull),
            Err(TrySendError::Disconnected(_)) => {
                return Err(AppendError::Unavailable("the log writer has stopped".into()))
            }
        };
        Ok(
            async move { ack.await.unwrap_or_else(|_| Err(AppendError::Unavailable("the log writer has stopped".into()))) },
        )
    }

    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Writes what is queued, seals the log and stops the threads.
    pub async fn close(&self) -> Result<(), String> {
        let (reply, done) = oneshot::channel();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(Msg::Close(reply)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the log writer has stopped".to_string())?;
        done.await.map_err(|_| "the log writer has stopped".to_string())?
    }
}

fn record_stats(m: &LogMetrics, stats: &super::writer::BlockStats) {
    m.events_appended.inc_by(stats.records);
    m.raw_bytes_appended.inc_by(stats.raw_bytes);
    m.stored_bytes_appended.inc_by(stats.stored_bytes);
    if stats.records > 0 {
        m.blocks_written.inc();
        m.block_records.observe(stats.records as f64);
        m.block_bytes.observe(stats.stored_bytes as f64);
        m.fsync_seconds.observe(stats.sync_nanos as f64 / 1e9);
    }
}

fn reply_to(tx: oneshot::Sender<Result<Appended, AppendError>>) -> Reply {
    Box::new(move |r| {
        let _ = tx.send(r);
    })
}

fn writer_loop(mut log: Log, mut sequencer: Box<dyn Sequencer>, rx: mpsc::Receiver<Msg>, m: Arc<LogMetrics>) {
    let (seal_tx, seal_rx) = mpsc::channel::<Offset>();
    let sealer = log.sealer();
    let sm = m.clone();
    let seal_thread = std::thread::Builder::new()
        .name("log-sealer".into())
        .spawn(move || {
            while let Ok(active_first) = seal_rx.recv() {
                match sealer.seal_pending(active_first) {
                    Ok(n) => {
                        sm.segments_sealed.inc_by(n as u64);
                    }
                    Err(e) => {
                        sm.seal_failures.inc();
                        warn!("sealing failed, will retry after the next roll: {e}");
                    }
                }
            }
        })
        .expect("spawning the log sealer thread");
    let limit = log.config().max_block_bytes;
    let mut closing = None;
    let mut last_recovery = Instant::now();
    while closing.is_none() {
        if log.failure().is_some() && last_recovery.elapsed() >= IDLE_TICK {
            last_recovery = Instant::now();
            match log.recover() {
                Ok(()) => {
                    m.writer_failed.set(0);
                }
                Err(e) => warn!("log writer still stopped: {e}"),
            }
        }
        let first = match rx.recv_timeout(IDLE_TICK) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                if matches!(log.maybe_roll(), Ok(true)) {
                    let _ = seal_tx.send(log.head());
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Gather what is waiting, up to a block's worth by a strict bound on
        // the encoded size, so that only a single batch can be too large.
        let mut group = Vec::new();
        let mut bytes = 0;
        let mut msg = Some(first);
        let mut held = None;
        while let Some(next) = msg.take() {
            match next {
                Msg::Append(records, reply) => {
                    m.queue_depth.dec();
                    let size: usize = records.iter().map(verbatim_schema::codec::encoded_len_bound).sum();
                    if !group.is_empty() && bytes + size > limit {
                        held = Some((records, reply_to(reply)));
                        break;
                    }
                    bytes += size;
                    group.push((records, reply_to(reply)));
                }
                Msg::Close(reply) => closing = Some(reply),
            }
            if closing.is_none() {
                msg = rx.try_recv().ok();
            }
        }
        for group in [group, held.into_iter().collect()] {
            if group.is_empty() {
                continue;
            }
            let segments = log.shared().segment_count();
            let rolled_at = log.head();
            let failed_before = log.failure().is_some();
            // `writer_failed` is raised by write_group before any appender
            // hears of the failure.
            if let Some(stats) = write_group(&mut log, &mut *sequencer, group, &|| {
                m.writer_failed.set(1);
            }) {
                record_stats(&m, &stats);
            }
            if log.failure().is_some() && !failed_before {
                // A fresh failure: the disk gets a tick before the writer
                // reopens the log, rather than at once.
                last_recovery = Instant::now();
            }
            if log.shared().segment_count() != segments {
                let _ = seal_tx.send(rolled_at);
            }
        }
    }
    drop(seal_tx);
    let _ = seal_thread.join();
    let result = log.close().map_err(|e| e.to_string());
    if let Err(e) = &result {
        error!("closing the log: {e}");
    }
    if let Some(reply) = closing {
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::log::io::MemStorage;
    use crate::log::tests::{record, small_config};
    use crate::log::PassThrough;
    use verbatim_schema::Offset;

    #[tokio::test]
    async fn a_failed_fsync_is_refused_then_the_writer_restarts_from_the_log() {
        let storage = MemStorage::new();
        let log = Log::open(Arc::new(storage.clone()), Path::new("/data/log"), small_config()).expect("open");
        let metrics = Arc::new(LogMetrics::default());
        let (handle, thread) = LogHandle::start(log, Box::new(PassThrough), metrics.clone());
        assert_eq!(handle.append(vec![record(1, 50)]).await.expect("first").new, Offset(0)..Offset(1));

        storage.fail_sync_after(0);
        let err = handle.append(vec![record(2, 50), record(3, 50)]).await.expect_err("the fsync failed");
        assert!(matches!(err, AppendError::Unavailable(_)), "{err:?}");
        // The metric is raised before the reply goes out.
        assert_eq!(metrics.writer_failed.get(), 1, "writer_failed shows the failure by the time the client hears it");
        assert_eq!(handle.reader().head(), Offset(1), "nothing of the failed batch is visible");

        // The same batch retried: refused while stopped, stored once after the restart.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let range = loop {
            match handle.append(vec![record(2, 50), record(3, 50)]).await {
                Ok(r) => break r,
                Err(AppendError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("writer did not restart: {e}"),
            }
        };
        assert_eq!(range.new, Offset(1)..Offset(3), "the failed block was dropped, not kept");
        assert_eq!(metrics.writer_failed.get(), 0);
        assert_eq!(handle.reader().get(Offset(2)).expect("read").event.seq, 3);
        handle.close().await.expect("close");
        thread.join().expect("writer thread");
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let storage = MemStorage::new();
        let config = crate::log::LogConfig { queue_depth: 1, ..small_config() };
        let log = Log::open(Arc::new(storage.clone()), Path::new("/data/log"), config).expect("open");
        let (handle, _thread) = LogHandle::start(log, Box::new(PassThrough), Arc::new(LogMetrics::default()));
        // Many appenders at once against a queue of one: some must be told to back off,
        // and every one that was accepted is durable.
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let h = handle.clone();
                tokio::spawn(async move { h.append(vec![record(i, 2000)]).await })
            })
            .collect();
        let mut accepted = 0;
        let mut full = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => accepted += 1,
                Err(AppendError::QueueFull) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full > 0, "a queue of one never filled");
        assert_eq!(handle.reader().head().0, accepted);
        handle.close().await.expect("close");
    }
}
