//! Search and transcripts over the index.
//!
//! A query is parsed with tantivy's grammar and compiled here, not by
//! tantivy's `QueryParser`, so every part of it is bounded (length, nesting,
//! clauses, prefix and fuzzy expansion, a deadline) and so `word*` and
//! `word~1` mean prefix and fuzzy. Filters are added as required clauses
//! beside the parsed query: the query text cannot widen them.

use std::cell::Cell;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tantivy::collector::{Count, TopDocs};
use tantivy::columnar::{Cardinality, ColumnValues};
use tantivy::index::SegmentId;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, EmptyQuery, EnableScoring, FuzzyTermQuery, Occur, PhrasePrefixQuery,
    PhraseQuery, Query, RangeQuery, TermQuery, TermSetQuery, Weight,
};
use tantivy::query_grammar::{self, Delimiter, UserInputAst, UserInputBound, UserInputLeaf, UserInputLiteral};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::{TokenStream, Tokenizer};
use tantivy::{DocAddress, DocId, DocSet, Score, Searcher, SegmentReader, Term, COLLECT_BLOCK_BUFFER_LEN};
use verbatim_schema::Offset;

use super::tokenizer::{is_ngram_char, ChatTokenizer};
use super::{Fields, ID_FIELDS};
use crate::log::LogError;

/// `[search]`: bounds of `GET /v1/search` and transcripts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Longest query text, in bytes.
    pub max_query_bytes: usize,
    /// Most parenthesis levels in a query.
    pub max_nesting: usize,
    /// Most clauses (words, phrase terms, field values) in a query.
    pub max_clauses: usize,
    /// Most index terms a query's `prefix*` parts may expand to, together.
    pub max_expansions: usize,
    /// Shortest prefix before `*`, in characters (one is enough for CJK).
    pub min_prefix_chars: usize,
    /// Most `word~N` parts in a query.
    pub max_fuzzy_terms: usize,
    /// Largest edit distance of `word~N`.
    pub max_fuzzy_distance: u8,
    /// A search still running after this many milliseconds is stopped (400).
    pub deadline_ms: u64,
    /// Hits per page when `limit` is not given, and the largest `limit`.
    pub default_limit: usize,
    pub max_limit: usize,
    /// Most events a transcript returns.
    pub max_transcript_events: usize,
    /// Longest snippet, in characters.
    pub snippet_chars: usize,
    /// Decoded log blocks kept for reading hits and transcripts, in MiB.
    pub block_cache_mb: usize,
    /// Matches counted exactly, newest first; past this many `total` is a
    /// lower bound (`total_exact` false) unless the request asks for an
    /// exact count. Counting every match of a common word costs more than
    /// finding the newest page of it.
    pub exact_total_limit: usize,
    /// Threads that search the segments of one query in parallel in
    /// relevance order (1: the request's own thread only). Newest first
    /// visits segments one after the other, newest first, to skip old ones.
    pub threads: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            max_query_bytes: 4096,
            max_nesting: 16,
            max_clauses: 256,
            max_expansions: 1000,
            min_prefix_chars: 2,
            max_fuzzy_terms: 8,
            max_fuzzy_distance: 2,
            deadline_ms: 5000,
            default_limit: 100,
            max_limit: 1000,
            max_transcript_events: 100_000,
            snippet_chars: 200,
            block_cache_mb: 256,
            exact_total_limit: 10_000,
            threads: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The request is at fault (400).
    #[error("{0}")]
    Bad(String),
    /// Nothing matches what was asked for (404).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(e: tantivy::TantivyError) -> Self {
        SearchError::Internal(format!("index: {e}"))
    }
}

impl From<LogError> for SearchError {
    fn from(e: LogError) -> Self {
        SearchError::Internal(format!("log: {e}"))
    }
}

fn bad(msg: impl Into<String>) -> SearchError {
    SearchError::Bad(msg.into())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// Newest first (`ts`, then offset).
    #[default]
    Time,
    /// Best BM25 score first, then offset.
    Relevance,
}

/// Filters added as required clauses beside the query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Filters {
    /// `ts` at or after, in Unix nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// `ts` before, in Unix nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct SearchRequest {
    pub q: String,
    pub filters: Filters,
    pub sort: Sort,
    pub limit: usize,
    pub cursor: Option<String>,
    /// Count every match, however many (bounded by the deadline).
    pub exact_total: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Found {
    pub offset: Offset,
    pub ts: i64,
    pub score: Option<f32>,
}

#[derive(Debug)]
pub struct SearchOutcome {
    pub hits: Vec<Found>,
    /// Matches of the query and filters, on every page together: exact if
    /// `total_exact`, else a lower bound.
    pub total: usize,
    pub total_exact: bool,
    pub next_cursor: Option<String>,
    /// The compiled query, for snippets.
    pub query: Box<dyn Query>,
    pub searcher: Searcher,
}

/// Where the previous page stopped: the sort key of its last hit.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cursor {
    Time { ts: i64, offset: u64 },
    Relevance { score: f32, offset: u64 },
}

impl Cursor {
    fn encode(self) -> String {
        match self {
            Cursor::Time { ts, offset } => format!("t.{ts}.{offset}"),
            Cursor::Relevance { score, offset } => format!("r.{}.{offset}", score.to_bits()),
        }
    }

    /// The cursor after hit `h`.
    fn after(sort: Sort, h: &Found) -> Self {
        match (sort, h.score) {
            (Sort::Relevance, Some(score)) => Cursor::Relevance { score, offset: h.offset.0 },
            _ => Cursor::Time { ts: h.ts, offset: h.offset.0 },
        }
    }

    fn with_offset(self, offset: u64) -> Self {
        match self {
            Cursor::Time { ts, .. } => Cursor::Time { ts, offset },
            Cursor::Relevance { score, .. } => Cursor::Relevance { score, offset },
        }
    }

