//! Retention: with edits and activations running, versions beyond `--keep-versions` and older
//! than `--keep-for` keep only their history row, and the database stays bounded.

#[path = "../../tests/support/mod.rs"]
mod common;

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

/// Puts a new 200 KB value every cycle for `rounds` cycles, checking in so rotations happen.
fn soak(s: &Server, rounds: usize) {
    for round in 0..rounds {
        put(s, "big", &big_value(round, VALUE_BYTES));
        let table = checkin(s, "probe").sync;
        let deadline = Instant::now() + Duration::from_secs(10);
        while checkin(s, "probe").sync.active_version <= table.active_version {
            assert!(Instant::now() < deadline, "no rotation");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const VALUE_BYTES: usize = 200_000;
const KEEP: usize = 3;

#[test]
fn old_versions_keep_only_their_history_row_and_the_database_stays_bounded() {
    each_backend(|backend, db| {
        let rounds = if backend == Backend::Sqlite { 50 } else { 15 };
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
        soak(&s, rounds / 2);
        settle();
        let half_way = (backend == Backend::Sqlite).then(|| sqlite_bytes(db));
        soak(&s, rounds - rounds / 2);
        settle();
        if let Some(half_way) = half_way {
            // Unpruned, the second half's versions alone would add 25 × 200 KB (5 MB).
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
        let r = post(
            &format!("{}/v1/admin/rollback", s.url),
            Some(TOKEN),
            serde_json::json!({"version": 2, "dry_run": true})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    });
}
