//! SQL for auditors: DataFusion over the Parquet rollups and the log tail.
//!
//! Tables (schema `public` of catalog `verbatim`):
//! - `events`: one row per record. Rolled-up rows come from Parquet, the rest
//!   (watermark..head) are decoded from the log at scan time, so an
//!   acknowledged event is visible at once. `body` is read from the log by
//!   offset, only when a query uses it (ADR 0005).
//! - `conversations` and `daily_usage`: views over `events`.
//!
//! Only read-only statements run (a query, `EXPLAIN` of one, `SHOW TABLES`,
//! `SHOW COLUMNS`); everything else is refused before planning. Each query
//! runs on the SQL runtime (not the one serving ingest) under a deadline, a
//! memory pool, a cap on concurrent queries and a cap on rows returned.

pub mod date_trunc;
pub mod format;
pub mod reports;
pub mod search_fn;
pub mod tables;
pub mod view_groups;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::audit::{Audit, AuditEntry};
use crate::auth::Principal;

use crate::index::search::SearchConfig;
use crate::log::cache::BlockCache;

use crate::metrics::{IndexMetrics, RollupMetrics};
use crate::sites::Sites;

/// `[sql]`: the bounds every query runs under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// Longest SQL text accepted, in bytes.
    pub max_query_bytes: usize,
    /// Deepest nesting of expressions and subqueries the parser accepts.
    pub max_nesting: usize,
    /// A query still running after this is cancelled.
    pub timeout_ms: u64,
    /// Memory all running queries may hold together (sorts, joins,
    /// aggregations); a query that needs more fails.
    pub memory_limit_mb: usize,
    /// Queries running at once; more are refused with 429.
    pub max_concurrent: usize,
    /// Rows one answer may hold; a query returning more fails.
    pub max_rows: usize,
    /// Most not-yet-rolled-up events a query reads from the log; past it
    /// queries are refused with 503 until the rollups catch up.
    pub max_tail_events: u64,
    /// Threads of the SQL runtime and partitions of a plan.
    pub threads: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            max_query_bytes: 64 * 1024,
            max_nesting: 64,
            timeout_ms: 30_000,
            memory_limit_mb: 1024,
            max_concurrent: 4,
            max_rows: 100_000,
            max_tail_events: 1_000_000,
            threads: 2,
        }
    }
}

/// Why a query got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlError {
    /// Refused before running: not read-only, too long, too deep, unparsable (400).
    Refused(String),
    /// Failed while planning or running, or went past a bound (400).
    Failed(String),
    /// Too many queries running (429).
    Busy(String),
    /// Cannot answer now: rollups far behind, audit not durable (503).
    Unavailable(String),
}

