//! The data server as a real child process: rotation, scheduling, durability, bad input,
//! integrity. Each test talks HTTP to the real binary.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::postgres::{each_backend, Backend};
use common::*;
use lockstep::format;
use lockstep::wire;

#[test]
fn exactly_one_rotation_under_64_concurrent_checkins() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "1s"]);
        put(&s, "k", "v");
        let t = checkin(&s, "probe").sync.activation_time_us;
        let before = rotation_count(&s);
        let results = concurrent_checkins(std::slice::from_ref(&s.url), 64, t);
        assert_exactly_one_rotation(&results, t);
        assert_eq!(rotation_count(&s), before + 1);
    });
}

/// The herd at an activation time waits for the rotating check-in on the runtime, not each on
/// a blocking thread of its own: the data server starts a thread or two for it, not one per
/// check-in. The rotation is held up (another connection holds SQLite's write lock across `T`)
/// so that the whole herd has arrived while it waits; tokio keeps a blocking thread ten seconds
/// after its task, so the threads it started are still there to count.
#[test]
fn the_herd_at_an_activation_time_waits_without_a_thread_each() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let s = Server::start(&db, &["--interval", "1s"]);
    put(&s, "k", "v");
    let mut t = checkin(&s, "probe").sync.activation_time_us;
    while t - now_us() < 300_000 {
        std::thread::sleep(Duration::from_millis(50));
        t = checkin(&s, "probe").sync.activation_time_us;
    }
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", s.child.id()))
            .unwrap()
            .count()
    };
    let before = threads();
    let writer = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        sleep_until_us(t - 100_000);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let locked_us = now_us();
        sleep_until_us(t + 500_000);
        conn.execute_batch("ROLLBACK").unwrap();
        locked_us
    });
    let results = concurrent_checkins(std::slice::from_ref(&s.url), 96, t);
    let answered_us = now_us();
    let locked_us = writer.join().unwrap();
    assert!(locked_us < t, "the write lock was taken only after T");
    assert!(
        answered_us >= t + 500_000,
        "the herd was answered before the rotation could write: it did not wait"
    );
    assert_exactly_one_rotation(&results, t);
    let started = threads().saturating_sub(before);
    println!("{started} threads started for a herd of 96 check-ins");
    assert!(
        started <= 8,
        "the herd of 96 check-ins started {started} threads"
    );
}

#[test]
fn exactly_one_rotation_with_two_server_processes_on_one_database() {
    each_backend(|_, db| {
        let a = Server::start(db, &["--interval", "1s"]);
        let b = Server::start(db, &[]);
        put(&a, "k", "v");
        // Far enough from the activation time that both check-ins see the same one.
        let mut t = checkin(&a, "probe").sync.activation_time_us;
        while t - now_us() < 300_000 {
            std::thread::sleep(Duration::from_millis(50));
            t = checkin(&a, "probe").sync.activation_time_us;
        }
        assert_eq!(checkin(&b, "probe").sync.activation_time_us, t);
        let before = rotation_count(&a);
        let results = concurrent_checkins(&[a.url.clone(), b.url.clone()], 64, t);
        assert_exactly_one_rotation(&results, t);
        assert_eq!(rotation_count(&a), before + 1);
        assert_eq!(rotation_count(&b), before + 1);
    });
}

/// The encode of a version built ahead (or restaged after `T`) runs below the priority of the
/// threads that answer requests, as a rotation wakes it while the farm checks in; the
/// preparing thread's database writes do not, or a rotation could wait on a lowered thread.
#[test]
fn a_build_runs_at_background_priority_and_the_preparing_thread_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("db"), &["--interval", "2s"]);
    // Enough keys that a debug build takes a while to encode them.
    let entries: Vec<serde_json::Value> = (0..100_000)
        .map(|i| serde_json::json!({"key": format!("key:{i:06}"), "value": "v"}))
        .collect();
    admin_post(
        &s,
        "/v1/admin/import",
        serde_json::json!({ "entries": entries }),
    );
    // A build thread starts at its parent's priority and lowers itself first: wait until one
    // is seen lowered.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut edits = 0;
    let mut seen = std::collections::BTreeSet::new();
    if thread_nices(s.child.id(), "prepare").0 >= 19 {
        eprintln!("the data server runs at the lowest priority already: nothing to compare");
        return;
    }
    let requests = loop {
        let (main, build) = thread_nices(s.child.id(), "build");
        if build == [(main + 10).min(19)] {
            let (_, prepare) = thread_nices(s.child.id(), "prepare");
            assert_eq!(prepare, [main], "the preparing thread runs lowered");
            break main;
        }
        seen.extend(build);
        assert!(
            Instant::now() < deadline,
            "no build thread seen at nice +10 in 60 s; seen at {seen:?}"
        );
        // An edit now and then, so that there is always a next version to build, and
        // check-ins, which rotate.
        if edits % 200 == 0 {
            put(&s, "edited", &edits.to_string());
        }
        if edits % 50 == 0 {
            checkin(&s, "probe");
        }
        edits += 1;
        std::thread::sleep(Duration::from_millis(2));
    };
    println!("a build seen at nice {}", requests + 10);
}

#[test]
fn grid_alignment_after_long_idle() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "200ms", "--min-window", "150ms"]);
        let t = checkin(&s, "probe").sync.activation_time_us;
        // Idle for many intervals: nobody checks in.
        sleep_until_us(t + 1_530_000);
        let r = checkin(&s, "late");
        assert!(r.rotated);
        let log = admin_get(&s, "/v1/admin/rotations");
        let last = log.as_array().unwrap().last().unwrap();
        let rotated_at = last["rotated_at_us"].as_i64().unwrap();
        let next = r.sync.activation_time_us;
        assert_eq!(next % 200_000, 0, "next activation {next} is off the grid");
        assert!(
            next - rotated_at >= 150_000,
            "less than the minimum window ahead"
        );
        assert!(
            next - 200_000 - rotated_at < 150_000,
            "skipped a grid point that left enough window"
        );
    });
}

/// A poller that keeps rotations on time, as a farm of clients would.
fn keep_rotating(s: &Server, until_us: i64) {
    while now_us() < until_us {
        checkin(s, "poller");
        std::thread::sleep(Duration::from_millis(40));
    }
}

fn activated_versions(s: &Server) -> Vec<(i64, u64)> {
    let h = admin_get(s, "/v1/admin/history");
    let mut out: Vec<(i64, u64)> = h
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| Some((v["activated_us"].as_i64()?, v["version"].as_u64()?)))
        .collect();
    out.sort();
    out
}

