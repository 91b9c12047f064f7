//! The data server's clock: the one time every client in the farm schedules activations by.
//!
//! It is the host's wall clock in µs since the Unix epoch. Clients never need it to agree with
//! their own clocks: each one measures its offset to this clock on every check-in.

use std::time::{SystemTime, UNIX_EPOCH};

use lockstep::wire;
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

/// The latest time RFC 3339 can write, 9999-12-31T23:59:59.999999Z, in µs: nothing the data
/// server schedules lies beyond it, so every time it prints is a date.
pub const LATEST_US: i64 = 253_402_300_799_999_999;

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

/// A UTC time to the millisecond, always three digits (`2026-11-27T19:07:04.340Z`), for
/// listings read in columns: RFC 3339 as [`format_us`] writes it drops trailing zeros.
pub fn format_us_millis(us: i64) -> String {
    const MILLIS: &[time::format_description::FormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .ok()
        .and_then(|t| t.format(MILLIS).ok())
        .unwrap_or_else(|| format!("{us}µs"))
}

/// Parses a duration written like `500ms`, `30s`, `10m` or `1h 30m` to µs.
pub fn parse_duration_us(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| e.to_string())?;
    i64::try_from(d.as_micros()).map_err(|_| "duration out of range".to_owned())
}

/// Checks an interval and minimum retrieval window make a cycle every client accepts: the
/// interval within [`wire::MIN_INTERVAL_US`]`..=`[`wire::MAX_INTERVAL_US`], the window within
/// [`wire::MIN_WINDOW_US`]`..=interval`.
pub fn check_interval(interval_us: i64, min_window_us: i64) -> Result<(), String> {
    if !(wire::MIN_INTERVAL_US..=wire::MAX_INTERVAL_US).contains(&interval_us) {
        return Err(format!(
            "the interval must be between {} and {} (got {})",
            format_duration_us(wire::MIN_INTERVAL_US),
            format_duration_us(wire::MAX_INTERVAL_US),
            format_duration_us(interval_us)
        ));
    }
    if !(wire::MIN_WINDOW_US..=interval_us).contains(&min_window_us) {
        return Err(format!(
            "the minimum retrieval window must be between {} and the interval, {} (got {})",
            format_duration_us(wire::MIN_WINDOW_US),
            format_duration_us(interval_us),
            format_duration_us(min_window_us)
        ));
    }
    Ok(())
}

/// A duration for people, to two units at most: `850ms`, `12s`, `1.5s`, `3m 10s`, `2h 5m`,
/// `1d`.
pub fn format_duration_us(us: i64) -> String {
    const MS: i64 = 1_000;
    const S: i64 = 1_000_000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;
    const D: i64 = 24 * H;
    let sign = if us < 0 { "-" } else { "" };
    let us = us.unsigned_abs().min(i64::MAX as u64) as i64;
    let two = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        let (a, b) = (us / big, us % big / small);
        if b == 0 {
            format!("{sign}{a}{big_unit}")
        } else {
            format!("{sign}{a}{big_unit} {b}{small_unit}")
        }
    };
    match us {
        0..MS => format!("{sign}{us}µs"),
        MS..S => format!("{sign}{}ms", us / MS),
        S..M if us % S == 0 || us >= 10 * S => format!("{sign}{}s", us / S),
        S..M => format!("{sign}{:.1}s", us as f64 / S as f64),
        M..H => two(M, "m", S, "s"),
        H..D => two(H, "h", M, "m"),
        _ => two(D, "d", H, "h"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn millisecond_times_keep_three_digits() {
        // 2026-11-28T01:22:41.340Z: RFC 3339 as `time` writes it would end in .34Z.
        let us = 1_795_828_961_340_000;
        assert_eq!(format_us_millis(us), "2026-11-28T01:22:41.340Z");
        assert_eq!(format_us_millis(us - 340_000), "2026-11-28T01:22:41.000Z");
    }

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
        assert_eq!(format_us(LATEST_US), "9999-12-31T23:59:59.999Z");
        assert!(format_us(LATEST_US + 1).ends_with("µs"));
    }

    #[test]
    fn durations_print_in_two_units_at_most() {
        assert_eq!(format_duration_us(850_000), "850ms");
        assert_eq!(format_duration_us(1_500_000), "1.5s");
        assert_eq!(format_duration_us(12_400_000), "12s");
        assert_eq!(format_duration_us(190_000_000), "3m 10s");
        assert_eq!(format_duration_us(wire::MAX_INTERVAL_US), "1d");
        assert_eq!(format_duration_us(-2_000_000), "-2s");
    }

    #[test]
    fn the_interval_range_is_the_one_clients_accept() {
        assert!(check_interval(wire::MIN_INTERVAL_US, wire::MIN_WINDOW_US).is_ok());
        assert!(check_interval(wire::MAX_INTERVAL_US, wire::MAX_INTERVAL_US).is_ok());
        assert!(check_interval(wire::MIN_INTERVAL_US - 1, wire::MIN_WINDOW_US).is_err());
        assert!(check_interval(wire::MAX_INTERVAL_US + 1, wire::MIN_WINDOW_US).is_err());
        assert!(check_interval(1_000_000, wire::MIN_WINDOW_US - 1).is_err());
        assert!(check_interval(1_000_000, 1_000_001).is_err());
    }
}
