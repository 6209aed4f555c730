//! Validation of wire events against configurable limits, and the plausibility
//! check of capture times (flagged, never rejected or rewritten).

use serde::{Deserialize, Serialize};

use crate::event::{Direction, Event, RecordFlags};
use crate::ids::SourceId;
use crate::time::{EventTime, UnixNanos};
use crate::wire::WireEvent;

/// What is wrong with one field of one event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct ValidationError {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ValidationError {
    ValidationError { field, problem: problem.into() }
}

/// Limits on one event. Every one is configurable (`[limits]` in the config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest `body`, in bytes of UTF-8.
    pub max_body_bytes: usize,
    /// Most entries in `to`.
    pub max_recipients: usize,
    /// Longest handle (`from`, each of `to`, `channel`), in bytes.
    pub max_handle_bytes: usize,
    /// Longest `source`, `network` or `kind`, in bytes.
    pub max_name_bytes: usize,
    /// Most entries in `attrs`.
    pub max_attrs: usize,
    /// Largest `attrs`, keys and values together, in bytes.
    pub max_attrs_bytes: usize,
    pub time: TimePlausibility,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_recipients: 1_000,
            max_handle_bytes: 512,
            max_name_bytes: 128,
            max_attrs: 64,
            max_attrs_bytes: 16 << 10,
            time: TimePlausibility::default(),
        }
    }
}

/// How far a capture time may stray from the server's clock before the record
/// is flagged (`ts_future`, `ts_past`). Flagged records are stored unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimePlausibility {
    pub max_future_secs: u64,
    pub max_past_secs: u64,
}

impl Default for TimePlausibility {
    fn default() -> Self {
        Self { max_future_secs: 3_600, max_past_secs: 7 * 86_400 }
    }
}

impl TimePlausibility {
    /// The flags a record with capture time `ts` received at `received_at` gets.
    pub fn flags(&self, ts: EventTime, received_at: UnixNanos) -> RecordFlags {
        const NANOS: i128 = 1_000_000_000;
        let skew = i128::from(ts.instant.0) - i128::from(received_at.0);
        let mut flags = 0;
        if skew > i128::from(self.max_future_secs) * NANOS {
            flags |= RecordFlags::TS_FUTURE;
        }
        if -skew > i128::from(self.max_past_secs) * NANOS {
            flags |= RecordFlags::TS_PAST;
        }
        RecordFlags(flags)
    }
}

impl Limits {
    /// Checks a wire event and turns it into an [`Event`].
    pub fn validate(&self, w: WireEvent) -> Result<Event, ValidationError> {
        let (ts, direction) = self.check(&w)?;
        Ok(Event {
            source: SourceId::new(w.source),
            seq: w.seq,
            network: w.network,
            kind: w.kind,
            ts,
            from: w.from,
            to: w.to,
            channel: w.channel,
            body: w.body.unwrap_or_default(),
            direction,
            attrs: w.attrs,
        })
    }

