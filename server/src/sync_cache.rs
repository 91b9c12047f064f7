//! The sync table as this process last read or wrote it, so that most check-ins answer without
//! a database read.
//!
//! Another data-server process on the same database may change the table (a restage, a
//! rollback) without this process knowing; [`SYNC_TABLE_TTL`] bounds how long a check-in here
//! can miss that, far below any retrieval window. A rotation is never served from here: once
//! the activation time has passed, check-ins go to the database.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lockstep::wire::SyncTable;

/// How long a check-in may be answered from the sync table this process read last.
const SYNC_TABLE_TTL: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct SyncCache {
    recent: Mutex<Option<(SyncTable, Instant)>>,
}

impl SyncCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(SyncTable, Instant)>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The table read within the last [`SYNC_TABLE_TTL`], if no rotation is due yet.
    pub fn recent(&self, now_us: i64) -> Option<SyncTable> {
        let recent = *self.lock();
        recent
            .filter(|(t, at)| at.elapsed() < SYNC_TABLE_TTL && now_us < t.activation_time_us)
            .map(|(t, _)| t)
    }

    /// The last table read, however old, if no rotation is due yet by it: what a check-in is
    /// answered from while the database cannot be reached.
    pub fn last_known(&self, now_us: i64) -> Option<SyncTable> {
        let recent = *self.lock();
        recent
            .filter(|(t, _)| now_us < t.activation_time_us)
            .map(|(t, _)| t)
    }

    /// Whether the last table read, however old, says its activation time has passed by
    /// `now_us`: the whole herd of that instant is on its way.
    pub fn due(&self, now_us: i64) -> bool {
        self.lock()
            .is_some_and(|(t, _)| now_us >= t.activation_time_us)
    }

    pub fn remember(&self, table: SyncTable) {
        *self.lock() = Some((table, Instant::now()));
    }

    /// After a write of this process, which may have changed the table: the next check-in
    /// reads it again.
    pub fn expire(&self) {
        if let Some((_, at)) = self.lock().as_mut() {
            *at = Instant::now() - SYNC_TABLE_TTL;
        }
    }
}
