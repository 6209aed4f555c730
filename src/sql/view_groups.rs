//! `GROUP BY` one text column, with each value's group found by where its
//! bytes are rather than by what they say.
//!
//! The Parquet reader fills a `Utf8View` column from a dictionary-encoded
//! page without copying: every row's view points into the row group's one
//! dictionary buffer, so equal senders in a row group have equal views.
//! DataFusion's partial aggregate still hashes and compares every row's
//! string (over half of "top 20 senders" in a profile: most senders are
//! longer than the 12 bytes a view holds inline). [`ViewGroupedPartialExec`]
//! replaces that partial aggregate: it keys each row by its view (a value of
//! up to 12 bytes is inline in it) or by the address and length of its bytes,
//! and hashes the text only the first time a key is seen. The buffers the
//! keys point into are held while the keys are, so an address can never be
//! reused for other bytes. The final aggregate above it is DataFusion's own,
//! fed the same columns it would get from DataFusion's partial aggregate.
//!
//! [`ViewGroupedAggregateRule`] makes the swap only where the result cannot
//! differ: a partial aggregate of one `Utf8View` group expression, unordered
//! input, no grouping sets, no limit or dynamic filter, and aggregates that
//! have a groups accumulator and no `ORDER BY` of their own.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringViewArray, StringViewBuilder};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{internal_err, DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PlanProperties};
use futures::StreamExt;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Past this many bytes of held buffers, or this many keys, the key cache
/// starts afresh (a page that is not dictionary-encoded brings new buffers
/// with every batch).
const MAX_HELD_BYTES: usize = 32 << 20;
const MAX_KEYS: usize = 1 << 20;

/// Swaps eligible partial aggregates for [`ViewGroupedPartialExec`].
#[derive(Debug, Default)]
pub struct ViewGroupedAggregateRule;

