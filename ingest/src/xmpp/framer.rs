//! Cuts an XMPP byte stream into its stream header, whole top-level stanzas
//! and the rest, without building a tree, so every byte can be forwarded as
//! it came.

/// A piece of an XML stream, at the stream's top level.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// `<?xml …?>` and `<stream:stream …>`.
    Header(Vec<u8>),
    /// One whole element at depth 1.
    Stanza(Vec<u8>),
    /// Whitespace keep-alives, `</stream:stream>`.
    Other(Vec<u8>),
}

/// Cuts a byte stream into [`Frame`]s.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned, and the element depth there.
    scanned: usize,
    depth: usize,
    max: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    TooLarge(usize),
    Malformed(String),
}

impl Framer {
    pub fn new(max: usize) -> Self {
        Framer { buf: Vec::new(), scanned: 0, depth: 0, max }
    }

    /// Feeds bytes; returns the frames they complete, and the error that
    /// stopped framing, if any (bytes not framed stay in [`Framer::rest`]).
    pub fn push(&mut self, data: &[u8]) -> (Vec<Frame>, Option<FrameError>) {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            let Some(lt) = self.buf[self.scanned..].iter().position(|&b| b == b'<').map(|i| self.scanned + i) else {
                // Only text left: between stanzas it goes at once.
                if self.depth <= 1 && self.scanned == 0 && !self.buf.is_empty() {
                    out.push(Frame::Other(std::mem::take(&mut self.buf)));
                } else {
                    self.scanned = self.buf.len();
                }
                break;
            };
            if self.depth <= 1 && self.scanned == 0 && lt > 0 {
                out.push(Frame::Other(self.buf.drain(..lt).collect()));
                continue;
            }
            let end = match tag_end(&self.buf[lt..]) {
                Ok(Some(end)) => end,
                Ok(None) => {
                    self.scanned = lt;
                    break;
                }
                Err(e) => return (out, Some(FrameError::Malformed(e))),
            };
            self.scanned = lt + end;
            match (tag_kind(&self.buf[lt..lt + end]), self.depth) {
                (TagKind::Special, 0) => out.push(Frame::Header(self.take())),
                (TagKind::Special, 1) => out.push(Frame::Other(self.take())),
                (TagKind::Special, _) | (TagKind::Empty, 2..) => {}
                (TagKind::Open, 0) => {
                    self.depth = 1;
                    out.push(Frame::Header(self.take()));
                }
                (TagKind::Open, _) => self.depth += 1,
                (TagKind::Empty, 1) => out.push(Frame::Stanza(self.take())),
                // slixmpp closes a restarted stream twice: harmless, passed on.
                (TagKind::Close, 0) => out.push(Frame::Other(self.take())),
                (TagKind::Empty, 0) => {
                    return (out, Some(FrameError::Malformed("an element outside the stream".into())))
                }
                (TagKind::Close, 1) => {
                    self.depth = 0;
                    out.push(Frame::Other(self.take()));
                }
                (TagKind::Close, _) => {
                    self.depth -= 1;
                    if self.depth == 1 {
                        out.push(Frame::Stanza(self.take()));
                    }
                }
            }
        }
        let err = (self.buf.len() > self.max).then_some(FrameError::TooLarge(self.max));
        (out, err)
    }

    /// Bytes not yet framed.
    pub fn rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }

    fn take(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.scanned);
        self.scanned = 0;
        std::mem::replace(&mut self.buf, rest)
    }

    /// After a stream restart (SASL success, STARTTLS) the next header opens
    /// a new stream.
    pub fn restart(&mut self) {
        self.depth = 0;
    }
}

enum TagKind {
    Open,
    Close,
    Empty,
    /// `<?…?>`, `<!--…-->`, `<![CDATA[…]]>`, `<!…>`.
    Special,
}

fn tag_kind(tag: &[u8]) -> TagKind {
    if tag.starts_with(b"<?") || tag.starts_with(b"<!") {
        TagKind::Special
    } else if tag.starts_with(b"</") {
        TagKind::Close
    } else if tag.ends_with(b"/>") {
        TagKind::Empty
    } else {
        TagKind::Open
    }
}

/// Length of the tag at the start of `s` (which starts with `<`), or
/// `None` if it is not complete yet.
pub(super) fn tag_end(s: &[u8]) -> Result<Option<usize>, String> {
    let find =
        |pat: &[u8], from: usize| s[from..].windows(pat.len()).position(|w| w == pat).map(|i| from + i + pat.len());
    if s.starts_with(b"<!--") {
        return Ok(find(b"-->", 4));
    }
    if s.starts_with(b"<![CDATA[") {
        return Ok(find(b"]]>", 9));
    }
    if s.starts_with(b"<?") {
        return Ok(find(b"?>", 2));
    }
    if s.len() >= 9 && s.starts_with(b"<!") && !b"<![CDATA[".starts_with(&s[..9]) {
        return Err("DTDs are not allowed in XMPP".into());
    }
    let mut quote = None;
    for (i, &b) in s.iter().enumerate().skip(1) {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return Ok(Some(i + 1)),
            (None, b'<') => return Err("`<` inside a tag".into()),
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_OPEN: &str = "<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' \
                               xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

    fn frames(data: &[u8], split: usize) -> Vec<Frame> {
        let mut f = Framer::new(1 << 16);
        let (mut out, err) = f.push(&data[..split]);
        assert_eq!(err, None);
        let (more, err) = f.push(&data[split..]);
        assert_eq!(err, None);
        out.extend(more);
        out
    }

    #[test]
    fn the_framer_cuts_whole_stanzas_whatever_the_reads() {
        let stream = format!(
            "{CLIENT_OPEN} <message to='b@x' type='chat'><body>a &lt;b&gt; 'q' \"d\" <![CDATA[<raw>]]></body></message>\
             <presence/><iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq></stream:stream>"
        );
        for split in 0..stream.len() {
            let got = frames(stream.as_bytes(), split);
            let stanzas: Vec<String> = got
                .iter()
                .filter_map(|f| match f {
                    Frame::Stanza(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })
                .collect();
            assert_eq!(stanzas.len(), 3, "split {split}: {got:?}");
            assert!(stanzas[0].starts_with("<message") && stanzas[0].ends_with("</message>"));
            assert_eq!(stanzas[1], "<presence/>");
            let all: Vec<u8> = got
                .into_iter()
                .flat_map(|f| match f {
                    Frame::Header(b) | Frame::Stanza(b) | Frame::Other(b) => b,
                })
                .collect();
            assert_eq!(all, stream.as_bytes(), "every byte is forwarded");
        }
    }
}
