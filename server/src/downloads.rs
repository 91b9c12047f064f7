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
use std::sync::{Mutex, MutexGuard};

use crate::store::backend::Tx;
use crate::store::Result;

/// Downloads counted in memory and not yet in the table.
#[derive(Default)]
pub struct Downloads {
    /// Version → downloads since the last flush. Held through a flush's commit and a reader's
    /// query, which is what makes a total exact; never across a wait for the write lock.
    pending: Mutex<HashMap<u64, u64>>,
}

/// The counts a flush is writing, locked until its transaction has committed or failed.
pub struct Flushing<'a>(MutexGuard<'a, HashMap<u64, u64>>);

impl Flushing<'_> {
    /// The transaction committed: the counts are in the table now.
    pub fn committed(mut self) {
        self.0.clear();
    }
}

impl Downloads {
    fn pending(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one download of `version`.
    pub fn count(&self, version: u64) {
        *self.pending().entry(version).or_default() += 1;
    }

    pub fn nothing_pending(&self) -> bool {
        self.pending().is_empty()
    }

    /// Adds the pending counts to the table in `tx`, a write transaction that already holds
    /// the write lock (so counting never waits behind another writer's fsync). The counts stay
    /// locked until the caller reports the commit with [`Flushing::committed`]; if the
    /// transaction fails they stay pending for the next flush.
    pub fn flush<'a>(&'a self, tx: &mut dyn Tx) -> Result<Flushing<'a>> {
        let pending = self.pending();
        if !pending.is_empty() {
            tx.add_downloads(&pending)?;
        }
        Ok(Flushing(pending))
    }

    /// Downloads of each version from `oldest` to `newest`: the table's counts plus the pending
    /// ones, read under the lock a flush commits under, so each download is in exactly one of
    /// the two.
    pub fn totals(&self, tx: &mut dyn Tx, oldest: u64, newest: u64) -> Result<HashMap<u64, u64>> {
        let pending = self.pending();
        let mut totals = tx.downloads(oldest, newest)?;
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
    use crate::store::backend::{Backend, Durability};
    use crate::store::sqlite::Sqlite;

    #[test]
    fn a_total_never_counts_a_download_twice_or_misses_one_while_flushes_commit() {
        const COUNTING: std::time::Duration = std::time::Duration::from_millis(300);
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&dir.path().join("db"), &mut |_| Ok(())).unwrap();
        let downloads = Downloads::default();
        let (counted, stop) = (AtomicU64::new(0), AtomicBool::new(false));
        let flush = || {
            let mut flushing = None;
            db.write(Durability::Batched, &mut |tx| {
                flushing = Some(downloads.flush(tx)?);
                Ok(())
            })
            .unwrap();
            flushing.unwrap().committed();
        };
        let total = || {
            let mut n = None;
            db.read(&mut |tx| {
                n = downloads.totals(tx, 7, 7)?.get(&7).copied();
                Ok(())
            })
            .unwrap();
            n
        };
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(SeqCst) {
                    flush();
                }
                flush();
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