#[test]
fn scheduled_change_goes_live_at_first_grid_time_at_or_after_it() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "1s", "--min-window", "500ms"]);
        put(&s, "price", "10");
        let t = checkin(&s, "probe").sync.activation_time_us;
        let x = t + 2_300_000;
        let first_grid = t + 3_000_000;
        let r = admin_post(
            &s,
            "/v1/admin/put",
            serde_json::json!({"key": "price", "value": "8", "at": rfc3339(x)}),
        );
        assert_eq!(r["live_by_us"].as_i64(), Some(first_grid));
        keep_rotating(&s, first_grid + 300_000);
        let activated = activated_versions(&s);
        let at_grid = activated
            .iter()
            .find(|(when, _)| *when == first_grid)
            .unwrap_or_else(|| panic!("nothing activated at {first_grid}: {activated:?}"));
        assert_eq!(
            value_in_version(&s, "price", at_grid.1).as_deref(),
            Some("8")
        );
        for (when, v) in &activated {
            if *when < first_grid {
                assert_ne!(
                    value_in_version(&s, "price", *v).as_deref(),
                    Some("8"),
                    "version {v} activated at {when} already had the scheduled change"
                );
            }
        }
    });
}

#[test]
fn scheduled_change_inside_the_staged_window_restages() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "2s", "--min-window", "1s"]);
        put(&s, "price", "10");
        // Let "price=10" reach the staged version, then schedule inside its window.
        let t0 = checkin(&s, "probe").sync.activation_time_us;
        let sync = wait_rotation_past(&s, t0);
        let t1 = sync.activation_time_us;
        let staged_before = sync.staged_version;
        let x = t1 - 400_000;
        assert!(x > now_us(), "test too slow to schedule before {x}");
        let r = admin_post(
            &s,
            "/v1/admin/put",
            serde_json::json!({"key": "price", "value": "7", "at": rfc3339(x)}),
        );
        assert_eq!(r["live_by_us"].as_i64(), Some(t1));
        let staged_after = checkin(&s, "probe").sync.staged_version;
        assert_ne!(
            staged_after, staged_before,
            "staged version was not rebuilt"
        );
        assert_eq!(
            value_in_version(&s, "price", staged_after).as_deref(),
            Some("7")
        );
        assert_eq!(
            value_in_version(&s, "price", staged_before).as_deref(),
            Some("10")
        );
        let after = wait_rotation_past(&s, t1);
        assert_eq!(after.active_version, staged_after);
    });
}

#[test]
fn unchanged_production_creates_no_version_and_etags_give_304() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "200ms", "--min-window", "100ms"]);
        put(&s, "a", "1");
        let mut t = checkin(&s, "probe").sync.activation_time_us;
        for _ in 0..2 {
            t = wait_rotation_past(&s, t).activation_time_us;
        }
        let versions = admin_get(&s, "/v1/admin/status")["versions"]
            .as_u64()
            .unwrap();
        assert_eq!(versions, 2, "initial version plus one with a=1");
        put(&s, "a", "1"); // same value: not a change
        for _ in 0..5 {
            t = wait_rotation_past(&s, t).activation_time_us;
        }
        let status = admin_get(&s, "/v1/admin/status");
        assert_eq!(status["versions"].as_u64().unwrap(), versions);
        assert!(status["rotations"].as_u64().unwrap() >= 7);

        // A version asked for again with its ETag costs a 304.
        let v = status["sync"]["active_version"].as_u64().unwrap();
        let url = format!("{}/v1/versions/{v}", s.url);
        let first = get(&url, None, &[]);
        assert_eq!(first.status, 200);
        let etag = first.headers["etag"].to_str().unwrap().to_owned();
        let again = get(&url, None, &[("If-None-Match", &etag)]);
        assert_eq!(again.status, 304);
        assert!(again.body.is_empty());

        // So does a check-in that finds the sync table unchanged, and it still carries the clock.
        let url = format!("{}/v1/checkin?name=x", s.url);
        let a = get(&url, None, &[]);
        let etag = a.headers["etag"].to_str().unwrap().to_owned();
        let b = get(&url, None, &[("If-None-Match", &etag)]);
        if b.status == 200 {
            // A rotation fell between the two requests; the next one must be a 304.
            let etag = b.headers["etag"].to_str().unwrap().to_owned();
            let c = get(&url, None, &[("If-None-Match", &etag)]);
            assert_eq!(c.status, 304);
        } else {
            assert_eq!(b.status, 304);
            assert!(b.headers.contains_key(wire::HEADER_SERVER_TIME));
        }
    });
}

#[test]
fn acknowledged_edits_and_rotation_state_survive_kill_9() {
    each_backend(|_, db| {
        let mut s = Server::start(db, &["--interval", "300ms", "--min-window", "150ms"]);
        let t = checkin(&s, "probe").sync.activation_time_us;
        put(&s, "early", "1");
        wait_rotation_past(&s, t);
        let rotations_before = admin_get(&s, "/v1/admin/rotations");
        for i in 0..25 {
            put(&s, &format!("k{i}"), &format!("v{i}"));
        }
        s.kill9();
        let s = Server::start(db, &[]);
        for i in 0..25 {
            let a = admin_get(&s, &format!("/v1/admin/key?key=k{i}"));
            assert_eq!(a["value"], format!("v{i}"));
        }
        let rotations_after = admin_get(&s, "/v1/admin/rotations");
        let before = rotations_before.as_array().unwrap();
        let after = rotations_after.as_array().unwrap();
        assert!(after.len() >= before.len());
        assert_eq!(&after[..before.len()], &before[..], "rotation log changed");
        let status = admin_get(&s, "/v1/admin/status");
        assert_eq!(status["sync"]["interval_us"], 300_000, "interval lost");
    });
}

fn snapshot(
    s: &Server,
) -> (
    serde_json::Value,
    serde_json::Value,
    serde_json::Value,
    serde_json::Value,
) {
    let mut status = admin_get(s, "/v1/admin/status");
    status["server_time_us"] = 0.into();
    status["farm"] = serde_json::Value::Null;
    (
        admin_get(s, "/v1/admin/keys"),
        status,
        admin_get(s, "/v1/admin/history"),
        admin_get(s, "/v1/admin/scheduled"),
    )
}

