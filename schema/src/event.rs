//! Validated events and the records the log stores.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ids::{ConversationId, Offset, SiteId, SourceId};
use crate::time::{EventTime, UnixNanos};

/// Who is on which side of the firm's boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
    Internal,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            "internal" => Some(Direction::Internal),
            _ => None,
        }
    }
}

/// An event as a front end captured it, after validation (wire format v1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub source: SourceId,
    pub seq: u64,
    pub network: String,
    pub kind: String,
    pub ts: EventTime,
    pub from: String,
    pub to: Vec<String>,
    pub channel: Option<String>,
    /// Any valid UTF-8, stored byte-exact.
    pub body: String,
    pub direction: Option<Direction>,
    pub attrs: BTreeMap<String, String>,
}

/// Facts about a record the server noticed but did not act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RecordFlags(pub u64);

impl RecordFlags {
    /// `ts` lies further in the future than the server's clock allows.
    pub const TS_FUTURE: u64 = 1;
    /// `ts` lies further in the past than the server's clock allows.
    pub const TS_PAST: u64 = 1 << 1;
    /// Every flag this version knows; a decoder refuses others.
    pub const KNOWN: u64 = Self::TS_FUTURE | Self::TS_PAST;

    pub fn contains(self, flag: u64) -> bool {
        self.0 & flag == flag
    }

    /// The flags' names, for people and JSON.
    pub fn names(self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.contains(Self::TS_FUTURE) {
            names.push("ts_future");
        }
        if self.contains(Self::TS_PAST) {
            names.push("ts_past");
        }
        names
    }
}

/// One entry of the log: an event plus what the server added when it stored
/// it. The record's offset is its position in the log and is not part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The server's clock when the event was accepted (monotonic per log).
    pub received_at: UnixNanos,
    pub site: SiteId,
    pub conversation_id: Option<ConversationId>,
    pub flags: RecordFlags,
    pub event: Event,
}

#[derive(Serialize)]
struct RecordJson<'a> {
    offset: u64,
    received_at: String,
    site: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_id: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flags: Vec<&'static str>,
    source: &'a str,
    seq: u64,
    network: &'a str,
    kind: &'a str,
    ts: String,
    from: &'a str,
    to: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attrs: &'a BTreeMap<String, String>,
}

impl Record {
    /// The record as one line of JSON (no newline), fields in wire order with
    /// the server's fields first. The body survives any JSON decoder byte-exact.
    pub fn to_json(&self, offset: Offset) -> String {
        let e = &self.event;
        let json = RecordJson {
            offset: offset.0,
            received_at: self.received_at.to_rfc3339(),
            site: self.site.as_str(),
            conversation_id: self.conversation_id.map(|c| c.0),
            flags: self.flags.names(),
            source: e.source.as_str(),
            seq: e.seq,
            network: &e.network,
            kind: &e.kind,
            ts: e.ts.to_rfc3339(),
            from: &e.from,
            to: &e.to,
            channel: e.channel.as_deref(),
            body: &e.body,
            direction: e.direction.map(Direction::as_str),
            attrs: &e.attrs,
        };
        serde_json::to_string(&json).expect("a record always serializes")
    }
}