    fn decode(s: &str, sort: Sort) -> Result<Self, SearchError> {
        let invalid = || bad(format!("`cursor` {s:?} is not a cursor of this search: pass `next_cursor` as given"));
        let mut parts = s.split('.');
        let (kind, a, b) = (parts.next(), parts.next(), parts.next());
        if parts.next().is_some() {
            return Err(invalid());
        }
        let offset: u64 = b.and_then(|b| b.parse().ok()).ok_or_else(invalid)?;
        match (kind, sort) {
            (Some("t"), Sort::Time) => {
                Ok(Cursor::Time { ts: a.and_then(|a| a.parse().ok()).ok_or_else(invalid)?, offset })
            }
            (Some("r"), Sort::Relevance) => Ok(Cursor::Relevance {
                score: f32::from_bits(a.and_then(|a| a.parse().ok()).ok_or_else(invalid)?),
                offset,
            }),
            _ => Err(invalid()),
        }
    }
}

/// Compiles query text into a bounded tantivy query.
struct Compiler<'a> {
    cfg: &'a SearchConfig,
    fields: &'a Fields,
    searcher: &'a Searcher,
    clauses: usize,
    expansions: usize,
    fuzzy: usize,
    tokenizer: ChatTokenizer,
}

enum FieldKind {
    Body,
    Id(Field),
    Conversation,
}

