//! The promises of urgent activation (see `urgent_in`), on SQLite and on PostgreSQL.
//!
//! "Now" is passed in: the store takes the later of it and the clock, so a test moves time
//! forward by passing times after the real one (the rotation at U is performed by a check-in
//! "at" U + 1 µs).

use super::{unaudited, Change, Location, Store, SyncSettings, UrgentOutcome};
use crate::clock;

#[path = "../../../tests/support/postgres.rs"]
mod pg;

const S: i64 = 1_000_000;
const INTERVAL: i64 = 600 * S;
const WINDOW: i64 = 300 * S;

/// Runs `body` on a new store per backend (PostgreSQL skipped, loudly, with
/// `LOCKSTEP_PG_TESTS=off`).
fn each_backend(body: impl Fn(&Store)) {
    let settings = SyncSettings {
        interval_us: INTERVAL,
        min_window_us: WINDOW,
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Location::Sqlite(dir.path().join("db"));
    body(&Store::open(&sqlite, settings, clock::now_us()).unwrap());
    if let Some(cluster) = pg::cluster() {
        let url = Location::Postgres(cluster.new_database());
        eprintln!("--- PostgreSQL: {url}");
        body(&Store::open(&url, settings, clock::now_us()).unwrap());
    }
}

fn put(s: &Store, value: &str, now: i64) {
    s.apply(&[price(value)], "test", now, &unaudited).unwrap();
}

fn price(value: &str) -> Change {
    Change::Put(b"price".to_vec(), value.as_bytes().to_vec())
}

fn urgent_put(s: &Store, value: &str, now: i64) -> UrgentOutcome {
    s.apply_urgent(&[price(value)], "test", now, &unaudited)
        .unwrap()
        .1
}

fn price_in(s: &Store, version: u64) -> Option<String> {
    let content = s.version_content(version).unwrap();
    content
        .get(&b"price"[..])
        .map(|v| String::from_utf8(v.clone()).unwrap())
}

fn staged_price(s: &Store) -> Option<String> {
    price_in(s, s.sync_table().unwrap().staged_version)
}

fn active_price(s: &Store) -> Option<String> {
    price_in(s, s.sync_table().unwrap().active_version)
}

/// Performs the rotation of the activation time now staged, as a check-in just after it.
fn rotate(s: &Store) -> i64 {
    let t = s.sync_table().unwrap().activation_time_us;
    let (_, rotated) = s.rotate_if_due(t + 1, "test").unwrap();
    assert!(rotated);
    t
}

fn urgent_times(s: &Store) -> Vec<i64> {
    s.rotations()
        .unwrap()
        .iter()
        .filter(|r| r.urgent)
        .map(|r| r.activation_time_us)
        .collect()
}

#[test]
fn an_urgent_put_is_staged_for_now_plus_the_window_when_every_client_hears_before_t() {
    each_backend(|s| {
        let before = s.sync_table().unwrap();
        let now = clock::now_us();
        let out = urgent_put(s, "urgent", now);
        let after = s.sync_table().unwrap();
        assert!(!out.queued && !out.already_live, "{out:?}");
        // The default urgent window, 1 s, from when the transaction ran.
        assert!(
            after.activation_time_us >= now + S && after.activation_time_us <= clock::now_us() + S,
            "U is not now + 1 s: {} (now {now})",
            after.activation_time_us
        );
        assert_eq!(out.live_at_us, after.activation_time_us);
        assert!(after.activation_time_us < before.activation_time_us);
        assert_eq!(staged_price(s).as_deref(), Some("urgent"));
        assert_eq!(out.version, after.staged_version);
        let u = rotate(s);
        assert_eq!(active_price(s).as_deref(), Some("urgent"));
        assert_eq!(urgent_times(s), vec![u]);
        let proof = s.activations(1, clock::now_us()).unwrap();
        assert!(proof[0].urgent && proof[0].activation_time_us == u);
    });
}

#[test]
fn two_urgent_requests_close_together_neither_collide_nor_skip_a_version() {
    each_backend(|s| {
        let now = clock::now_us();
        let first = urgent_put(s, "one", now);
        let u1 = s.sync_table().unwrap().activation_time_us;
        let staged_for_u1 = s.sync_table().unwrap().staged_version;
        // 100 ms later, before U1.
        let second = urgent_put(s, "two", now + S / 10);
        let sync = s.sync_table().unwrap();
        assert!(!first.queued && second.queued, "{first:?} {second:?}");
        assert_eq!(sync.activation_time_us, u1, "the second request moved U1");
        assert_eq!(
            sync.staged_version, staged_for_u1,
            "U1's version was replaced"
        );
        assert_eq!(staged_price(s).as_deref(), Some("one"));
        // At U1 "one" goes live, and "two" is staged for U1 + the window.
        rotate(s);
        assert_eq!(active_price(s).as_deref(), Some("one"));
        assert_eq!(staged_price(s).as_deref(), Some("two"));
        let u2 = s.sync_table().unwrap().activation_time_us;
        assert!(u2 > u1 && u2 <= u1 + 1 + S + S / 10, "U2 {u2}, U1 {u1}");
        rotate(s);
        assert_eq!(active_price(s).as_deref(), Some("two"));
        assert_eq!(urgent_times(s), vec![u1, u2]);
        // Each urgent version went live at its own activation: none was skipped.
        let history = s.history(10).unwrap();
        let activated = |v: u64| history.iter().find(|r| r.info.version == v).unwrap();
        assert_eq!(activated(staged_for_u1).info.activated_us, Some(u1));
        assert_eq!(
            history
                .iter()
                .filter(|r| r.info.activated_us == Some(u2))
                .count(),
            1
        );
    });
}

#[test]
fn an_urgent_activation_never_brings_a_scheduled_change_forward() {
    each_backend(|s| {
        let t = s.sync_table().unwrap().activation_time_us;
        let now = clock::now_us();
        // Effective just before T: it is in the version staged for T.
        s.schedule(&price("at T"), t - S, "test", now, &unaudited)
            .unwrap();
        let out = s
            .apply_urgent(
                &[Change::Put(b"other".to_vec(), b"urgent".to_vec())],
                "test",
                now,
                &unaudited,
            )
            .unwrap()
            .1;
        assert!(
            out.queued,
            "staged for U with a change scheduled after U: {out:?}"
        );
        let sync = s.sync_table().unwrap();
        assert_eq!(sync.activation_time_us, t, "T moved");
        assert_eq!(staged_price(s).as_deref(), Some("at T"));
        // The rotation at T takes the queued request: production goes live at T + the window.
        rotate(s);
        let next = s.sync_table().unwrap().activation_time_us;
        assert!(next > t && next <= t + 1 + S + S / 10, "next {next}, T {t}");
        assert_eq!(active_price(s).as_deref(), Some("at T"));
        let staged = s.version_content(s.sync_table().unwrap().staged_version);
        assert_eq!(staged.unwrap()[&b"other"[..]], b"urgent");
        rotate(s);
        assert_eq!(urgent_times(s), vec![next]);
    });
}

#[test]
fn an_urgent_request_less_than_a_checkin_period_before_t_is_queued_for_the_rotation_at_t() {
    each_backend(|s| {
        let t = s.sync_table().unwrap().activation_time_us;
        put(s, "ordinary", clock::now_us());
        // 10 s before T: a client polling every 15 s might not hear of U before T.
        let out = urgent_put(s, "urgent", t - 10 * S);
        assert!(out.queued && out.after_us == t, "{out:?}");
        assert_eq!(s.sync_table().unwrap().activation_time_us, t);
        rotate(s);
        let u = s.sync_table().unwrap().activation_time_us;
        assert!(u > t && u <= t + 1 + S + S / 10);
        assert_eq!(staged_price(s).as_deref(), Some("urgent"));
        rotate(s);
        assert_eq!(active_price(s).as_deref(), Some("urgent"));
        // Queued once: the rotation at U is an ordinary one, back on the grid.
        assert_eq!(urgent_times(s), vec![u]);
        let after_u = s.sync_table().unwrap().activation_time_us;
        assert_eq!(
            after_u % INTERVAL,
            0,
            "the activation after U is off the grid"
        );
        assert!(
            !s.status(clock::now_us()).unwrap().urgent_queued,
            "still queued after U"
        );
    });
}

#[test]
fn the_grid_carries_on_after_an_urgent_activation() {
    each_backend(|s| {
        let t = s.sync_table().unwrap().activation_time_us;
        urgent_put(s, "urgent", clock::now_us());
        let u = rotate(s);
        assert_ne!(
            u % INTERVAL,
            0,
            "U fell on the grid: the test proves nothing"
        );
        let after_u = s.sync_table().unwrap().activation_time_us;
        assert_eq!(
            after_u % INTERVAL,
            0,
            "the activation after U is off the grid"
        );
        assert!(after_u >= u + WINDOW && after_u - INTERVAL < u + WINDOW);
        assert!(after_u >= t);
        put(s, "ordinary", clock::now_us());
        rotate(s);
        let next = s.sync_table().unwrap().activation_time_us;
        assert_eq!(next, after_u + INTERVAL);
        assert_eq!(urgent_times(s), vec![u]);
    });
}

#[test]
fn an_urgent_publish_of_what_is_live_changes_nothing() {
    each_backend(|s| {
        let before = s.sync_table().unwrap();
        let out = s.urgent("test", clock::now_us(), &unaudited).unwrap();
        assert!(out.already_live && !out.queued, "{out:?}");
        assert_eq!(s.sync_table().unwrap(), before);
        assert!(!s.status(clock::now_us()).unwrap().urgent_queued);
    });
}

#[test]
fn an_urgent_rollback_goes_live_at_now_plus_the_window() {
    each_backend(|s| {
        put(s, "good", clock::now_us());
        rotate(s);
        rotate(s);
        let good = s.sync_table().unwrap().active_version;
        assert_eq!(active_price(s).as_deref(), Some("good"));
        put(s, "bad", clock::now_us());
        rotate(s);
        rotate(s);
        assert_eq!(active_price(s).as_deref(), Some("bad"));
        let now = clock::now_us();
        let (_, out) = s
            .rollback_urgent(good, true, "test", now, &unaudited)
            .unwrap();
        assert!(!out.queued, "{out:?}");
        let u = s.sync_table().unwrap().activation_time_us;
        assert!(u >= now + S && u <= clock::now_us() + S);
        rotate(s);
        assert_eq!(active_price(s).as_deref(), Some("good"));
    });
}

#[test]
fn a_pending_urgent_activation_is_never_moved_even_by_a_shorter_urgent_window() {
    each_backend(|s| {
        s.set_urgent_window(120 * S, &unaudited).unwrap();
        let now = clock::now_us();
        urgent_put(s, "one", now);
        let u1 = s.sync_table().unwrap().activation_time_us;
        let staged_for_u1 = s.sync_table().unwrap().staged_version;
        // Clients have armed U1, two minutes away. With a 1 s window a second request
        // could be heard by all of them before U1, but U1 must stay, with its version.
        s.set_urgent_window(S, &unaudited).unwrap();
        let second = urgent_put(s, "two", now + S);
        assert!(second.queued && second.after_us == u1, "{second:?}");
        let sync = s.sync_table().unwrap();
        assert_eq!(sync.activation_time_us, u1, "U1 moved");
        assert_eq!(sync.staged_version, staged_for_u1);
        rotate(s);
        assert_eq!(active_price(s).as_deref(), Some("one"));
        assert_eq!(staged_price(s).as_deref(), Some("two"));
    });
}

#[test]
fn a_queued_urgent_rotation_never_stages_a_version_built_ahead_for_the_grid_point() {
    each_backend(|s| {
        let t = s.sync_table().unwrap().activation_time_us;
        // Due after T and before the grid point after it: a rotation at T for the grid point
        // stages it; one for T + the urgent window must not.
        s.schedule(
            &price("later"),
            t + 120 * S,
            "test",
            clock::now_us(),
            &unaudited,
        )
        .unwrap();
        let out = urgent_put(s, "urgent", t - 10 * S);
        assert!(out.queued, "{out:?}");
        assert!(s.prepare_next(t - S).unwrap(), "nothing built ahead");
        rotate(s);
        let u = s.sync_table().unwrap().activation_time_us;
        assert!(u < t + 2 * S, "not an urgent activation: {u}");
        assert_eq!(staged_price(s).as_deref(), Some("urgent"));
        // At U the grid point comes next, with the scheduled change.
        rotate(s);
        assert_eq!(staged_price(s).as_deref(), Some("later"));
    });
}

/// A SQLite store whose production holds `keys` keys (the urgent restage reads and encodes
/// them all, which takes long in a debug build), staged and active before the edit.
fn sqlite_with_keys(dir: &std::path::Path, keys: u32) -> Store {
    let settings = SyncSettings {
        interval_us: INTERVAL,
        min_window_us: WINDOW,
    };
    let s = Store::open(&Location::Sqlite(dir.join("db")), settings, clock::now_us()).unwrap();
    let changes: Vec<Change> = (0..keys)
        .map(|i| Change::Put(format!("key-{i:08}").into_bytes(), vec![b'v'; 32]))
        .collect();
    s.apply(&changes, "test", clock::now_us(), &unaudited)
        .unwrap();
    s
}

#[test]
fn the_urgent_time_counts_from_the_end_of_the_encode() {
    let dir = tempfile::tempdir().unwrap();
    let s = sqlite_with_keys(dir.path(), 200_000);
    s.set_urgent_window(7 * S / 10, &unaudited).unwrap();
    let asked = clock::now_us();
    let out = urgent_put(&s, "urgent", asked);
    let answered = clock::now_us();
    assert!(!out.queued, "{out:?}");
    let u = s.sync_table().unwrap().activation_time_us;
    eprintln!(
        "urgent request took {} ms; U is {} ms after the answer",
        (answered - asked) / 1000,
        (u - answered) / 1000
    );
    // Clients hear of U only after the commit: it must still be ahead then.
    assert!(
        u > answered,
        "U passed before the commit: {u} <= {answered}"
    );
    assert_eq!(out.live_at_us, u);
}

#[test]
fn an_urgent_restage_that_took_too_long_for_t_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let s = sqlite_with_keys(dir.path(), 20_000);
    let before = s.sync_table().unwrap();
    let t = before.activation_time_us;
    // U + a check-in period (15 s at a 10-minute interval) is 1 ms short of T when the
    // request starts, and after the restage's reads and encode it is past T.
    let now = t - 15 * S - S - 1_000;
    let out = urgent_put(&s, "urgent", now);
    assert!(out.queued, "{out:?}");
    let after = s.sync_table().unwrap();
    assert_eq!(after.activation_time_us, t, "the activation time moved");
    assert_eq!(after.staged_version, before.staged_version);
    assert_eq!(staged_price(&s), None);
    assert!(s.production_get(b"price").unwrap().is_some());
}