#[test]
fn bad_input_gets_a_4xx_with_a_message_and_changes_nothing() {
    each_backend(|_, db| {
        let s = Server::start(
            db,
            &[
                "--max-key-bytes",
                "64",
                "--max-value-bytes",
                "1000",
                "--max-body-bytes",
                "10000",
            ],
        );
        put(&s, "keep", "me");
        let before = snapshot(&s);
        let u = |p: &str| format!("{}{p}", s.url);
        let long_key = "k".repeat(65);
        let big_value = "v".repeat(1001);
        let huge_body = format!(
            r#"{{"entries":[{}]}}"#,
            (0..400)
                .map(|i| format!(r#"{{"key":"k{i}","value":"0123456789"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let past = rfc3339(now_us() - 3_600_000_000);
        let cases: Vec<(&str, Option<&str>, String, u16)> = vec![
            (
                "/v1/admin/put",
                None,
                r#"{"key":"a","value":"b"}"#.into(),
                401,
            ),
            (
                "/v1/admin/put",
                Some("wrong"),
                r#"{"key":"a","value":"b"}"#.into(),
                403,
            ),
            (
                "/v1/admin/put",
                Some(TOKEN),
                r#"{"key":"a","value""#.into(),
                400,
            ),
            ("/v1/admin/put", Some(TOKEN), r#"{"key":"a"}"#.into(), 400),
            (
                "/v1/admin/put",
                Some(TOKEN),
                r#"{"key":"a","value":"b","x":1}"#.into(),
                400,
            ),
            (
                "/v1/admin/put",
                Some(TOKEN),
                r#"{"key":"","value":"b"}"#.into(),
                400,
            ),
            (
                "/v1/admin/put",
                Some(TOKEN),
                format!(r#"{{"key":"{long_key}","value":"b"}}"#),
                413,
            ),
            (
                "/v1/admin/put",
                Some(TOKEN),
                format!(r#"{{"key":"a","value":"{big_value}"}}"#),
                413,
            ),
            (
                "/v1/admin/put",
                Some(TOKEN),
                r#"{"key":{"b64":"!!"},"value":"b"}"#.into(),
                400,
            ),
            (
                "/v1/admin/put",
                Some(TOKEN),
                r#"{"key":"a","value":"b","at":"tomorrow"}"#.into(),
                400,
            ),
            (
                "/v1/admin/put",
                Some(TOKEN),
                format!(r#"{{"key":"a","value":"b","at":"{past}"}}"#),
                400,
            ),
            (
                "/v1/admin/delete",
                Some(TOKEN),
                r#"{"key":"keep","at":"2026-13-01T00:00:00Z"}"#.into(),
                400,
            ),
            ("/v1/admin/import", Some(TOKEN), huge_body, 413),
            (
                "/v1/admin/import",
                Some(TOKEN),
                format!(
                    r#"{{"entries":[{{"key":"ok","value":"1"}},{{"key":"{long_key}","value":"2"}}]}}"#
                ),
                413,
            ),
            (
                "/v1/admin/interval",
                Some(TOKEN),
                r#"{"interval":"ten"}"#.into(),
                400,
            ),
            (
                "/v1/admin/interval",
                Some(TOKEN),
                r#"{"interval":"1ms"}"#.into(),
                400,
            ),
            (
                "/v1/admin/rollback",
                Some(TOKEN),
                r#"{"version":999}"#.into(),
                404,
            ),
            (
                "/v1/admin/rollback",
                Some(TOKEN),
                r#"{"version":-1}"#.into(),
                400,
            ),
        ];
        for (path, token, body, want) in cases {
            let a = post(&u(path), token, body.as_bytes());
            assert_eq!(
                a.status,
                want,
                "{path} {body:.80}: {}",
                String::from_utf8_lossy(&a.body)
            );
            let msg = a.json()["error"].as_str().unwrap_or_default().to_owned();
            assert!(msg.len() > 5, "{path}: no useful message: {msg:?}");
        }
        for (path, want) in [
            ("/v1/checkin?pid=abc", 400),
            ("/v1/versions/abc", 400),
            ("/v1/versions/999", 404),
            ("/v1/admin/status", 401),
            ("/v1/admin/diff?a=1", 401),
            ("/v1/nope", 404),
        ] {
            let a = get(&u(path), None, &[]);
            assert_eq!(
                a.status,
                want,
                "{path}: {}",
                String::from_utf8_lossy(&a.body)
            );
            assert!(a.json()["error"].is_string());
        }
        let a = get(&u("/v1/admin/diff?a=1"), Some(TOKEN), &[]);
        assert_eq!(a.status, 400);
        assert_eq!(snapshot(&s), before, "a rejected request changed the store");
    });
}

#[test]
fn read_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("read-token");
    std::fs::write(&token_file, "reader-secret\n").unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--read-token-file", token_file.to_str().unwrap()],
    );
    let url = format!("{}/v1/checkin?name=x", s.url);
    assert_eq!(get(&url, None, &[]).status, 401);
    assert_eq!(get(&url, Some("nope"), &[]).status, 403);
    assert_eq!(get(&url, Some("reader-secret"), &[]).status, 200);
    assert_eq!(get(&url, Some(TOKEN), &[]).status, 200);
    let v = format!("{}/v1/versions/current", s.url);
    assert_eq!(get(&v, None, &[]).status, 401);
    assert_eq!(get(&v, Some("reader-secret"), &[]).status, 200);
    // A read token sees the admin views but is not an admin token: it changes nothing.
    let status = format!("{}/v1/admin/status", s.url);
    assert_eq!(get(&status, Some("reader-secret"), &[]).status, 200);
    assert_eq!(get(&status, None, &[]).status, 401);
    assert_eq!(get(&status, Some("nope"), &[]).status, 403);
    let put = post(
        &format!("{}/v1/admin/put", s.url),
        Some("reader-secret"),
        br#"{"key": "k", "value": "v"}"#,
    );
    assert_eq!(put.status, 403, "{}", String::from_utf8_lossy(&put.body));
    assert!(get(&format!("{}/v1/admin/key?key=k", s.url), Some(TOKEN), &[]).status == 404);
}

#[test]
fn served_versions_verify_and_a_corrupted_blob_is_never_served() {
    each_backend(|backend, db| {
        let mut s = Server::start(db, &["--interval", "200ms", "--min-window", "100ms"]);
        for i in 0..50 {
            put(&s, &format!("key{i}"), &format!("value{i}"));
        }
        let mut t = checkin(&s, "probe").sync.activation_time_us;
        t = wait_rotation_past(&s, t).activation_time_us;
        let sync = wait_rotation_past(&s, t);
        let v = sync.active_version;
        assert!(v >= 2);
        for n in 1..=v {
            let a = get(&format!("{}/v1/versions/{n}", s.url), None, &[]);
            assert_eq!(a.status, 200);
            let buf = format::aligned_copy(&a.body);
            let (header, entries) = format::validate(&buf).expect("served version verifies");
            assert_eq!(header.version, n);
            assert_eq!(
                a.headers[wire::HEADER_CHECKSUM].to_str().unwrap(),
                format!("{:016x}", header.checksum)
            );
            assert_eq!(
                a.headers["etag"].to_str().unwrap(),
                wire::version_etag(n, header.checksum)
            );
            if n == v {
                assert_eq!(format::lookup(entries, b"key7"), Some(&b"value7"[..]));
            }
        }
        s.kill9();

        // Flip one byte in the middle of the active version's stored blob (version bytes live
        // in `blobs`, by checksum).
        match backend {
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(db).unwrap();
                let mut bytes: Vec<u8> = conn
                    .query_row(
                        "SELECT b.bytes FROM blobs b JOIN versions v ON b.checksum = v.checksum
                         WHERE v.number = ?1",
                        [v as i64],
                        |r| r.get(0),
                    )
                    .unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
                conn.execute(
                    "UPDATE blobs SET bytes = ?2
                     WHERE checksum = (SELECT checksum FROM versions WHERE number = ?1)",
                    rusqlite::params![v as i64, bytes],
                )
                .unwrap();
            }
            Backend::Postgres => {
                let name = db.to_str().unwrap().rsplit('/').next().unwrap();
                common::postgres::cluster().unwrap().psql(
                    name,
                    &format!(
                        "UPDATE blobs SET bytes = set_byte(bytes, length(bytes) / 2, \
                         get_byte(bytes, length(bytes) / 2) # 1) \
                         WHERE checksum = (SELECT checksum FROM versions WHERE number = {v})"
                    ),
                );
            }
        }
        let s = Server::start(db, &["--interval", "10m"]);
        for path in [
            format!("/v1/versions/{v}"),
            "/v1/versions/current".to_owned(),
        ] {
            let a = get(&format!("{}{path}", s.url), None, &[]);
            assert_eq!(a.status, 500, "{path} served a corrupted blob");
            let msg = a.json()["error"].as_str().unwrap().to_owned();
            assert!(msg.contains("damaged"), "{msg}");
        }
        // Other versions are still served.
        assert_eq!(
            get(&format!("{}/v1/versions/1", s.url), None, &[]).status,
            200
        );
    });
}

#[test]
fn rollback_and_diff() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "200ms", "--min-window", "100ms"]);
        put(&s, "a", "1");
        put(&s, "b", "1");
        let good_version = version_with_edits_so_far(&s);
        put(&s, "a", "2");
        admin_post(&s, "/v1/admin/delete", serde_json::json!({"key": "b"}));
        put(&s, "c", "3");
        let bad_version = version_with_edits_so_far(&s);
        let d = admin_get(
            &s,
            &format!("/v1/admin/diff?a={good_version}&b={bad_version}"),
        );
        assert_eq!(d["added"][0]["key"], "c");
        assert_eq!(d["removed"][0], "b");
        assert_eq!(d["changed"][0]["old"], "1");
        assert_eq!(d["changed"][0]["new"], "2");

        let r = admin_post(
            &s,
            "/v1/admin/rollback",
            serde_json::json!({"version": good_version}),
        );
        let new_version = r["version"].as_u64().unwrap();
        assert!(new_version > bad_version);
        assert_eq!(checkin(&s, "probe").sync.staged_version, new_version);
        let same = admin_get(
            &s,
            &format!("/v1/admin/diff?a={good_version}&b={new_version}"),
        );
        assert!(same["added"].as_array().unwrap().is_empty());
        assert!(same["removed"].as_array().unwrap().is_empty());
        assert!(same["changed"].as_array().unwrap().is_empty());
        // Production follows the rollback, so the next rotation keeps it.
        let after = wait_rotation_past(&s, checkin(&s, "p").sync.activation_time_us);
        assert_eq!(after.active_version, new_version);
        let after = wait_rotation_past(&s, after.activation_time_us);
        assert_eq!(
            value_in_version(&s, "a", after.staged_version).as_deref(),
            Some("1")
        );
    });
}

fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn sigterm_shuts_the_server_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("db"), &[]);
    put(&s, "k", "v");
    checkin(&s, "farm-member");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exited with {status}");
    // The farm seen before the signal was flushed on the way out.
    let conn = rusqlite::Connection::open(dir.path().join("db")).unwrap();
    let members: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM farm WHERE name = 'farm-member'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(members, 1);
}

fn sync_of(s: &Server) -> wire::SyncTable {
    serde_json::from_value(admin_get(s, "/v1/admin/status")["sync"].clone()).unwrap()
}

fn set_interval(s: &Server, body: serde_json::Value) -> serde_json::Value {
    admin_post(s, "/v1/admin/interval", body)
}

#[test]
fn serve_changes_only_the_settings_it_is_given_on_an_existing_database() {
    each_backend(|_, db| {
        let mut s = Server::start(db, &["--interval", "2s", "--min-window", "1s"]);
        s.kill9();
        let mut s = Server::start(db, &["--min-window", "300ms"]);
        let sync = sync_of(&s);
        assert_eq!(
            (sync.interval_us, sync.min_window_us),
            (2_000_000, 300_000),
            "--min-window alone changed the interval"
        );
        s.kill9();
        // The same interval again keeps the window it has.
        let mut s = Server::start(db, &["--interval", "2s"]);
        let sync = sync_of(&s);
        assert_eq!((sync.interval_us, sync.min_window_us), (2_000_000, 300_000));
        s.kill9();
        let s = Server::start(db, &[]);
        let sync = sync_of(&s);
        assert_eq!((sync.interval_us, sync.min_window_us), (2_000_000, 300_000));
    });
}

#[test]
fn a_change_of_the_window_alone_is_a_new_sync_table_etag() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "1h"]);
        let url = format!("{}/v1/checkin?name=x", s.url);
        let first = get(&url, None, &[]);
        let etag = first.headers["etag"].to_str().unwrap().to_owned();
        assert_eq!(get(&url, None, &[("If-None-Match", &etag)]).status, 304);
        // A longer window never moves the activation sooner, and the current one is kept: only
        // the window changes in the table.
        set_interval(
            &s,
            serde_json::json!({"interval": "1h", "min_window": "40m"}),
        );
        let after = get(&url, None, &[("If-None-Match", &etag)]);
        assert_eq!(
            after.status, 200,
            "a client holding the old table got a 304"
        );
        let (before, now) = (first.json(), after.json());
        assert_eq!(now["min_window_us"], 2_400_000_000u64);
        for same in [
            "activation_time_us",
            "staged_version",
            "active_version",
            "interval_us",
        ] {
            assert_eq!(
                before[same], now[same],
                "{same} changed too: the test would not isolate the window"
            );
        }
    });
}

#[test]
fn intervals_outside_the_range_clients_accept_get_a_400_and_change_nothing() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "1s"]);
        let before = sync_of(&s);
        for (interval, window) in [
            ("10d", None),
            ("2y", None),
            ("18446744073709551615ns", None),
            ("200000y", Some("200000y")),
            ("99ms", None),
            ("1d 1us", None),
            ("1s", Some("9ms")),
            ("1s", Some("1001ms")),
        ] {
            let mut body = serde_json::json!({ "interval": interval });
            if let Some(w) = window {
                body["min_window"] = w.into();
            }
            let a = post(
                &format!("{}/v1/admin/interval", s.url),
                Some(TOKEN),
                body.to_string().as_bytes(),
            );
            assert_eq!(
                a.status,
                400,
                "{body}: {}",
                String::from_utf8_lossy(&a.body)
            );
            let msg = a.json()["error"].as_str().unwrap().to_owned();
            assert!(msg.contains("between"), "{body}: {msg}");
        }
        assert_eq!(sync_of(&s), before);
        assert_eq!(
            get(&format!("{}/v1/checkin?name=x", s.url), None, &[]).status,
            200
        );
    });
}

