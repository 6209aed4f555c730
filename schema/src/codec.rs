//! The record codec: how one [`Record`] is laid out as bytes in the log.
//! These bytes are what the hash chain covers, so they must be stable forever:
//! a change is a new version byte, and decoders keep reading every old version.
//! `docs/format.md` ("Record, version 1") describes the same layout.
//!
//! ```text
//! u8      record version (1)
//! u8      record type (1 = chat event)
//! varint  flags                      (RecordFlags; unknown bits refused)
//! zigzag  received_at                (ns since the Unix epoch, UTC)
//! str     site
//! varint  conversation id + 1        (0 = none)
//! str     source
//! varint  seq
//! str     network
//! str     kind
//! zigzag  ts                         (ns since the Unix epoch, UTC)
//! zigzag  ts UTC offset in seconds
//! str     from
//! varint  number of recipients, then that many str
//! varint  channel: 0 = none, else byte length + 1, then the bytes
//! str     body
//! u8      direction (0 none, 1 inbound, 2 outbound, 3 internal)
//! varint  number of attrs, then that many (str key, str value), keys ascending
//! ```
//! `varint` is unsigned LEB128 (minimal), `zigzag` a zigzag LEB128 signed
//! integer, `str` a varint byte length followed by that much UTF-8.

use crate::event::{Direction, Event, Record, RecordFlags};
use crate::ids::{ConversationId, SiteId, SourceId};
use crate::time::{EventTime, UnixNanos};
use crate::varint;

/// The version [`encode_record`] writes.
pub const RECORD_VERSION: u8 = 1;
/// Record type of a chat event.
pub const TYPE_EVENT: u8 = 1;

/// Why bytes are not a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("unknown record type {0}")]
    Type(u8),
    #[error("record truncated or malformed at byte {0}")]
    Malformed(usize),
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("{0} unknown flag bits")]
    Flags(u64),
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    varint::put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends the canonical bytes of `r` to `out`.
pub fn encode_record(r: &Record, out: &mut Vec<u8>) {
    out.push(RECORD_VERSION);
    out.push(TYPE_EVENT);
    varint::put_u64(out, r.flags.0);
    varint::put_i64(out, r.received_at.0);
    put_str(out, r.site.as_str());
    varint::put_u64(out, r.conversation_id.map_or(0, |c| c.0 + 1));
    encode_event(&r.event, out);
}

/// A bound no record's encoding exceeds (strings plus ten bytes for every
/// varint), to size group commits without encoding twice.
pub fn encoded_len_bound(r: &Record) -> usize {
    let e = &r.event;
    let strings = r.site.as_str().len()
        + e.source.as_str().len()
        + e.network.len()
        + e.kind.len()
        + e.from.len()
        + e.to.iter().map(String::len).sum::<usize>()
        + e.channel.as_ref().map_or(0, String::len)
        + e.body.len()
        + e.attrs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    let varints = 14 + e.to.len() + 2 * e.attrs.len();
    3 + strings + 10 * varints
}

/// A digest of the event's content (not of what the server added): equal for a
/// retry of the same event, different if its idempotency key is reused.
pub fn event_digest(e: &crate::event::Event) -> [u8; 16] {
    use sha2::Digest;
    let mut bytes = Vec::with_capacity(256);
    encode_event(e, &mut bytes);
    let full: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    full[..16].try_into().expect("16 bytes")
}

/// The event's part of a record: the bytes from `source` to the end. Its hash
/// tells a retry of an event (same bytes) from a reuse of its idempotency key.
pub fn encode_event(e: &crate::event::Event, out: &mut Vec<u8>) {
    put_str(out, e.source.as_str());
    varint::put_u64(out, e.seq);
    put_str(out, &e.network);
    put_str(out, &e.kind);
    varint::put_i64(out, e.ts.instant.0);
    varint::put_i64(out, i64::from(e.ts.utc_offset_secs));
    put_str(out, &e.from);
    varint::put_u64(out, e.to.len() as u64);
    for t in &e.to {
        put_str(out, t);
    }
    match &e.channel {
        None => varint::put_u64(out, 0),
        Some(c) => {
            varint::put_u64(out, c.len() as u64 + 1);
            out.extend_from_slice(c.as_bytes());
        }
    }
    put_str(out, &e.body);
    out.push(match e.direction {
        None => 0,
        Some(Direction::Inbound) => 1,
        Some(Direction::Outbound) => 2,
        Some(Direction::Internal) => 3,
    });
    varint::put_u64(out, e.attrs.len() as u64);
    for (k, v) in &e.attrs {
        put_str(out, k);
        put_str(out, v);
    }
}