impl PhysicalOptimizerRule for ViewGroupedAggregateRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|plan| {
            Ok(match ViewGroupedPartialExec::try_new(&plan)? {
                Some(exec) => Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(plan),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "view_grouped_partial_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A partial aggregate grouped by one `Utf8View` expression. It holds the
/// [`AggregateExec`] it stands for, whose expressions, schema and properties
/// it uses as they are.
#[derive(Debug)]
pub struct ViewGroupedPartialExec {
    agg: Arc<dyn ExecutionPlan>,
    metrics: ExecutionPlanMetricsSet,
}

impl ViewGroupedPartialExec {
    /// The replacement for `plan`, if it is an aggregate this can stand for.
    pub fn try_new(plan: &Arc<dyn ExecutionPlan>) -> Result<Option<Self>> {
        let Some(agg) = plan.downcast_ref::<AggregateExec>() else {
            return Ok(None);
        };
        let group = agg.group_expr();
        let eligible = *agg.mode() == AggregateMode::Partial
            && !group.has_grouping_set()
            && group.expr().len() == 1
            && group.expr()[0].0.data_type(&agg.input_schema())? == DataType::Utf8View
            && agg.limit_options().is_none()
            && agg.dynamic_expressions_produced().is_empty()
            && *agg.input_order_mode() == InputOrderMode::Linear
            && agg.aggr_expr().iter().all(|a| a.groups_accumulator_supported() && a.order_bys().is_empty());
        Ok(eligible.then(|| Self { agg: plan.clone(), metrics: ExecutionPlanMetricsSet::new() }))
    }

    fn agg(&self) -> &AggregateExec {
        self.agg.downcast_ref::<AggregateExec>().expect("built from an AggregateExec")
    }
}

impl DisplayAs for ViewGroupedPartialExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let agg = self.agg();
        let aggrs: Vec<&str> = agg.aggr_expr().iter().map(|a| a.name()).collect();
        write!(f, "ViewGroupedPartialExec: gby=[{}], aggr=[{}]", agg.group_expr().expr()[0].1, aggrs.join(", "))
    }
}

impl ExecutionPlan for ViewGroupedPartialExec {
    fn name(&self) -> &str {
        "ViewGroupedPartialExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.agg.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.agg().input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.agg.apply_expressions(f)
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let agg = self.agg.clone().with_new_children(children)?;
        match Self::try_new(&agg)? {
            Some(exec) => Ok(Arc::new(exec)),
            None => Ok(agg),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let agg = self.agg();
        let input = agg.input().execute(partition, context.clone())?;
        let reservation =
            MemoryConsumer::new(format!("ViewGroupedPartialExec[{partition}]")).register(context.memory_pool());
        let state = Grouping {
            group: agg.group_expr().expr()[0].0.clone(),
            args: agg.aggr_expr().iter().map(|a| a.expressions()).collect(),
            filters: agg.filter_expr().to_vec(),
            accumulators: agg.aggr_expr().iter().map(|a| a.create_groups_accumulator()).collect::<Result<_>>()?,
            groups: Groups::default(),
            schema: agg.schema(),
            reservation,
            metrics: BaselineMetrics::new(&self.metrics, partition),
        };
        let stream = futures::stream::try_unfold((Some(state), input), |(state, mut input)| async move {
            let Some(mut st) = state else { return Ok(None) };
            while let Some(batch) = input.next().await.transpose()? {
                st.update(&batch)?;
                // Under memory pressure a partial aggregate hands on what it
                // has and starts again: the final aggregate merges them.
                if st.reservation.try_resize(st.size()).is_err() {
                    let out = st.emit()?;
                    return Ok(Some((out, (Some(st), input))));
                }
            }
            let out = st.emit()?;
            Ok(Some((out, (None, input))))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(agg.schema(), stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One partition's groups and accumulators.
struct Grouping {
    group: Arc<dyn PhysicalExpr>,
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    groups: Groups,
    schema: SchemaRef,
    reservation: MemoryReservation,
    metrics: BaselineMetrics,
}

impl Grouping {
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let _timer = self.metrics.elapsed_compute().timer();
        let rows = batch.num_rows();
        let keys = self.group.evaluate(batch)?.into_array(rows)?;
        let Some(keys) = keys.as_string_view_opt() else {
            return internal_err!("ViewGroupedPartialExec grouped by a {} column", keys.data_type());
        };
        self.groups.assign(keys);
        let (indices, total) = (&self.groups.indices, self.groups.len());
        for ((acc, args), filter) in self.accumulators.iter_mut().zip(&self.args).zip(&self.filters) {
            let values = args.iter().map(|e| e.evaluate(batch)?.into_array(rows)).collect::<Result<Vec<ArrayRef>>>()?;
            let filter: Option<BooleanArray> = match filter {
                Some(f) => Some(f.evaluate(batch)?.into_array(rows)?.as_boolean().clone()),
                None => None,
            };
            acc.update_batch(&values, indices, filter.as_ref(), total)?;
        }
        Ok(())
    }

    fn size(&self) -> usize {
        self.groups.size() + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }

    /// Every group so far with its accumulators' states, as the partial
    /// aggregate's schema has them; the groups start afresh.
    fn emit(&mut self) -> Result<RecordBatch> {
        let _timer = self.metrics.elapsed_compute().timer();
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.groups.take()?)];
        for acc in &mut self.accumulators {
            columns.extend(acc.state(EmitTo::All)?);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.reservation.resize(self.size());
        self.metrics.record_output(batch.num_rows());
        Ok(batch)
    }
}

/// Group ids by value, with a cache of group ids by key (a view, or where
/// its bytes are).
#[derive(Default)]
struct Groups {
    /// The group of each value seen, in the order first seen.
    by_value: FastMap<Box<[u8]>, usize>,
    null: Option<usize>,
    value_bytes: usize,
    /// Group by key: a view of at most 12 bytes (its value is inline), or
    /// the address of a longer value's bytes and its length (`addr << 64 |
    /// len`, whose low 32 bits exceed 12 and so never equal a short view).
    by_key: FastMap<u128, usize>,
    /// The buffers `by_key`'s addresses point into, held so that none of
    /// their memory can be reused while it is a key.
    held: Vec<Buffer>,
    held_bytes: usize,
    indices: Vec<usize>,
}

impl Groups {
    /// Groups so far: every value seen, and NULL if it was.
    fn len(&self) -> usize {
        self.by_value.len() + usize::from(self.null.is_some())
    }

    fn size(&self) -> usize {
        let entry = std::mem::size_of::<(Box<[u8]>, usize)>() + 1;
        self.by_value.capacity() * entry
            + self.value_bytes
            + self.by_key.capacity() * (std::mem::size_of::<(u128, usize)>() + 1)
            + self.indices.capacity() * std::mem::size_of::<usize>()
            + self.held_bytes
    }

    /// Holds `keys`' buffers, starting the key cache afresh unless it holds
    /// one of them already (the batches of one row group share its
    /// dictionary buffer), or they have none (every value inline), and it
    /// is within its bounds.
    fn hold(&mut self, keys: &StringViewArray) {
        let buffers = keys.data_buffers();
        let shared = buffers.is_empty() || buffers.iter().any(|b| self.held.iter().any(|h| h.as_ptr() == b.as_ptr()));
        if !shared || self.held_bytes > MAX_HELD_BYTES || self.by_key.len() > MAX_KEYS {
            self.by_key.clear();
            self.held.clear();
            self.held_bytes = 0;
        }
        for b in keys.data_buffers() {
            if !self.held.iter().any(|h| h.as_ptr() == b.as_ptr()) {
                self.held_bytes += b.capacity();
                self.held.push(b.clone());
            }
        }
    }

    /// Sets `indices` to the group of every row of `keys`, adding groups for
    /// new values.
    fn assign(&mut self, keys: &StringViewArray) {
        self.hold(keys);
        let addrs: Vec<usize> = keys.data_buffers().iter().map(|b| b.as_ptr() as usize).collect();
        let views = keys.views();
        let mut indices = std::mem::take(&mut self.indices);
        indices.clear();
        indices.reserve(views.len());
        for (row, &view) in views.iter().enumerate() {
            if keys.is_null(row) {
                let g = match self.null {
                    Some(g) => g,
                    None => *self.null.insert(self.len()),
                };
                indices.push(g);
                continue;
            }
            let len = view as u32;
            let key = if len <= 12 {
                view
            } else {
                let buffer = (view >> 64) as u32 as usize;
                let offset = (view >> 96) as u32 as usize;
                ((addrs[buffer] + offset) as u128) << 64 | len as u128
            };
            let g = match self.by_key.get(&key) {
                Some(&g) => g,
                None => {
                    let value = keys.value(row).as_bytes();
                    let g = match self.by_value.get(value) {
                        Some(&g) => g,
                        None => {
                            let g = self.len();
                            self.by_value.insert(value.into(), g);
                            self.value_bytes += value.len();
                            g
                        }
                    };
                    self.by_key.insert(key, g);
                    g
                }
            };
            indices.push(g);
        }
        self.indices = indices;
    }

    /// The groups' values in group order; the groups start afresh.
    fn take(&mut self) -> Result<StringViewArray> {
        let count = self.len();
        let mut values: Vec<Option<Box<[u8]>>> = vec![None; count];
        for (value, g) in self.by_value.drain() {
            values[g] = Some(value);
        }
        let mut out = StringViewBuilder::with_capacity(count);
        for (g, value) in values.iter().enumerate() {
            match value {
                Some(v) => out.append_value(std::str::from_utf8(v).map_err(|e| DataFusionError::External(e.into()))?),
                None if self.null == Some(g) => out.append_null(),
                None => return internal_err!("group {g} has no value"),
            }
        }
        *self = Self { indices: std::mem::take(&mut self.indices), ..Self::default() };
        Ok(out.finish())
    }
}

#[cfg(test)]
#[path = "view_groups_tests.rs"]
mod tests;
