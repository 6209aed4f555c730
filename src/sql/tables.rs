//! The tables SQL sees: `events` (Parquet rollups plus the log tail, with
//! bodies read from the log), and the views `conversations` and `daily_usage`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{MemTable, TableProvider, TableType, ViewTable};
use datafusion::execution::cache::cache_manager::FileStatisticsCache;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TableProviderFilterPushDown,
    TypeSignature, Volatility,
};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{col, SessionContext};
use verbatim_schema::Offset;

use crate::log::cache::BlockCache;
use crate::rollup::{events_batch, events_schema, Manifest};
use crate::sites::{SiteStore, Sites};

/// The `events` columns as scans produce them: the rollup schema with its
/// text columns as `Utf8View`, which the Parquet reader fills without a copy
/// per value and which grouping and comparisons take directly (DataFusion's
/// own default for Parquet).
pub fn scan_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let fields: Vec<Field> = events_schema()
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
                    _ => f.as_ref().clone(),
                })
                .collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// A manifest and the listing table of its files.
type Listing = (Arc<Manifest>, Arc<ListingTable>);

/// The stored columns of `events`: for every site, its rollup files, then
/// its log tail.
#[derive(Debug)]
pub struct EventsColumns {
    sites: Arc<Sites>,
    max_tail_events: u64,
    /// Per site, the listing table of the last manifest seen, rebuilt when it changes.
    listings: Mutex<HashMap<String, Listing>>,
}

impl EventsColumns {
    pub fn new(sites: Arc<Sites>, max_tail_events: u64) -> Self {
        Self { sites, max_tail_events, listings: Mutex::default() }
    }

    /// `stats` is the session's file statistics cache: without it the table
    /// recomputed every file's statistics from its Parquet footer on every
    /// query (an eighth of the planning of top 20 senders in a profile).
    /// Entries are checked
    /// against the file's size and modification time, and a rollup file is
    /// never rewritten in place.
    fn listing(
        &self,
        store: &SiteStore,
        m: &Arc<Manifest>,
        stats: Option<Arc<FileStatisticsCache>>,
    ) -> Result<Option<Arc<ListingTable>>> {
        if m.files.is_empty() {
            return Ok(None);
        }
        let mut cached = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, table)) = cached.get(&store.site) {
            if Arc::ptr_eq(seen, m) {
                return Ok(Some(table.clone()));
            }
        }
        let dir = store.rollups.dir();
        let urls = m
            .files
            .iter()
            .map(|f| ListingTableUrl::parse(dir.join(&f.path).to_string_lossy()))
            .collect::<Result<Vec<_>>>()?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config =
            ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(scan_schema());
        let table = Arc::new(ListingTable::try_new(config)?.with_cache(stats));
        cached.insert(store.site.clone(), (m.clone(), table.clone()));
        Ok(Some(table))
    }

    /// The records of `store` past its rollups' watermark, decoded from its log.
    fn tail(&self, store: &SiteStore, from: Offset) -> Result<MemTable> {
        let head = store.log.head();
        let n = head.0.saturating_sub(from.0);
        if n > self.max_tail_events {
            return Err(DataFusionError::External(
                format!(
                    "the rollups of site {} are {n} events behind its log (more than sql.max_tail_events = {}); \
                     retry when they have caught up",
                    store.site, self.max_tail_events
                )
                .into(),
            ));
        }
        let mut records = Vec::with_capacity(n as usize);
        for item in store.log.iter_from(from).take(n as usize) {
            records.push(item.map_err(|e| DataFusionError::External(Box::new(e)))?);
        }
        let rows: Vec<_> = records.iter().map(|(o, r)| (*o, r)).collect();
        let batch = events_batch(&rows).map_err(|e| DataFusionError::External(e.into()))?;
        let columns = batch
            .columns()
            .iter()
            .zip(scan_schema().fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(scan_schema(), columns)?;
        MemTable::try_new(scan_schema(), vec![vec![batch]])
    }
}

#[async_trait]
impl TableProvider for EventsColumns {
    fn schema(&self) -> SchemaRef {
        scan_schema()
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
        let mut parts: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        for store in self.sites.all() {
            // One snapshot per site: the files of this manifest, then exactly the records after it.
            let m = store.rollups.manifest();
            if let Some(table) =
                self.listing(&store, &m, state.runtime_env().cache_manager.get_file_statistic_cache())?
            {
                parts.push(table.scan(state, projection, filters, limit).await?);
            }
            let tail = self.tail(&store, Offset(m.watermark))?;
            parts.push(tail.scan(state, projection, filters, limit).await?);
        }
        // Never empty: every site, the own one at least, adds its log tail.
        UnionExec::try_new(parts)
    }
}