/// A cursor over record bytes that reports where it failed.
struct Cursor<'a> {
    all: usize,
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn pos(&self) -> usize {
        self.all - self.rest.len()
    }

    fn err(&self) -> CodecError {
        CodecError::Malformed(self.pos())
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self.rest.split_first().ok_or_else(|| self.err())?;
        self.rest = rest;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let pos = self.pos();
        varint::get_u64(&mut self.rest).ok_or(CodecError::Malformed(pos))
    }

    fn i64(&mut self) -> Result<i64, CodecError> {
        let pos = self.pos();
        varint::get_i64(&mut self.rest).ok_or(CodecError::Malformed(pos))
    }

    fn bytes(&mut self, len: u64) -> Result<&'a [u8], CodecError> {
        // The length is checked against what is left before anything is taken,
        // so a corrupt length can never cause a large allocation.
        let len = usize::try_from(len).ok().filter(|&l| l <= self.rest.len()).ok_or_else(|| self.err())?;
        let (b, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(b)
    }

    fn str_of(&mut self, len: u64, what: &'static str) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.bytes(len)?).map_err(|_| CodecError::Utf8(what))
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, CodecError> {
        let len = self.u64()?;
        self.str_of(len, what)
    }

    fn count(&mut self) -> Result<usize, CodecError> {
        // Every element takes at least one byte, which bounds a sane count.
        let n = self.u64()?;
        usize::try_from(n).ok().filter(|&n| n <= self.rest.len()).ok_or_else(|| self.err())
    }
}

/// A record decoded in place: its text borrowed from the bytes it came
/// from. The read path renders hits from views, so a page of results costs
/// no copy of any body; [`RecordView::to_record`] makes the owned form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub received_at: UnixNanos,
    pub site: &'a str,
    pub conversation_id: Option<ConversationId>,
    pub flags: RecordFlags,
    pub source: &'a str,
    pub seq: u64,
    pub network: &'a str,
    pub kind: &'a str,
    pub ts: EventTime,
    pub from: &'a str,
    pub to: Vec<&'a str>,
    pub channel: Option<&'a str>,
    pub body: &'a str,
    pub direction: Option<Direction>,
    pub attrs: Vec<(&'a str, &'a str)>,
}

impl RecordView<'_> {
    pub fn to_record(&self) -> Record {
        Record {
            received_at: self.received_at,
            site: SiteId::new(self.site),
            conversation_id: self.conversation_id,
            flags: self.flags,
            event: Event {
                source: SourceId::new(self.source),
                seq: self.seq,
                network: self.network.to_owned(),
                kind: self.kind.to_owned(),
                ts: self.ts,
                from: self.from.to_owned(),
                to: self.to.iter().map(|t| (*t).to_owned()).collect(),
                channel: self.channel.map(str::to_owned),
                body: self.body.to_owned(),
                direction: self.direction,
                attrs: self.attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            },
        }
    }
}

/// Decodes one record from exactly `bytes`.
pub fn decode_record(bytes: &[u8]) -> Result<Record, CodecError> {
    decode_view(bytes).map(|v| v.to_record())
}