impl SqlError {
    pub fn message(&self) -> &str {
        match self {
            SqlError::Refused(m) | SqlError::Failed(m) | SqlError::Busy(m) | SqlError::Unavailable(m) => m,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            SqlError::Refused(_) => "refused",
            SqlError::Failed(_) => "failed",
            SqlError::Busy(_) => "busy",
            SqlError::Unavailable(_) => "unavailable",
        }
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// A query's answer.
#[derive(Debug, Clone)]
pub struct SqlOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
}

/// The SQL engine of one server: one DataFusion context over the archive's
/// tables, and the runtime its queries run on.
pub struct SqlEngine {
    ctx: SessionContext,
    config: SqlConfig,
    permits: Arc<Semaphore>,
    runtime: Option<tokio::runtime::Runtime>,
    metrics: Arc<RollupMetrics>,
}

impl std::fmt::Debug for SqlEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlEngine").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Drop for SqlEngine {
    fn drop(&mut self) {
        // Dropping a runtime blocks; this one may be dropped inside another.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

pub const CATALOG: &str = "verbatim";
pub const SCHEMA: &str = "public";

impl SqlEngine {
    /// An engine over every site of `sites` (the own site; on HQ the replicated ones too).
    pub fn new(
        sites: Arc<Sites>,
        blocks: Arc<BlockCache>,
        search: SearchConfig,
        config: SqlConfig,
    ) -> anyhow::Result<Arc<Self>> {
        let runtime_env = RuntimeEnvBuilder::new()
            .with_memory_limit(config.memory_limit_mb.max(1) << 20, 1.0)
            // No spilling: a query that needs more memory than the pool fails
            // instead of filling the disk the archive lives on.
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()?;
        let mut session = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_target_partitions(config.threads.max(1));
        session.options_mut().sql_parser.recursion_limit =
            datafusion::common::config::ConfigNonZeroUsize::try_new(config.max_nesting.max(8))?;
        let state = SessionStateBuilder::new()
            .with_config(session)
            .with_runtime_env(runtime_env)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(view_groups::ViewGroupedAggregateRule))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_udf(date_trunc::UtcDateTrunc::udf());
        let metrics = sites.own().rollups.metrics.clone();
        tables::register(&ctx, sites.clone(), blocks.clone(), config.max_tail_events)?;
        ctx.register_udtf(
            "search",
            Arc::new(search_fn::SearchFunction { sites, config: search, blocks, max_hits: config.max_rows }),
        );
        crate::pg::setup_catalog(&ctx)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("sql")
            .enable_all()
            .build()?;
        Ok(Arc::new(Self {
            ctx,
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            runtime: Some(runtime),
            metrics,
        }))
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    /// Runs `sql` under every bound.
    pub async fn run(&self, sql: &str) -> Result<SqlOutput, SqlError> {
        self.run_query(Query::Text(sql)).await
    }

    /// Runs `query` under every bound.
    pub async fn run_query(&self, query: Query<'_>) -> Result<SqlOutput, SqlError> {
        let t = Instant::now();
        let result = self.run_inner(query).await;
        match &result {
            Ok(_) => {
                self.metrics.queries.inc();
                self.metrics.query_seconds.observe(t.elapsed().as_secs_f64());
            }
            Err(SqlError::Refused(_) | SqlError::Busy(_)) => {
                self.metrics.refused_queries.inc();
            }
            Err(_) => {
                self.metrics.failed_queries.inc();
            }
        }
        result
    }

    async fn run_inner(&self, query: Query<'_>) -> Result<SqlOutput, SqlError> {
        let prepared = match query {
            Query::Text(sql) => {
                check_read_only(sql, &self.config)?;
                Prepared::Text(sql.to_string())
            }
            Query::Plan(plan) => {
                check_plan(&plan)?;
                Prepared::Plan(plan)
            }
        };
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            SqlError::Busy(format!(
                "{} queries are running (sql.max_concurrent); retry shortly",
                self.config.max_concurrent
            ))
        })?;
        let ctx = self.ctx.clone();
        let max_rows = self.config.max_rows;
        let runtime = self.runtime.as_ref().ok_or_else(|| SqlError::Unavailable("the SQL engine is stopped".into()))?;
        let task = runtime.spawn(async move {
            let _permit = permit;
            execute(&ctx, prepared, max_rows).await
        });
        let abort = task.abort_handle();
        let timeout = Duration::from_millis(self.config.timeout_ms.max(1));
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(SqlError::Failed(format!("the query stopped: {e}"))),
            Err(_) => {
                abort.abort();
                Err(SqlError::Failed(format!(
                    "the query ran past {} ms (sql.timeout_ms) and was cancelled",
                    self.config.timeout_ms
                )))
            }
        }
    }

    /// Runs `sql` for `who` and appends the audit record (who, SQL text,
    /// outcome, rows returned) before anything is returned. If the record
    /// cannot be made durable the query fails, whatever its outcome.
    /// `plan`, when given, is `sql` already planned (the Postgres extended
    /// protocol); `sql` is then only what the audit record shows.
    pub async fn run_audited(
        &self,
        audit: &Audit,
        counts: &IndexMetrics,
        who: &Principal,
        sql: &str,
        plan: Option<LogicalPlan>,
        via: &str,
    ) -> Result<SqlOutput, SqlError> {
        let result = match plan {
            Some(plan) => self.run_query(Query::Plan(plan)).await,
            None => self.run(sql).await,
        };
        let (outcome, error, rows) = match &result {
            Ok(o) => ("ok", None, o.rows as u64),
            Err(e) => (e.outcome(), Some(e.message().to_string()), 0),
        };
        let entry = AuditEntry {
            endpoint: "sql".into(),
            query: json!({"sql": sql, "via": via, "outcome": outcome, "error": error}),
            results: rows,
        };
        match audit.record(who, entry).await {
            Ok(_) => {
                counts.audit_records.inc();
                result
            }
            Err(e) => {
                counts.audit_failures.inc();
                tracing::error!("an SQL query was refused: its audit record could not be written: {e}");
                Err(SqlError::Unavailable(format!(
                    "the audit record could not be made durable ({e}); no answer is given without it"
                )))
            }
        }
    }
}

