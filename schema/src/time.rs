//! Timestamps: the front end's capture time as sent (RFC 3339 with its UTC
//! offset) and the server's clock as nanoseconds since the Unix epoch.

use std::fmt;

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeZone, Utc};

/// Nanoseconds since 1970-01-01T00:00:00Z. Covers the years 1677–2262.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixNanos(pub i64);

impl UnixNanos {
    /// The system's wall clock now.
    pub fn now() -> Self {
        Self(Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX))
    }

    /// RFC 3339 in UTC with as many fractional digits as needed.
    pub fn to_rfc3339(self) -> String {
        Utc.timestamp_nanos(self.0).to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

impl fmt::Display for UnixNanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// A capture time as the front end sent it: an instant plus the UTC offset it
/// was written in, so it is shown back in the same offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventTime {
    pub instant: UnixNanos,
    /// Seconds east of UTC, within ±86,399.
    pub utc_offset_secs: i32,
}

impl EventTime {
    /// Parses RFC 3339. Fails on anything else and on instants outside the
    /// range of [`UnixNanos`].
    pub fn parse(s: &str) -> Result<Self, String> {
        let dt = DateTime::parse_from_rfc3339(s).map_err(|e| format!("not an RFC 3339 time: {e}"))?;
        let nanos = dt.timestamp_nanos_opt().ok_or_else(|| "time outside the years 1677-2262".to_string())?;
        Ok(Self { instant: UnixNanos(nanos), utc_offset_secs: dt.offset().local_minus_utc() })
    }

    /// RFC 3339 in the offset it was captured in (`Z` for UTC).
    pub fn to_rfc3339(self) -> String {
        let offset =
            FixedOffset::east_opt(self.utc_offset_secs).unwrap_or(FixedOffset::east_opt(0).expect("zero offset"));
        offset.timestamp_nanos(self.instant.0).to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_offset_and_fraction() {
        let t = EventTime::parse("2026-11-22T10:00:00.25+05:30").expect("valid");
        assert_eq!(t.utc_offset_secs, 19_800);
        assert_eq!(t.to_rfc3339(), "2026-11-22T10:00:00.250+05:30");
        let z = EventTime::parse("2003-06-01T12:00:00Z").expect("valid");
        assert_eq!(z.to_rfc3339(), "2003-06-01T12:00:00Z");
        assert_eq!(z.instant.to_rfc3339(), "2003-06-01T12:00:00Z");
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        assert!(EventTime::parse("yesterday").is_err());
        assert!(EventTime::parse("2026-11-22 10:00").is_err());
        assert!(EventTime::parse("9999-01-01T00:00:00Z").is_err());
    }
}
