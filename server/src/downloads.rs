//! How many times each version was downloaded: every 200 answer of `GET /v1/versions/{n}` and
//! `/v1/versions/current` counts one for the version it carried (a 304 counts nothing).
//!
//! With host caches, a farm should download each version once per host; this count is how an
//! operator, or a test, sees that it does. A count is taken in memory when the answer is made
//! and added to the `downloads` table by [`Downloads::flush`], which the data server runs with
//! the farm's batch every second and once more when it stops, in a transaction without an
//! fsync: a download must not wait for a disk, and a counter table rewritten every second must
//! not stall rotations on the write lock. Counts survive a clean stop and a restart; `kill -9`
//! or a power loss may lose the last second's. [`Downloads::totals`] adds what is not flushed
//! yet, so a reader of this process never sees a count twice or misses one; a count taken by
//! another data-server process on the same database shows once that process flushes it.

use std::collections::HashMap;
use std::sync::Mutex;

use rusqlite::{params, Connection, TransactionBehavior};

use crate::store::Result;

/// The schema, applied as one of the store's migrations. Its own table rather than a column of
/// `versions`: SQLite rewrites a whole row on update, and a version row holds the version's
/// bytes.
pub const SCHEMA: &str = "
    CREATE TABLE downloads (
        version INTEGER PRIMARY KEY,
        count INTEGER NOT NULL
    );
";

/// Downloads counted in memory and not yet in the table.
#[derive(Default)]
pub struct Downloads {
    /// Version → downloads since the last flush. Held through a flush's commit and a reader's
    /// query, which is what makes a total exact; never across a wait for SQLite's write lock.
    pending: Mutex<HashMap<u64, u64>>,
}

impl Downloads {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one download of `version`.
    pub fn count(&self, version: u64) {
        *self.pending().entry(version).or_default() += 1;
    }

    pub fn nothing_pending(&self) -> bool {
        self.pending().is_empty()
    }

    /// Adds the pending counts to the table in one transaction on `conn` and forgets them once
    /// it commits; if it fails they stay pending for the next flush. The caller chooses the
    /// synchronous mode.
    pub fn flush(&self, conn: &mut Connection) -> Result<()> {
        // The write lock first, so that counting never waits behind another writer's fsync.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut pending = self.pending();
        if pending.is_empty() {
            return Ok(());
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO downloads (version, count) VALUES (?1, ?2)
                 ON CONFLICT (version) DO UPDATE SET count = count + excluded.count",
            )?;
            for (version, n) in pending.iter() {
                stmt.execute(params![*version as i64, *n as i64])?;
            }
        }
        tx.commit()?;
        pending.clear();
        Ok(())
    }

    /// Downloads of each version from `oldest` to `newest`: the table's counts plus the pending
    /// ones, read under the lock a flush commits under, so each download is in exactly one of
    /// the two.
    pub fn totals(&self, conn: &Connection, oldest: u64, newest: u64) -> Result<HashMap<u64, u64>> {
        let pending = self.pending();
        let mut stmt = conn.prepare_cached(
            "SELECT version, count FROM downloads WHERE version BETWEEN ?1 AND ?2",
        )?;
        let mut totals = stmt
            .query_map(params![oldest as i64, newest as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<HashMap<u64, u64>>>()?;
        for (version, n) in pending.iter() {
            if (oldest..=newest).contains(version) {
                *totals.entry(*version).or_default() += n;
            }
        }
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

    use super::*;

    #[test]
    fn a_total_never_counts_a_download_twice_or_misses_one_while_flushes_commit() {
        const COUNTING: std::time::Duration = std::time::Duration::from_millis(300);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "synchronous", "NORMAL").unwrap();
        writer.execute_batch(SCHEMA).unwrap();
        let reader = Connection::open(&path).unwrap();
        let downloads = Downloads::default();
        let (counted, stop) = (AtomicU64::new(0), AtomicBool::new(false));
        let total = || downloads.totals(&reader, 7, 7).unwrap().get(&7).copied();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(SeqCst) {
                    downloads.flush(&mut writer).unwrap();
                }
                downloads.flush(&mut writer).unwrap();
            });
            scope.spawn(|| {
                let start = std::time::Instant::now();
                while start.elapsed() < COUNTING {
                    for _ in 0..50 {
                        downloads.count(7);
                        counted.fetch_add(1, SeqCst);
                    }
                    // Leaves the flush and the reader a core each (this machine has two).
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                stop.store(true, SeqCst);
            });
            let (mut last, mut reads) = (0, 0u64);
            while !stop.load(SeqCst) {
                let before = counted.load(SeqCst);
                let n = total().unwrap_or(0);
                // One count may be taken and not yet added to `counted`.
                let after = counted.load(SeqCst) + 1;
                assert!(
                    before <= n && n <= after && last <= n,
                    "{n} counted between {before} and {after}, {last} before"
                );
                (last, reads) = (n, reads + 1);
            }
            assert!(reads > 100, "only {reads} reads while counting");
        });
        assert!(downloads.nothing_pending());
        assert_eq!(total(), Some(counted.load(SeqCst)));
    }
}