fn df_error(e: datafusion::error::DataFusionError) -> SqlError {
    use datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::ResourcesExhausted(m) => {
            SqlError::Failed(format!("the query needs more memory than sql.memory_limit_mb allows: {m}"))
        }
        E::Plan(m) | E::SQL(_, Some(m)) => SqlError::Failed(m.clone()),
        _ => SqlError::Failed(e.to_string()),
    }
}

/// A query as text, or already planned.
#[derive(Debug)]
pub enum Query<'a> {
    Text(&'a str),
    Plan(LogicalPlan),
}

enum Prepared {
    Text(String),
    Plan(LogicalPlan),
}

async fn execute(ctx: &SessionContext, query: Prepared, max_rows: usize) -> Result<SqlOutput, SqlError> {
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = match query {
        Prepared::Text(sql) => ctx.sql_with_options(&sql, options).await.map_err(df_error)?,
        Prepared::Plan(plan) => {
            options.verify_plan(&plan).map_err(|e| SqlError::Refused(e.strip_backtrace()))?;
            ctx.execute_logical_plan(plan).await.map_err(df_error)?
        }
    };
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(df_error)?;
    let mut batches = Vec::new();
    let mut rows = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(df_error)?;
        rows += batch.num_rows();
        if rows > max_rows {
            return Err(SqlError::Failed(format!(
                "the result has more than {max_rows} rows (sql.max_rows); add a LIMIT or aggregate"
            )));
        }
        if batch.num_rows() > 0 {
            batches.push(batch);
        }
    }
    Ok(SqlOutput { schema, batches, rows })
}

/// Refuses anything but one read-only statement, naming what it saw.
pub fn check_read_only(sql: &str, config: &SqlConfig) -> Result<(), SqlError> {
    if sql.len() > config.max_query_bytes {
        return Err(SqlError::Refused(format!(
            "the query is {} bytes; the limit is {} (sql.max_query_bytes)",
            sql.len(),
            config.max_query_bytes
        )));
    }
    let dialect = PostgreSqlDialect {};
    let statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .with_recursion_limit(config.max_nesting.max(8))
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| SqlError::Refused(format!("the query does not parse: {}", e.strip_backtrace())))?;
    match statements.len() {
        0 => return Err(SqlError::Refused("the query is empty".into())),
        1 => {}
        n => return Err(SqlError::Refused(format!("one statement per query, not {n}"))),
    }
    read_only(&statements[0])
}

/// Refuses a plan that is not a query.
fn check_plan(plan: &LogicalPlan) -> Result<(), SqlError> {
    match plan {
        LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_) | LogicalPlan::Statement(_) => {
            Err(SqlError::Refused(format!(
                "only read-only queries run here; {} is refused",
                plan.display().to_string().split(':').next().unwrap_or("this statement")
            )))
        }
        _ => Ok(()),
    }
}

/// Refuses anything but a read-only statement, as parsed by sqlparser.
pub fn check_statement(s: &Statement) -> Result<(), SqlError> {
    read_only(&DfStatement::Statement(Box::new(s.clone())))
}

fn read_only(s: &DfStatement) -> Result<(), SqlError> {
    let refuse = |what: &str| {
        Err(SqlError::Refused(format!(
            "only read-only queries run here (SELECT, WITH, VALUES, EXPLAIN, SHOW TABLES, SHOW COLUMNS); \
             {what} is refused"
        )))
    };
    match s {
        DfStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_) | Statement::ShowTables { .. } | Statement::ShowColumns { .. } => Ok(()),
            Statement::Explain { statement, .. } => read_only(&DfStatement::Statement(statement.clone())),
            other => refuse(&statement_name(other)),
        },
        DfStatement::Explain(e) => read_only(&e.statement),
        DfStatement::CreateExternalTable(_) => refuse("CREATE EXTERNAL TABLE"),
        DfStatement::CopyTo(_) => refuse("COPY"),
        DfStatement::Reset(_) => refuse("RESET"),
    }
}

/// The statement's leading keywords, for the message.
fn statement_name(s: &Statement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    let name = match words.as_slice() {
        [a, b] if ["CREATE", "DROP", "ALTER"].contains(&a.to_ascii_uppercase().as_str()) => format!("{a} {b}"),
        [a, ..] => a.to_string(),
        [] => "this statement".into(),
    };
    name.to_ascii_uppercase()
}

#[cfg(test)]
mod tests;
