//! Prometheus metrics of the server, served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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

/// The indexer's and the read path's metrics.
#[derive(Debug)]
pub struct IndexMetrics {
    pub log_head: Gauge,
    pub watermark: Gauge,
    pub docs: Gauge,
    pub lag_events: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub commits: Counter,
    pub commit_seconds: Histogram,
    pub errors: Counter,
    pub reconciliations: Counter,
    pub reconcile_failures: Counter,
    pub consistent: Gauge,
    /// 1 while the indexer runs at normal priority, 0 at idle priority.
    pub normal_priority: Gauge,
    /// Times the indexer fell behind and was raised to normal priority.
    pub priority_raised: Counter,
    pub searches: Counter,
    pub search_seconds: Histogram,
    pub transcripts: Counter,
    pub rejected_queries: Counter,
    pub audit_records: Counter,
    pub audit_failures: Counter,
}

impl Default for IndexMetrics {
    fn default() -> Self {
        let consistent = Gauge::default();
        consistent.set(1);
        Self {
            log_head: Gauge::default(),
            watermark: Gauge::default(),
            docs: Gauge::default(),
            lag_events: Gauge::default(),
            lag_seconds: Gauge::default(),
            commits: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            errors: Counter::default(),
            reconciliations: Counter::default(),
            reconcile_failures: Counter::default(),
            consistent,
            normal_priority: Gauge::default(),
            priority_raised: Counter::default(),
            searches: Counter::default(),
            search_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 18)),
            transcripts: Counter::default(),
            rejected_queries: Counter::default(),
            audit_records: Counter::default(),
            audit_failures: Counter::default(),
        }
    }
}

/// The Parquet rollups and SQL.
#[derive(Debug)]
pub struct RollupMetrics {
    pub watermark: Gauge,
    pub lag_events: Gauge,
    /// 1 while the rollup writer runs at normal priority, 0 at idle priority.
    pub normal_priority: Gauge,
    /// Times the rollup writer fell behind and was raised to normal priority.
    pub priority_raised: Counter,
    pub files: Gauge,
    pub bytes: Gauge,
    pub batches: Counter,
    pub rows: Counter,
    pub batch_seconds: Histogram,
    pub compactions: Counter,
    pub errors: Counter,
    pub queries: Counter,
    pub query_seconds: Histogram,
    pub refused_queries: Counter,
    pub failed_queries: Counter,
}

impl Default for RollupMetrics {
    fn default() -> Self {
        Self {
            watermark: Gauge::default(),
            lag_events: Gauge::default(),
            normal_priority: Gauge::default(),
            priority_raised: Counter::default(),
            files: Gauge::default(),
            bytes: Gauge::default(),
            batches: Counter::default(),
            rows: Counter::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            compactions: Counter::default(),
            errors: Counter::default(),
            queries: Counter::default(),
            query_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 18)),
            refused_queries: Counter::default(),
            failed_queries: Counter::default(),
        }
    }
}

/// Every metric of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    pub log: std::sync::Arc<LogMetrics>,
    pub index: std::sync::Arc<IndexMetrics>,
    pub rollup: std::sync::Arc<RollupMetrics>,
    pub replication: std::sync::Arc<ReplicationMetrics>,
}

type SiteGauge = Family<Vec<(String, String)>, Gauge>;
type SiteGaugeF64 = Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>;

/// Log shipping: the regional shipper's figures and HQ's per-site ones,
/// refreshed whenever `/metrics` or `/v1/status` is read.
#[derive(Debug, Default)]
pub struct ReplicationMetrics {
    pub shipping_cursor: Gauge,
    pub shipping_lag_events: Gauge,
    pub shipping_lag_bytes: Gauge,
    pub shipping_lag_seconds: Gauge<f64, AtomicU64>,
    pub shipping_alarm: Gauge,
    pub shipping_shipped_events: Gauge,
    pub replica_high_water: SiteGauge,
    pub replica_lag_events: SiteGauge,
    pub replica_lag_bytes: SiteGauge,
    pub replica_lag_seconds: SiteGaugeF64,
    pub replica_forks: SiteGauge,
    pub replica_index_watermark: SiteGauge,
    pub replica_index_consistent: SiteGauge,
    pub replica_rollup_watermark: SiteGauge,
}

