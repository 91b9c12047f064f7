//! Retention: with edits and activations running, versions beyond `--keep-versions` and older
//! than `--keep-for` keep only their history row and change set, and the database stays
//! bounded; a version whose content was dropped is still diffed and rolled back to (rebuilt
//! from change sets), and a pinned version keeps its content.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::postgres::{each_backend, Backend};
use common::*;

/// A value of `len` bytes that differs from round to round.
fn big_value(round: usize, len: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(round as u64);
    (0..len).map(|_| rng.alphanumeric()).collect()
}

/// Bytes the SQLite database takes on disk, its write-ahead log included.
fn sqlite_bytes(db: &Path) -> u64 {
    let wal = db.with_file_name(format!("{}-wal", db.file_name().unwrap().to_string_lossy()));
    [db.to_path_buf(), wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The data set: `BULK_KEYS` values of `VALUE_BYTES` that do not change.
fn load_bulk(s: &Server) {
    for k in 0..BULK_KEYS {
        put(s, &format!("bulk{k}"), &big_value(1_000 + k, VALUE_BYTES));
    }
}

/// Edits one small key every cycle for `rounds` cycles (a new version of the whole data set
/// each time, a change set of one key), checking in so rotations happen.
fn soak(s: &Server, rounds: usize) {
    for round in 0..rounds {
        put(s, "edit", &format!("round {round}"));
        let table = checkin(s, "probe").sync;
        let deadline = Instant::now() + Duration::from_secs(10);
        while checkin(s, "probe").sync.active_version <= table.active_version {
            assert!(Instant::now() < deadline, "no rotation");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The database's size as it counts it (SQLite's pages, PostgreSQL's `pg_database_size`).
fn database_bytes(s: &Server) -> u64 {
    admin_get(s, "/v1/admin/status")["database_bytes"]
        .as_u64()
        .unwrap()
}

const VALUE_BYTES: usize = 200_000;
const BULK_KEYS: usize = 1;
const KEEP: usize = 3;

#[test]
fn old_versions_keep_only_their_history_row_and_the_database_stays_bounded() {
    each_backend(|backend, db| {
        let rounds = if backend == Backend::Sqlite { 50 } else { 24 };
        let s = Server::start(
            db,
            &[
                "--interval",
                "200ms",
                "--min-window",
                "100ms",
                "--keep-versions",
                &KEEP.to_string(),
                "--keep-for",
                "1s",
            ],
        );
        // Retention runs every second.
        let settle = || std::thread::sleep(Duration::from_millis(2_500));
        load_bulk(&s);
        soak(&s, rounds / 2);
        settle();
        let half_way = (backend == Backend::Sqlite).then(|| sqlite_bytes(db));
        let half_way_counted = database_bytes(&s);
        soak(&s, rounds - rounds / 2);
        settle();
        // Unpruned, each version of the second half would add its 200 KB.
        let unpruned = (rounds - rounds / 2) as u64 * (BULK_KEYS * VALUE_BYTES) as u64;
        if let Some(half_way) = half_way {
            let bytes = sqlite_bytes(db);
            eprintln!(
                "{} versions of 200 KB: {half_way} bytes on disk (database and log); \
                 {rounds} versions: {bytes} bytes",
                rounds / 2
            );
            assert!(
                bytes < half_way + 1024 * 1024,
                "the database grew from {half_way} to {bytes} bytes"
            );
        }
        let counted = database_bytes(&s);
        eprintln!(
            "{backend:?}: the database counts {half_way_counted} bytes after {} versions, \
             {counted} after {rounds} (unpruned the second half would add {unpruned})",
            rounds / 2
        );
        assert!(
            counted < half_way_counted + unpruned / 4,
            "the database grew from {half_way_counted} to {counted} bytes"
        );
        let history = admin_get(&s, "/v1/admin/history?limit=1000000");
        let history = history.as_array().unwrap();
        assert!(history.len() > rounds, "{} versions", history.len());
        let sync = checkin(&s, "probe").sync;
        let newest = history[0]["version"].as_u64().unwrap();
        let (mut kept, mut dropped) = (0, 0);
        for row in history {
            let v = row["version"].as_u64().unwrap();
            let pruned = row.get("pruned_us").is_some();
            let must_keep =
                v > newest - KEEP as u64 || v == sync.active_version || v == sync.staged_version;
            assert!(
                !(must_keep && pruned),
                "version {v} lost its content: {row}"
            );
            let old = row["created_us"].as_i64().unwrap() < now_us() - 2_000_000;
            assert!(
                must_keep || !old || pruned,
                "version {v} kept its content: {row}"
            );
            if pruned {
                dropped += 1;
                let answer = get(&format!("{}/v1/versions/{v}", s.url), None, &[]);
                assert_eq!(answer.status, 404);
                assert!(answer.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("retention"));
            } else {
                kept += 1;
                let answer = get(&format!("{}/v1/versions/{v}", s.url), None, &[]);
                assert_eq!(answer.status, 200, "version {v}");
            }
        }
        assert!(
            dropped >= rounds - KEEP - 2,
            "only {dropped} versions dropped"
        );
        assert!(kept >= KEEP, "only {kept} versions kept");
        // History, diff and rollback work among the versions kept; a dropped one is refused
        // with a message that says why.
        let oldest_kept = newest - KEEP as u64 + 1;
        let diff = admin_get(&s, &format!("/v1/admin/diff?a={oldest_kept}&b={newest}"));
        assert_eq!(
            diff["changed"].as_array().map(Vec::len),
            Some(1),
            "a diff of kept versions"
        );
        // Change sets (one key each) are all that is kept of the others.
        assert!(history.iter().all(|row| row["size"].as_u64().unwrap() > 0));
    });
}

type Model = BTreeMap<String, String>;

/// The versions staged, each with the content it must have.
fn edit_rounds(s: &Server, rounds: usize, model: &mut Model, out: &mut Vec<(u64, Model)>) {
    for round in out.len()..out.len() + rounds {
        let before = checkin(s, "probe").sync.staged_version;
        let key = format!("k{}", round % 4);
        let value = format!("value {round} {}", big_value(round, 200));
        put(s, &key, &value);
        model.insert(key, value);
        if round % 3 == 2 {
            let gone = format!("k{}", (round + 1) % 4);
            admin_post(s, "/v1/admin/delete", serde_json::json!({ "key": gone }));
            model.remove(&gone);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let staged = loop {
            let sync = checkin(s, "probe").sync;
            if sync.staged_version > before {
                break sync.staged_version;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: never staged: {sync:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        out.push((staged, model.clone()));
    }
}

fn history_row(s: &Server, version: u64) -> serde_json::Value {
    admin_get(s, "/v1/admin/history?limit=1000000")
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .unwrap_or_else(|| panic!("no version {version} in history"))
        .clone()
}

/// The whole content of a version the data server serves, decoded.
fn served_content(s: &Server, version: u64) -> Model {
    let a = get(&format!("{}/v1/versions/{version}", s.url), None, &[]);
    assert_eq!(a.status, 200, "version {version}");
    let (_, content) = lockstep::format::decode(&a.body).unwrap();
    content
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

/// `(added, removed, changed)` keys of a diff answer.
fn diff_keys(diff: &serde_json::Value) -> (Vec<String>, Vec<String>, Vec<String>) {
    let keys = |field: &str, inner: Option<&str>| {
        let mut out: Vec<String> = diff[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let k = inner.map_or(e, |f| &e[f]);
                k.as_str().unwrap_or_else(|| panic!("{k}")).to_owned()
            })
            .collect();
        out.sort();
        out
    };
    (
        keys("added", Some("key")),
        keys("removed", None),
        keys("changed", Some("key")),
    )
}

fn model_diff(a: &Model, b: &Model) -> (Vec<String>, Vec<String>, Vec<String>) {
    let added = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let removed = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let changed = b
        .iter()
        .filter(|(k, v)| a.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone())
        .collect();
    (added, removed, changed)
}

#[test]
fn a_dropped_version_is_rebuilt_for_diff_and_rollback_and_a_pinned_one_keeps_its_content() {
    each_backend(|_, db| {
        let s = Server::start(
            db,
            &[
                "--interval",
                "200ms",
                "--min-window",
                "100ms",
                "--keep-versions",
                "2",
                "--keep-for",
                "1s",
            ],
        );
        let mut model = Model::new();
        for k in 0..5 {
            let value = format!("bulk {k} {}", big_value(100 + k, 2_000));
            put(&s, &format!("bulk{k}"), &value);
            model.insert(format!("bulk{k}"), value);
        }
        let mut staged = Vec::new();
        edit_rounds(&s, 3, &mut model, &mut staged);
        let pinned = staged[2].0;
        let answer = admin_post(
            &s,
            "/v1/admin/pin",
            serde_json::json!({ "version": pinned }),
        );
        assert_eq!(answer["pinned"], true, "{answer}");
        edit_rounds(&s, 9, &mut model, &mut staged);
        std::thread::sleep(Duration::from_millis(2_500));

        // The pinned version kept its content: served from its own bytes, listed as pinned.
        let row = history_row(&s, pinned);
        assert_eq!(row["pinned"], true, "{row}");
        assert!(row.get("pruned_us").is_none(), "pinned and dropped: {row}");
        assert_eq!(served_content(&s, pinned), staged[2].1);

        let newest = staged.last().unwrap();
        let mut rebuilt = 0;
        for (v, content) in &staged {
            let row = history_row(&s, *v);
            if row.get("pruned_us").is_none() {
                continue;
            }
            rebuilt += 1;
            // Its bytes are gone, and a download says why.
            let answer = get(&format!("{}/v1/versions/{v}", s.url), None, &[]);
            assert_eq!(answer.status, 404, "version {v}");
            // A diff against the newest reads it back, key by key.
            let diff = admin_get(&s, &format!("/v1/admin/diff?a={v}&b={}", newest.0));
            assert_eq!(
                diff_keys(&diff),
                model_diff(content, &newest.1),
                "diff of dropped version {v} against {}: {diff}",
                newest.0
            );
            for (key, value) in content {
                assert_eq!(
                    value_in_version(&s, key, *v).as_ref(),
                    Some(value),
                    "key {key} of version {v}"
                );
            }
        }
        assert!(rebuilt >= 6, "only {rebuilt} versions were dropped");

        // A rollback to a dropped version stages exactly its content.
        let (target, content) = staged[1].clone();
        assert!(history_row(&s, target).get("pruned_us").is_some());
        let r = admin_post(
            &s,
            "/v1/admin/rollback",
            serde_json::json!({ "version": target, "discard_edits": true }),
        );
        let version = r["version"].as_u64().unwrap_or_else(|| panic!("{r}"));
        assert_eq!(served_content(&s, version), content);

        // Unpinned, the pinned version goes the way of the others.
        admin_post(
            &s,
            "/v1/admin/unpin",
            serde_json::json!({ "version": pinned }),
        );
        std::thread::sleep(Duration::from_millis(2_500));
        let row = history_row(&s, pinned);
        assert!(row.get("pruned_us").is_some(), "unpinned but kept: {row}");
        assert!(row.get("pinned").is_none(), "{row}");
        // A dropped version cannot be pinned back: its bytes are gone.
        let r = post(
            &format!("{}/v1/admin/pin", s.url),
            Some(TOKEN),
            serde_json::json!({ "version": pinned })
                .to_string()
                .as_bytes(),
        );
        assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
        let r = post(
            &format!("{}/v1/admin/pin", s.url),
            Some(TOKEN),
            serde_json::json!({ "version": 1_000_000 })
                .to_string()
                .as_bytes(),
        );
        assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    });
}

fn pragma(db: &Path, name: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap()
}

fn vacuum(db: &Path) -> String {
    let out = std::process::Command::new(bin())
        .args(["vacuum", "--db"])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lockstep vacuum: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lockstep_vacuum_converts_a_file_made_without_auto_vacuum_and_gives_the_freed_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let args = [
        "--interval",
        "200ms",
        "--min-window",
        "100ms",
        "--keep-versions",
        "2",
        "--keep-for",
        "1s",
    ];
    drop(Server::start(&db, &args));
    // As an older lockstep made it: auto_vacuum off, so freed pages are only reused.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;")
        .unwrap();
    assert_eq!(pragma(&db, "auto_vacuum"), 0);
    let history = {
        let s = Server::start(&db, &args);
        load_bulk(&s);
        soak(&s, 12);
        // Retention drops the old versions' bytes; the pages stay in the file, free.
        let deadline = Instant::now() + Duration::from_secs(30);
        while pragma(&db, "freelist_count") * pragma(&db, "page_size") < 400_000 {
            assert!(Instant::now() < deadline, "retention freed nothing");
            std::thread::sleep(Duration::from_millis(200));
        }
        admin_get(&s, "/v1/admin/history?limit=1000")
    };
    let free = (pragma(&db, "freelist_count") * pragma(&db, "page_size")) as u64;
    let before = sqlite_bytes(&db);
    let said = vacuum(&db);
    assert!(said.contains("rewritten"), "{said}");
    assert_eq!(pragma(&db, "auto_vacuum"), 2, "not converted");
    assert_eq!(pragma(&db, "freelist_count"), 0);
    let after = sqlite_bytes(&db);
    assert!(
        after + free / 2 < before,
        "{before} bytes ({free} free) became {after}"
    );
    // Everything is still there, and the data server opens it as before.
    let s = Server::start(&db, &args);
    assert_eq!(
        admin_get(&s, "/v1/admin/history?limit=1000")
            .as_array()
            .unwrap()
            .len(),
        history.as_array().unwrap().len()
    );
    let bulk = admin_get(&s, "/v1/admin/key?key=bulk0");
    assert_eq!(bulk["value"], big_value(1_000, VALUE_BYTES), "{bulk}");
    drop(s);
    // Converted once: the next run frees pages in place.
    let said = vacuum(&db);
    assert!(!said.contains("rewritten"), "{said}");
}

#[test]
fn lockstep_vacuum_refuses_what_is_not_a_lockstep_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let out = std::process::Command::new(bin())
        .args(["vacuum", "--db"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database at"));
    assert!(!missing.exists(), "vacuum created a file");
}
