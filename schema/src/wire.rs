//! Wire format v1: one JSON object per event; a batch is a JSON array or NDJSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::ValidationError;

/// An event as it arrives, before validation. Unknown fields are refused so a
/// misspelt field is an error, not silently lost data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireEvent {
    pub source: String,
    pub seq: u64,
    pub network: String,
    pub kind: String,
    pub ts: String,
    pub from: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
}

/// Why a batch was refused; `index` is the event's position in the batch
/// (0-based) where it is known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("event {index}: {message}")]
    Syntax { index: usize, message: String },
    #[error("event {index}: field `{}`: {}", .error.field, .error.problem)]
    Invalid { index: usize, error: ValidationError },
    #[error("the batch holds no events")]
    Empty,
    #[error("the batch holds more than {limit} events")]
    TooMany { limit: usize },
}

/// Parses a batch: a JSON array of events, or NDJSON (one object per line,
/// blank lines allowed). Refuses an empty batch and one longer than `max_events`.
pub fn parse_batch(bytes: &[u8], max_events: usize) -> Result<Vec<WireEvent>, BatchError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let events = match first {
        None => return Err(BatchError::Empty),
        Some(b'[') => parse_array(bytes, max_events)?,
        Some(_) => parse_ndjson(bytes, max_events)?,
    };
    if events.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(events)
}

fn parse_array(bytes: &[u8], max_events: usize) -> Result<Vec<WireEvent>, BatchError> {
    let values: Vec<serde_json::Value> = serde_json::from_slice(bytes)
        .map_err(|e| BatchError::Syntax { index: 0, message: format!("not a JSON array of events: {e}") })?;
    if values.len() > max_events {
        return Err(BatchError::TooMany { limit: max_events });
    }
    values
        .into_iter()
        .enumerate()
        .map(|(index, v)| serde_json::from_value(v).map_err(|e| BatchError::Syntax { index, message: e.to_string() }))
        .collect()
}

/// Parses NDJSON: one event per non-blank line.
pub fn parse_ndjson(bytes: &[u8], max_events: usize) -> Result<Vec<WireEvent>, BatchError> {
    let mut events = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let index = events.len();
        if index >= max_events {
            return Err(BatchError::TooMany { limit: max_events });
        }
        let event = serde_json::from_slice(line).map_err(|e| BatchError::Syntax { index, message: e.to_string() })?;
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: &str = r#"{"source":"s","seq":1,"network":"irc","kind":"message","ts":"2026-01-01T00:00:00Z","from":"a","to":["b"],"body":"hi"}"#;

    #[test]
    fn array_and_ndjson_agree() {
        let arr = parse_batch(format!("[{EV},{EV}]").as_bytes(), 10).expect("array");
        let nd = parse_batch(format!("{EV}\n\n{EV}\n").as_bytes(), 10).expect("ndjson");
        assert_eq!(arr, nd);
        assert_eq!(arr.len(), 2);
    }

    #[test]
    fn refuses_bad_batches_with_the_index() {
        assert_eq!(parse_batch(b"  ", 10), Err(BatchError::Empty));
        assert_eq!(parse_batch(b"[]", 10), Err(BatchError::Empty));
        assert!(matches!(
            parse_batch(format!("{EV}\n{{\"seq\":").as_bytes(), 10),
            Err(BatchError::Syntax { index: 1, .. })
        ));
        assert!(matches!(parse_batch(format!("[{EV}] x").as_bytes(), 10), Err(BatchError::Syntax { .. })));
        assert_eq!(parse_batch(format!("{EV}\n{EV}").as_bytes(), 1), Err(BatchError::TooMany { limit: 1 }));
        let unknown = EV.replace("\"body\"", "\"bdy\"");
        assert!(matches!(parse_batch(unknown.as_bytes(), 10), Err(BatchError::Syntax { index: 0, .. })));
        let dup = EV.replace("\"seq\":1", "\"seq\":1,\"seq\":2");
        assert!(matches!(parse_batch(dup.as_bytes(), 10), Err(BatchError::Syntax { .. })));
        let lone = EV.replace("\"hi\"", "\"\\ud800\"");
        assert!(matches!(parse_batch(lone.as_bytes(), 10), Err(BatchError::Syntax { .. })));
        let big = EV.replace("\"seq\":1", "\"seq\":18446744073709551616");
        assert!(matches!(parse_batch(big.as_bytes(), 10), Err(BatchError::Syntax { .. })));
    }
}