impl Compiler<'_> {
    fn field(&self, name: Option<&str>) -> Result<FieldKind, SearchError> {
        let f = self.fields;
        Ok(match name.unwrap_or("body") {
            "body" => FieldKind::Body,
            "from" => FieldKind::Id(f.from),
            "to" => FieldKind::Id(f.to),
            "participant" => FieldKind::Id(f.participant),
            "channel" => FieldKind::Id(f.channel),
            "network" => FieldKind::Id(f.network),
            "kind" => FieldKind::Id(f.kind),
            "site" => FieldKind::Id(f.site),
            "source" => FieldKind::Id(f.source),
            "conversation" => FieldKind::Conversation,
            other => {
                return Err(bad(format!(
                    "unknown field `{other}`: a query may name body, {}, conversation, and ts in a range",
                    ID_FIELDS.join(", ")
                )))
            }
        })
    }

    fn count(&mut self, n: usize) -> Result<(), SearchError> {
        self.clauses += n;
        if self.clauses > self.cfg.max_clauses {
            return Err(bad(format!(
                "the query has more than {} clauses (words, phrase terms, values)",
                self.cfg.max_clauses
            )));
        }
        Ok(())
    }

    fn compile(&mut self, ast: &UserInputAst, depth: usize) -> Result<Option<Box<dyn Query>>, SearchError> {
        if depth > self.cfg.max_nesting {
            return Err(bad(format!("the query nests deeper than {} levels", self.cfg.max_nesting)));
        }
        match ast {
            UserInputAst::Clause(items) => {
                let mut subs: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(items.len());
                for (occur, item) in items {
                    let occur = match occur {
                        None | Some(query_grammar::Occur::Must) => Occur::Must,
                        Some(query_grammar::Occur::Should) => Occur::Should,
                        Some(query_grammar::Occur::MustNot) => Occur::MustNot,
                    };
                    if let Some(q) = self.compile(item, depth + 1)? {
                        subs.push((occur, q));
                    }
                }
                if subs.is_empty() {
                    return Ok(None);
                }
                if subs.iter().all(|(o, _)| *o == Occur::MustNot) {
                    subs.push((Occur::Must, Box::new(AllQuery)));
                }
                if subs.len() == 1 && subs[0].0 != Occur::MustNot {
                    return Ok(subs.pop().map(|(_, q)| q));
                }
                Ok(Some(Box::new(BooleanQuery::new(subs))))
            }
            UserInputAst::Boost(inner, boost) => Ok(self
                .compile(inner, depth + 1)?
                .map(|q| Box::new(BoostQuery::new(q, boost.0 as Score)) as Box<dyn Query>)),
            UserInputAst::Leaf(leaf) => self.leaf(leaf),
        }
    }

    fn leaf(&mut self, leaf: &UserInputLeaf) -> Result<Option<Box<dyn Query>>, SearchError> {
        match leaf {
            UserInputLeaf::Literal(lit) => self.literal(lit),
            UserInputLeaf::All => {
                self.count(1)?;
                Ok(Some(Box::new(AllQuery)))
            }
            UserInputLeaf::Range { field, lower, upper } => {
                self.count(1)?;
                if field.as_deref() != Some("ts") {
                    return Err(bad(
                        "ranges are supported on `ts` only, e.g. ts:[2024-01-01T00:00:00Z TO 2024-02-01T00:00:00Z]",
                    ));
                }
                let bound = |b: &UserInputBound| -> Result<Bound<Term>, SearchError> {
                    Ok(match b {
                        UserInputBound::Inclusive(s) => {
                            Bound::Included(Term::from_field_i64(self.fields.ts, parse_time(s)?))
                        }
                        UserInputBound::Exclusive(s) => {
                            Bound::Excluded(Term::from_field_i64(self.fields.ts, parse_time(s)?))
                        }
                        UserInputBound::Unbounded => Bound::Unbounded,
                    })
                };
                Ok(Some(Box::new(RangeQuery::new(bound(lower)?, bound(upper)?))))
            }
            UserInputLeaf::Set { field, elements } => {
                self.count(elements.len())?;
                let terms = match self.field(field.as_deref())? {
                    FieldKind::Id(f) => {
                        elements.iter().map(|e| Term::from_field_text(f, &e.to_lowercase())).collect::<Vec<_>>()
                    }
                    FieldKind::Conversation => elements
                        .iter()
                        .map(|e| {
                            e.parse::<u64>()
                                .map(|v| Term::from_field_u64(self.fields.conversation, v))
                                .map_err(|_| bad(format!("conversation ids are numbers, not `{e}`")))
                        })
                        .collect::<Result<_, _>>()?,
                    FieldKind::Body => return Err(bad("`IN [...]` applies to identity fields, not the body")),
                };
                Ok(Some(Box::new(TermSetQuery::new(terms))))
            }
            UserInputLeaf::Exists { field } => Err(bad(format!("`{field}:*` (field exists) is not supported"))),
            UserInputLeaf::Regex { .. } => Err(bad("regular expressions are not supported; use `prefix*` or `word~1`")),
        }
    }

    fn literal(&mut self, lit: &UserInputLiteral) -> Result<Option<Box<dyn Query>>, SearchError> {
        let mut text = lit.phrase.as_str();
        let mut prefix = lit.prefix;
        // The grammar leaves `word~N` and `word*` in the text of an unquoted literal.
        let mut distance = 0u32;
        if lit.delimiter == Delimiter::None {
            if let Some((word, n)) = text.rsplit_once('~') {
                if !word.is_empty() && n.chars().all(|c| c.is_ascii_digit()) {
                    distance = if n.is_empty() { 2 } else { n.parse().unwrap_or(u32::MAX) };
                    text = word;
                }
            }
            if let Some(stripped) = text.strip_suffix('*') {
                text = stripped;
                prefix = true;
            }
            if text.contains('*') {
                return Err(bad(format!("`{}`: only a trailing `*` (prefix) is supported", lit.phrase)));
            }
        }
        let fuzzy = distance > 0;
        if fuzzy && prefix {
            return Err(bad(format!("`{}`: a word is either fuzzy (`~`) or a prefix (`*`), not both", lit.phrase)));
        }
        match self.field(lit.field_name.as_deref())? {
            FieldKind::Conversation => {
                self.count(1)?;
                if prefix || fuzzy {
                    return Err(bad("conversation ids take neither `*` nor `~`"));
                }
                let id: u64 = text.parse().map_err(|_| bad(format!("conversation ids are numbers, not `{text}`")))?;
                let term = Term::from_field_u64(self.fields.conversation, id);
                Ok(Some(Box::new(TermQuery::new(term, IndexRecordOption::Basic))))
            }
            FieldKind::Id(field) => {
                self.count(1)?;
                if fuzzy {
                    return Err(bad("`~` (fuzzy) applies to words of the body, not to identity fields"));
                }
                let value = text.to_lowercase();
                if prefix {
                    return self.prefix(field, &value).map(Some);
                }
                Ok(Some(Box::new(TermQuery::new(Term::from_field_text(field, &value), IndexRecordOption::Basic))))
            }
            FieldKind::Body => {
                let field = self.fields.body;
                let mut terms: Vec<(usize, Term)> = Vec::new();
                let mut stream = self.tokenizer.token_stream(text);
                while stream.advance() {
                    let t = stream.token();
                    terms.push((t.position, Term::from_field_text(field, &t.text)));
                }
                if terms.is_empty() {
                    return Ok(None);
                }
                self.count(terms.len())?;
                if fuzzy {
                    if terms.len() > 1 {
                        return Err(bad(format!(
                            "`{}`: fuzzy matching applies to one word; for words near each other use \"a b\"~N",
                            lit.phrase
                        )));
                    }
                    self.fuzzy += 1;
                    if self.fuzzy > self.cfg.max_fuzzy_terms {
                        return Err(bad(format!(
                            "more than {} fuzzy (`~`) words in one query",
                            self.cfg.max_fuzzy_terms
                        )));
                    }
                    if distance > u32::from(self.cfg.max_fuzzy_distance) {
                        return Err(bad(format!(
                            "fuzzy distance {distance} is over the limit of {}",
                            self.cfg.max_fuzzy_distance
                        )));
                    }
                    let (_, term) = terms.remove(0);
                    return Ok(Some(Box::new(FuzzyTermQuery::new(term, distance as u8, true))));
                }
                if prefix && terms.len() == 1 {
                    let (_, term) = terms.remove(0);
                    let word = term.value().as_str().unwrap_or_default().to_string();
                    return self.prefix(field, &word).map(Some);
                }
                if prefix {
                    let mut q = PhrasePrefixQuery::new_with_offset(terms);
                    let left = self.cfg.max_expansions.saturating_sub(self.expansions).max(1);
                    q.set_max_expansions(left as u32);
                    return Ok(Some(Box::new(q)));
                }
                if terms.len() == 1 {
                    let (_, term) = terms.remove(0);
                    return Ok(Some(Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))));
                }
                Ok(Some(Box::new(PhraseQuery::new_with_offset_and_slop(terms, lit.slop))))
            }
        }
    }

    /// `word*`: expanded here against the index's terms, at most `max_expansions`.
    fn prefix(&mut self, field: Field, prefix: &str) -> Result<Box<dyn Query>, SearchError> {
        let chars = prefix.chars().count();
        let cjk = prefix.chars().next().is_some_and(is_ngram_char);
        if chars < self.cfg.min_prefix_chars && !(cjk && chars >= 1) {
            return Err(bad(format!("`{prefix}*`: a prefix needs at least {} characters", self.cfg.min_prefix_chars)));
        }
        let mut found: BTreeSet<Vec<u8>> = BTreeSet::new();
        for seg in self.searcher.segment_readers() {
            let inv = seg.inverted_index(field)?;
            let mut stream = inv
                .terms()
                .range()
                .ge(prefix.as_bytes())
                .into_stream()
                .map_err(|e| SearchError::Internal(format!("index: {e}")))?;
            while stream.advance() {
                let key = stream.key();
                if !key.starts_with(prefix.as_bytes()) {
                    break;
                }
                if found.insert(key.to_vec()) {
                    self.expansions += 1;
                    if self.expansions > self.cfg.max_expansions {
                        return Err(bad(format!(
                            "`{prefix}*` matches more than {} words; make the prefix longer",
                            self.cfg.max_expansions
                        )));
                    }
                }
            }
        }
        if found.is_empty() {
            return Ok(Box::new(EmptyQuery));
        }
        let terms: Vec<Term> =
            found.iter().filter_map(|k| std::str::from_utf8(k).ok()).map(|k| Term::from_field_text(field, k)).collect();
        let subs = terms
            .into_iter()
            .map(|t| (Occur::Should, Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) as Box<dyn Query>))
            .collect();
        Ok(Box::new(BooleanQuery::new(subs)))
    }
}

