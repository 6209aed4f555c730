//! What decides, in log order, on the writer thread, what a batch appends.
//! The server's sequencer deduplicates by `(source, seq)` and assigns
//! conversation ids (ADR 0003): both need the log's order, and a conversation
//! id is the offset of its first event, which only the writer knows. The log
//! stays generic: [`PassThrough`] appends everything as it comes.
//!
//! [`write_group`] is the one code path from admitted batches to a durable
//! block and the appenders' answers; the writer thread and `import` share it.

use std::ops::Range;

use tracing::error;
use verbatim_schema::{Offset, Record};

use super::writer::{BlockStats, Log};
use super::LogError;

/// What became of one batch that was appended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Offsets of the batch's new records (empty if all were duplicates).
    pub new: Range<Offset>,
    /// Records already in the log: (index in the batch, offset where it is).
    pub duplicates: Vec<(usize, Offset)>,
}

/// Why a batch was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The queue is full: back off and retry (HTTP 429).
    #[error("the log writer queue is full")]
    QueueFull,
    /// The log cannot make data durable now (HTTP 503).
    #[error("the log cannot make data durable: {0}")]
    Unavailable(String),
    /// The batch can never fit in one block (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    /// An idempotency key was reused with a different payload (HTTP 422).
    #[error("event {index}: (source, seq) is already stored at offset {offset} with a different payload")]
    Conflict { index: usize, offset: Offset },
    /// The same key twice in one batch with different payloads (HTTP 422).
    #[error("event {index}: (source, seq) appears earlier in the batch with a different payload")]
    ConflictInBatch { index: usize },
}

/// Decides what of each batch goes into the log.
pub trait Sequencer: Send {
    /// Removes from `batch` the records already in the log (returning their
    /// index and offset) and prepares the rest; `next` is the offset the first
    /// kept record will get. All or nothing: an error leaves no trace.
    fn admit(&mut self, batch: &mut Vec<Record>, next: Offset) -> Result<Vec<(usize, Offset)>, AppendError>;
    /// Everything admitted since the last commit or abort is durable. If
    /// this fails, the sequencer must refuse every later batch, since its
    /// view of the log is incomplete until a restart replays the log.
    fn commit(&mut self, head: Offset) -> Result<(), String>;
    /// The block failed: forget everything admitted since the last commit.
    fn abort(&mut self);
}

/// Appends every record as it comes.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl Sequencer for PassThrough {
    fn admit(&mut self, _: &mut Vec<Record>, _: Offset) -> Result<Vec<(usize, Offset)>, AppendError> {
        Ok(Vec::new())
    }

    fn commit(&mut self, _: Offset) -> Result<(), String> {
        Ok(())
    }

    fn abort(&mut self) {}
}

/// How an appender hears the outcome.
pub type Reply = Box<dyn FnOnce(Result<Appended, AppendError>) + Send>;

/// Admits, appends as one block, commits, and answers every batch of a group.
/// The caller keeps a group within the block limit by
/// [`verbatim_schema::codec::encoded_len_bound`], so only a group of one batch
/// can be too large, and that batch gets [`AppendError::TooLarge`].
/// `on_log_failure` runs when the log stops after a failed write or fsync,
/// before any appender hears of it, so that health checks already show the
/// failure when a client sees its 503.
pub fn write_group(
    log: &mut Log,
    seq: &mut dyn Sequencer,
    group: Vec<(Vec<Record>, Reply)>,
    on_log_failure: &dyn Fn(),
) -> Option<BlockStats> {
    let started = std::time::Instant::now();
    let mut next = log.head();
    let mut batches = Vec::with_capacity(group.len());
    let mut answers = Vec::with_capacity(group.len());
    for (mut records, reply) in group {
        match seq.admit(&mut records, next) {
            Ok(dups) => {
                next = next.plus(records.len() as u64);
                batches.push(records);
                answers.push((dups, reply));
            }
            Err(e) => reply(Err(e)),
        }
    }
    let admitted = started.elapsed();
    match log.append(&mut batches) {
        Ok((ranges, stats)) => {
            let appended = started.elapsed();
            // The block is durable: answer first, then record it in the
            // derived state, which the next group's admit (on this same
            // thread) reads only after this commit.
            for ((dups, reply), new) in answers.into_iter().zip(ranges) {
                reply(Ok(Appended { new, duplicates: dups }));
            }
            if let Err(e) = seq.commit(log.head()) {
                error!("derived state could not record a durable block; refusing appends until restart: {e}");
            }
            // Off the ack path: the next blocks find their zeros reserved.
            if let Err(e) = log.reserve_ahead() {
                error!("the log writer stopped: {e}");
                on_log_failure();
            }
            tracing::debug!(
                admit_ms = admitted.as_secs_f64() * 1e3,
                durable_ms = appended.as_secs_f64() * 1e3,
                sync_ms = stats.sync_nanos as f64 / 1e6,
                committed_ms = started.elapsed().as_secs_f64() * 1e3,
                "block written"
            );
            Some(stats)
        }
        Err(e) => {
            seq.abort();
            if log.failure().is_some() {
                on_log_failure();
            }
            let err = match &e {
                LogError::BatchTooLarge { .. } => AppendError::TooLarge(e.to_string()),
                _ => AppendError::Unavailable(e.to_string()),
            };
            for (_, reply) in answers {
                reply(Err(err.clone()));
            }
            None
        }
    }
}
