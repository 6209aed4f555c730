//! Tests of the whole log over the in-memory storage: a model test with
//! crashes, death at every storage operation, and damage at rest.

mod corruption;
mod crash_points;
mod model;

use std::path::Path;
use std::sync::Arc;

use verbatim_schema::{ConversationId, Direction, Event, EventTime, Record, RecordFlags, SiteId, SourceId, UnixNanos};

use super::io::MemStorage;
use super::{Log, LogConfig, LogError, LogReader};

pub(super) const DIR: &str = "/data/log";

/// Tiny segments and blocks, so that rolling and sealing happen constantly.
pub(crate) fn small_config() -> LogConfig {
    LogConfig {
        segment_max_bytes: 4096,
        segment_max_age_secs: u64::MAX,
        sealed_block_bytes: 4096,
        // Tiny blocks too take the zstd path, which these tests exercise.
        compress_min_bytes: 0,
        ..LogConfig::default()
    }
}

pub(super) fn open(storage: &MemStorage, config: &LogConfig) -> Result<Log, LogError> {
    Log::open(Arc::new(storage.clone()), Path::new(DIR), config.clone())
}

/// Bodies that exercise the byte-exact promise.
pub(super) const HOSTILE: &[&str] = &[
    "",
    "plain ascii",
    "nul \u{0} inside",
    "bidi \u{202E}override\u{202C} and \u{2067}isolate\u{2069}",
    "zwj family \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\u{200D}\u{1F466} flags \u{1F1FA}\u{1F1F8}",
    "\u{301}\u{302} lone combining marks \u{20DD}",
    "mixed 日本語のテキスト ภาษาไทย العربية",
    "control \u{1b}[31m red \u{7f} \r\n crlf",
    "\u{FEFF}bom and \u{FFFD} replacement",
];

/// A deterministic record; `body_len` bytes of varied text.
pub(crate) fn record(n: u64, body_len: usize) -> Record {
    let mut body = String::from(HOSTILE[(n as usize) % HOSTILE.len()]);
    while body.len() < body_len {
        body.push_str(" chat text ");
        body.push_str(&n.to_string());
    }
    Record {
        received_at: UnixNanos(0),
        site: SiteId::new("local"),
        conversation_id: n.is_multiple_of(3).then_some(ConversationId(n / 3)),
        flags: RecordFlags::default(),
        event: Event {
            source: SourceId::new(format!("proxy-{}", n % 4)),
            seq: n,
            network: ["irc", "xmpp", "sip"][(n % 3) as usize].into(),
            kind: "message".into(),
            ts: EventTime {
                instant: UnixNanos(1_800_000_000_000_000_000 + n as i64 * 1_000_000),
                utc_offset_secs: 3600,
            },
            from: format!("user{}", n % 17),
            to: vec![format!("user{}", (n + 1) % 17)],
            channel: n.is_multiple_of(5).then(|| "#desk".to_string()),
            body,
            direction: Some(Direction::Internal),
            attrs: [("k".to_string(), n.to_string())].into(),
        },
    }
}

/// Asserts that the log holds exactly `model`, by offset and by iteration.
pub(super) fn assert_holds(reader: &LogReader, model: &[Record]) {
    assert_eq!(reader.head().0, model.len() as u64, "head");
    let all: Vec<Record> = reader.iter_from(verbatim_schema::Offset(0)).map(|r| r.expect("iterating").1).collect();
    assert_eq!(all.len(), model.len());
    for (i, (got, want)) in all.iter().zip(model).enumerate() {
        assert_eq!(got, want, "record {i}");
    }
}