#[test]
fn a_client_accepts_the_shortest_and_the_longest_cycle_the_server_allows() {
    for args in [
        ["--interval", "100ms", "--min-window", "10ms"],
        ["--interval", "1d", "--min-window", "1d"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(&dir.path().join("db"), &args);
        put(&s, "k", "v");
        let client = lockstep::client::Client::open(&format!(
            "url={};name=edge;bootstrap_wait_ms=5000",
            s.url
        ))
        .unwrap_or_else(|e| panic!("{args:?}: {e:?}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while client.stats().checkins < 1 || client.stats().consecutive_failures > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{args:?}: the client stopped checking in: {}",
                client.last_error()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !client.last_error().contains("nonsensical"),
            "{args:?}: {}",
            client.last_error()
        );
    }
}

#[test]
fn a_shorter_interval_moves_the_staged_activation_to_the_new_grid_at_once() {
    each_backend(|_, db| {
        // Clients of a 20 s table check in every 5 s; its window is 10 s.
        let s = Server::start(db, &["--interval", "20s"]);
        put(&s, "price", "8");
        let t0 = checkin(&s, "probe").sync.activation_time_us;
        let before = wait_rotation_past(&s, t0);
        assert!(before.activation_time_us - now_us() >= 9_000_000);
        let staged = before.staged_version;
        assert_eq!(value_in_version(&s, "price", staged).as_deref(), Some("8"));

        let changed_at = now_us();
        let r = set_interval(
            &s,
            serde_json::json!({"interval": "200ms", "min_window": "100ms"}),
        );
        let t = r["activation_time_us"].as_i64().unwrap();
        assert_eq!(
            r["previous_activation_us"].as_i64(),
            Some(before.activation_time_us)
        );
        assert_eq!(
            r["staged_version"].as_u64(),
            Some(staged),
            "the staged content changed"
        );
        assert_eq!(t % 200_000, 0, "{t} is off the new grid");
        // Far enough for every client to hear of it (one check-in period of the old table, 5 s,
        // which is more than the new window), and no further than the next grid point after that.
        assert!(
            t - changed_at >= 5_000_000,
            "moved too close: {}",
            t - changed_at
        );
        assert!(
            t - now_us() <= 5_200_000,
            "not moved to the first grid point"
        );
        assert!(t < before.activation_time_us);
        // Clients holding the old table get the new one.
        assert_eq!(checkin(&s, "probe").sync.activation_time_us, t);

        let after = wait_rotation_past(&s, t);
        assert_eq!(
            after.active_version, staged,
            "the staged version did not activate at {t}"
        );
        assert_eq!(after.interval_us, 200_000);
        let log = admin_get(&s, "/v1/admin/rotations");
        assert!(
            log.as_array()
                .unwrap()
                .iter()
                .any(|r| r["activation_time_us"].as_i64() == Some(t)),
            "no rotation at {t}: {log}"
        );
    });
}

#[test]
fn a_longer_interval_keeps_the_sooner_activation_time() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "20s"]);
        let t = checkin(&s, "probe").sync.activation_time_us;
        let r = set_interval(&s, serde_json::json!({"interval": "1h"}));
        assert_eq!(r["activation_time_us"].as_i64(), Some(t));
        assert_eq!(r["min_window_us"], 1_800_000_000);
        let msg = r["message"].as_str().unwrap();
        assert!(msg.contains("stays"), "{msg}");
    });
}

#[test]
fn a_staged_scheduled_change_keeps_its_activation_time_when_the_interval_shrinks() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "20s"]);
        let t = checkin(&s, "probe").sync.activation_time_us;
        let x = t - 1_000_000;
        assert!(x > now_us() + 6_000_000, "test too slow");
        let r = admin_post(
            &s,
            "/v1/admin/put",
            serde_json::json!({"key": "price", "value": "7", "at": rfc3339(x)}),
        );
        assert_eq!(r["live_by_us"].as_i64(), Some(t));
        // The new grid's first usable point (about 5 s away) comes before `x`: the change would go
        // live early, so the activation stays where the schedule put it.
        let r = set_interval(&s, serde_json::json!({"interval": "200ms"}));
        assert_eq!(r["activation_time_us"].as_i64(), Some(t));
        let msg = r["message"].as_str().unwrap();
        assert!(msg.contains("scheduled"), "{msg}");
    });
}

/// Puts a database in the state an older release left after `interval 200000y`: the
/// activation time wrapped around to a negative number that the rotation log already holds.
fn wedge(db: &std::path::Path, interval_us: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "UPDATE sync SET interval_us = ?1, min_window_us = ?1 / 2, activation_us = -42",
        [interval_us],
    )
    .unwrap();
    conn.execute(
        "INSERT OR IGNORE INTO rotations (activation_us, rotated_at_us, active_version,
                                          staged_version, next_activation_us, rotated_by)
         VALUES (-42, 0, 1, 1, -42, 'overflow')",
        [],
    )
    .unwrap();
}

fn assert_rotates_again(s: &Server) {
    let r = checkin(s, "probe");
    let now = now_us();
    assert!(r.sync.activation_time_us > now, "{:?}", r.sync);
    assert!(r.sync.activation_time_us <= now + 2_000_000, "{:?}", r.sync);
    let after = wait_rotation_past(s, r.sync.activation_time_us);
    assert!(after.activation_time_us > r.sync.activation_time_us);
    assert_eq!(
        value_in_version(s, "k", after.active_version).as_deref(),
        Some("v")
    );
}

#[test]
fn a_database_wedged_by_an_overflowed_activation_time_recovers_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut s = Server::start(&db, &["--interval", "1s"]);
    put(&s, "k", "v");
    wait_active(&s, "k", "v");
    s.kill9();

    // With the absurd interval still stored, the server will not start without a new one.
    wedge(&db, 200_000 * 365 * 86_400 * 1_000_000);
    let out = std::process::Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
        .env("LOCKSTEP_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--interval"), "{err}");
    let mut s = Server::start(&db, &["--interval", "1s"]);
    assert_rotates_again(&s);
    s.kill9();

    // The older release's `interval 1s` fixed the interval but not the time: every check-in
    // answered 500. Started as it is, the server reschedules.
    wedge(&db, 1_000_000);
    let s = Server::start(&db, &[]);
    assert_rotates_again(&s);
}

#[test]
fn a_rollback_dry_run_lists_production_changes_and_changes_nothing() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "200ms", "--min-window", "100ms"]);
        put(&s, "a", "1");
        put(&s, "b", "1");
        let good = version_with_edits_so_far(&s);
        put(&s, "a", "2");
        admin_post(&s, "/v1/admin/delete", serde_json::json!({"key": "b"}));
        put(&s, "c", "3");
        let before = admin_get(&s, "/v1/admin/keys");
        let versions = admin_get(&s, "/v1/admin/status")["versions"].clone();

        let r = admin_post(
            &s,
            "/v1/admin/rollback",
            serde_json::json!({"version": good, "dry_run": true}),
        );
        assert_eq!(r["dry_run"], true);
        assert!(r.get("version").is_none(), "{r}");
        assert_eq!(
            r["production"]["added"],
            serde_json::json!([{"key": "b", "value": "1"}])
        );
        assert_eq!(r["production"]["removed"], serde_json::json!(["c"]));
        assert_eq!(
            r["production"]["changed"],
            serde_json::json!([{"key": "a", "old": "2", "new": "1"}])
        );
        assert_eq!(
            admin_get(&s, "/v1/admin/keys"),
            before,
            "a dry run changed production"
        );
        assert_eq!(admin_get(&s, "/v1/admin/status")["versions"], versions);

        // Refused when told not to discard edits and there are some.
        let a = post(
            &format!("{}/v1/admin/rollback", s.url),
            Some(TOKEN),
            serde_json::json!({"version": good, "discard_edits": false})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(a.status, 409, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(admin_get(&s, "/v1/admin/keys"), before);
    });
}

