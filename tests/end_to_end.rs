//! The client library end to end: a real data server process and client processes reading
//! through the C ABI (tests/c/observer.c), some with wall clocks skewed by libfaketime.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use support::observer::Observer;
use support::*;

/// Activation time (data-server µs) of `version`, from the data server's history (recorded
/// by the rotation that follows the activation, so it may take a check-in to appear).
fn activated_at(s: &Server, version: u64) -> i64 {
    for _ in 0..500 {
        let history = admin_get(s, "/v1/admin/history");
        let found = history
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"].as_u64() == Some(version))
            .and_then(|v| v["activated_us"].as_i64());
        if let Some(t) = found {
            return t;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("version {version} never got an activation time");
}

/// Asserts every observer switched to the version holding `value` at one instant: each
/// armed its switch within `tolerance_ns` of the activation time (and so of each other), its
/// reads switched there (the armed instant lies between its last read of the old version and
/// its first read of the new), and no read broke the window: nothing new before
/// `T - tolerance`, nothing old after `T + tolerance`. How soon after the instant a reader
/// process got the CPU back to see it is the scheduler's, and is only reported.
fn assert_lockstep(s: &Server, observers: &[Observer], value: &str, tolerance_ns: i64) {
    let changes: Vec<_> = observers
        .iter()
        .map(|o| o.wait_value(value, Duration::from_secs(20)))
        .collect();
    let version = changes[0].version;
    for c in &changes {
        assert_eq!(
            c.version, version,
            "observers switched to different versions"
        );
    }
    let t_mono = wall_us_to_mono_ns(activated_at(s, version));
    let armed: Vec<i64> = observers
        .iter()
        .zip(&changes)
        .map(|(o, c)| {
            o.wait_for(Duration::from_secs(5), |r| {
                r.stat("activated_ns")
                    .filter(|at| *at >= c.last_old_ns - 1_000_000_000)
            })
            .unwrap_or_else(|| panic!("{} never reported its activation", o.name))
        })
        .collect();
    let spread = armed.iter().max().unwrap() - armed.iter().min().unwrap();
    eprintln!(
        "activation of version {version}: armed instants from T (µs) {:?}, spread {} µs; \
         first reads of the new version from T (µs) {:?}",
        armed
            .iter()
            .map(|a| (a - t_mono) / 1000)
            .collect::<Vec<_>>(),
        spread / 1000,
        changes
            .iter()
            .map(|c| (c.first_new_ns - t_mono) / 1000)
            .collect::<Vec<_>>(),
    );
    assert!(
        spread <= tolerance_ns,
        "activation spread {spread} ns exceeds {tolerance_ns} ns"
    );
    for ((o, c), at) in observers.iter().zip(&changes).zip(&armed) {
        assert!(
            (at - t_mono).abs() <= tolerance_ns,
            "{} armed its switch {} µs away from the activation time",
            o.name,
            (at - t_mono) / 1000
        );
        assert!(
            c.last_old_start_ns <= *at && *at <= c.first_new_end_ns,
            "{}: reads did not switch at the armed instant: the last old read began {}, armed \
             {}, the first new read ended {}",
            o.name,
            c.last_old_start_ns,
            at,
            c.first_new_end_ns
        );
        assert!(
            c.first_new_ns >= t_mono - tolerance_ns,
            "{} read new data early",
            o.name
        );
        assert!(
            c.last_old_ns <= t_mono + tolerance_ns,
            "{} read old data late",
            o.name
        );
    }
}

#[test]
fn end_to_end_edit_activates_in_four_client_processes_at_one_instant() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "1s", "--min-window", "500ms"],
    );
    put(&s, "price", "10.00");
    wait_active(&s, "price", "10.00");
    let observers: Vec<Observer> = (0..4)
        .map(|i| Observer::start(&s.url, &format!("web{i}"), "price", 30.0, None))
        .collect();
    for o in &observers {
        o.wait_ready();
    }
    put(&s, "price", "8.00");
    assert_lockstep(&s, &observers, "8.00", 10_000_000);

    // The farm view shows every client.
    std::thread::sleep(Duration::from_millis(1200));
    let status = admin_get(&s, "/v1/admin/status");
    let names: Vec<&str> = status["farm"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for i in 0..4 {
        assert!(names.contains(&format!("web{i}").as_str()), "{names:?}");
    }
}

