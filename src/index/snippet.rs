//! Snippets of a hit's body, as HTML: the fragment tantivy's
//! `SnippetGenerator` picks, with each match in `<b>…</b>` and `& < > " '`
//! escaped, character for character the same (a property test holds the two
//! together). Tantivy's generator lowercases every token into a fresh
//! `String` before looking it up, boxes a new tokenizer per snippet and
//! copies the fragment out; for a page of chat lines that was a third of the
//! render's time. This one runs the body tokenizer directly, borrows the
//! fragment from the body and keeps only the best fragment so far.

use std::fmt;
use std::ops::Range;

use tantivy::query::Query;
use tantivy::schema::Field;
use tantivy::tokenizer::Tokenizer;
use tantivy::{Score, Searcher};

use super::tokenizer::ChatTokenizer;

/// The query's terms in one field, each scored as tantivy's generator
/// scores it: `1 / (1 + document frequency)`; terms no document has are left out.
#[derive(Clone, Debug)]
pub struct Snippets {
    /// Sorted by term, for a binary search.
    terms: Vec<(String, Score)>,
    /// A fragment spans at most this many bytes of the body (tantivy's
    /// `max_num_chars`, which counts bytes).
    max_bytes: usize,
}

impl Snippets {
    pub fn create(searcher: &Searcher, query: &dyn Query, field: Field, max_bytes: usize) -> tantivy::Result<Self> {
        let mut found = Vec::new();
        query.query_terms(&mut |term, _| {
            if term.field() == field {
                found.push(term.clone());
            }
        });
        found.sort();
        found.dedup();
        let mut terms = Vec::with_capacity(found.len());
        for term in &found {
            let value = term.value();
            let Some(text) = value.as_str() else { continue };
            let doc_freq = searcher.doc_freq(term)?;
            if doc_freq > 0 {
                terms.push((text.to_string(), 1.0 / (1.0 + doc_freq as Score)));
            }
        }
        terms.sort_by(|a, b| a.0.cmp(&b.0));
        terms.dedup_by(|a, b| a.0 == b.0);
        Ok(Self { terms, max_bytes })
    }

    /// The score of the token at `span` of `text` (`lowercase` as the body
    /// tokenizer says), as tantivy's generator finds it: the tokenizer's
    /// text, lowercased once more (which only matters outside ASCII).
    /// An ASCII word is compared in place, without a copy.
    fn score_of(&self, text: &str, (from, to, lowercase): (usize, usize, bool)) -> Option<Score> {
        let span = &text[from..to];
        let found = if span.is_ascii() {
            if lowercase {
                self.terms.binary_search_by(|(k, _)| cmp_to_ascii_lowercase(k.as_bytes(), span.as_bytes()))
            } else {
                self.terms.binary_search_by(|(k, _)| k.as_str().cmp(span))
            }
        } else {
            let token: String =
                if lowercase { span.chars().flat_map(char::to_lowercase).collect() } else { span.into() };
            let again = token.to_lowercase();
            self.terms.binary_search_by(|(k, _)| k.as_str().cmp(&again))
        };
        found.ok().map(|i| self.terms[i].1)
    }

    /// The best fragment of `text`: the highest-scoring window of whole
    /// tokens, the earliest of equals; empty if no term occurs.
    pub fn snippet<'a>(&self, text: &'a str) -> Snippet<'a> {
        let mut best = Fragment::new(0);
        let mut current = Fragment::new(0);
        if self.terms.is_empty() {
            return Snippet { fragment: "", highlighted: Vec::new() };
        }
        let mut tokenizer = ChatTokenizer::default();
        let mut stream = tokenizer.token_stream(text);
        while let Some(span) = stream.next_span() {
            let (from, to, _) = span;
            if to - current.start > self.max_bytes {
                current.finish_into(&mut best);
                current.restart(from);
            }
            current.stop = to;
            if let Some(score) = self.score_of(text, span) {
                current.score += score;
                current.highlighted.push(from..to);
            }
        }
        current.finish_into(&mut best);
        if best.score <= 0.0 {
            return Snippet { fragment: "", highlighted: Vec::new() };
        }
        let mut highlighted: Vec<Range<usize>> =
            best.highlighted.iter().map(|r| r.start - best.start..r.end - best.start).collect();
        collapse(&mut highlighted);
        Snippet { fragment: &text[best.start..best.stop], highlighted }
    }
}

/// `a` against `b` lowercased, byte by byte: ordering a sorted term list
/// around an ASCII word without lowercasing it into a copy.
fn cmp_to_ascii_lowercase(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.iter().copied().cmp(b.iter().map(u8::to_ascii_lowercase))
}

#[derive(Debug)]
struct Fragment {
    score: Score,
    start: usize,
    stop: usize,
    highlighted: Vec<Range<usize>>,
}

impl Fragment {
    fn new(start: usize) -> Self {
        Self { score: 0.0, start, stop: start, highlighted: Vec::new() }
    }

    fn restart(&mut self, start: usize) {
        self.score = 0.0;
        self.start = start;
        self.stop = start;
        self.highlighted.clear();
    }

    /// Keeps this fragment as the best if it scores higher (an equal score
    /// keeps the earlier one, as tantivy does).
    fn finish_into(&mut self, best: &mut Fragment) {
        if self.score > 0.0 && self.score > best.score {
            std::mem::swap(self, best);
        }
    }
}