/// Decodes one record from exactly `bytes`, borrowing its text from them;
/// it refuses what [`decode_record`] refuses.
pub fn decode_view(bytes: &[u8]) -> Result<RecordView<'_>, CodecError> {
    let mut c = Cursor { all: bytes.len(), rest: bytes };
    let version = c.u8()?;
    if version != RECORD_VERSION {
        return Err(CodecError::Version(version));
    }
    let ty = c.u8()?;
    if ty != TYPE_EVENT {
        return Err(CodecError::Type(ty));
    }
    let flags = c.u64()?;
    if flags & !RecordFlags::KNOWN != 0 {
        return Err(CodecError::Flags(flags & !RecordFlags::KNOWN));
    }
    let received_at = UnixNanos(c.i64()?);
    let site = c.str("site")?;
    let conversation_id = match c.u64()? {
        0 => None,
        n => Some(ConversationId(n - 1)),
    };
    let source = c.str("source")?;
    let seq = c.u64()?;
    let network = c.str("network")?;
    let kind = c.str("kind")?;
    let instant = UnixNanos(c.i64()?);
    let utc_offset_secs = i32::try_from(c.i64()?).ok().filter(|o| o.abs() < 86_400).ok_or_else(|| c.err())?;
    let from = c.str("from")?;
    let n_to = c.count()?;
    let mut to = Vec::with_capacity(n_to);
    for _ in 0..n_to {
        to.push(c.str("to")?);
    }
    let channel = match c.u64()? {
        0 => None,
        n => Some(c.str_of(n - 1, "channel")?),
    };
    let body = c.str("body")?;
    let direction = match c.u8()? {
        0 => None,
        1 => Some(Direction::Inbound),
        2 => Some(Direction::Outbound),
        3 => Some(Direction::Internal),
        _ => return Err(CodecError::Malformed(c.pos() - 1)),
    };
    let n_attrs = c.count()?;
    let mut attrs: Vec<(&str, &str)> = Vec::with_capacity(n_attrs);
    for _ in 0..n_attrs {
        let k = c.str("attrs")?;
        let v = c.str("attrs")?;
        if attrs.last().is_some_and(|(last, _)| *last >= k) {
            return Err(c.err());
        }
        attrs.push((k, v));
    }
    if !c.rest.is_empty() {
        return Err(CodecError::Trailing(c.rest.len()));
    }
    Ok(RecordView {
        received_at,
        site,
        conversation_id,
        flags: RecordFlags(flags),
        source,
        seq,
        network,
        kind,
        ts: EventTime { instant, utc_offset_secs },
        from,
        to,
        channel,
        body,
        direction,
        attrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            (any::<i64>(), "[a-z]{1,8}", proptest::option::of(0u64..u64::MAX), 0u64..4),
            ("[a-z0-9-]{1,16}", any::<u64>(), "[a-z]{1,8}", "[a-z]{1,8}", any::<i64>(), -86_399i32..86_399),
            (".{1,12}", proptest::collection::vec(".{1,12}", 0..4), proptest::option::of(".{0,12}"), ".*", 0u8..4),
            proptest::collection::btree_map(".{1,6}", ".{0,6}", 0..4),
        )
            .prop_map(
                |((rx, site, conv, flags), (src, seq, net, kind, ts, off), (from, to, channel, body, dir), attrs)| {
                    Record {
                        received_at: UnixNanos(rx),
                        site: SiteId::new(site),
                        conversation_id: conv.map(ConversationId),
                        flags: RecordFlags(flags),
                        event: Event {
                            source: SourceId::new(src),
                            seq,
                            network: net,
                            kind,
                            ts: EventTime { instant: UnixNanos(ts), utc_offset_secs: off },
                            from,
                            to,
                            channel,
                            body,
                            direction: [
                                None,
                                Some(Direction::Inbound),
                                Some(Direction::Outbound),
                                Some(Direction::Internal),
                            ][dir as usize],
                            attrs,
                        },
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn round_trips(r in arb_record()) {
            let mut bytes = Vec::new();
            encode_record(&r, &mut bytes);
            prop_assert!(bytes.len() <= encoded_len_bound(&r));
            prop_assert_eq!(decode_record(&bytes), Ok(r));
        }

        #[test]
        fn a_view_borrows_its_text_from_the_bytes(r in arb_record()) {
            let mut bytes = Vec::new();
            encode_record(&r, &mut bytes);
            let view = decode_view(&bytes).expect("a record");
            let inside = |s: &str| bytes.as_ptr_range().contains(&s.as_ptr()) || s.is_empty();
            prop_assert!(inside(view.body) && inside(view.from) && inside(view.site));
            prop_assert!(view.to.iter().all(|t| inside(t)));
            prop_assert_eq!(view.body, r.event.body.as_str());
            prop_assert_eq!(view.to_record(), r);
        }

        #[test]
        fn every_truncation_is_refused(r in arb_record()) {
            let mut bytes = Vec::new();
            encode_record(&r, &mut bytes);
            for cut in 0..bytes.len() {
                prop_assert!(decode_record(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes);
        }
    }

    #[test]
    fn refuses_unknown_versions_and_trailing_bytes() {
        assert_eq!(decode_record(&[2, 1]), Err(CodecError::Version(2)));
        assert_eq!(decode_record(&[1, 9]), Err(CodecError::Type(9)));
        assert_eq!(decode_record(&[1, 1, 0x80, 0x01]), Err(CodecError::Flags(128)));
    }
}