#[test]
fn a_member_silent_for_ten_minutes_leaves_the_farm_view_and_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut s = Server::start(&db, &[]);
    // A leader and the follower it lists expire alike.
    checkin_as(
        &s,
        "name=old&host=h-old&pid=1&role=leader&members=2:1:1:0:old-worker",
    );
    checkin(&s, "new");
    admin_get(&s, "/v1/admin/status"); // writes the farm out
    s.kill9();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE farm SET last_checkin_us = last_checkin_us - 601000000 WHERE host = 'h-old'",
        [],
    )
    .unwrap();
    let old_rows = || -> i64 {
        conn.query_row("SELECT COUNT(*) FROM farm WHERE host = 'h-old'", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(old_rows(), 2);

    let s = Server::start(&db, &[]);
    let names = |status: &serde_json::Value| -> Vec<String> {
        status["farm"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&admin_get(&s, "/v1/admin/status")), ["new"]);
    checkin(&s, "new");
    admin_get(&s, "/v1/admin/status");
    assert_eq!(old_rows(), 0, "the expired member stayed in the database");
}

/// The data-server clock stamps of one answer, checked against the test's clock (the same
/// host's) read just before the request and just after the answer.
struct Stamps {
    received_us: i64,
    sent_us: i64,
    answer: Answer,
}

fn stamped(what: &str, url: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Stamps {
    let before = now_us();
    let answer = get(url, token, headers);
    let after = now_us();
    let stamp = |name: &str| -> i64 {
        answer
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("{what} ({}): no {name}", answer.status))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let received_us = stamp(wire::HEADER_SERVER_RECEIVED);
    let sent_us = stamp(wire::HEADER_SERVER_TIME);
    assert!(
        before <= received_us && received_us <= sent_us && sent_us <= after,
        "{what}: sent at {before}, received at {received_us}, answered at {sent_us}, back at \
         {after}"
    );
    Stamps {
        received_us,
        sent_us,
        answer,
    }
}

#[test]
fn every_answer_says_when_the_server_received_the_request_and_when_it_answered() {
    each_backend(|_, db| {
        let s = fast_server(db);
        put(&s, "k", "v");
        let u = |p: &str| format!("{}{p}", s.url);
        let first = stamped("check-in", &u("/v1/checkin?name=a"), None, &[]);
        assert_eq!(first.answer.status, 200);
        let etag = first.answer.headers["etag"].to_str().unwrap().to_owned();
        let again = stamped(
            "check-in with its ETag",
            &u("/v1/checkin?name=a"),
            None,
            &[("If-None-Match", &etag)],
        );
        // A rotation between the two makes the second a 200; either is a clock sample.
        assert!([200, 304].contains(&again.answer.status));
        let v = first.answer.json()["active_version"].as_u64().unwrap();
        let version = stamped("version", &u(&format!("/v1/versions/{v}")), None, &[]);
        assert_eq!(version.answer.status, 200);
        let etag = version.answer.headers["etag"].to_str().unwrap().to_owned();
        let cached = stamped(
            "version with its ETag",
            &u(&format!("/v1/versions/{v}")),
            None,
            &[("If-None-Match", &etag)],
        );
        assert_eq!(cached.answer.status, 304);
        let cases = [
            ("health", u("/v1/health"), None, 200),
            ("current version", u("/v1/versions/current"), None, 200),
            ("status", u("/v1/admin/status"), Some(TOKEN), 200),
            ("status without a token", u("/v1/admin/status"), None, 401),
            ("bad check-in", u("/v1/checkin?pid=x"), None, 400),
            ("unknown path", u("/v1/nothing"), None, 404),
        ];
        for (what, url, token, status) in cases {
            assert_eq!(
                stamped(what, &url, token, &[]).answer.status,
                status,
                "{what}"
            );
        }
    });
}

#[test]
fn a_rotating_checkins_two_clock_stamps_bracket_the_rotation() {
    each_backend(|_, db| {
        let s = fast_server(db);
        put(&s, "k", "v");
        let t = checkin(&s, "probe").sync.activation_time_us;
        sleep_until_us(t + 1_000);
        let url = format!("{}/v1/checkin?name=rotator", s.url);
        let r = stamped("rotating check-in", &url, None, &[]);
        let body: wire::CheckinResponse = serde_json::from_slice(&r.answer.body).unwrap();
        assert!(body.rotated, "the check-in after {t} did not rotate");
        let log = admin_get(&s, "/v1/admin/rotations");
        let rotation = log
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["activation_time_us"] == t)
            .unwrap_or_else(|| panic!("no rotation of {t}: {log}"));
        // The rotation began after the request arrived; the body's clock was read after it, and the
        // answer left after that: the server's work lies between the two stamps, not in the offset.
        let rotated_at = rotation["rotated_at_us"].as_i64().unwrap();
        assert!(
            r.received_us <= rotated_at
                && rotated_at < body.server_time_us
                && body.server_time_us <= r.sent_us,
            "received {}, rotated {rotated_at}, body {}, sent {}",
            r.received_us,
            body.server_time_us,
            r.sent_us
        );
        assert!(r.sent_us > r.received_us);
    });
}

/// A check-in with the given query (`name=..&host=..`), as a client sends it.
fn checkin_as(s: &Server, query: &str) {
    let a = get(&format!("{}/v1/checkin?{query}", s.url), None, &[]);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
}

/// The farm member with this host and pid in a status.
fn member<'a>(status: &'a serde_json::Value, host: &str, pid: u32) -> &'a serde_json::Value {
    status["farm"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["host"] == host && m["pid"] == pid)
        .unwrap_or_else(|| panic!("no pid {pid} on {host} in {status}"))
}

