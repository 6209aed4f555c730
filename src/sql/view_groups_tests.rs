use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use proptest::prelude::*;

use super::*;

/// Values of every kind the key cache tells apart: empty, inline (up to 12
/// bytes), exactly 12 and 13 bytes, long, multi-byte, and ones that share
/// their first four bytes (a long view's inline prefix).
const POOL: &[&str] = &[
    "",
    "bob",
    "twelve_bytes",
    "thirteen_byte",
    "alice.smith@bank.example",
    "alice.smith@bank.example.org",
    "alice.smyth@bank.example",
    "👩‍💻 on the rates desk",
    "NUL \u{0} inside a long sender",
];

fn rows() -> impl Strategy<Value = Vec<(Option<usize>, Option<i64>)>> {
    prop::collection::vec((prop::option::weighted(0.9, 0..POOL.len()), prop::option::weighted(0.8, -5i64..100)), 0..400)
}

fn batch(rows: &[(Option<usize>, Option<i64>)]) -> RecordBatch {
    let g: StringArray = rows.iter().map(|(g, _)| g.map(|i| POOL[i])).collect();
    let x: Int64Array = rows.iter().map(|(_, x)| *x).collect();
    let schema =
        Arc::new(Schema::new(vec![Field::new("g", DataType::Utf8, true), Field::new("x", DataType::Int64, true)]));
    RecordBatch::try_new(schema, vec![Arc::new(g), Arc::new(x)]).expect("batch")
}

/// `rows` as two dictionary-encoded Parquet files of small row groups.
fn write_parquet(dir: &std::path::Path, rows: &[(Option<usize>, Option<i64>)]) {
    let half = rows.len() / 2;
    for (i, part) in [&rows[..half], &rows[half..]].into_iter().enumerate() {
        let b = batch(part);
        let props =
            WriterProperties::builder().set_dictionary_enabled(true).set_max_row_group_row_count(Some(37)).build();
        let file = std::fs::File::create(dir.join(format!("part-{i}.parquet"))).expect("create");
        let mut w = ArrowWriter::try_new(file, b.schema(), Some(props)).expect("writer");
        w.write(&b).expect("write");
        w.close().expect("close");
    }
}

fn context(rule: bool, pool_bytes: Option<usize>) -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(2).with_batch_size(16);
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = pool_bytes {
        runtime = runtime.with_memory_pool(Arc::new(GreedyMemoryPool::new(bytes)));
    }
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime.build_arc().expect("runtime"))
        .with_default_features();
    if rule {
        state = state.with_physical_optimizer_rule(Arc::new(ViewGroupedAggregateRule));
    }
    SessionContext::new_with_state(state.build())
}

async fn register(ctx: &SessionContext, dir: &std::path::Path, rows: &[(Option<usize>, Option<i64>)]) {
    ctx.register_parquet("p", dir.to_string_lossy().as_ref(), ParquetReadOptions::default()).await.expect("parquet");
    // The same rows from memory, cast to Utf8View: no dictionary, every
    // batch its own buffers.
    let b = batch(rows);
    let g = arrow::compute::cast(b.column(0), &DataType::Utf8View).expect("cast");
    let schema =
        Arc::new(Schema::new(vec![Field::new("g", DataType::Utf8View, true), Field::new("x", DataType::Int64, true)]));
    let b = RecordBatch::try_new(schema.clone(), vec![g, b.column(1).clone()]).expect("batch");
    let parts: Vec<Vec<RecordBatch>> = (0..3)
        .map(|i| (0..b.num_rows()).skip(i * 7).step_by(21).map(|s| b.slice(s, 7.min(b.num_rows() - s))).collect())
        .collect();
    ctx.register_table("m", Arc::new(MemTable::try_new(schema, parts).expect("memtable"))).expect("register");
}

const QUERY: &str = "SELECT g, count(*) AS n, count(x) AS nx, sum(x) AS s, min(x) AS lo, max(x) AS hi, \
     avg(x) AS a, count(*) FILTER (WHERE x > 50) AS big FROM {t} GROUP BY g ORDER BY g NULLS FIRST";

async fn answer(ctx: &SessionContext, table: &str) -> String {
    let df = ctx.sql(&QUERY.replace("{t}", table)).await.expect("plan");
    pretty_format_batches(&df.collect().await.expect("run")).expect("format").to_string()
}

