//! The data server's clock: the one time every client in the farm schedules activations by.
//!
//! It is the host's wall clock in µs since the Unix epoch. Clients never need it to agree with
//! their own clocks: each one measures its offset to this clock on every check-in.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now on the data server's clock, µs since the Unix epoch.
pub fn now_us() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// Parses an RFC 3339 time (`2026-11-27T00:00:00Z`, `2026-11-27T01:00:00+01:00`) to µs.
pub fn parse_rfc3339_us(s: &str) -> Result<i64, String> {
    let t = OffsetDateTime::parse(s.trim(), &Rfc3339).map_err(|e| e.to_string())?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| "time out of range".to_owned())
}

/// Formats µs since the epoch as RFC 3339 UTC with milliseconds.
pub fn format_us(us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .ok()
        .and_then(|t| {
            let t = t
                .replace_nanosecond((t.nanosecond() / 1_000_000) * 1_000_000)
                .ok()?;
            t.format(&Rfc3339).ok()
        })
        .unwrap_or_else(|| format!("{us}µs"))
}

/// Parses a duration written like `500ms`, `30s`, `10m` or `1h 30m` to µs.
pub fn parse_duration_us(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| e.to_string())?;
    i64::try_from(d.as_micros()).map_err(|_| "duration out of range".to_owned())
}

/// Shortest interval we accept: below it, round trips to the data server eat the cycle.
pub const MIN_INTERVAL_US: i64 = 100_000;

/// Checks an interval and retrieval window make a usable cycle.
pub fn check_interval(interval_us: i64, min_window_us: i64) -> Result<(), String> {
    if interval_us < MIN_INTERVAL_US {
        return Err(format!(
            "interval must be at least {}ms",
            MIN_INTERVAL_US / 1000
        ));
    }
    if min_window_us <= 0 || min_window_us > interval_us {
        return Err(
            "the minimum retrieval window must be more than zero and at most the interval".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_duration_us("500ms").unwrap(), 500_000);
        assert_eq!(parse_duration_us("30s").unwrap(), 30_000_000);
        assert_eq!(parse_duration_us("10m").unwrap(), 600_000_000);
        assert!(parse_duration_us("ten minutes").is_err());
        assert_eq!(
            parse_rfc3339_us("2026-11-27T00:00:00Z").unwrap(),
            1_795_737_600_000_000
        );
        assert_eq!(
            parse_rfc3339_us("2026-11-27T01:00:00+01:00").unwrap(),
            1_795_737_600_000_000
        );
        assert!(parse_rfc3339_us("tomorrow").is_err());
        assert_eq!(format_us(1_795_737_600_000_000), "2026-11-27T00:00:00Z");
    }
}