impl ReplicationMetrics {
    pub fn set_shipping(&self, s: &crate::ship::shipper::ShippingStatus) {
        self.shipping_cursor.set(s.cursor as i64);
        self.shipping_lag_events.set(s.lag_events as i64);
        self.shipping_lag_bytes.set(s.lag_bytes as i64);
        self.shipping_lag_seconds.set(s.lag_seconds);
        self.shipping_alarm.set(i64::from(!s.alarms.is_empty()));
        self.shipping_shipped_events.set(s.shipped_events as i64);
    }

    pub fn set_replicas(&self, sites: &[crate::ship::SiteStatus]) {
        for s in sites {
            let l = vec![("site".to_string(), s.site.clone())];
            self.replica_high_water.get_or_create(&l).set(s.high_water as i64);
            self.replica_lag_events.get_or_create(&l).set(s.lag_events.unwrap_or(0) as i64);
            self.replica_lag_bytes.get_or_create(&l).set(s.lag_bytes.unwrap_or(0) as i64);
            self.replica_lag_seconds.get_or_create(&l).set(s.lag_seconds.unwrap_or(0.0));
            self.replica_forks.get_or_create(&l).set(s.forks as i64);
        }
    }

    /// HQ: how far a replicated site's index and rollups cover its replica
    /// log, and whether its index's last reconciliation and commit were good.
    pub fn set_replica_derived(&self, store: &crate::sites::SiteStore) {
        let l = vec![("site".to_string(), store.site.clone())];
        let ix = store.index.state();
        let healthy = ix.error.is_none() && ix.last_reconciliation.as_ref().is_none_or(|r| r.ok);
        self.replica_index_watermark.get_or_create(&l).set(ix.watermark as i64);
        self.replica_index_consistent.get_or_create(&l).set(i64::from(healthy));
        self.replica_rollup_watermark.get_or_create(&l).set(store.rollups.watermark().0 as i64);
    }
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
        let i = &self.index;
        r.register("log_head", "Offset after the last durable record", i.log_head.clone());
        r.register("index_watermark", "Offset after the last record the search index covers", i.watermark.clone());
        r.register(
            "index_docs",
            "Documents in the search index (equals the watermark when consistent)",
            i.docs.clone(),
        );
        r.register("index_lag_events", "Durable records not yet searchable", i.lag_events.clone());
        r.register("index_lag_seconds", "Age of the oldest record not yet searchable", i.lag_seconds.clone());
        r.register("index_commits", "Index commits", i.commits.clone());
        r.register("index_commit_seconds", "Time to commit the index and reload searchers", i.commit_seconds.clone());
        r.register("index_errors", "Indexer failures (it restarts from its last commit)", i.errors.clone());
        r.register("index_reconciliations", "Checks of the index against the log", i.reconciliations.clone());
        r.register(
            "index_reconcile_failures",
            "Checks that found the index not matching the log",
            i.reconcile_failures.clone(),
        );
        r.register(
            "index_consistent",
            "1 while the last check found the index matching the log, else 0",
            i.consistent.clone(),
        );
        r.register(
            "index_normal_priority",
            "1 while the indexer runs at normal priority (behind the log), 0 at idle priority",
            i.normal_priority.clone(),
        );
        r.register(
            "index_priority_raised",
            "Times the indexer fell behind and was raised to normal priority",
            i.priority_raised.clone(),
        );
        r.register("searches", "Searches answered", i.searches.clone());
        r.register("search_seconds", "Time to answer a search, bodies included", i.search_seconds.clone());
        r.register("transcripts", "Conversation transcripts answered", i.transcripts.clone());
        r.register(
            "rejected_queries",
            "Searches refused by a bound (length, clauses, expansion, deadline)",
            i.rejected_queries.clone(),
        );
        r.register("audit_records", "Records appended to the audit stream", i.audit_records.clone());
        r.register(
            "audit_failures",
            "Reads refused because their audit record could not be made durable",
            i.audit_failures.clone(),
        );
        let u = &self.rollup;
        r.register("rollup_watermark", "Offset after the last record in the Parquet rollups", u.watermark.clone());
        r.register(
            "rollup_lag_events",
            "Durable records not yet rolled up (SQL reads them from the log)",
            u.lag_events.clone(),
        );
        r.register(
            "rollup_normal_priority",
            "1 while the rollup writer runs at normal priority (behind the log), 0 at idle priority",
            u.normal_priority.clone(),
        );
        r.register(
            "rollup_priority_raised",
            "Times the rollup writer fell behind and was raised to normal priority",
            u.priority_raised.clone(),
        );
        r.register("rollup_files", "Parquet files in the rollup manifest", u.files.clone());
        r.register("rollup_bytes", "Bytes of the Parquet files in the manifest", u.bytes.clone());
        r.register("rollup_batches", "Batches rolled up", u.batches.clone());
        r.register("rollup_rows", "Rows written to Parquet (compactions not counted)", u.rows.clone());
        r.register("rollup_batch_seconds", "Time to roll up one batch", u.batch_seconds.clone());
        r.register("rollup_compactions", "Compactions of a day's small files", u.compactions.clone());
        r.register("rollup_errors", "Rollup failures (it retries from the manifest)", u.errors.clone());
        r.register("sql_queries", "SQL queries answered", u.queries.clone());
        r.register("sql_query_seconds", "Time to answer an SQL query", u.query_seconds.clone());
        r.register(
            "sql_refused_queries",
            "SQL refused before running (not read-only, too long, too busy)",
            u.refused_queries.clone(),
        );
        r.register(
            "sql_failed_queries",
            "SQL that failed while running (errors, limits, timeouts)",
            u.failed_queries.clone(),
        );
        let p = &self.replication;
        r.register(
            "shipping_cursor",
            "Regional: offset after the last record HQ acknowledged",
            p.shipping_cursor.clone(),
        );
        r.register("shipping_lag_events", "Regional: durable records not yet at HQ", p.shipping_lag_events.clone());
        r.register("shipping_lag_bytes", "Regional: stored block bytes not yet at HQ", p.shipping_lag_bytes.clone());
        r.register(
            "shipping_lag_seconds",
            "Regional: age of the oldest record not yet at HQ",
            p.shipping_lag_seconds.clone(),
        );
        r.register("shipping_alarm", "Regional: 1 while the backlog or a fork alarm is on", p.shipping_alarm.clone());
        r.register(
            "shipping_shipped_events",
            "Regional: records shipped since start",
            p.shipping_shipped_events.clone(),
        );
        r.register(
            "replica_high_water",
            "HQ: offset after the last record held, per site",
            p.replica_high_water.clone(),
        );
        r.register(
            "replica_lag_events",
            "HQ: records the site reported that HQ does not hold yet",
            p.replica_lag_events.clone(),
        );
        r.register(
            "replica_lag_bytes",
            "HQ: stored bytes the site reported it still has to ship",
            p.replica_lag_bytes.clone(),
        );
        r.register(
            "replica_lag_seconds",
            "HQ: while records are missing, seconds since the newest record held was received at the site",
            p.replica_lag_seconds.clone(),
        );
        r.register("replica_forks", "HQ: shipments refused as forks since start, per site", p.replica_forks.clone());
        r.register(
            "replica_index_watermark",
            "HQ: log offset below which a replicated site is indexed, per site",
            p.replica_index_watermark.clone(),
        );
        r.register(
            "replica_index_consistent",
            "HQ: 1 if a replicated site's index matched its replica at the last reconciliation and its last commit succeeded, per site",
            p.replica_index_consistent.clone(),
        );
        r.register(
            "replica_rollup_watermark",
            "HQ: log offset below which a replicated site is rolled up, per site",
            p.replica_rollup_watermark.clone(),
        );
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}
