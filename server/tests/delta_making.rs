//! Making deltas on a real `lockstep serve`: requests that find a delta being made await it
//! without a blocking thread each, so store calls (an admin write) are answered meanwhile; and
//! only deltas to the staged or active version are made, so old URLs cannot force makes; the
//! make runs at background priority.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use lockstep::wire;

/// Enough keys that making a delta between two versions takes a while (seconds in a debug
/// build), so that requests are still waiting for it when the admin write is answered.
const KEYS: usize = 150_000;

/// Sets every key; every `changed_every`-th one's value carries `salt`.
fn import(s: &Server, salt: &str, changed_every: usize) {
    let entries: Vec<serde_json::Value> = (0..KEYS)
        .map(|i| {
            let value = if i % changed_every == 0 {
                format!("value-{i}-{salt}")
            } else {
                format!("value-{i}")
            };
            serde_json::json!({"key": format!("key:{i:06}"), "value": value})
        })
        .collect();
    admin_post(
        s,
        "/v1/admin/import",
        serde_json::json!({ "entries": entries }),
    );
}

/// The delta path a check-in names once `key:000000`=`value` is staged and not active.
fn staged_delta_path(s: &Server, value: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = checkin(s, "delta-making");
        if r.sync.staged_version != r.sync.active_version
            && value_in_version(s, "key:000000", r.sync.staged_version).as_deref() == Some(value)
            && !r.staged_delta_from_active.is_empty()
        {
            return r.staged_delta_from_active;
        }
        assert!(Instant::now() < deadline, "{value} never staged");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn requests_waiting_for_a_delta_leave_blocking_threads_to_the_store_and_old_targets_are_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    // Versions A, B, C go live one after another; the delta URLs A→B and B→C are kept.
    let (ab, bc) = {
        let s = Server::start(&db, &["--interval", "1s"]);
        import(&s, "a", 1);
        wait_active(&s, "key:000000", "value-0-a");
        import(&s, "b", 100);
        let ab = staged_delta_path(&s, "value-0-b");
        wait_active(&s, "key:000000", "value-0-b");
        import(&s, "c", 100);
        let bc = staged_delta_path(&s, "value-0-c");
        wait_active(&s, "key:000000", "value-0-c");
        admin_post(
            &s,
            "/v1/admin/interval",
            serde_json::json!({ "interval": "10m" }),
        );
        let t = checkin(&s, "probe").sync.activation_time_us;
        wait_rotation_past(&s, t);
        (ab, bc)
    };
    // A fresh process on the same database (same blob secret, so the same URLs): nothing made
    // yet, C active and staged, and three blocking threads.
    let s = Server::start(&db, &["--interval", "10m", "--max-blocking-threads", "3"]);
    let sync = checkin(&s, "probe").sync;
    assert_eq!(sync.active_version, sync.staged_version);
    // B is neither staged nor active: no delta is made to it.
    let old = get(&format!("{}{ab}", s.url), None, &[]);
    assert_eq!(old.status, 404, "{}", String::from_utf8_lossy(&old.body));
    assert!(
        String::from_utf8_lossy(&old.body).contains("staged or active"),
        "{}",
        String::from_utf8_lossy(&old.body)
    );
    // Six first requests for B→C (C is active): one makes it, five wait for it.
    let waiting: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("{}{bc}", s.url);
            std::thread::spawn(move || get(&url, None, &[]))
        })
        .collect();
    // Until one of the six has begun making the delta (well short of the make: its version
    // reads are optimized even in a debug build, and at 300 ms it had ended). The make runs on
    // a thread of its own below the requests' priority: it comes at an activation time, with
    // the farm's check-ins. (A thread starts at its parent's priority and lowers itself
    // first: watched until it shows lowered, or the requests are answered.)
    let watch_until = Instant::now() + Duration::from_secs(5);
    let (requests, delta_threads) = loop {
        let (main, delta) = thread_nices(s.child.id(), "delta");
        let done = waiting.iter().all(|w| w.is_finished());
        if delta == [(main + 10).min(19)] || done || Instant::now() > watch_until {
            break (main, delta);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let started = Instant::now();
    put(&s, "written", "while a delta is made");
    let put_took = started.elapsed();
    let still_waiting = waiting.iter().filter(|w| !w.is_finished()).count();
    println!("the put took {put_took:?}; {still_waiting} delta requests still waiting");
    // Were the waiters parked on blocking threads, the put would queue behind the make.
    assert!(
        still_waiting > 0,
        "the admin write was answered only after the delta was made ({put_took:?})"
    );
    assert_eq!(
        delta_threads,
        [(requests + 10).min(19)],
        "one delta thread, at nice +10, while the delta was made"
    );
    let bodies: Vec<Vec<u8>> = waiting
        .into_iter()
        .map(|w| {
            let a = w.join().unwrap();
            assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
            a.body
        })
        .collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert!(bc.starts_with(wire::PATH_DELTAS));
}