/// RFC 3339 (`2024-05-01T12:00:00Z`), a date (`2024-05-01`, midnight UTC), or Unix nanoseconds.
/// A line of the shared benchmark's queries file (`word|and|phrase<TAB>words`,
/// or a query as is) in our query syntax; the benchmarks and the load
/// generator read the same file.
pub fn query_of_queries_line(line: &str) -> String {
    match line.split_once('\t') {
        Some(("word", w)) => w.split_whitespace().next().unwrap_or("").to_string(),
        Some(("and", w)) => w.split_whitespace().collect::<Vec<_>>().join(" AND "),
        Some(("phrase", w)) => format!("\"{}\"", w.split_whitespace().collect::<Vec<_>>().join(" ")),
        _ => line.to_string(),
    }
}

pub fn parse_time(s: &str) -> Result<i64, SearchError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t.timestamp_nanos_opt().ok_or_else(|| bad(format!("time `{s}` is out of range")));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0).and_then(|t| t.and_utc().timestamp_nanos_opt()) {
            return Ok(t);
        }
    }
    Err(bad(format!(
        "`{s}` is not a time: use RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01) or Unix nanoseconds"
    )))
}

/// Deepest parenthesis nesting of the raw text, checked before parsing so a
/// hostile query cannot exhaust the parser's stack.
fn nesting(q: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for c in q.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses and compiles `q` with `filters` as required clauses.
pub fn compile(
    cfg: &SearchConfig,
    fields: &Fields,
    searcher: &Searcher,
    q: &str,
    filters: &Filters,
) -> Result<Box<dyn Query>, SearchError> {
    if q.len() > cfg.max_query_bytes {
        return Err(bad(format!("the query is {} bytes, over the limit of {}", q.len(), cfg.max_query_bytes)));
    }
    if nesting(q) > cfg.max_nesting {
        return Err(bad(format!("the query nests deeper than {} levels", cfg.max_nesting)));
    }
    let mut c =
        Compiler { cfg, fields, searcher, clauses: 0, expansions: 0, fuzzy: 0, tokenizer: ChatTokenizer::default() };
    let user = if q.trim().is_empty() {
        Box::new(AllQuery) as Box<dyn Query>
    } else {
        let ast = query_grammar::parse_query(q).map_err(|_| {
            bad("the query does not parse: check quotes, parentheses and `field:value` pairs (tantivy query syntax)")
        })?;
        c.compile(&ast, 0)?.ok_or_else(|| bad("the query has no searchable words"))?
    };
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, user)];
    let id = |field: Field, v: &str| -> Box<dyn Query> {
        Box::new(TermQuery::new(Term::from_field_text(field, &v.to_lowercase()), IndexRecordOption::Basic))
    };
    if let Some(v) = &filters.network {
        clauses.push((Occur::Must, id(fields.network, v)));
    }
    if let Some(v) = &filters.participant {
        clauses.push((Occur::Must, id(fields.participant, v)));
    }
    if let Some(v) = &filters.channel {
        clauses.push((Occur::Must, id(fields.channel, v)));
    }
    if let Some(v) = &filters.site {
        clauses.push((Occur::Must, id(fields.site, v)));
    }
    if let Some(v) = filters.conversation {
        let t = Term::from_field_u64(fields.conversation, v);
        clauses.push((Occur::Must, Box::new(TermQuery::new(t, IndexRecordOption::Basic))));
    }
    if filters.from.is_some() || filters.to.is_some() {
        let lower = filters.from.map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_i64(fields.ts, v)));
        let upper = filters.to.map_or(Bound::Unbounded, |v| Bound::Excluded(Term::from_field_i64(fields.ts, v)));
        clauses.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
    }
    if clauses.len() == 1 {
        return Ok(clauses.remove(0).1);
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
}

/// Stops a search past its deadline: the per-document sort key checks the
/// clock every few thousand documents and, once late, ranks everything last.
#[derive(Debug)]
struct Deadline {
    at: Instant,
    passed: AtomicBool,
}

const CHECK_EVERY: u32 = 4096;

/// One segment's `ts` and `offset` columns, and the deadline's counter: what
/// both sort orders read for every matching document.
struct SegmentKeys {
    ts: Arc<dyn ColumnValues<i64>>,
    offset: Arc<dyn ColumnValues<u64>>,
    deadline: Arc<Deadline>,
    seen: Cell<u32>,
}

impl SegmentKeys {
    /// `None` if the segment lacks the columns (then it ranks nothing).
    fn open(seg: &SegmentReader, ts: &str, offset: &str, deadline: &Arc<Deadline>) -> Option<Self> {
        Some(Self {
            ts: seg.fast_fields().i64(ts).ok()?.first_or_default_col(i64::MIN),
            offset: seg.fast_fields().u64(offset).ok()?.first_or_default_col(0),
            deadline: deadline.clone(),
            seen: Cell::new(0),
        })
    }

    /// `(ts, offset)` of `doc`, or `None` once the deadline has passed.
    fn get(&self, doc: DocId) -> Option<(i64, u64)> {
        if self.deadline.tick(&self.seen) {
            return None;
        }
        Some((self.ts.get_val(doc), self.offset.get_val(doc)))
    }
}

