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
        self.rfc3339().as_str().to_owned()
    }

    /// [`Self::to_rfc3339`] without the allocation.
    pub fn rfc3339(self) -> Rfc3339 {
        Rfc3339::new(self.0, 0)
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
        self.rfc3339().as_str().to_owned()
    }

    /// [`Self::to_rfc3339`] without the allocation.
    pub fn rfc3339(self) -> Rfc3339 {
        Rfc3339::new(self.instant.0, self.utc_offset_secs)
    }
}

/// An instant as RFC 3339 text, held inline: what the read endpoints write
/// twice per event. The same text as chrono's `to_rfc3339_opts(AutoSi,
/// true)` (a property test holds them together), without an allocation or
/// the formatting machinery.
#[derive(Clone, Copy)]
pub struct Rfc3339 {
    len: u8,
    buf: [u8; Self::CAP],
}

impl Rfc3339 {
    /// "2262-04-11T23:47:16.854775807+05:30" is 35 bytes; chrono's form of
    /// an offset with seconds, used for those, is longer.
    const CAP: usize = 48;

    fn new(nanos: i64, utc_offset_secs: i32) -> Self {
        let mut out = Self { len: 0, buf: [0; Self::CAP] };
        if utc_offset_secs % 60 == 0 && utc_offset_secs.abs() < 86_400 {
            out.write(nanos, utc_offset_secs);
        } else {
            // An offset with seconds: as chrono writes it, rare enough to allocate.
            let offset =
                FixedOffset::east_opt(utc_offset_secs).unwrap_or(FixedOffset::east_opt(0).expect("zero offset"));
            let text = offset.timestamp_nanos(nanos).to_rfc3339_opts(SecondsFormat::AutoSi, true);
            let n = text.len().min(Self::CAP);
            out.buf[..n].copy_from_slice(&text.as_bytes()[..n]);
            out.len = n as u8;
        }
        out
    }

    fn write(&mut self, nanos: i64, utc_offset_secs: i32) {
        let local = nanos.div_euclid(1_000_000_000) + i64::from(utc_offset_secs);
        let frac = nanos.rem_euclid(1_000_000_000) as u32;
        let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400) as u32);
        let (year, month, day) = civil_from_days(days);
        let b = &mut self.buf;
        let mut n = 0;
        put(b, &mut n, year as u32, 4);
        put_byte(b, &mut n, b'-');
        put(b, &mut n, month, 2);
        put_byte(b, &mut n, b'-');
        put(b, &mut n, day, 2);
        put_byte(b, &mut n, b'T');
        put(b, &mut n, secs / 3600, 2);
        put_byte(b, &mut n, b':');
        put(b, &mut n, secs / 60 % 60, 2);
        put_byte(b, &mut n, b':');
        put(b, &mut n, secs % 60, 2);
        // As many digits as chrono's `AutoSi`: none, 3, 6 or 9.
        let (shown, width) = match frac {
            0 => (0, 0),
            f if f % 1_000_000 == 0 => (f / 1_000_000, 3),
            f if f % 1_000 == 0 => (f / 1_000, 6),
            f => (f, 9),
        };
        if width > 0 {
            put_byte(b, &mut n, b'.');
            put(b, &mut n, shown, width);
        }
        if utc_offset_secs == 0 {
            put_byte(b, &mut n, b'Z');
        } else {
            put_byte(b, &mut n, if utc_offset_secs < 0 { b'-' } else { b'+' });
            let minutes = utc_offset_secs.unsigned_abs() / 60;
            put(b, &mut n, minutes / 60, 2);
            put_byte(b, &mut n, b':');
            put(b, &mut n, minutes % 60, 2);
        }
        self.len = n as u8;
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is written, or a whole chrono string.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).expect("RFC 3339 text is ASCII")
    }
}

/// Writes the last `width` decimal digits of `v` at `n`, zero-padded.
fn put(buf: &mut [u8], n: &mut usize, mut v: u32, width: usize) {
    for i in (0..width).rev() {
        buf[*n + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    *n += width;
}

fn put_byte(buf: &mut [u8], n: &mut usize, b: u8) {
    buf[*n] = b;
    *n += 1;
}

/// (year, month, day) of a count of days since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
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

    fn chrono_text(nanos: i64, offset: i32) -> String {
        FixedOffset::east_opt(offset)
            .expect("offset")
            .timestamp_nanos(nanos)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    #[test]
    fn inline_text_matches_chrono_at_the_edges() {
        let offsets = [0, 60, -60, 19_800, -34_200, 86_340, -86_340, 45, -86_399, 86_399];
        let instants = [
            i64::MIN,
            i64::MAX,
            0,
            -1,
            1,
            -1_000_000_000,
            951_782_400_000_000_000,    // 2000-02-29
            4_107_542_400_000_000_000,  // 2100-03-01
            -2_208_988_800_000_000_000, // 1900-01-01
            1_700_000_000_123_000_000,
            1_700_000_000_123_456_000,
            1_700_000_000_123_456_789,
        ];
        for &t in &instants {
            for &o in &offsets {
                let e = EventTime { instant: UnixNanos(t), utc_offset_secs: o };
                assert_eq!(e.to_rfc3339(), chrono_text(t, o), "{t} at {o}");
                assert_eq!(e.rfc3339().to_string(), chrono_text(t, o));
            }
            assert_eq!(UnixNanos(t).to_rfc3339(), Utc.timestamp_nanos(t).to_rfc3339_opts(SecondsFormat::AutoSi, true));
        }
    }

    proptest::proptest! {
        #[test]
        fn inline_text_matches_chrono(t in proptest::num::i64::ANY, o in -86_399i32..=86_399, whole in proptest::bool::ANY) {
            let o = if whole { o / 60 * 60 } else { o };
            let e = EventTime { instant: UnixNanos(t), utc_offset_secs: o };
            proptest::prop_assert_eq!(e.to_rfc3339(), chrono_text(t, o));
            let ms = UnixNanos(t / 1_000_000 * 1_000_000);
            proptest::prop_assert_eq!(ms.to_rfc3339(), chrono_text(ms.0, 0));
        }
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        assert!(EventTime::parse("yesterday").is_err());
        assert!(EventTime::parse("2026-11-22 10:00").is_err());
        assert!(EventTime::parse("9999-01-01T00:00:00Z").is_err());
    }
}
