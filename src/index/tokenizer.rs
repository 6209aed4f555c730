//! The body tokenizer: Unicode words, lowercased; overlapping character
//! bigrams for scripts written without spaces (Han, kana, Thai, Lao, Khmer,
//! Myanmar); each emoji a token of its own. Queries go through the same
//! tokenizer, so a CJK word in a query becomes a phrase of its bigrams.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// Name under which the index registers [`ChatTokenizer`].
pub const BODY_TOKENIZER: &str = "verbatim_body";
/// Name of the tokenizer of identity fields: the whole value, lowercased.
pub const ID_TOKENIZER: &str = "verbatim_id";

/// Words longer than this many bytes (base64 blobs, long URLs) are not indexed.
pub const MAX_WORD_BYTES: usize = 255;

#[derive(Clone, Debug, Default)]
pub struct ChatTokenizer {
    token: Token,
}

impl Tokenizer for ChatTokenizer {
    type TokenStream<'a> = ChatTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> ChatTokenStream<'a> {
        self.token.reset();
        self.token.position = usize::MAX;
        ChatTokenStream { text, pos: 0, run: None, token: &mut self.token }
    }
}

#[derive(Debug)]
pub struct ChatTokenStream<'a> {
    text: &'a str,
    pos: usize,
    /// Inside a run of a space-less script: (start, length) of the previous
    /// character, and whether a bigram has been emitted for this run.
    run: Option<(usize, usize, bool)>,
    token: &'a mut Token,
}

/// Scripts written without spaces between words: indexed as bigrams.
pub fn is_ngram_char(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF // Hiragana, Katakana
        | 0x31F0..=0x31FF // Katakana phonetic extensions
        | 0x3400..=0x4DBF // CJK extension A
        | 0x4E00..=0x9FFF // CJK unified ideographs
        | 0xF900..=0xFAFF // CJK compatibility ideographs
        | 0xFF66..=0xFF9F // halfwidth Katakana
        | 0x20000..=0x2FA1F // CJK extensions B-F, compatibility supplement
        | 0x0E00..=0x0E7F // Thai
        | 0x0E80..=0x0EFF // Lao
        | 0x1000..=0x109F // Myanmar
        | 0x1780..=0x17FF // Khmer
    )
}

/// Pictographs (emoji and symbols): each one a token.
pub fn is_symbol_char(c: char) -> bool {
    matches!(c as u32,
        0x2600..=0x27BF | 0x2B00..=0x2BFF | 0x1F000..=0x1F3FA | 0x1F400..=0x1FAFF
    )
}

/// Combining marks that belong to the word they follow (accents, Indic vowel signs).
fn is_mark(c: char) -> bool {
    matches!(c as u32,
        0x0300..=0x036F | 0x0483..=0x0489 | 0x0591..=0x05BD | 0x0610..=0x061A | 0x064B..=0x065F
        | 0x0900..=0x0963 | 0x0966..=0x0DFF | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF
        | 0xFE20..=0xFE2F
    )
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_mark(c)
}

impl ChatTokenStream<'_> {
    fn emit(&mut self, from: usize, to: usize, lowercase: bool) {
        let t = &mut *self.token;
        t.position = t.position.wrapping_add(1);
        t.offset_from = from;
        t.offset_to = to;
        t.text.clear();
        let s = &self.text[from..to];
        if !lowercase {
            t.text.push_str(s);
        } else if s.is_ascii() {
            t.text.push_str(s);
            t.text.make_ascii_lowercase();
        } else {
            t.text.extend(s.chars().flat_map(char::to_lowercase));
        }
    }

    fn char_at(&self, pos: usize) -> Option<char> {
        self.text[pos..].chars().next()
    }

    /// The next token as a span of the text: `(from, to, lowercase)`, where
    /// `lowercase` says the token's text is the span lowercased (a word)
    /// rather than the span itself (a bigram or a symbol). Skips writing the
    /// token's text, for callers that compare it in place.
    pub fn next_span(&mut self) -> Option<(usize, usize, bool)> {
        loop {
            if let Some((prev, prev_len, emitted)) = self.run {
                match self.char_at(self.pos) {
                    Some(c) if is_ngram_char(c) => {
                        let end = self.pos + c.len_utf8();
                        self.run = Some((self.pos, c.len_utf8(), true));
                        self.pos = end;
                        return Some((prev, end, false));
                    }
                    _ => {
                        self.run = None;
                        if !emitted {
                            return Some((prev, prev + prev_len, false));
                        }
                    }
                }
            }
            // Spaces and ASCII punctuation, a byte at a time.
            let bytes = self.text.as_bytes();
            while self.pos < bytes.len() && bytes[self.pos].is_ascii() && !bytes[self.pos].is_ascii_alphanumeric() {
                self.pos += 1;
            }
            let c = self.char_at(self.pos)?;
            let start = self.pos;
            self.pos += c.len_utf8();
            if is_ngram_char(c) {
                self.run = Some((start, c.len_utf8(), false));
            } else if is_symbol_char(c) {
                return Some((start, self.pos, false));
            } else if is_word_char(c) {
                loop {
                    // ASCII letters and digits, a byte at a time; an ASCII
                    // byte that is neither ends the word below.
                    while self.pos < bytes.len() && bytes[self.pos].is_ascii_alphanumeric() {
                        self.pos += 1;
                    }
                    match self.char_at(self.pos) {
                        Some(n) if !n.is_ascii() && is_word_char(n) && !is_ngram_char(n) => self.pos += n.len_utf8(),
                        _ => break,
                    }
                }
                if self.pos - start <= MAX_WORD_BYTES {
                    return Some((start, self.pos, true));
                }
            }
        }
    }
}