/// Top documents by a sort key (`None`: ranked out), and the match count.
type Ranked<K> = (Vec<(Option<K>, DocAddress)>, usize);

impl Deadline {
    /// Whether the deadline has passed (checked on the clock now).
    fn late(&self) -> bool {
        if !self.passed.load(Ordering::Relaxed) && Instant::now() > self.at {
            self.passed.store(true, Ordering::Relaxed);
        }
        self.passed.load(Ordering::Relaxed)
    }

    fn tick(&self, n: &Cell<u32>) -> bool {
        let k = n.get().wrapping_add(1);
        n.set(k);
        if k.is_multiple_of(CHECK_EVERY) && Instant::now() > self.at {
            self.passed.store(true, Ordering::Relaxed);
        }
        self.passed.load(Ordering::Relaxed)
    }
}

pub fn search(
    index: &super::indexer::SearchIndex,
    cfg: &SearchConfig,
    req: &SearchRequest,
) -> Result<SearchOutcome, SearchError> {
    let limit = page_limit(cfg, req)?;
    let cursor = req.cursor.as_deref().map(|c| Cursor::decode(c, req.sort)).transpose()?;
    let deadline = Deadline::after(cfg);
    let count_up_to = (!req.exact_total).then_some(cfg.exact_total_limit);
    let (hits, total, query, searcher) = search_index(index, cfg, req, limit, cursor, &deadline, count_up_to)?;
    deadline.check(cfg)?;
    let next_cursor = if hits.len() == limit { hits.last().map(|h| Cursor::after(req.sort, h).encode()) } else { None };
    Ok(SearchOutcome { hits, total: total.n, total_exact: total.exact, next_cursor, query, searcher })
}

fn page_limit(cfg: &SearchConfig, req: &SearchRequest) -> Result<usize, SearchError> {
    let limit = if req.limit == 0 { cfg.default_limit } else { req.limit };
    if limit > cfg.max_limit {
        return Err(bad(format!("`limit` {limit} is over the maximum of {}", cfg.max_limit)));
    }
    Ok(limit)
}

impl Deadline {
    fn after(cfg: &SearchConfig) -> Arc<Self> {
        Arc::new(Deadline {
            at: Instant::now() + Duration::from_millis(cfg.deadline_ms),
            passed: AtomicBool::new(false),
        })
    }

    fn check(&self, cfg: &SearchConfig) -> Result<(), SearchError> {
        if self.passed.load(Ordering::Relaxed) {
            return Err(bad(format!(
                "the search ran past its deadline of {} ms: narrow the query or add filters",
                cfg.deadline_ms
            )));
        }
        Ok(())
    }
}

/// Hits, the number of matches, the compiled query and the searcher.
type IndexAnswer = (Vec<Found>, Total, Box<dyn Query>, Searcher);

/// The best `limit` matches of `req` in one index below `cursor`, and the
/// number of matches (newest first: counted up to `count_up_to` if given);
/// the compiled query and the searcher, for snippets.
fn search_index(
    index: &super::indexer::SearchIndex,
    cfg: &SearchConfig,
    req: &SearchRequest,
    limit: usize,
    cursor: Option<Cursor>,
    deadline: &Arc<Deadline>,
    count_up_to: Option<usize>,
) -> Result<IndexAnswer, SearchError> {
    let searcher = index.searcher();
    let fields = index.fields;
    let query = compile(cfg, &fields, &searcher, &req.q, &req.filters)?;
    let ts_name = searcher.schema().get_field_name(fields.ts).to_string();
    let off_name = searcher.schema().get_field_name(fields.offset).to_string();
    // Sort keys are `None` for documents ranked out: before the cursor, or
    // seen after the deadline. `None` sorts below every `Some`.
    let (found, total) = match req.sort {
        Sort::Time => {
            let cursor = match cursor {
                Some(Cursor::Time { ts, offset }) => Some((ts, offset)),
                _ => None,
            };
            let columns = (&index.sort_columns, ts_name.as_str(), off_name.as_str());
            newest_first(&searcher, columns, &*query, limit, cursor, deadline, count_up_to)?
        }
        Sort::Relevance => {
            let d = deadline.clone();
            let key = move |seg: &SegmentReader| {
                let keys = SegmentKeys::open(seg, &ts_name, &off_name, &d);
                move |doc: DocId, score: Score| -> Option<(f32, u64, i64)> {
                    let (ts, o) = keys.as_ref()?.get(doc)?;
                    match cursor {
                        Some(Cursor::Relevance { score: s, offset }) if (score, o) >= (s, offset) => None,
                        _ => Some((score, o, ts)),
                    }
                }
            };
            let collector = (TopDocs::with_limit(limit).tweak_score(key), Count);
            let (top, total): Ranked<(f32, u64, i64)> = searcher.search(&*query, &collector)?;
            let found = top
                .into_iter()
                .flat_map(|(k, _)| k)
                .map(|(s, off, ts)| Found { offset: Offset(off), ts, score: Some(s) })
                .collect();
            // Relevance scores every match anyway: its count is exact.
            (found, Total { n: total, exact: true })
        }
    };
    Ok((found, total, query, searcher))
}

/// One segment's `ts` and `offset` columns, opened once: opening a column
/// reads its block index, which can cost more than a small search.
struct SortColumns {
    ts: Arc<dyn ColumnValues<i64>>,
    offset: Arc<dyn ColumnValues<u64>>,
    /// Bounds of `ts`: no document is newer than `newest`; and, when every
    /// document has a `ts` (one without sorts as i64::MIN), none is older
    /// than `oldest`.
    newest: i64,
    oldest: Option<i64>,
    /// When every document has a `ts`: per run of [`TS_BLOCK`] documents,
    /// the newest `ts` in it and in every run before it.
    blocks: Option<TsBlocks>,
}