#[test]
fn a_leaders_checkin_puts_its_followers_in_the_farm_view_under_its_host() {
    each_backend(|_, db| {
        let s = Server::start(db, &[]);
        checkin_as(
            &s,
            "name=web&host=h1&pid=10&role=leader&active=3&staged=4&offset_us=1500&error_us=70\
             &members=11:3:4:0:worker-a,12:2:4:1,10:1:1:0",
        );
        checkin_as(&s, "name=cron&host=h1&pid=20&active=2&staged=4");
        checkin_as(
            &s,
            "name=solo&host=h2&pid=30&active=3&staged=4&members=31:3:4:0",
        );
        let status = admin_get(&s, "/v1/admin/status");

        let leader = member(&status, "h1", 10);
        assert_eq!(
            (&leader["role"], &leader["active"], &leader["leader_pid"]),
            (&"leader".into(), &3.into(), &serde_json::Value::Null),
            "{leader}"
        );
        let a = member(&status, "h1", 11);
        assert_eq!(a["role"], "follower", "{a}");
        assert_eq!(a["leader_pid"], 10, "{a}");
        assert_eq!(a["name"], "worker-a", "{a}");
        assert_eq!(
            (&a["active"], &a["staged"], &a["lagging"]),
            (&3.into(), &4.into(), &false.into())
        );
        // A follower arms the instant its leader computed, so it carries the leader's estimate.
        assert_eq!(
            (&a["offset_us"], &a["error_us"]),
            (&1500.into(), &70.into())
        );
        let b = member(&status, "h1", 12);
        assert_eq!(
            (&b["name"], &b["active"], &b["lagging"]),
            (&"".into(), &2.into(), &true.into())
        );
        assert_eq!(b["leader_pid"], 10, "{b}");
        let cron = member(&status, "h1", 20);
        assert_eq!(
            (&cron["role"], &cron["leader_pid"]),
            (&"".into(), &serde_json::Value::Null)
        );
        // Only a leader speaks for others.
        assert_eq!(member(&status, "h2", 30)["role"], "");
        assert_eq!(status["farm"].as_array().unwrap().len(), 5, "{status}");

        let hosts = status["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 2, "{status}");
        assert_eq!(hosts[0]["host"], "h1");
        assert_eq!(hosts[0]["leader_pid"], 10);
        assert_eq!(hosts[0]["following"], 2);
        assert_eq!(hosts[0]["processes"], 4);
        assert_eq!(hosts[0]["lagging"], 1);
        assert_eq!(
            hosts[0]["versions"],
            serde_json::json!([
                {"active": 2, "staged": 4, "processes": 2},
                {"active": 3, "staged": 4, "processes": 2},
            ])
        );
        assert_eq!(hosts[1]["host"], "h2");
        assert_eq!(hosts[1]["leader_pid"], serde_json::Value::Null);
        assert_eq!(hosts[1]["following"], 0);
    });
}

#[test]
fn followers_are_refreshed_by_each_leader_checkin_and_go_stale_when_it_stops_listing_them() {
    each_backend(|_, db| {
        // Interval 200 ms: stale means silent for over 5.6 s.
        let s = Server::start(db, &["--interval", "200ms", "--min-window", "100ms"]);
        checkin_as(
            &s,
            "name=web&host=h1&pid=10&role=leader&members=11:1:1:0,12:1:1:0",
        );
        let until = std::time::Instant::now() + Duration::from_millis(6_500);
        while std::time::Instant::now() < until {
            // Process 12 has exited; 11 moved on to version 2.
            checkin_as(
                &s,
                "name=web&host=h1&pid=10&role=leader&active=2&staged=2&members=11:2:2:0",
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = admin_get(&s, "/v1/admin/status");
        let kept = member(&status, "h1", 11);
        assert_eq!(
            (&kept["active"], &kept["stale"]),
            (&2.into(), &false.into()),
            "{kept}"
        );
        assert!(kept["silent_us"].as_i64().unwrap() < 1_000_000, "{kept}");
        let gone = member(&status, "h1", 12);
        assert_eq!(gone["stale"], true, "{gone}");
        assert!(gone["silent_us"].as_i64().unwrap() >= 6_000_000, "{gone}");
        let host = &status["hosts"][0];
        assert_eq!(
            (&host["following"], &host["stale"]),
            (&1.into(), &1.into()),
            "{host}"
        );
        // What a probably dead process held says nothing about the host.
        assert_eq!(
            host["versions"],
            serde_json::json!([{"active": 2, "staged": 2, "processes": 2}])
        );
    });
}

/// Version → downloads, from `GET /v1/admin/history`.
fn downloads(s: &Server) -> std::collections::BTreeMap<u64, u64> {
    admin_get(s, "/v1/admin/history")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["downloads"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Downloads `version` and checks the answer's status.
fn download(s: &Server, version: &str, headers: &[(&str, &str)], status: u16) -> Answer {
    let a = get(&format!("{}/v1/versions/{version}", s.url), None, headers);
    assert_eq!(a.status, status, "{version}");
    a
}

/// Two versions, 1 active and 2 staged, and nothing downloaded yet.
fn two_versions(db: &std::path::Path) -> Server {
    let s = Server::start(db, &[]);
    // A change scheduled before the next activation is staged at once, as version 2.
    let soon = rfc3339(now_us() + 60_000_000);
    admin_post(
        &s,
        "/v1/admin/put",
        serde_json::json!({"key": "k", "value": "v", "at": soon}),
    );
    let sync = checkin(&s, "probe").sync;
    assert_eq!((sync.active_version, sync.staged_version), (1, 2));
    assert_eq!(downloads(&s), [(1, 0), (2, 0)].into());
    s
}

#[test]
fn history_counts_every_200_download_of_a_version_once_and_no_304() {
    each_backend(|_, db| {
        let s = two_versions(db);
        let etag = download(&s, "2", &[], 200).headers["etag"]
            .to_str()
            .unwrap()
            .to_owned();
        download(&s, "2", &[], 200);
        download(&s, "2", &[("If-None-Match", &etag)], 304);
        download(&s, "current", &[], 200); // version 1
        download(&s, "3", &[], 404);
        // Counted the moment they are answered, before any flush.
        assert_eq!(downloads(&s), [(1, 1), (2, 2)].into());
        // And exactly the same once flushed (every second).
        std::thread::sleep(Duration::from_millis(2_500));
        assert_eq!(downloads(&s), [(1, 1), (2, 2)].into());
        download(&s, "1", &[], 200);
        assert_eq!(downloads(&s), [(1, 2), (2, 2)].into());
    });
}

#[test]
fn download_counts_survive_a_clean_stop_and_a_kill_9_after_their_flush() {
    each_backend(|_, db| {
        let mut s = two_versions(db);
        download(&s, "1", &[], 200);
        download(&s, "2", &[], 200);
        // Stopped at once: the last flush happens on the way out.
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
        assert!(s.child.wait().unwrap().success());
        let mut s = Server::start(db, &[]);
        assert_eq!(downloads(&s), [(1, 1), (2, 1)].into());
        download(&s, "2", &[], 200);
        std::thread::sleep(Duration::from_millis(2_500));
        s.kill9();
        let s = Server::start(db, &[]);
        assert_eq!(downloads(&s), [(1, 1), (2, 2)].into());
    });
}

#[test]
fn a_rotation_stages_a_version_built_before_its_activation_time() {
    each_backend(|_, db| {
        let s = Server::start(db, &["--interval", "1s", "--min-window", "500ms"]);
        for round in 0..3 {
            // Just after a rotation, so that the edit is in production well before the next
            // activation time comes within the minimum window.
            while checkin(&s, "probe").sync.activation_time_us - now_us() < 700_000 {
                std::thread::sleep(Duration::from_millis(20));
            }
            put(&s, "price", &format!("p{round}"));
            let before = checkin(&s, "probe").sync;
            // The rotation that stages the edit.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let staged = loop {
                let sync = checkin(&s, "probe").sync;
                if sync.staged_version > before.staged_version {
                    break sync.staged_version;
                }
                assert!(std::time::Instant::now() < deadline, "never staged");
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!(
                value_in_version(&s, "price", staged).as_deref(),
                Some(format!("p{round}").as_str())
            );
            let log = admin_get(&s, "/v1/admin/rotations");
            let rotation = log
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["staged_version"] == staged)
                .unwrap()
                .clone();
            let history = admin_get(&s, "/v1/admin/history");
            let row = history
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["version"] == staged)
                .unwrap()
                .clone();
            assert_eq!(row["reason"], "rotation");
            // Built for T (its time is T's, so that every instance makes the same bytes).
            assert!(
                row["created_us"].as_i64() <= rotation["activation_time_us"].as_i64(),
                "version {staged} was built at its rotation, not ahead: {row} {rotation}"
            );
            // Its bytes were stored before T too: the rotation wrote a row naming them.
            let stored = row["stored_ahead_us"].as_i64();
            assert!(
                stored.is_some() && stored < rotation["activation_time_us"].as_i64(),
                "version {staged}'s bytes were written by its rotation: {row} {rotation}"
            );
        }
    });
}

/// The history row of `version`.
fn history_row(s: &Server, version: u64) -> serde_json::Value {
    admin_get(s, "/v1/admin/history?limit=1000")
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .unwrap_or_else(|| panic!("version {version} is not in history"))
        .clone()
}

#[test]
fn an_edit_made_after_the_next_version_was_built_ahead_is_staged_for_the_activation_after_t() {
    each_backend(|_, db| {
        let s = Server::start(
            db,
            &[
                "--interval",
                "6s",
                "--min-window",
                "2s",
                "--max-body-bytes",
                "100000000",
                // Data too large to encode under the rotation's lock, whatever this machine's
                // speed: the rotation never encodes.
                "--inline-encode-max",
                "0",
            ],
        );
        // Enough data that a build takes longer than the last 300 ms before T, so that the
        // edit below comes after the last build there is time for.
        let entries: Vec<serde_json::Value> = (0..100_000)
            .map(|i| serde_json::json!({"key": format!("key:{i:08}"), "value": format!("{i:032}")}))
            .collect();
        // In parts: a debug build writes 100k rows to PostgreSQL one statement at a time, which
        // on a loaded machine can take longer than one request may (30 s).
        for part in entries.chunks(20_000) {
            admin_post(
                &s,
                "/v1/admin/import",
                serde_json::json!({ "entries": part }),
            );
        }
        put(&s, "price", "early");
        wait_active(&s, "price", "early");
        for round in 0..2 {
            let t = loop {
                let sync = checkin(&s, "probe").sync;
                let left = sync.activation_time_us - now_us();
                if (250_000..350_000).contains(&left) {
                    break sync.activation_time_us;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let value = format!("late{round}");
            put(&s, "price", &value);
            assert!(now_us() < t, "the edit came after T: no test");
            // The rotation at T stages what was built shortly before it (here nothing new:
            // production was the staged version's then), encoding nothing under its lock, and
            // production is restaged right after it, for T', the second activation after the
            // edit (invariant 7), with the window still ahead for clients to download it.
            let restaged = "rotation, restaged with the edits made after its build";
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let (sync, row) = loop {
                let sync = checkin(&s, "probe").sync;
                if sync.activation_time_us > t && sync.staged_version != sync.active_version {
                    let row = history_row(&s, sync.staged_version);
                    if row["reason"] == restaged {
                        break (sync, row);
                    }
                }
                if std::time::Instant::now() > deadline {
                    let log = admin_get(&s, "/v1/admin/rotations");
                    let log = log.as_array().unwrap();
                    let history = admin_get(&s, "/v1/admin/history?limit=4");
                    panic!(
                        "round {round}: the edit made before {t} was never restaged; rotations \
                         {:?}; history {history}",
                        &log[log.len().saturating_sub(3)..]
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let t_next = sync.activation_time_us;
            let staged_us = row["staged_us"].as_i64().unwrap();
            assert!(
                staged_us <= t_next - 2_000_000,
                "restaged {} ms before T', inside the minimum window: {row}",
                (t_next - staged_us) / 1000
            );
            assert_eq!(
                value_in_version(&s, "price", sync.staged_version).as_deref(),
                Some(value.as_str())
            );
            let log = admin_get(&s, "/v1/admin/rotations");
            let at_t = log
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["activation_time_us"] == t)
                .expect("no rotation at T")
                .clone();
            assert_eq!(at_t["next_activation_us"], t_next, "staged for a later T'");
            // The log names what goes live at T'.
            assert_eq!(at_t["staged_version"], sync.staged_version);
            // The version that went live at T does not have it.
            assert_ne!(
                value_in_version(&s, "price", at_t["active_version"].as_u64().unwrap()).as_deref(),
                Some(value.as_str())
            );
        }
    });
}

#[test]
fn instances_on_one_postgresql_database_store_the_version_built_ahead_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = Backend::Postgres.database(dir.path()) else {
        return;
    };
    // Both build from 1 s before each activation time on, checking every 250 ms.
    let servers = [
        Server::start(&db, &["--interval", "2s", "--min-window", "1s"]),
        Server::start(&db, &["--interval", "2s", "--min-window", "1s"]),
    ];
    let name = db.to_str().unwrap().rsplit('/').next().unwrap();
    let blobs_for = |t: i64| {
        common::postgres::cluster().unwrap().psql(
            name,
            &format!("SELECT count(*) FROM blobs WHERE for_us = {t}"),
        )
    };
    for round in 0..3 {
        let t = loop {
            let sync = checkin(&servers[0], "probe").sync;
            if sync.activation_time_us - now_us() > 1_300_000 {
                break sync.activation_time_us;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        put(&servers[round % 2], "price", &format!("p{round}"));
        // Both instances have built for T by now.
        while now_us() < t - 150_000 {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            blobs_for(t),
            "1",
            "the instances stored the version built for {t} more than once"
        );
        while now_us() < t + 50_000 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let staged = checkin(&servers[1], "probe").sync.staged_version;
        let history = admin_get(&servers[0], "/v1/admin/history");
        let row = history
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == staged)
            .unwrap()
            .clone();
        assert!(
            row["stored_ahead_us"].as_i64().is_some_and(|at| at < t),
            "version {staged} was not stored ahead: {row}"
        );
    }
}
