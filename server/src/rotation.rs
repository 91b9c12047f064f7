//! The rotation, and where the next activation time falls.
//!
//! [`rotate`] is the cycle's rotation as `docs/ARCHITECTURE.md` tells it, in its order, written
//! once for every backend: it runs inside the write transaction of the check-in that found the
//! activation time passed, which holds the sync row's lock, and the rotation log's activation
//! time is a unique key, so a second rotation for the same time cannot commit even if the
//! in-transaction check were wrong.
//!
//! Activation times lie on a grid anchored at the Unix epoch: every multiple of the interval.
//! With an interval that divides a day (500ms, 30s, 10m…), midnight is on the grid, so a price
//! scheduled for midnight goes live at exactly midnight.
//!
//! All of the arithmetic is checked: a time that does not fit is `None`, never a wrapped-around
//! negative activation time that the rotation log's key then refuses on every check-in.

use lockstep::wire::{self, RotationRecord, SyncTable};

use crate::clock;
use crate::store::backend::Tx;
use crate::store::prepare::{self, Prepared};
use crate::store::{overflow, staging, Result};

/// Rotates if `sync` (read in `tx`, under the sync row's lock) is due at `now_us`; returns the
/// sync table after, and whether it rotated. `may_encode` says whether production is cheap
/// enough to encode here, under the lock every check-in of the herd waits for (see
/// [`crate::store::Store::rotate_if_due`]).
pub fn rotate_if_due(
    tx: &mut dyn Tx,
    now_us: i64,
    by: &str,
    prepared: Option<&Prepared>,
    may_encode: bool,
) -> Result<(SyncTable, bool)> {
    let (sync, production_gen) = tx.sync()?;
    if now_us < sync.activation_time_us {
        // Someone else rotated between our read and our lock.
        return Ok((sync, false));
    }
    // The write lock may have been waited for (an import, another rotation's fsync): the next
    // activation leaves its window after now, not after the check-in came.
    let now_us = now_us.max(clock::now_us());
    let basis = prepare::basis(tx, now_us)?;
    // A build for this activation time and version number is staged even if production (or
    // the scheduled changes due) moved on since it was built: encoding here would hold every
    // check-in of the herd for as long as the encode takes. Such a version is staged as
    // [`prepare::STALE`], and production is restaged right after T in the background
    // ([`crate::store::Store::restage_stale`]), so an edit made before T still goes live at
    // T', the second activation after it, as invariant 7 requires.
    //
    // Data cheap to encode is encoded here instead of a stale build: a restage after T needs
    // a check-in period before T', which very short intervals do not leave, and the edits
    // would wait for T''.
    let prepared = prepared
        .filter(|p| p.basis.due_us == basis.due_us && p.basis.number == basis.number)
        .map(|p| (p, p.basis == basis))
        .filter(|(_, current)| *current || !may_encode);
    rotate(tx, sync, production_gen, now_us, by, prepared, may_encode)?;
    Ok((tx.sync()?.0, true))
}

/// The rotation of the activation time `sync.activation_time_us`, which has passed.
fn rotate(
    tx: &mut dyn Tx,
    sync: SyncTable,
    production_gen: i64,
    now_us: i64,
    by: &str,
    prepared: Option<(&Prepared, bool)>,
    may_encode: bool,
) -> Result<()> {
    let due = sync.activation_time_us;
    let grid = next_activation(due, sync.interval_us, sync.min_window_us, now_us)
        .ok_or_else(|| overflow("the next activation time"))?;
    // An urgent request queued for this rotation (see `Store::urgent`) takes now + the urgent
    // window instead of the grid point; the rotation there takes the grid again.
    let (urgent_window, queued) = tx.urgent_state()?;
    let urgent = queued
        .then(|| now_us.checked_add(urgent_window))
        .flatten()
        .filter(|u| *u < grid);
    let next = urgent.unwrap_or(grid);
    if queued {
        tx.set_urgent_queued(false)?;
    }
    if let Some(u) = urgent {
        tx.insert_urgent_activation(u, by, now_us)?;
    }
    // A version built ahead for the grid point may hold scheduled changes due after `next`.
    let prepared = prepared.filter(|(p, _)| p.basis.next_us == next);

    // 1. active ← staged, and the table moves on to the next activation time.
    let active = sync.staged_version;
    tx.mark_activated(active, due)?;
    tx.set_active(active, next)?;

    // 2. Due scheduled changes → production: those effective by `next` enter production now
    //    and the staged version built next, so they go live at the first activation time at
    //    or after their time.
    let due_changes = tx.pending_changes_until(next)?;
    let mut gen = production_gen;
    if !due_changes.is_empty() {
        for (_, change) in &due_changes {
            tx.write_production(change, "scheduled", now_us)?;
        }
        tx.bump_production_gen()?;
        gen += 1;
    }

    // 3. staged ← production: a new version only if production changed since the one that
    //    just became active was built. Its bytes were encoded and stored ahead of time when
    //    they could be (see `store::prepare`), so that this writes a version row naming them,
    //    a few writes whatever the size of the data, even when production moved on since
    //    (restaged after T then). When nothing was built for T (the build outlasted its
    //    lead), it encodes here only data cheap to encode; it keeps the version that just
    //    became active as the staged one otherwise, and production is restaged after T.
    let ahead = match prepared {
        Some((p, true)) => staging::stage_prepared(tx, active, p, now_us, "rotation")?,
        Some((p, false)) => {
            let v = staging::stage_prepared(tx, active, p, now_us, prepare::STALE)?;
            if v.is_some() {
                tx.set_restage_due(due, true)?;
            }
            v
        }
        None => None,
    };
    let staged = match ahead {
        Some(v) => v,
        None if may_encode => staging::restage_production(tx, active, gen, now_us, "rotation")?,
        None => {
            if staging::version_digest(tx, active)?.1 != gen {
                tx.set_restage_due(due, true)?;
            }
            active
        }
    };
    for (id, _) in &due_changes {
        tx.mark_applied(*id, staged)?;
    }

    // 4. Log the rotation, under its activation time's unique key.
    tx.log_rotation(&RotationRecord {
        activation_time_us: due,
        rotated_at_us: now_us,
        active_version: active,
        staged_version: staged,
        rotated_by: by.to_owned(),
        next_activation_us: next,
        urgent: false,
    })
}