/// `log_body(site, offset)`: the body of the record at `offset` of `site`'s
/// log. A site this server holds no log of reads as NULL — except on a
/// server without replicas, where every row is its own log's.
#[derive(Debug)]
pub struct LogBody {
    sites: Arc<Sites>,
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
    pub fn new(sites: Arc<Sites>, blocks: Arc<BlockCache>) -> Self {
        let signature = Signature::one_of(
            vec![
                TypeSignature::Exact(vec![DataType::Utf8, DataType::Int64]),
                TypeSignature::Exact(vec![DataType::Utf8View, DataType::Int64]),
            ],
            Volatility::Stable,
        );
        Self { sites, blocks, signature }
    }

    fn store(&self, site: &str) -> Option<Arc<SiteStore>> {
        match self.sites.get(site) {
            Some(s) => Some(s),
            None if !self.sites.has_replicas() => Some(self.sites.own().clone()),
            None => None,
        }
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
        let n = args.number_rows;
        let sites = arrow::compute::cast(&args.args[0].clone().into_array(n)?, &DataType::Utf8)?;
        let sites = sites
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DataFusionError::Internal("log_body takes a VARCHAR site".into()))?;
        let offsets = args.args[1].clone().into_array(n)?;
        let offsets = offsets
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("log_body takes a BIGINT offset".into()))?;
        // Rows grouped by site, each site's offsets read in one pass.
        let mut wanted: HashMap<&str, Vec<(usize, Offset)>> = HashMap::new();
        for i in 0..n {
            if sites.is_valid(i) && offsets.is_valid(i) && offsets.value(i) >= 0 {
                wanted.entry(sites.value(i)).or_default().push((i, Offset(offsets.value(i) as u64)));
            }
        }
        let mut bodies: Vec<Option<String>> = vec![None; n];
        for (site, rows) in wanted {
            let Some(store) = self.store(site) else { continue };
            let head = store.log.head();
            let rows: Vec<(usize, Offset)> = rows.into_iter().filter(|(_, o)| *o < head).collect();
            let offsets: Vec<Offset> = rows.iter().map(|(_, o)| *o).collect();
            let records =
                self.blocks.records(&store.log, &offsets).map_err(|e| DataFusionError::External(Box::new(e)))?;
            for ((i, _), r) in rows.into_iter().zip(records) {
                bodies[i] = Some(r.event.body);
            }
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(bodies)) as ArrayRef))
    }
}

/// `conversations`: one row per conversation, from every event in it. Ids
/// are per site, so a conversation is (site, id).
pub const CONVERSATIONS_VIEW: &str = "CREATE VIEW conversations AS
SELECT conversation_id AS id,
       site,
       min(network) AS network,
       min(channel) AS channel,
       array_sort(array_distinct(flatten(array_agg(array_prepend(sender, recipients))))) AS participants,
       min(ts) AS started_at,
       max(ts) AS ended_at,
       count(*) AS events,
       sum(body_len) AS bytes
FROM events
WHERE conversation_id IS NOT NULL
GROUP BY site, conversation_id";

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
    sites: Arc<Sites>,
    blocks: Arc<BlockCache>,
    max_tail_events: u64,
) -> anyhow::Result<()> {
    let columns = Arc::new(EventsColumns::new(sites.clone(), max_tail_events));
    let body = ScalarUDF::from(LogBody::new(sites, blocks));
    let mut exprs: Vec<Expr> = events_schema().fields().iter().map(|f| col(format!("\"{}\"", f.name()))).collect();
    exprs.push(body.call(vec![col("site"), col("offset")]).alias("body"));
    let plan = ctx.read_table(columns)?.select(exprs)?.into_unoptimized_plan();
    ctx.register_table("events", Arc::new(ViewTable::new(plan, None)))?;
    futures::executor::block_on(async {
        ctx.sql(CONVERSATIONS_VIEW).await?.collect().await?;
        ctx.sql(DAILY_USAGE_VIEW).await?.collect().await?;
        Ok::<_, DataFusionError>(())
    })?;
    Ok(())
}