/// Documents per run of [`TsBlocks`].
const TS_BLOCK: u32 = 2048;

struct TsBlocks {
    newest: Vec<i64>,
    /// `newest_up_to[i]`: the newest `ts` of runs `0..=i`.
    newest_up_to: Vec<i64>,
}

impl TsBlocks {
    fn of(ts: &dyn ColumnValues<i64>) -> Self {
        let n = ts.num_vals();
        let mut buf = vec![0i64; TS_BLOCK as usize];
        let mut newest = Vec::with_capacity(n.div_ceil(TS_BLOCK) as usize);
        for start in (0..n).step_by(TS_BLOCK as usize) {
            let run = &mut buf[..(n - start).min(TS_BLOCK) as usize];
            ts.get_range(start as u64, run);
            newest.push(run.iter().copied().max().unwrap_or(i64::MIN));
        }
        let newest_up_to = newest
            .iter()
            .scan(i64::MIN, |m, &v| {
                *m = (*m).max(v);
                Some(*m)
            })
            .collect();
        Self { newest, newest_up_to }
    }
}

/// The [`SortColumns`] of the segments of the current searcher (`None`
/// for a segment lacking the columns).
#[derive(Default)]
pub struct SortColumnCache(Mutex<HashMap<SegmentId, Option<Arc<SortColumns>>>>);

impl std::fmt::Debug for SortColumnCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().unwrap_or_else(|p| p.into_inner()).len();
        f.debug_struct("SortColumnCache").field("segments", &n).finish()
    }
}

impl SortColumnCache {
    fn get(&self, seg: &SegmentReader, ts_name: &str, off_name: &str) -> Option<Arc<SortColumns>> {
        let id = seg.segment_id();
        if let Some(c) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return c.clone();
        }
        let opened = (|| {
            let ts = seg.fast_fields().i64(ts_name).ok()?;
            let offset = seg.fast_fields().u64(off_name).ok()?.first_or_default_col(0);
            let full = ts.get_cardinality() == Cardinality::Full;
            let oldest = full.then(|| ts.min_value());
            // With every document holding one value, value i is document i's.
            let blocks = full.then(|| TsBlocks::of(&*ts.values));
            Some(Arc::new(SortColumns {
                newest: ts.max_value(),
                oldest,
                blocks,
                ts: ts.first_or_default_col(i64::MIN),
                offset,
            }))
        })();
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id, opened.clone());
        opened
    }

    /// Forgets segments merged away since.
    fn keep_only(&self, live: &[SegmentReader]) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > live.len() {
            let ids: HashSet<SegmentId> = live.iter().map(|s| s.segment_id()).collect();
            map.retain(|id, _| ids.contains(id));
        }
    }
}

/// The newest `limit` matches with a `(ts, offset)` key below `cursor`, and
/// the number of matches on every page together (exact, or counted up to
/// `count_up_to` and then a lower bound).
///
/// Segments are visited newest first, by the largest `ts` they hold. Once
/// `limit` hits are held, a segment whose newest document is older than the
/// oldest hit held cannot contribute and is only counted; so is a segment
/// whose oldest document is at or past the cursor. With a counting limit, a
/// visited segment is read by runs of documents, newest runs first, and runs
/// too old for the page are skipped. The log appends in time order, so a
/// page of recent hits reads about the same number of documents whatever
/// the size of the archive; what grows with it is only the count, which
/// the limit bounds.
fn newest_first(
    searcher: &Searcher,
    (cache, ts_name, off_name): (&SortColumnCache, &str, &str),
    query: &dyn Query,
    limit: usize,
    cursor: Option<(i64, u64)>,
    deadline: &Deadline,
    count_up_to: Option<usize>,
) -> Result<(Vec<Found>, Total), SearchError> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let segments = searcher.segment_readers();
    cache.keep_only(segments);
    let mut segments: Vec<_> = segments
        .iter()
        .map(|seg| {
            let columns = cache.get(seg, ts_name, off_name);
            // Without the columns a segment ranks nothing; its matches still count.
            (columns.as_ref().map_or(i64::MIN, |c| c.newest), columns, seg)
        })
        .collect();
    segments.sort_by_key(|s| std::cmp::Reverse(s.0));
    // The best `limit` keys so far, the oldest on top.
    let mut top: BinaryHeap<std::cmp::Reverse<(i64, u64)>> = BinaryHeap::with_capacity(limit + 1);
    let mut total = Total { n: 0, exact: true };
    for (newest, columns, seg) in segments {
        if deadline.late() {
            break;
        }
        let outranked = limit == 0 || (top.len() >= limit && top.peek().is_some_and(|k| newest < k.0 .0));
        // Every key of a segment whose oldest document is past the cursor is too.
        let past_cursor = |oldest: Option<i64>| matches!((cursor, oldest), (Some(c), Some(o)) if o > c.0);
        let c = match &columns {
            Some(c) if !outranked && !past_cursor(c.oldest) => c,
            _ => {
                match count_up_to {
                    None => total.n += weight.count(seg)? as usize,
                    // Counting stops once the total is known to be past the limit.
                    Some(limit) if total.n > limit => total.exact = false,
                    Some(limit) => {
                        let (n, complete) = count_at_most(&*weight, seg, limit + 1 - total.n, deadline)?;
                        total.n += n;
                        total.exact &= complete;
                    }
                }
                continue;
            }
        };
        let mut page = Page { top: &mut top, limit, cursor, ts: &*c.ts, offset: &*c.offset };
        match (&c.blocks, count_up_to) {
            (Some(blocks), Some(limit)) => {
                let (seen, all) = page.visit_newest_runs(&*weight, seg, blocks, deadline)?;
                if all {
                    total.n += seen;
                } else if total.n + seen > limit {
                    total.n += seen;
                    total.exact = false;
                } else {
                    // Runs too old for the page were skipped: count the
                    // segment again, only up to the limit.
                    let (n, complete) = count_at_most(&*weight, seg, limit + 1 - total.n, deadline)?;
                    total.n += n.max(seen);
                    total.exact &= complete;
                }
            }
            _ => total.n += page.visit_all(&*weight, seg, deadline)?,
        }
    }
    let mut keys: Vec<(i64, u64)> = top.into_iter().map(|k| k.0).collect();
    keys.sort_unstable_by(|a, b| b.cmp(a));
    Ok((keys.into_iter().map(|(ts, off)| Found { offset: Offset(off), ts, score: None }).collect(), total))
}