/// The first grid point at or after `t`; `None` if it does not fit in an `i64`.
pub fn ceil_to_grid(t: i64, interval_us: i64) -> Option<i64> {
    if interval_us <= 0 {
        return None;
    }
    let r = t.rem_euclid(interval_us);
    if r == 0 {
        Some(t)
    } else {
        t.checked_sub(r)?.checked_add(interval_us)
    }
}

/// The activation time that follows `previous`: the first grid point after it that still
/// leaves `min_window_us` for clients to download, counted from `now_us`.
///
/// After an idle period (nobody checked in for hours) this skips the grid points in the past
/// rather than scheduling an activation that has already happened or comes too soon.
pub fn next_activation(
    previous: i64,
    interval_us: i64,
    min_window_us: i64,
    now_us: i64,
) -> Option<i64> {
    let earliest = previous
        .checked_add(1)?
        .max(now_us.checked_add(min_window_us)?);
    ceil_to_grid(earliest, interval_us)
}

/// The first activation time for a new database.
pub fn first_activation(interval_us: i64, min_window_us: i64, now_us: i64) -> Option<i64> {
    ceil_to_grid(now_us.checked_add(min_window_us)?, interval_us)
}

/// The longest a live client goes without checking in while it follows a table with this
/// interval (the period it polls at, see [`lockstep::wire::CHECKIN_PERIOD_MAX_US`]).
pub fn checkin_period_us(interval_us: i64) -> i64 {
    (interval_us / 4).clamp(wire::CHECKIN_PERIOD_MIN_US, wire::CHECKIN_PERIOD_MAX_US)
}

/// Where the staged version's activation moves when the interval changes at `now_us`.
///
/// The new time is the first point of the new grid that leaves clients the new minimum window
/// to download, and is at least one check-in period of the old table away, so every client
/// hears of it before it comes. The current time stays when it is sooner: clients have armed
/// it already, and one that has not checked in since would still activate at it, so moving it
/// later would split the farm.
pub fn rescheduled_activation(
    current_us: i64,
    old_interval_us: i64,
    interval_us: i64,
    min_window_us: i64,
    now_us: i64,
) -> Option<i64> {
    let lead = min_window_us.max(checkin_period_us(old_interval_us));
    let first_on_new_grid = ceil_to_grid(now_us.checked_add(lead)?, interval_us)?;
    Some(current_us.min(first_on_new_grid))
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
        let next = next_activation(t, interval, window, now).unwrap();
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
        assert_eq!(next_activation(t, interval, 5 * S, t + 1), Some(110 * S));
        // A rotation too late for the next point moves one further.
        assert_eq!(
            next_activation(t, interval, 5 * S, t + 6 * S),
            Some(120 * S)
        );
    }

    #[test]
    fn next_is_always_after_previous() {
        let interval = 7;
        for prev in -20..20 {
            for now in -20..40 {
                let n = next_activation(prev, interval, 0, now).unwrap();
                assert!(n > prev && n >= now && n % interval == 0);
            }
        }
    }

    #[test]
    fn midnight_is_on_a_ten_minute_grid() {
        let midnight = 1_795_737_600 * S; // 2026-11-27T00:00:00Z
        assert_eq!(ceil_to_grid(midnight, 10 * 60 * S), Some(midnight));
        assert_eq!(ceil_to_grid(midnight - 1, 10 * 60 * S), Some(midnight));
    }

    #[test]
    fn grid_times_that_do_not_fit_are_none_never_negative() {
        let huge = 200_000 * 366 * 86_400 * S;
        assert_eq!(ceil_to_grid(i64::MAX - 3, 10), None);
        assert_eq!(ceil_to_grid(i64::MIN + 3, 10), None);
        assert_eq!(first_activation(huge, huge, 1_700_000_000 * S), None);
        assert_eq!(
            next_activation(1_700_000_000 * S, huge, huge, 1_700_000_000 * S),
            None
        );
        assert_eq!(next_activation(i64::MAX, 10, 1, 0), None);
        // i64::MAX is a multiple of 7: a saturated sum would land on the grid.
        assert_eq!(next_activation(0, 7, 10, i64::MAX - 3), None);
    }

    #[test]
    fn a_shorter_interval_moves_the_activation_to_the_first_new_grid_point_after_the_window() {
        let now = 1_000_000 * S + 123;
        let far = now + 9 * 60 * S; // on a 10-minute grid, nine minutes away
                                    // 10m -> 1s, window 500ms: clients of the 10m table poll every 15 s, so the new time is
                                    // the first whole second at least 15 s away.
        let t = rescheduled_activation(far, 600 * S, S, S / 2, now).unwrap();
        assert_eq!(t, 1_000_016 * S);
        // 400ms -> 200ms, window 100ms: clients poll every 200 ms, which the window does not
        // cover, so the lead is the poll period.
        let t = rescheduled_activation(far, 400_000, 200_000, 100_000, now).unwrap();
        assert_eq!(t, 1_000_000 * S + 400_000);
        // A sooner current time stays.
        let soon = now + 2 * S;
        assert_eq!(
            rescheduled_activation(soon, 600 * S, 60 * S, 30 * S, now),
            Some(soon)
        );
    }
}
