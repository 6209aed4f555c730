//! The tables SQL sees: `events` (Parquet rollups plus the log tail, with
//! bodies read from the log), and the views `conversations` and `daily_usage`.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, Int64Array, StringBuilder};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{project_schema, DataFusionError, Result};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{MemTable, TableProvider, TableType, ViewTable};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TableProviderFilterPushDown,
    Volatility,
};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{col, SessionContext};
use verbatim_schema::Offset;

use crate::log::cache::BlockCache;
use crate::log::LogReader;
use crate::rollup::{events_batch, events_schema, Manifest, Rollups};

/// The stored columns of `events`: the rollup files, then the log tail.
#[derive(Debug)]
pub struct EventsColumns {
    rollups: Arc<Rollups>,
    log: LogReader,
    max_tail_events: u64,
    /// The listing table of the last manifest seen, rebuilt when it changes.
    listing: Mutex<Option<(Arc<Manifest>, Arc<ListingTable>)>>,
}

impl EventsColumns {
    pub fn new(rollups: Arc<Rollups>, log: LogReader, max_tail_events: u64) -> Self {
        Self { rollups, log, max_tail_events, listing: Mutex::new(None) }
    }

    fn listing(&self, m: &Arc<Manifest>) -> Result<Option<Arc<ListingTable>>> {
        if m.files.is_empty() {
            return Ok(None);
        }
        let mut cached = self.listing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, table)) = cached.as_ref() {
            if Arc::ptr_eq(seen, m) {
                return Ok(Some(table.clone()));
            }
        }
        let dir = self.rollups.dir();
        let urls = m
            .files
            .iter()
            .map(|f| ListingTableUrl::parse(dir.join(&f.path).to_string_lossy()))
            .collect::<Result<Vec<_>>>()?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config =
            ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(events_schema());
        let table = Arc::new(ListingTable::try_new(config)?);
        *cached = Some((m.clone(), table.clone()));
        Ok(Some(table))
    }

    /// The records past the rollups' watermark, decoded from the log.
    fn tail(&self, from: Offset) -> Result<MemTable> {
        let head = self.log.head();
        let n = head.0.saturating_sub(from.0);
        if n > self.max_tail_events {
            return Err(DataFusionError::External(
                format!(
                    "the rollups are {n} events behind the log (more than sql.max_tail_events = {}); \
                     retry when they have caught up",
                    self.max_tail_events
                )
                .into(),
            ));
        }
        let mut records = Vec::with_capacity(n as usize);
        for item in self.log.iter_from(from).take(n as usize) {
            records.push(item.map_err(|e| DataFusionError::External(Box::new(e)))?);
        }
        let rows: Vec<_> = records.iter().map(|(o, r)| (*o, r)).collect();
        let batch = events_batch(&rows).map_err(|e| DataFusionError::External(e.into()))?;
        MemTable::try_new(events_schema(), vec![vec![batch]])
    }
}

#[async_trait]
impl TableProvider for EventsColumns {
    fn schema(&self) -> SchemaRef {
        events_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // The Parquet scan prunes with them; a filter above re-checks every row.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // One snapshot: the files of this manifest, then exactly the records after it.
        let m = self.rollups.manifest();
        let mut parts: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if let Some(table) = self.listing(&m)? {
            parts.push(table.scan(state, projection, filters, limit).await?);
        }
        let tail = self.tail(Offset(m.watermark))?;
        parts.push(tail.scan(state, projection, filters, limit).await?);
        match parts.len() {
            0 => Ok(Arc::new(EmptyExec::new(project_schema(&events_schema(), projection)?))),
            _ => UnionExec::try_new(parts),
        }
    }
}

/// `log_body(offset)`: the body of the record at `offset`, read from the log.
#[derive(Debug)]
pub struct LogBody {
    log: LogReader,
    blocks: Arc<BlockCache>,
    signature: Signature,
}

impl PartialEq for LogBody {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.blocks, &other.blocks)
    }
}

impl Eq for LogBody {}

impl Hash for LogBody {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "log_body".hash(state);
    }
}

impl LogBody {
    pub fn new(log: LogReader, blocks: Arc<BlockCache>) -> Self {
        Self { log, blocks, signature: Signature::exact(vec![DataType::Int64], Volatility::Stable) }
    }
}

impl ScalarUDFImpl for LogBody {
    fn name(&self) -> &str {
        "log_body"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let offsets = args.args[0].clone().into_array(args.number_rows)?;
        let offsets = offsets
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("log_body takes a BIGINT offset".into()))?;
        let head = self.log.head().0;
        let wanted: Vec<Offset> =
            offsets.iter().flatten().filter(|&o| o >= 0 && (o as u64) < head).map(|o| Offset(o as u64)).collect();
        let records = self.blocks.records(&self.log, &wanted).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut bodies = records.into_iter();
        let mut out = StringBuilder::with_capacity(offsets.len(), 0);
        for o in offsets.iter() {
            match o {
                Some(o) if o >= 0 && (o as u64) < head => match bodies.next() {
                    Some(r) => out.append_value(&r.event.body),
                    None => out.append_null(),
                },
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

/// `conversations`: one row per conversation id, from every event in it.
pub const CONVERSATIONS_VIEW: &str = "CREATE VIEW conversations AS
SELECT conversation_id AS id,
       min(site) AS site,
       min(network) AS network,
       min(channel) AS channel,
       array_sort(array_distinct(flatten(array_agg(array_prepend(sender, recipients))))) AS participants,
       min(ts) AS started_at,
       max(ts) AS ended_at,
       count(*) AS events,
       sum(body_len) AS bytes
FROM events
WHERE conversation_id IS NOT NULL
GROUP BY conversation_id";

/// `daily_usage`: per UTC day, site, network and participant (sender or
/// recipient), the conversations they were in, the messages and body bytes.
pub const DAILY_USAGE_VIEW: &str = "CREATE VIEW daily_usage AS
SELECT CAST(date_trunc('day', ts) AS DATE) AS day,
       site,
       network,
       participant,
       count(DISTINCT conversation_id) AS conversations,
       count(*) FILTER (WHERE kind = 'message') AS messages,
       sum(body_len) AS bytes
FROM (SELECT ts, site, network, conversation_id, kind, body_len,
             unnest(array_prepend(sender, recipients)) AS participant
      FROM events)
GROUP BY 1, 2, 3, 4";

/// Registers `events` and the views on `ctx`.
pub fn register(
    ctx: &SessionContext,
    rollups: Arc<Rollups>,
    log: LogReader,
    blocks: Arc<BlockCache>,
    max_tail_events: u64,
) -> anyhow::Result<()> {
    let columns = Arc::new(EventsColumns::new(rollups, log.clone(), max_tail_events));
    let body = ScalarUDF::from(LogBody::new(log, blocks));
    let mut exprs: Vec<Expr> = events_schema().fields().iter().map(|f| col(format!("\"{}\"", f.name()))).collect();
    exprs.push(body.call(vec![col("offset")]).alias("body"));
    let plan = ctx.read_table(columns)?.select(exprs)?.into_unoptimized_plan();
    ctx.register_table("events", Arc::new(ViewTable::new(plan, None)))?;
    futures::executor::block_on(async {
        ctx.sql(CONVERSATIONS_VIEW).await?.collect().await?;
        ctx.sql(DAILY_USAGE_VIEW).await?.collect().await?;
        Ok::<_, DataFusionError>(())
    })?;
    Ok(())
}