/// A number of matches: exact, or a lower bound where counting stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Total {
    pub n: usize,
    pub exact: bool,
}

/// The best keys of a newest-first page so far, and how to offer more.
struct Page<'a> {
    /// The oldest key held on top.
    top: &'a mut BinaryHeap<std::cmp::Reverse<(i64, u64)>>,
    limit: usize,
    cursor: Option<(i64, u64)>,
    ts: &'a dyn ColumnValues<i64>,
    offset: &'a dyn ColumnValues<u64>,
}

impl Page<'_> {
    /// The `ts` below which a document cannot enter the page, once it is full.
    fn floor(&self) -> Option<i64> {
        if self.top.len() >= self.limit {
            self.top.peek().map(|k| k.0 .0)
        } else {
            None
        }
    }

    fn offer(&mut self, doc: DocId) {
        let t = self.ts.get_val(doc);
        // Cheap rejection on `ts` alone before the offset is read.
        if self.floor().is_some_and(|f| t < f) {
            return;
        }
        let key = (t, self.offset.get_val(doc));
        if self.cursor.is_some_and(|c| key >= c) {
            return;
        }
        if self.top.len() < self.limit {
            self.top.push(std::cmp::Reverse(key));
        } else if self.top.peek().is_some_and(|k| key > k.0) {
            self.top.pop();
            self.top.push(std::cmp::Reverse(key));
        }
    }

    /// Offers every match of the segment; returns how many there were.
    fn visit_all(&mut self, weight: &dyn Weight, seg: &SegmentReader, deadline: &Deadline) -> tantivy::Result<usize> {
        Ok(live_matches(weight, seg, deadline, |doc| self.offer(doc), |_| false)?.0)
    }

    /// Offers the matches of the segment's newest runs of documents first:
    /// ranges of runs from the end, each at least twice as long as the one
    /// before ([`next_width`]; a scorer only moves forward), skipping runs
    /// whose newest `ts` is below the page, and stopping once no run before
    /// is newer than it.
    /// The log appends in time order, so the newest documents are usually
    /// last. Returns the matches seen, and whether that was all of them.
    fn visit_newest_runs(
        &mut self,
        weight: &dyn Weight,
        seg: &SegmentReader,
        blocks: &TsBlocks,
        deadline: &Deadline,
    ) -> tantivy::Result<(usize, bool)> {
        let alive = seg.alive_bitset();
        let (mut seen, mut all) = (0, true);
        let (mut hi, mut width) = (blocks.newest.len(), 1);
        while hi > 0 {
            if self.floor().is_some_and(|f| blocks.newest_up_to[hi - 1] < f) {
                return Ok((seen, false));
            }
            let lo = hi.saturating_sub(width);
            let end = hi as u32 * TS_BLOCK;
            let mut docs = weight.scorer(seg, 1.0)?;
            let mut run = lo;
            while run < hi {
                if self.floor().is_some_and(|f| blocks.newest[run] < f) {
                    all = false;
                    run += 1;
                    continue;
                }
                let (from, to) = (run as u32 * TS_BLOCK, (run as u32 + 1) * TS_BLOCK);
                let mut doc = docs.doc();
                if doc < from {
                    doc = docs.seek(from);
                }
                while doc < to {
                    if alive.is_none_or(|a| a.is_alive(doc)) {
                        seen += 1;
                        self.offer(doc);
                    }
                    doc = docs.advance();
                }
                if deadline.late() {
                    return Ok((seen, false));
                }
                if doc >= end {
                    // Nothing more in this range (TERMINATED is past every range).
                    break;
                }
                run += 1;
            }
            hi = lo;
            width = next_width(width, blocks.newest.len() - hi, seen, self.limit.saturating_sub(self.top.len()));
        }
        Ok((seen, all))
    }
}

/// How many runs the next range of [`Page::visit_newest_runs`] spans, after
/// `read` runs (from the end) held `seen` matches and the page still wants
/// `wanted`. Each range costs a fresh scorer (for a query of several terms,
/// a dictionary lookup and a postings open per term), and until the page is
/// full no run can be skipped. So a sparse query takes, in one range, the
/// runs that would hold twice the matches it wants at the density read so far
/// (at least one match per `read` runs). Where matches are spread evenly,
/// about `2 × wanted` are read, and a query of 40 matches in 500 runs needs
/// three scorers instead of nine. A full page doubles the width.
fn next_width(width: usize, read: usize, seen: usize, wanted: usize) -> usize {
    let doubled = width.saturating_mul(2);
    if wanted == 0 {
        return doubled;
    }
    doubled.max(wanted.saturating_mul(read).div_ceil(seen.max(1)).saturating_mul(2))
}

/// The matches of `weight` in `seg`, counted up to `max`; whether that is all of them.
fn count_at_most(
    weight: &dyn Weight,
    seg: &SegmentReader,
    max: usize,
    deadline: &Deadline,
) -> tantivy::Result<(usize, bool)> {
    live_matches(weight, seg, deadline, |_| {}, |n| n >= max)
}