async fn plan(ctx: &SessionContext, table: &str) -> String {
    let df = ctx.sql(&format!("EXPLAIN {}", QUERY.replace("{t}", table))).await.expect("plan");
    pretty_format_batches(&df.collect().await.expect("explain")).expect("format").to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every answer equals DataFusion's own partial aggregate's, from
    /// dictionary-encoded Parquet and from memory, with NULL groups, NULL
    /// arguments, a FILTER and many small batches.
    #[test]
    fn answers_equal_datafusions_own(rows in rows()) {
        let dir = tempfile::tempdir().expect("tempdir");
        write_parquet(dir.path(), &rows);
        runtime().block_on(async {
            let with = context(true, None);
            let without = context(false, None);
            register(&with, dir.path(), &rows).await;
            register(&without, dir.path(), &rows).await;
            for t in ["p", "m"] {
                prop_assert!(plan(&with, t).await.contains("ViewGroupedPartialExec"), "the rule did not apply to {}", t);
                prop_assert!(!plan(&without, t).await.contains("ViewGroupedPartialExec"));
                prop_assert_eq!(answer(&with, t).await, answer(&without, t).await, "table {}", t);
            }
            Ok(())
        })?;
    }
}

/// A partial aggregate over its memory budget hands on what it has and
/// starts again; the final aggregate still sums every group right.
#[test]
fn over_its_memory_budget_it_emits_early_and_the_answer_holds() {
    let rows: Vec<(Option<usize>, Option<i64>)> =
        (0..3000).map(|i| (Some(i % POOL.len()), Some(i as i64 % 7))).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    write_parquet(dir.path(), &rows);
    runtime().block_on(async {
        let ctx = context(true, None);
        register(&ctx, dir.path(), &rows).await;
        let df = ctx.sql(&QUERY.replace("{t}", "p")).await.expect("plan");
        let physical = df.create_physical_plan().await.expect("physical");
        let mut partial = None;
        physical
            .apply(|p| {
                if p.is::<ViewGroupedPartialExec>() {
                    partial = Some(p.clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .expect("walk");
        let partial = partial.expect("the rule applied");
        // Alone, with a pool too small for even one batch's groups: one
        // output batch per input batch, each a partial state.
        let starved = Arc::new(
            TaskContext::default().with_runtime(
                RuntimeEnvBuilder::new()
                    .with_memory_pool(Arc::new(GreedyMemoryPool::new(64)))
                    .build_arc()
                    .expect("runtime"),
            ),
        );
        let mut emitted = 0;
        let mut merged: std::collections::BTreeMap<Option<String>, i64> = Default::default();
        for part in 0..partial.properties().partitioning.partition_count() {
            let mut s = partial.execute(part, starved.clone()).expect("execute");
            while let Some(b) = s.next().await {
                let b = b.expect("batch");
                emitted += 1;
                let keys = arrow::compute::cast(b.column(0), &DataType::Utf8).expect("cast");
                let keys = keys.as_string::<i32>();
                let counts = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
                for i in 0..b.num_rows() {
                    let key = keys.is_valid(i).then(|| keys.value(i).to_owned());
                    *merged.entry(key).or_default() += counts.value(i);
                }
            }
        }
        assert!(emitted > 10, "only {emitted} batches: it never emitted early");
        // Merged by hand, the partial states give every group its count.
        let mut expected: std::collections::BTreeMap<Option<String>, i64> = Default::default();
        for (g, _) in &rows {
            *expected.entry(g.map(|i| POOL[i].to_owned())).or_default() += 1;
        }
        assert_eq!(merged, expected);
    });
}

/// The key cache holds the buffers its addresses point into, and starts
/// afresh when a batch shares none of them.
#[test]
fn the_key_cache_holds_its_buffers_and_forgets_them_with_a_new_dictionary() {
    let long = |v: &[&str]| -> StringViewArray { v.iter().map(|s| Some(*s)).collect() };
    let mut g = Groups::default();
    let a = long(&["alice.smith@bank.example", "bob", "alice.smith@bank.example"]);
    g.assign(&a);
    assert_eq!(g.indices, vec![0, 1, 0]);
    assert_eq!(g.held.len(), a.data_buffers().len());
    // Same bytes in a new buffer: a fresh cache, the same groups by value.
    let b = long(&["bob", "alice.smith@bank.example", "carol.jones@bank.example"]);
    g.assign(&b);
    assert_eq!(g.indices, vec![1, 0, 2]);
    assert!(g.held.iter().all(|h| b.data_buffers().iter().any(|x| x.as_ptr() == h.as_ptr())));
    // A slice shares its buffer: the cache is kept and answers from the address.
    let keys_before = g.by_key.len();
    g.assign(&b.slice(1, 2));
    assert_eq!(g.indices, vec![0, 2]);
    assert_eq!(g.by_key.len(), keys_before, "no new keys for values already cached");
    let values = g.take().expect("take");
    let values: Vec<&str> = values.iter().map(|v| v.expect("no nulls")).collect();
    assert_eq!(values, ["alice.smith@bank.example", "bob", "carol.jones@bank.example"]);
    assert_eq!(g.len(), 0);
}
