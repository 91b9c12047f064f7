//! Where the next activation time falls.
//!
//! Activation times lie on a grid anchored at the Unix epoch: every multiple of the interval.
//! With an interval that divides a day (500ms, 30s, 10m…), midnight is on the grid, so a price
//! scheduled for midnight goes live at exactly midnight. The rotation itself — the transaction
//! that moves staged to active and production to staged — lives in
//! [`crate::store::Store::rotate_if_due`]; this module is the arithmetic it relies on.

/// The first grid point at or after `t`.
pub fn ceil_to_grid(t: i64, interval_us: i64) -> i64 {
    debug_assert!(interval_us > 0);
    let r = t.rem_euclid(interval_us);
    if r == 0 {
        t
    } else {
        t - r + interval_us
    }
}

/// The activation time that follows `previous`: the first grid point after it that still
/// leaves `min_window_us` for clients to download, counted from `now_us`.
///
/// After an idle period (nobody checked in for hours) this skips the grid points in the past
/// rather than scheduling an activation that has already happened or comes too soon.
pub fn next_activation(previous: i64, interval_us: i64, min_window_us: i64, now_us: i64) -> i64 {
    let earliest = (previous + 1).max(now_us.saturating_add(min_window_us));
    ceil_to_grid(earliest, interval_us)
}

/// The first activation time for a new database.
pub fn first_activation(interval_us: i64, min_window_us: i64, now_us: i64) -> i64 {
    ceil_to_grid(now_us.saturating_add(min_window_us), interval_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn grid_alignment_after_long_idle() {
        let interval = 10 * 60 * S;
        let window = 5 * 60 * S;
        let t = 1_700_000_400 * S; // on the 10-minute grid
                                   // Nobody checked in for three days and a bit.
        let now = t + 3 * 86_400 * S + 7 * 60 * S + 123;
        let next = next_activation(t, interval, window, now);
        assert_eq!(next % interval, 0, "off the grid");
        assert!(next - now >= window, "less than the retrieval window ahead");
        assert!(
            next - interval - now < window,
            "skipped a usable grid point"
        );
    }

    #[test]
    fn on_time_rotation_takes_the_next_grid_point() {
        let interval = 10 * S;
        let t = 100 * S;
        assert_eq!(next_activation(t, interval, 5 * S, t + 1), 110 * S);
        // A rotation too late for the next point moves one further.
        assert_eq!(next_activation(t, interval, 5 * S, t + 6 * S), 120 * S);
    }

    #[test]
    fn next_is_always_after_previous() {
        let interval = 7;
        for prev in -20..20 {
            for now in -20..40 {
                let n = next_activation(prev, interval, 0, now);
                assert!(n > prev && n >= now && n % interval == 0);
            }
        }
    }

    #[test]
    fn midnight_is_on_a_ten_minute_grid() {
        let midnight = 1_795_737_600 * S; // 2026-11-27T00:00:00Z
        assert_eq!(ceil_to_grid(midnight, 10 * 60 * S), midnight);
        assert_eq!(ceil_to_grid(midnight - 1, 10 * 60 * S), midnight);
    }
}