/// Calls `each` with every live match of `weight` in `seg`, a buffer of
/// documents at a time, until they end, `enough(seen)` holds after a buffer,
/// or the deadline passes; returns the matches seen and whether that was all.
fn live_matches(
    weight: &dyn Weight,
    seg: &SegmentReader,
    deadline: &Deadline,
    mut each: impl FnMut(DocId),
    enough: impl Fn(usize) -> bool,
) -> tantivy::Result<(usize, bool)> {
    let alive = seg.alive_bitset();
    let mut docs = weight.scorer(seg, 1.0)?;
    let mut buffer = [0 as DocId; COLLECT_BLOCK_BUFFER_LEN];
    let mut seen = 0;
    loop {
        let got = docs.fill_buffer(&mut buffer);
        for &doc in buffer[..got].iter().filter(|&&d| alive.is_none_or(|a| a.is_alive(d))) {
            seen += 1;
            each(doc);
        }
        if got < buffer.len() {
            return Ok((seen, true));
        }
        if enough(seen) || deadline.late() {
            return Ok((seen, false));
        }
    }
}

/// A hit of a search over several sites: which store (by position in the
/// slice searched), and where.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SiteHit {
    pub store: usize,
    pub found: Found,
}

/// The answer of [`search_sites`].
#[derive(Debug)]
pub struct SitesOutcome {
    pub hits: Vec<SiteHit>,
    /// Matches on every site and every page together: exact if
    /// `total_exact`, else a lower bound.
    pub total: usize,
    pub total_exact: bool,
    pub next_cursor: Option<String>,
    /// Per store searched: the compiled query and the searcher, for snippets.
    pub parts: Vec<(Box<dyn Query>, Searcher)>,
}

/// Searches the index of every store and merges the answers. Hits are
/// ordered by the sort key, then site id, then offset (newest or best
/// first), so a page and its cursor are the same whatever the number of
/// sites; a cursor names the site of the last hit (`t.<ts>.<offset>.<site>`).
/// Relevance scores are each site's own BM25: every site's index has its
/// own term statistics.
pub fn search_sites(
    stores: &[Arc<crate::sites::SiteStore>],
    cfg: &SearchConfig,
    req: &SearchRequest,
) -> Result<SitesOutcome, SearchError> {
    let limit = page_limit(cfg, req)?;
    let cursor = match req.cursor.as_deref() {
        None => None,
        Some(c) => {
            let invalid = || bad(format!("`cursor` {c:?} is not a cursor of this search: pass `next_cursor` as given"));
            let (inner, site) = c.rsplit_once('.').ok_or_else(invalid)?;
            Some((Cursor::decode(inner, req.sort).map_err(|_| invalid())?, site.to_owned()))
        }
    };
    let deadline = Deadline::after(cfg);
    let mut hits = Vec::new();
    let mut parts = Vec::with_capacity(stores.len());
    let mut total = Total { n: 0, exact: true };
    for (i, store) in stores.iter().enumerate() {
        // The cursor as this store sees it: at the cursor's key, a site
        // ordered after the cursor's has nothing left, one before it everything.
        let own = cursor.as_ref().map(|(c, site)| match store.site.as_str().cmp(site.as_str()) {
            std::cmp::Ordering::Equal => *c,
            std::cmp::Ordering::Greater => c.with_offset(0),
            std::cmp::Ordering::Less => c.with_offset(u64::MAX),
        });
        // The sites share one counting limit.
        let count_up_to = (!req.exact_total).then(|| cfg.exact_total_limit.saturating_sub(total.n));
        let (found, n, query, searcher) = search_index(&store.index, cfg, req, limit, own, &deadline, count_up_to)?;
        total = Total { n: total.n + n.n, exact: total.exact && n.exact };
        hits.extend(found.into_iter().map(|found| SiteHit { store: i, found }));
        parts.push((query, searcher));
    }
    deadline.check(cfg)?;
    let site = |h: &SiteHit| stores[h.store].site.as_str();
    hits.sort_by(|a, b| {
        let key = match req.sort {
            Sort::Time => b.found.ts.cmp(&a.found.ts),
            Sort::Relevance => b.found.score.unwrap_or(0.0).total_cmp(&a.found.score.unwrap_or(0.0)),
        };
        key.then_with(|| site(b).cmp(site(a))).then_with(|| b.found.offset.cmp(&a.found.offset))
    });
    hits.truncate(limit);
    let next_cursor = if hits.len() == limit {
        hits.last().map(|h| format!("{}.{}", Cursor::after(req.sort, &h.found).encode(), site(h)))
    } else {
        None
    };
    Ok(SitesOutcome { hits, total: total.n, total_exact: total.exact, next_cursor, parts })
}

/// The offsets of conversation `id` in the index, oldest first, at most `max`
/// (and whether there were more).
pub fn conversation_offsets(
    index: &super::indexer::SearchIndex,
    id: u64,
    max: usize,
) -> Result<(Vec<Offset>, bool), SearchError> {
    let searcher = index.searcher();
    let off_name = searcher.schema().get_field_name(index.fields.offset).to_string();
    let query = TermQuery::new(Term::from_field_u64(index.fields.conversation, id), IndexRecordOption::Basic);
    let key = move |seg: &SegmentReader| {
        let off = seg.fast_fields().u64(&off_name).map(|c| c.first_or_default_col(u64::MAX));
        move |doc: DocId| -> u64 { off.as_ref().map_or(0, |c| u64::MAX - c.get_val(doc)) }
    };
    let (top, total): (Vec<(u64, DocAddress)>, usize) =
        searcher.search(&query, &(TopDocs::with_limit(max.max(1)).order_by(key), Count))?;
    let offsets = top.into_iter().map(|(k, _)| Offset(u64::MAX - k)).collect();
    Ok((offsets, total > max))
}

#[cfg(test)]
pub(crate) mod tests;
