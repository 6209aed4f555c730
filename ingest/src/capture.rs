//! What a protocol decoder finds in a stream, before it becomes a wire event.

use std::collections::BTreeMap;

use verbatim_schema::{UnixNanos, WireEvent};

/// Which way a chat line travelled, seen from the employee behind the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// From the employee's client towards the network.
    Outbound,
    /// From the network to the employee.
    Inbound,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Outbound => "outbound",
            Flow::Inbound => "inbound",
        }
    }
}

/// One captured event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub network: String,
    pub kind: String,
    pub from: String,
    pub to: Vec<String>,
    pub channel: Option<String>,
    pub body: Option<String>,
    pub direction: Option<Flow>,
    pub attrs: BTreeMap<String, String>,
}

impl Capture {
    pub fn new(network: &str, kind: &str, from: &str) -> Self {
        Capture {
            network: network.to_owned(),
            kind: kind.to_owned(),
            from: from.to_owned(),
            to: Vec::new(),
            channel: None,
            body: None,
            direction: None,
            attrs: BTreeMap::new(),
        }
    }

    /// A chat message: strict logging gates these.
    pub fn is_chat(&self) -> bool {
        self.kind == "message"
    }

    /// The conversation it belongs to on one connection: the channel, or the
    /// set of participants.
    pub fn conversation_key(&self) -> String {
        match &self.channel {
            Some(c) => format!("#{c}"),
            None => {
                let mut p: Vec<&str> = self.to.iter().map(String::as_str).chain([self.from.as_str()]).collect();
                p.sort_unstable();
                p.dedup();
                p.join("\u{0}")
            }
        }
    }

    pub fn attr(mut self, k: &str, v: impl Into<String>) -> Self {
        self.attrs.insert(k.to_owned(), v.into());
        self
    }

    /// The wire event (source and seq are filled in by the recorder).
    pub fn into_wire(self, ts: UnixNanos) -> WireEvent {
        WireEvent {
            source: String::new(),
            seq: 0,
            network: self.network,
            kind: self.kind,
            ts: ts.to_rfc3339(),
            from: self.from,
            to: self.to,
            channel: self.channel,
            body: self.body,
            direction: self.direction.map(|d| d.as_str().to_owned()),
            attrs: self.attrs,
        }
    }
}

/// Text of a protocol line: UTF-8 as is; anything else read as Latin-1 (one
/// char per byte, so the bytes can be recovered) and said so.
pub fn text_of(bytes: &[u8]) -> (String, Option<&'static str>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => (bytes.iter().map(|&b| b as char).collect(), Some("latin1")),
    }
}

/// Splits a byte stream into lines (LF or CRLF), keeping each line's bytes
/// as sent so it can be forwarded unchanged. A line longer than `max` is not
/// buffered: its bytes are handed out as [`Piece::Oversize`] as they come.
#[derive(Debug)]
pub struct Lines {
    buf: Vec<u8>,
    max: usize,
    /// Inside a line that went past `max`.
    oversize: bool,
}

/// A piece of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A whole line with its terminator.
    Line(Vec<u8>),
    /// Bytes of a line too long to decode; `end` on its last piece.
    Oversize { bytes: Vec<u8>, end: bool },
}

impl Lines {
    pub fn new(max: usize) -> Self {
        Lines { buf: Vec::new(), max, oversize: false }
    }

    /// Feeds bytes; returns the pieces they complete.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let take = nl.map_or(data.len(), |i| i + 1);
            let (now, rest) = data.split_at(take);
            data = rest;
            if self.oversize {
                out.push(Piece::Oversize { bytes: now.to_vec(), end: nl.is_some() });
                self.oversize = nl.is_none();
                continue;
            }
            self.buf.extend_from_slice(now);
            if nl.is_some() && self.buf.len() <= self.max {
                out.push(Piece::Line(std::mem::take(&mut self.buf)));
            } else if nl.is_some() {
                out.push(Piece::Oversize { bytes: std::mem::take(&mut self.buf), end: true });
            } else if self.buf.len() > self.max {
                out.push(Piece::Oversize { bytes: std::mem::take(&mut self.buf), end: false });
                self.oversize = true;
            }
        }
        out
    }

    /// Bytes held waiting for the end of their line.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// A line without its CR LF / LF terminator.
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_whole_whatever_the_reads() {
        let stream = b"PRIVMSG #a :one\r\nPRIVMSG #a :two\nPING x\r\n";
        for split in 1..stream.len() {
            let mut l = Lines::new(512);
            let mut got = l.push(&stream[..split]);
            got.extend(l.push(&stream[split..]));
            let lines: Vec<Vec<u8>> = got
                .into_iter()
                .map(|p| match p {
                    Piece::Line(b) => b,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(lines.concat(), stream.to_vec());
            assert_eq!(lines.len(), 3);
            assert!(l.pending().is_empty());
        }
    }

    #[test]
    fn an_oversize_line_passes_as_pieces_and_the_next_line_is_whole() {
        let mut l = Lines::new(16);
        let mut got = l.push(&[b'x'; 40]);
        got.extend(l.push(b"yy\r\nNEXT\r\n"));
        let bytes: usize = got
            .iter()
            .map(|p| match p {
                Piece::Oversize { bytes, .. } => bytes.len(),
                Piece::Line(_) => 0,
            })
            .sum();
        assert_eq!(bytes, 44);
        assert!(matches!(got.iter().rev().nth(1), Some(Piece::Oversize { end: true, .. })));
        assert_eq!(got.last(), Some(&Piece::Line(b"NEXT\r\n".to_vec())));
    }

    #[test]
    fn a_long_line_in_one_read_is_oversize_too() {
        let mut l = Lines::new(16);
        let line = [&[b'x'; 40][..], b"\r\n"].concat();
        assert_eq!(l.push(&line), vec![Piece::Oversize { bytes: line.clone(), end: true }]);
        assert_eq!(l.push(b"ok\n"), vec![Piece::Line(b"ok\n".to_vec())]);
    }

    #[test]
    fn text_keeps_bytes_recoverable() {
        assert_eq!(text_of("héllo".as_bytes()), ("héllo".to_owned(), None));
        let (t, enc) = text_of(b"caf\xe9");
        assert_eq!((t.as_str(), enc), ("café", Some("latin1")));
        assert_eq!(t.chars().map(|c| c as u32 as u8).collect::<Vec<_>>(), b"caf\xe9");
    }

    #[test]
    fn private_conversation_keys_ignore_direction() {
        let mut a = Capture::new("irc", "message", "alice");
        a.to = vec!["bob".into()];
        let mut b = Capture::new("irc", "message", "bob");
        b.to = vec!["alice".into()];
        assert_eq!(a.conversation_key(), b.conversation_key());
    }
}
