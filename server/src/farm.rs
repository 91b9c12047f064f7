//! When a member of the farm view counts as gone.
//!
//! Every process holding a handle checks in at least once per check-in period
//! ([`rotation::checkin_period_us`]: a quarter interval, 200 ms to 15 s), whatever it serves: a
//! pre-fork master that opened a handle keeps its retrieval thread and is listed like its
//! workers. Nothing tells the data server that a process died, so silence is the only signal:
//! a member silent for a few periods is marked stale, and one silent for [`EXPIRE_AFTER_US`]
//! leaves the view.

use crate::rotation;

/// Check-in periods a member may miss before it is marked stale.
const STALE_AFTER_PERIODS: i64 = 3;

/// Added to the stale threshold: a client's cycle also spreads its check-in after an
/// activation (up to 1 s) and may spend seconds downloading a large version.
const STALE_SLACK_US: i64 = 5_000_000;

/// Silence after which a member is dropped from the view (and the database): ten minutes, far
/// beyond any live client's silence (at most 3 × 15 s + slack before it is stale).
pub const EXPIRE_AFTER_US: i64 = 10 * 60 * 1_000_000;

/// Silence after which a member is marked stale, for a table with this interval.
pub fn stale_after_us(interval_us: i64) -> i64 {
    STALE_AFTER_PERIODS * rotation::checkin_period_us(interval_us) + STALE_SLACK_US
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_client_never_looks_stale_and_a_dead_one_does_within_a_minute() {
        for interval in [100_000, 1_000_000, 600_000_000, 86_400_000_000] {
            let stale = stale_after_us(interval);
            assert!(stale > 2 * rotation::checkin_period_us(interval) + 1_000_000);
            assert!(stale <= 60_000_000, "{interval}: {stale}");
            assert!(stale < EXPIRE_AFTER_US);
        }
    }
}