/// Sorts, drops duplicates and merges overlapping (not merely adjacent)
/// ranges: tantivy's `collapse_overlapped_ranges`, in place.
fn collapse(ranges: &mut Vec<Range<usize>>) {
    ranges.sort_unstable_by_key(|r| (r.start, r.end));
    ranges.dedup();
    let mut out = 0;
    for i in 0..ranges.len() {
        let r = ranges[i].clone();
        if out > 0 && ranges[out - 1].end > r.start {
            ranges[out - 1].end = ranges[out - 1].end.max(r.end);
        } else {
            ranges[out] = r;
            out += 1;
        }
    }
    ranges.truncate(out);
}

/// A fragment of a body and the matches in it (ranges within the fragment).
#[derive(Debug, PartialEq, Eq)]
pub struct Snippet<'a> {
    fragment: &'a str,
    highlighted: Vec<Range<usize>>,
}

impl fmt::Display for Snippet<'_> {
    /// The snippet as HTML.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.fragment;
        let mut from = 0;
        for hit in &self.highlighted {
            escape_html(f, &text[from..hit.start])?;
            f.write_str("<b>")?;
            escape_html(f, &text[hit.clone()])?;
            f.write_str("</b>")?;
            from = hit.end;
        }
        escape_html(f, &text[from..])
    }
}

impl serde::Serialize for Snippet<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Writes `text` with the five characters HTML gives meaning to as entities.
fn escape_html(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let mut from = 0;
    for (i, b) in text.bytes().enumerate() {
        let entity = match b {
            b'"' => "&quot;",
            b'&' => "&amp;",
            b'\'' => "&#x27;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            _ => continue,
        };
        f.write_str(&text[from..i])?;
        f.write_str(entity)?;
        from = i + 1;
    }
    f.write_str(&text[from..])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tantivy::query::QueryParser;
    use tantivy::schema::{IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
    use tantivy::snippet::SnippetGenerator;
    use tantivy::tokenizer::TextAnalyzer;
    use tantivy::{doc, Index, Searcher};

    use super::*;
    use crate::index::tokenizer::BODY_TOKENIZER;

    /// An index of a few bodies with the body tokenizer, and a query over it.
    fn setup(query: &str) -> (Searcher, Box<dyn Query>, Field) {
        let mut schema = Schema::builder();
        let options = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(BODY_TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let body = schema.add_text_field("body", options);
        let index = Index::create_in_ram(schema.build());
        index.tokenizers().register(BODY_TOKENIZER, TextAnalyzer::from(ChatTokenizer::default()));
        let mut w = index.writer_with_num_threads(1, 15_000_000).expect("writer");
        for text in ["ab cd", "ab ab", "Straße σ İx", "東京タワー 😀", "cd ef gh"] {
            w.add_document(doc!(body => text)).expect("add");
        }
        w.commit().expect("commit");
        let searcher = index.reader().expect("reader").searcher();
        let query = QueryParser::for_index(&index, vec![body]).parse_query(query).expect("query");
        (searcher, query, body)
    }

    fn tantivys(searcher: &Searcher, query: &dyn Query, body: Field, max: usize, text: &str) -> String {
        let mut g = SnippetGenerator::create(searcher, query, body).expect("generator");
        g.set_max_num_chars(max);
        g.snippet(text).to_html()
    }

    #[test]
    fn marks_matches_and_escapes() {
        let (searcher, query, body) = setup("ab OR cd");
        let s = Snippets::create(&searcher, &*query, body, 100).expect("snippets");
        // (A fragment ends with its last token, so the closing quote is not in it.)
        assert_eq!(
            s.snippet("AB & <cd> \"x\" 'y'").to_string(),
            "<b>AB</b> &amp; &lt;<b>cd</b>&gt; &quot;x&quot; &#x27;y"
        );
        assert_eq!(s.snippet("nothing here").to_string(), "", "no match, no snippet");
    }

    #[test]
    fn picks_the_best_window() {
        let (searcher, query, body) = setup("ef OR ab");
        let s = Snippets::create(&searcher, &*query, body, 12).expect("snippets");
        let text = "ab x y z w v u ef ef q";
        assert_eq!(s.snippet(text).to_string(), tantivys(&searcher, &*query, body, 12, text));
    }

    proptest! {
        /// Our HTML is tantivy's, character for character: text full of the
        /// characters HTML escapes, of matches side by side, of case that
        /// lowercases to more than one character, of bigram scripts and emoji.
        #[test]
        fn is_tantivys(
            text in "(ab|AB|cd|ef|gh|東京|タワー|😀|Straße|STRASSE|Σ|σ|İ|ix|[&<>\"' é\n])*",
            max in 1usize..60,
            q in 0usize..6,
        ) {
            let queries = ["ab", "ab OR cd", "\"cd ef\"", "東京 OR 😀", "straße OR σ OR ix", "ab AND zz"];
            let (searcher, query, body) = setup(queries[q]);
            let s = Snippets::create(&searcher, &*query, body, max).expect("snippets");
            prop_assert_eq!(s.snippet(&text).to_string(), tantivys(&searcher, &*query, body, max, &text));
        }
    }
}
