//! Postgres' `TimestampTz`: microseconds since 2000-01-01 00:00 UTC, the
//! clock of commit records (`xact_time`), and its text forms.
//!
//! [`TimestampTz::parse`] reads what an operator would paste: RFC 3339
//! (`2026-12-01T19:57:31.5Z`, `…+01:00`) and Postgres' own output
//! (`2026-12-01 19:57:31.123456+00`, minutes of the offset optional).
//! [`TimestampTz`]'s `Display` writes RFC 3339 in UTC with microseconds.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, Utc};

/// Seconds from the Unix epoch to Postgres' epoch (2000-01-01 UTC).
const POSTGRES_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// A Postgres `TimestampTz`: microseconds since 2000-01-01 00:00 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimestampTz(pub i64);

/// Text that is not a timestamp with a time zone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a timestamp with a time zone (RFC 3339, e.g. 2026-12-01T19:57:31Z, or \
     Postgres' 2026-12-01 19:57:31.123456+00)"
)]
pub struct BadTimestamp {
    /// The text (at most its first 64 characters).
    pub text: String,
}

impl TimestampTz {
    /// Parses RFC 3339 or Postgres' `timestamptz` output; an offset is required.
    pub fn parse(text: &str) -> Result<TimestampTz, BadTimestamp> {
        let trimmed = text.trim();
        let parsed = DateTime::parse_from_rfc3339(trimmed)
            .or_else(|_| DateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f%#z"))
            .or_else(|_| DateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S%.f%#z"));
        parsed
            .ok()
            .and_then(|at: DateTime<FixedOffset>| {
                TimestampTz::from_unix_micros(at.timestamp_micros())
            })
            .ok_or_else(|| BadTimestamp {
                text: trimmed.chars().take(64).collect(),
            })
    }

    /// The timestamp `micros` after the Unix epoch (`None` past `i64`).
    pub fn from_unix_micros(micros: i64) -> Option<TimestampTz> {
        micros
            .checked_sub(POSTGRES_EPOCH_UNIX_SECS * 1_000_000)
            .map(TimestampTz)
    }

    /// Microseconds after the Unix epoch (`None` past `i64`).
    pub fn unix_micros(self) -> Option<i64> {
        self.0.checked_add(POSTGRES_EPOCH_UNIX_SECS * 1_000_000)
    }

    /// The same instant as a `SystemTime` (`None` if not representable).
    pub fn to_system_time(self) -> Option<SystemTime> {
        let micros = self.unix_micros()?;
        let magnitude = Duration::from_micros(micros.unsigned_abs());
        if micros >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// The instant `time` (`None` outside `i64` microseconds).
    pub fn from_system_time(time: SystemTime) -> Option<TimestampTz> {
        let micros = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_micros()).ok()?,
            Err(before) => i64::try_from(before.duration().as_micros())
                .ok()?
                .checked_neg()?,
        };
        TimestampTz::from_unix_micros(micros)
    }
}

impl fmt::Display for TimestampTz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self
            .unix_micros()
            .and_then(DateTime::<Utc>::from_timestamp_micros)
        {
            Some(at) => write!(f, "{}", at.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            None => write!(f, "timestamptz({})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_epoch_is_zero() {
        assert_eq!(
            TimestampTz::parse("2000-01-01T00:00:00Z"),
            Ok(TimestampTz(0))
        );
        assert_eq!(TimestampTz(0).to_string(), "2000-01-01T00:00:00.000000Z");
    }

    #[test]
    fn reads_rfc3339_and_postgres_output() {
        let expected = TimestampTz(848_864_251_123_456);
        for text in [
            "2026-11-24T19:37:31.123456Z",
            "2026-11-24T20:37:31.123456+01:00",
            "2026-11-24 19:37:31.123456+00",
            "2026-11-24 21:37:31.123456+0200",
            " 2026-11-24 19:37:31.123456+00:00 ",
        ] {
            assert_eq!(TimestampTz::parse(text), Ok(expected), "{text}");
        }
        assert_eq!(expected.to_string(), "2026-11-24T19:37:31.123456Z");
    }

    #[test]
    fn refuses_what_is_not_a_zoned_timestamp() {
        for text in [
            "",
            "yesterday",
            "2026-11-24 19:37:31",
            "0/16B3748",
            "2026-13-01T00:00:00Z",
        ] {
            assert!(TimestampTz::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn converts_to_and_from_system_time() {
        let at = TimestampTz(848_864_251_123_456);
        let system = at.to_system_time().unwrap();
        assert_eq!(TimestampTz::from_system_time(system), Some(at));
        let before = TimestampTz(-5_000_000);
        assert_eq!(
            TimestampTz::from_system_time(before.to_system_time().unwrap()),
            Some(before)
        );
        assert_eq!(TimestampTz(i64::MAX).unix_micros(), None);
    }
}
