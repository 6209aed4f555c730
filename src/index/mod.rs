//! The full-text index: a tantivy index derived from the log.
//!
//! - [`tokenizer`]: the body tokenizer (words, CJK/Thai bigrams, emoji);
//! - [`indexer`]: the thread that tails the log from the index watermark;
//! - [`search`]: query compilation with bounds, search and transcripts.
//!
//! The index stores no text: a hit is an offset, and the body is read from
//! the log. Every commit carries the watermark (the offset after the last
//! indexed record) as its payload, so the documents and the watermark change
//! together or not at all, and the index always holds exactly the offsets
//! below its watermark, each once.

pub mod indexer;
pub mod search;
pub mod snippet;
pub mod tokenizer;

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED,
};
use tantivy::tokenizer::{LowerCaser, RawTokenizer, TextAnalyzer};
use tantivy::{Index, TantivyDocument};
use verbatim_schema::{Offset, Record};

use self::tokenizer::{ChatTokenizer, BODY_TOKENIZER, ID_TOKENIZER};
use crate::background::BackgroundConfig;

/// `[index]`: the indexer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// How often new documents are committed and become searchable.
    pub commit_interval_ms: u64,
    /// Memory of tantivy's indexing buffer, in MiB.
    pub writer_memory_mb: usize,
    /// Indexing threads.
    pub writer_threads: usize,
    /// How often the index is reconciled against the log (offsets counted).
    pub reconcile_interval_secs: u64,
    /// Index at `SCHED_IDLE` while the index keeps up (ADR 0012).
    pub idle_priority: bool,
    /// Behind the log by more than this, index at normal priority until
    /// back within a quarter of it.
    pub max_idle_lag_ms: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        let bg = BackgroundConfig::default();
        Self {
            commit_interval_ms: 1000,
            writer_memory_mb: 128,
            writer_threads: 1,
            reconcile_interval_secs: 300,
            idle_priority: bg.idle_priority,
            max_idle_lag_ms: bg.max_idle_lag_ms,
        }
    }
}

impl IndexConfig {
    pub fn background(&self) -> BackgroundConfig {
        BackgroundConfig { idle_priority: self.idle_priority, max_idle_lag_ms: self.max_idle_lag_ms }
    }
}

/// The index's fields. Identity fields hold whole values, lowercased.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    pub body: Field,
    pub from: Field,
    pub to: Field,
    pub participant: Field,
    pub channel: Field,
    pub network: Field,
    pub kind: Field,
    pub site: Field,
    pub source: Field,
    pub conversation: Field,
    pub ts: Field,
    pub received_at: Field,
    pub offset: Field,
}

/// Field names a query may name, and what they are.
pub const TEXT_FIELDS: &[&str] = &["body"];
pub const ID_FIELDS: &[&str] = &["from", "to", "participant", "channel", "network", "kind", "site", "source"];

/// Version of the index layout; a different one needs `verbatim reindex`.
pub const INDEX_VERSION: u32 = 1;

pub fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let body = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(BODY_TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let id = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ID_TOKENIZER)
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false),
    );
    let fields = Fields {
        body: b.add_text_field("body", body),
        from: b.add_text_field("from", id.clone()),
        to: b.add_text_field("to", id.clone()),
        participant: b.add_text_field("participant", id.clone()),
        channel: b.add_text_field("channel", id.clone()),
        network: b.add_text_field("network", id.clone()),
        kind: b.add_text_field("kind", id.clone()),
        site: b.add_text_field("site", id.clone()),
        source: b.add_text_field("source", id),
        conversation: b.add_u64_field("conversation", NumericOptions::default() | INDEXED),
        ts: b.add_i64_field("ts", FAST),
        received_at: b.add_i64_field("received_at", FAST),
        offset: b.add_u64_field("offset", FAST),
    };
    (b.build(), fields)
}

fn register_tokenizers(index: &Index) {
    index.tokenizers().register(BODY_TOKENIZER, TextAnalyzer::from(ChatTokenizer::default()));
    index
        .tokenizers()
        .register(ID_TOKENIZER, TextAnalyzer::builder(RawTokenizer::default()).filter(LowerCaser).build());
}

/// Opens the index in `dir`, creating it if the directory is empty.
pub fn open(dir: &Path) -> anyhow::Result<(Index, Fields)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (schema, fields) = schema();
    let index = if dir.join("meta.json").exists() {
        let index = Index::open_in_dir(dir).with_context(|| format!("opening the index in {}", dir.display()))?;
        anyhow::ensure!(
            index.schema() == schema,
            "the index in {} has another layout than this version's: run `verbatim reindex`",
            dir.display()
        );
        index
    } else {
        Index::create_in_dir(dir, schema).with_context(|| format!("creating the index in {}", dir.display()))?
    };
    register_tokenizers(&index);
    Ok((index, fields))
}

/// An index in memory, for tests.
#[cfg(test)]
pub fn in_ram() -> (Index, Fields) {
    let (schema, fields) = schema();
    let index = Index::create_in_ram(schema);
    register_tokenizers(&index);
    (index, fields)
}

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    version: u32,
    watermark: u64,
}

pub fn payload(watermark: Offset) -> String {
    serde_json::to_string(&Payload { version: INDEX_VERSION, watermark: watermark.0 }).expect("payload serializes")
}

/// The watermark of the last commit: the offset after the last indexed record.
pub fn committed_watermark(index: &Index) -> anyhow::Result<Offset> {
    let metas = index.load_metas()?;
    match metas.payload {
        None if metas.segments.is_empty() => Ok(Offset::ZERO),
        None => anyhow::bail!("the index has documents but no watermark: run `verbatim reindex`"),
        Some(p) => {
            let p: Payload = serde_json::from_str(&p).context("reading the index watermark")?;
            anyhow::ensure!(
                p.version == INDEX_VERSION,
                "index version {} is not {INDEX_VERSION}: run `verbatim reindex`",
                p.version
            );
            Ok(Offset(p.watermark))
        }
    }
}

/// The document of the record at `offset`.
pub fn document(f: &Fields, offset: Offset, r: &Record) -> TantivyDocument {
    let e = &r.event;
    let mut d = TantivyDocument::default();
    d.add_text(f.body, &e.body);
    d.add_text(f.from, &e.from);
    d.add_text(f.participant, &e.from);
    for to in &e.to {
        d.add_text(f.to, to);
        d.add_text(f.participant, to);
    }
    if let Some(c) = &e.channel {
        d.add_text(f.channel, c);
    }
    d.add_text(f.network, &e.network);
    d.add_text(f.kind, &e.kind);
    d.add_text(f.site, r.site.as_str());
    d.add_text(f.source, e.source.as_str());
    if let Some(c) = r.conversation_id {
        d.add_u64(f.conversation, c.0);
    }
    d.add_i64(f.ts, e.ts.instant.0);
    d.add_i64(f.received_at, r.received_at.0);
    d.add_u64(f.offset, offset.0);
    d
}
