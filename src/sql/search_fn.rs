//! `search('query' [, limit])`: the full-text index as a table, for joins.
//! Rows: `site`, `offset`, `ts`, `conversation_id`, `participants` (sender
//! first, then recipients), `score`, best first. The query is the search
//! syntax of `GET /v1/search` with the same bounds; it covers every site's
//! index up to its watermark (on HQ, every replicated site too). Join
//! `events` on (site, offset).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{plan_err, DataFusionError, Result, ScalarValue};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::logical_expr::Expr;
use verbatim_schema::Offset;

use crate::index::search::{search_sites, Filters, SearchConfig, SearchRequest, Sort};
use crate::log::cache::BlockCache;
use crate::log::reader::views;
use crate::sites::{blocks, SiteStore, Sites};

#[derive(Debug)]
pub struct SearchFunction {
    pub sites: Arc<Sites>,
    pub config: SearchConfig,
    pub blocks: Arc<BlockCache>,
    /// Most hits one call returns (`sql.max_rows`).
    pub max_hits: usize,
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("site", DataType::Utf8, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), false),
        Field::new("conversation_id", DataType::Int64, true),
        Field::new("participants", DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))), false),
        Field::new("score", DataType::Float32, false),
    ]))
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

impl SearchFunction {
    fn hits(&self, stores: &[Arc<SiteStore>], q: &str, limit: usize) -> Result<Vec<(usize, Offset, f32)>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = (limit - out.len()).min(self.config.max_limit.max(1));
            let req = SearchRequest {
                q: q.to_string(),
                filters: Filters::default(),
                sort: Sort::Relevance,
                limit: page,
                cursor: cursor.take(),
                // Relevance counts every match anyway.
                exact_total: true,
            };
            let found = search_sites(stores, &self.config, &req)
                .map_err(|e| DataFusionError::Plan(format!("search(): {e}")))?;
            out.extend(found.hits.iter().map(|h| (h.store, h.found.offset, h.found.score.unwrap_or(0.0))));
            match found.next_cursor {
                Some(c) if out.len() < limit => cursor = Some(c),
                _ => return Ok(out),
            }
        }
    }
}

impl TableFunctionImpl for SearchFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let usage = "search() takes the query as a string literal and an optional limit: search('quick fox', 100)";
        let Some(q) = exprs.first().and_then(literal).and_then(|v| v.try_as_str().flatten()) else {
            return plan_err!("{usage}");
        };
        let limit = match exprs.get(1).map(|e| literal(e).and_then(|v| v.cast_to(&DataType::Int64).ok())) {
            None => self.max_hits,
            Some(Some(ScalarValue::Int64(Some(n)))) if n > 0 => (n as usize).min(self.max_hits),
            Some(_) => return plan_err!("{usage}"),
        };
        if exprs.len() > 2 {
            return plan_err!("{usage}");
        }
        let stores = self.sites.all();
        let hits = self.hits(&stores, q, limit)?;
        let at: Vec<(usize, Offset)> = hits.iter().map(|(i, o, _)| (*i, *o)).collect();
        let external = |e| DataFusionError::External(Box::new(e));
        let held = blocks(&stores, &self.blocks, &at).map_err(external)?;
        let records = views(&held).map_err(external)?;
        let mut site = StringBuilder::new();
        let mut offset = Int64Builder::new();
        let mut ts = TimestampNanosecondBuilder::new().with_timezone("UTC");
        let mut conversation = Int64Builder::new();
        let mut participants = ListBuilder::new(StringBuilder::new());
        let mut score = Float32Builder::new();
        for ((_, o, s), r) in hits.iter().zip(&records) {
            // The record's own site, as `events.site` shows it.
            site.append_value(r.site);
            offset.append_value(o.0 as i64);
            ts.append_value(r.ts.instant.0);
            conversation.append_option(r.conversation_id.map(|c| c.0 as i64));
            participants.values().append_value(r.from);
            for t in &r.to {
                participants.values().append_value(t);
            }
            participants.append(true);
            score.append_value(*s);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(site.finish()),
            Arc::new(offset.finish()),
            Arc::new(ts.finish()),
            Arc::new(conversation.finish()),
            Arc::new(participants.finish()),
            Arc::new(score.finish()),
        ];
        let batch = RecordBatch::try_new(schema(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema(), vec![vec![batch]])?))
    }
}