    /// Checks a wire event without taking it (a front end checks what it
    /// spools); returns the parsed time and direction.
    pub fn check(&self, w: &WireEvent) -> Result<(EventTime, Option<Direction>), ValidationError> {
        self.name("source", &w.source, |c| c.is_ascii_alphanumeric() || "._:@-".contains(c))?;
        self.name("network", &w.network, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))?;
        self.name("kind", &w.kind, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))?;
        let ts = EventTime::parse(&w.ts).map_err(|p| invalid("ts", p))?;
        self.handle("from", &w.from)?;
        if w.to.len() > self.max_recipients {
            return Err(invalid(
                "to",
                format!("{} recipients, more than the limit of {}", w.to.len(), self.max_recipients),
            ));
        }
        for h in &w.to {
            self.handle("to", h)?;
        }
        if let Some(c) = &w.channel {
            self.handle("channel", c)?;
        }
        if matches!(w.kind.as_str(), "message" | "file") {
            if w.to.is_empty() && w.channel.is_none() {
                return Err(invalid("to", format!("a `{}` needs recipients in `to` or a `channel`", w.kind)));
            }
            if w.body.is_none() {
                return Err(invalid("body", format!("a `{}` needs a body", w.kind)));
            }
        }
        let body = w.body.as_deref().unwrap_or_default();
        if body.len() > self.max_body_bytes {
            return Err(invalid(
                "body",
                format!("{} bytes, more than the limit of {}", body.len(), self.max_body_bytes),
            ));
        }
        let direction = match &w.direction {
            None => None,
            Some(d) => Some(
                Direction::parse(d)
                    .ok_or_else(|| invalid("direction", format!("`{d}` is not inbound, outbound or internal")))?,
            ),
        };
        if w.attrs.len() > self.max_attrs {
            return Err(invalid(
                "attrs",
                format!("{} entries, more than the limit of {}", w.attrs.len(), self.max_attrs),
            ));
        }
        let attr_bytes: usize = w.attrs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if attr_bytes > self.max_attrs_bytes {
            return Err(invalid(
                "attrs",
                format!("{attr_bytes} bytes, more than the limit of {}", self.max_attrs_bytes),
            ));
        }
        if w.attrs.keys().any(String::is_empty) {
            return Err(invalid("attrs", "empty key"));
        }
        Ok((ts, direction))
    }

    fn name(&self, field: &'static str, s: &str, allowed: impl Fn(char) -> bool) -> Result<(), ValidationError> {
        if s.is_empty() {
            return Err(invalid(field, "empty"));
        }
        if s.len() > self.max_name_bytes {
            return Err(invalid(field, format!("{} bytes, more than the limit of {}", s.len(), self.max_name_bytes)));
        }
        if let Some(c) = s.chars().find(|&c| !allowed(c)) {
            return Err(invalid(field, format!("character {c:?} is not allowed here")));
        }
        Ok(())
    }

    /// Handles are free text (nicks, JIDs, SIP URIs) but not empty, bounded,
    /// and free of control characters, which no network allows in a name.
    fn handle(&self, field: &'static str, s: &str) -> Result<(), ValidationError> {
        if s.is_empty() {
            return Err(invalid(field, "empty handle"));
        }
        if s.len() > self.max_handle_bytes {
            return Err(invalid(
                field,
                format!("handle of {} bytes, more than the limit of {}", s.len(), self.max_handle_bytes),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(invalid(field, "control character in a handle"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> WireEvent {
        WireEvent {
            source: "proxy-nyc-1".into(),
            seq: 7,
            network: "irc".into(),
            kind: "message".into(),
            ts: "2026-11-22T10:00:00Z".into(),
            from: "alice".into(),
            to: vec!["bob".into()],
            channel: None,
            body: Some("hi".into()),
            direction: Some("outbound".into()),
            attrs: Default::default(),
        }
    }

    fn field_of(w: WireEvent) -> &'static str {
        Limits::default().validate(w).expect_err("must be refused").field
    }

    #[test]
    fn accepts_a_good_event() {
        let e = Limits::default().validate(wire()).expect("valid");
        assert_eq!(e.direction, Some(Direction::Outbound));
        assert_eq!(e.body, "hi");
    }

    #[test]
    fn names_the_field_at_fault() {
        assert_eq!(field_of(WireEvent { source: String::new(), ..wire() }), "source");
        assert_eq!(field_of(WireEvent { network: "IRC".into(), ..wire() }), "network");
        assert_eq!(field_of(WireEvent { kind: "me ssage".into(), ..wire() }), "kind");
        assert_eq!(field_of(WireEvent { ts: "now".into(), ..wire() }), "ts");
        assert_eq!(field_of(WireEvent { from: "a\u{7}".into(), ..wire() }), "from");
        assert_eq!(field_of(WireEvent { to: vec![], ..wire() }), "to");
        assert_eq!(field_of(WireEvent { to: vec!["b".into(); 1001], ..wire() }), "to");
        assert_eq!(field_of(WireEvent { body: None, ..wire() }), "body");
        assert_eq!(field_of(WireEvent { body: Some("x".repeat((1 << 20) + 1)), ..wire() }), "body");
        assert_eq!(field_of(WireEvent { direction: Some("up".into()), ..wire() }), "direction");
        assert_eq!(field_of(WireEvent { attrs: [(String::new(), "v".into())].into(), ..wire() }), "attrs");
    }

    #[test]
    fn joins_need_no_body_and_channels_need_no_recipients() {
        let join = WireEvent { kind: "join".into(), to: vec![], channel: Some("#desk".into()), body: None, ..wire() };
        assert_eq!(Limits::default().validate(join).expect("valid").body, "");
    }

    #[test]
    fn implausible_times_are_flagged_not_refused() {
        let p = TimePlausibility::default();
        let now = UnixNanos(1_800_000_000 * 1_000_000_000);
        let at = |secs: i64| EventTime { instant: UnixNanos(now.0 + secs * 1_000_000_000), utc_offset_secs: 0 };
        assert_eq!(p.flags(at(0), now), RecordFlags(0));
        assert_eq!(p.flags(at(3_601), now), RecordFlags(RecordFlags::TS_FUTURE));
        assert_eq!(p.flags(at(-8 * 86_400), now), RecordFlags(RecordFlags::TS_PAST));
        let e = Limits::default().validate(WireEvent { ts: "1970-01-01T00:00:00Z".into(), ..wire() });
        assert!(e.is_ok());
    }
}