impl TokenStream for ChatTokenStream<'_> {
    fn advance(&mut self) -> bool {
        match self.next_span() {
            Some((from, to, lowercase)) => {
                self.emit(from, to, lowercase);
                true
            }
            None => false,
        }
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<(String, usize)> {
        let mut t = ChatTokenizer::default();
        let mut s = t.token_stream(text);
        let mut out = Vec::new();
        while s.advance() {
            let tok = s.token();
            assert_eq!(&text[tok.offset_from..tok.offset_to].to_lowercase(), &tok.text.to_lowercase());
            out.push((tok.text.clone(), tok.position));
        }
        out
    }

    fn words(text: &str) -> Vec<String> {
        tokens(text).into_iter().map(|(w, _)| w).collect()
    }

    #[test]
    fn latin_words_are_lowercased_and_split_on_punctuation() {
        assert_eq!(words("Hello, WORLD! don't re-send"), ["hello", "world", "don", "t", "re", "send"]);
        assert_eq!(words("Grüße aus Köln"), ["grüße", "aus", "köln"]);
        assert_eq!(words("ÉCOLE"), ["école"]);
        assert_eq!(words("  "), Vec::<String>::new());
    }

    #[test]
    fn positions_are_consecutive() {
        let t = tokens("a b 東京都 c");
        let pos: Vec<usize> = t.iter().map(|(_, p)| *p).collect();
        assert_eq!(pos, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn cjk_and_thai_become_bigrams() {
        assert_eq!(words("東京都に住む"), ["東京", "京都", "都に", "に住", "住む"]);
        assert_eq!(words("我爱北京"), ["我爱", "爱北", "北京"]);
        assert_eq!(words("สวัสดี"), ["สว", "วั", "ัส", "สด", "ดี"]);
        assert_eq!(words("東"), ["東"]);
        assert_eq!(words("abc東京def"), ["abc", "東京", "def"]);
        assert_eq!(words("東 京"), ["東", "京"]);
    }

    #[test]
    fn emoji_are_tokens_and_combining_marks_stay_in_words() {
        assert_eq!(words("ship it🚀🚀 now"), ["ship", "it", "🚀", "🚀", "now"]);
        assert_eq!(words("👍🏽"), ["👍"]);
        assert_eq!(words("नमस्ते दुनिया"), ["नमस्ते", "दुनिया"]);
        assert_eq!(words("cafe\u{301}"), ["cafe\u{301}"]);
    }

    /// The tokenizer before its ASCII fast paths: one character at a time.
    fn reference(text: &str) -> Vec<(String, usize, usize)> {
        let mut out = Vec::new();
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let end_of = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i].1;
            if is_ngram_char(c) {
                let run = i;
                while i < chars.len() && is_ngram_char(chars[i].1) {
                    i += 1;
                }
                if i - run == 1 {
                    out.push((text[chars[run].0..end_of(run + 1)].to_string(), chars[run].0, end_of(run + 1)));
                }
                for k in run..i.saturating_sub(1) {
                    out.push((text[chars[k].0..end_of(k + 2)].to_string(), chars[k].0, end_of(k + 2)));
                }
            } else if is_symbol_char(c) {
                out.push((c.to_string(), chars[i].0, end_of(i + 1)));
                i += 1;
            } else if is_word_char(c) {
                let start = i;
                while i < chars.len() && is_word_char(chars[i].1) && !is_ngram_char(chars[i].1) {
                    i += 1;
                }
                let (from, to) = (chars[start].0, end_of(i));
                if to - from <= MAX_WORD_BYTES {
                    out.push((text[from..to].chars().flat_map(char::to_lowercase).collect(), from, to));
                }
            } else {
                i += 1;
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn fast_paths_change_no_token(text in "([a-zA-Z0-9 ,.'!?-]{0,6}|[ÀéüßÖ\u{301}\u{900}-\u{97f}]{0,3}|[東京都に住むสวัสดี]{0,3}|[🚀👍\u{1f3fd}]{0,2}){0,12}") {
            let mut t = ChatTokenizer::default();
            let mut s = t.token_stream(&text);
            let mut got = Vec::new();
            while s.advance() {
                let tok = s.token();
                got.push((tok.text.clone(), tok.offset_from, tok.offset_to));
            }
            proptest::prop_assert_eq!(got, reference(&text));
        }
    }

    #[test]
    fn overlong_words_are_skipped() {
        let long = "x".repeat(MAX_WORD_BYTES + 1);
        assert_eq!(words(&format!("a {long} b")), ["a", "b"]);
    }
}
