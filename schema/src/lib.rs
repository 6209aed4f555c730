//! `verbatim-schema`: the event model of Verbatim and everything about it that
//! needs no I/O — ids and newtypes, the wire format v1, validation with
//! configurable limits, and the versioned binary record codec the log stores.
//!
//! Other crates depend on this one; it depends on none of ours.

pub mod codec;
pub mod event;
pub mod ids;
pub mod time;
pub mod validate;
pub mod varint;
pub mod wire;

pub use codec::{decode_record, decode_view, encode_record, CodecError, RecordView, RECORD_VERSION};
pub use event::{Direction, Event, Record, RecordFlags};
pub use ids::{ConversationId, Offset, SiteId, SourceId};
pub use time::{EventTime, UnixNanos};
pub use validate::{Limits, TimePlausibility, ValidationError};
pub use wire::{parse_batch, parse_ndjson, BatchError, WireEvent};
