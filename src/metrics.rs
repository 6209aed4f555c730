//! Prometheus metrics of the server, served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The log writer's metrics.
#[derive(Debug)]
pub struct LogMetrics {
    pub events_appended: Counter,
    pub raw_bytes_appended: Counter,
    pub stored_bytes_appended: Counter,
    pub blocks_written: Counter,
    pub block_records: Histogram,
    pub block_bytes: Histogram,
    pub fsync_seconds: Histogram,
    pub queue_depth: Gauge,
    pub writer_failed: Gauge,
    pub segments_sealed: Counter,
    pub seal_failures: Counter,
}

impl Default for LogMetrics {
    fn default() -> Self {
        Self {
            events_appended: Counter::default(),
            raw_bytes_appended: Counter::default(),
            stored_bytes_appended: Counter::default(),
            blocks_written: Counter::default(),
            block_records: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            block_bytes: Histogram::new(exponential_buckets(128.0, 4.0, 10)),
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            queue_depth: Gauge::default(),
            writer_failed: Gauge::default(),
            segments_sealed: Counter::default(),
            seal_failures: Counter::default(),
        }
    }
}

/// Every metric of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    pub log: std::sync::Arc<LogMetrics>,
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut r = Registry::with_prefix("verbatim");
        let l = &self.log;
        r.register("log_events_appended", "Events appended to the log and acknowledged", l.events_appended.clone());
        r.register("log_raw_bytes_appended", "Record bytes appended, before compression", l.raw_bytes_appended.clone());
        r.register(
            "log_stored_bytes_appended",
            "Block bytes written to the active segment",
            l.stored_bytes_appended.clone(),
        );
        r.register("log_blocks_written", "Blocks written (one per group commit)", l.blocks_written.clone());
        r.register("log_block_records", "Records per block", l.block_records.clone());
        r.register("log_block_bytes", "Bytes per block as stored", l.block_bytes.clone());
        r.register("log_fsync_seconds", "Time to write and fdatasync one block", l.fsync_seconds.clone());
        r.register("log_queue_depth", "Batches waiting for the writer", l.queue_depth.clone());
        r.register("log_writer_failed", "1 once the writer stopped after an I/O failure", l.writer_failed.clone());
        r.register("log_segments_sealed", "Segments sealed", l.segments_sealed.clone());
        r.register(
            "log_seal_failures",
            "Seal attempts that failed (the segment stays unsealed and durable)",
            l.seal_failures.clone(),
        );
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}