#[test]
fn skewed_clock_clients_still_activate_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "1s", "--min-window", "500ms"],
    );
    put(&s, "price", "10.00");
    wait_active(&s, "price", "10.00");
    let skews = [(None, 0i64), (Some("-2h"), 7_200), (Some("+1d"), -86_400)];
    let observers: Vec<Observer> = skews
        .iter()
        .enumerate()
        .map(|(i, (skew, _))| Observer::start(&s.url, &format!("skew{i}"), "price", 30.0, *skew))
        .collect();
    for o in &observers {
        o.wait_ready();
    }
    // The skew really is in effect: each client measures its offset to the data server.
    for (o, (_, expected_s)) in observers.iter().zip(skews) {
        let offset = o
            .wait_for(Duration::from_secs(10), |r| r.stat("offset_us"))
            .unwrap();
        assert!(
            (offset - expected_s * 1_000_000).abs() < 2_000_000,
            "{}: measured offset {offset} µs, skew {expected_s} s",
            o.name
        );
    }
    put(&s, "price", "7.50");
    assert_lockstep(&s, &observers, "7.50", 10_000_000);
}

#[test]
fn server_down_reads_keep_working_and_clients_converge_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--interval", "500ms", "--min-window", "250ms"];
    let mut s = Server::start_at(&db, &listen, &args);
    put(&s, "price", "10.00");
    wait_active(&s, "price", "10.00");
    let observers: Vec<Observer> = (0..2)
        .map(|i| Observer::start(&s.url, &format!("web{i}"), "price", 40.0, None))
        .collect();
    for o in &observers {
        o.wait_value("10.00", Duration::from_secs(10));
    }
    s.kill9();
    // Several cycles without a data server.
    std::thread::sleep(Duration::from_secs(3));
    for o in &observers {
        let r = o.report();
        assert!(
            r.stat("failures").unwrap_or(0) > 0,
            "{}: no failure seen",
            o.name
        );
        assert_eq!(r.changes.last().unwrap().value, "10.00");
        let max_read = r.stat("max_read_ns").unwrap();
        // A read that waited on the network would take the connect timeout (seconds).
        assert!(
            max_read < 200_000_000,
            "{}: a read took {max_read} ns",
            o.name
        );
        let lines = r.stats_lines;
        let more = o.wait_for(Duration::from_secs(2), |r| {
            (r.stats_lines > lines).then_some(())
        });
        assert!(more.is_some(), "{} stopped serving reads", o.name);
    }
    let s = Server::start_at(&db, &listen, &args);
    put(&s, "price", "9.00");
    for o in &observers {
        o.wait_value("9.00", Duration::from_secs(15));
    }
}

#[test]
fn a_data_server_started_afresh_reusing_version_numbers_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--interval", "300ms", "--min-window", "150ms"];
    let mut old = Server::start_at(&dir.path().join("old"), &listen, &args);
    put(&old, "price", "old");
    let v_old = wait_active(&old, "price", "old").active_version;
    let o = Observer::start(&old.url, "web", "price", 30.0, None);
    let seen = o.wait_value("old", Duration::from_secs(10));
    assert_eq!(seen.version, v_old);
    // A new database, prepared elsewhere: its numbers start again, with other content.
    let new_db = dir.path().join("new");
    let mut prep = Server::start(&new_db, &args);
    put(&prep, "price", "new");
    let v_new = wait_active(&prep, "price", "new").active_version;
    assert_eq!(v_new, v_old, "test needs the same number reused");
    prep.kill9();
    old.kill9();
    let new = Server::start_at(&new_db, &listen, &args);
    assert_eq!(checkin(&new, "judge").sync.active_version, v_new);
    o.wait_value("new", Duration::from_secs(10));
}

/// Edits and quiet cycles through a counting proxy: each version is downloaded once.
fn downloads_each_version_once(options: &str) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "400ms", "--min-window", "200ms"],
    );
    put(&s, "price", "p0");
    wait_active(&s, "price", "p0");
    // Every download passes the proxy, which counts them by path.
    let proxy =
        support::proxy::Proxy::start("127.0.0.1:0", &s.url, support::proxy::Mode::PassThrough);
    let o = Observer::start_with(&proxy.url, "frugal", "price", 60.0, None, options);
    o.wait_value("p0", Duration::from_secs(10));
    for i in 1..=4 {
        let value = format!("p{i}");
        put(&s, "price", &value);
        o.wait_value(&value, Duration::from_secs(10));
    }
    // Cycles with nothing new: check-ins only.
    // By version, whole or as a delta: a version may arrive either way, but only once.
    let quiet = proxy.transfers();
    std::thread::sleep(Duration::from_secs(2));
    let downloads = proxy.transfers();
    assert_eq!(quiet, downloads, "downloads while nothing changed");
    let repeated: Vec<_> = downloads.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "versions downloaded more than once: {repeated:?} (all: {downloads:?})"
    );
    assert_eq!(
        downloads.len(),
        5,
        "one download per version: {downloads:?}"
    );
}

#[test]
fn a_client_never_downloads_a_version_it_already_holds() {
    // On its own (no host cache), so only the client's own bookkeeping can spare a download.
    downloads_each_version_once("cache_dir=");
}

#[test]
fn a_host_never_downloads_a_version_it_already_holds() {
    downloads_each_version_once("");
}

#[test]
fn a_client_given_several_data_servers_fails_over_and_keeps_converging() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let args = ["--interval", "500ms", "--min-window", "250ms"];
    let mut a = Server::start(&db, &args);
    let b = Server::start(&db, &[]);
    put(&a, "price", "p0");
    wait_active(&a, "price", "p0");
    let o = Observer::start_with(
        &format!("{},{}", a.url, b.url),
        "roamer",
        "price",
        60.0,
        None,
        "",
    );
    o.wait_value("p0", Duration::from_secs(10));
    // The instance it talks to dies; the other carries the farm on, from the same database.
    a.kill9();
    put(&b, "price", "p1");
    let c = o.wait_value("p1", Duration::from_secs(10));
    let table = wait_active(&b, "price", "p1");
    assert_eq!(c.version, table.active_version);
    let farm = admin_get(&b, "/v1/admin/status");
    assert!(
        farm["farm"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "roamer"),
        "the client never checked in with the surviving instance: {farm}"
    );
}

#[test]
fn clock_samples_of_two_data_servers_are_never_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut a = Server::start(&db, &["--interval", "1s", "--min-window", "500ms"]);
    // The second instance's clock is 30 s ahead: another clock, as far as a client can tell.
    let faketime = support::observer::libfaketime();
    let b = Server::start_env(
        &db,
        "127.0.0.1:0",
        &[],
        &[
            ("LD_PRELOAD", faketime.to_str().unwrap()),
            ("FAKETIME", "+30s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    put(&a, "price", "p0");
    wait_active(&a, "price", "p0");
    let o = Observer::start_with(
        &format!("{},{}", a.url, b.url),
        "two-clocks",
        "price",
        60.0,
        None,
        "",
    );
    o.wait_value("p0", Duration::from_secs(10));
    let near_a = o
        .wait_for(Duration::from_secs(5), |r| r.stat("offset_us"))
        .unwrap();
    assert!(near_a.abs() < 1_000_000, "offset to A: {near_a} µs");
    let since = o.report().stats_lines;
    a.kill9();
    // Once it talks to B, its offset is B's, however good A's old samples were.
    let offset = o
        .wait_for(Duration::from_secs(10), |r| {
            r.stat("offset_us").filter(|off| *off > 25_000_000)
        })
        .unwrap_or_else(|| panic!("the offset never became B's: {:?}", o.report().stats));
    assert!(offset < 35_000_000, "offset to B: {offset} µs");
    // From its very first check-in with B (whose clock reads 30 s ahead) on, never A's offset.
    let r = o.report();
    for line in r.stats_history.iter().skip(since) {
        let stat = |k: &str| line.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap();
        if stat("checkin_us") > now_us() + 20_000_000 {
            assert!(
                stat("offset_us") > 25_000_000,
                "checked in with B but still on A's clock: {line:?}"
            );
        }
    }
}

#[test]
fn a_client_given_several_data_servers_sticks_to_one_while_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut a = Server::start(&db, &["--interval", "500ms", "--min-window", "250ms"]);
    let b = Server::start(&db, &[]);
    // Each instance behind a proxy that counts the check-ins reaching it.
    let pass = support::proxy::Mode::PassThrough;
    let (pa, pb) = (
        support::proxy::Proxy::start("127.0.0.1:0", &a.url, pass),
        support::proxy::Proxy::start("127.0.0.1:0", &b.url, pass),
    );
    put(&a, "price", "p0");
    let o = Observer::start_with(
        &format!("{},{}", pa.url, pb.url),
        "sticky",
        "price",
        60.0,
        None,
        "cache_dir=",
    );
    o.wait_value("p0", Duration::from_secs(10));
    for i in 1..=3 {
        let value = format!("p{i}");
        put(&a, "price", &value);
        o.wait_value(&value, Duration::from_secs(10));
    }
    assert!(pa.checkins() >= 4, "{} check-ins with A", pa.checkins());
    assert_eq!(pb.checkins(), 0, "checked in with B while A answered");
    // A dies: the client moves to B, and stays there.
    a.kill9();
    put(&b, "price", "p4");
    o.wait_value("p4", Duration::from_secs(10));
    let (with_a, with_b) = (pa.checkins(), pb.checkins());
    assert!(with_b > 0);
    put(&b, "price", "p5");
    o.wait_value("p5", Duration::from_secs(10));
    assert!(pb.checkins() > with_b, "no check-in with B after the move");
    assert_eq!(pa.checkins(), with_a);
}
