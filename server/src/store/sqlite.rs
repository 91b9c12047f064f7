//! The embedded backend: one SQLite file in WAL mode.
//!
//! Every write is one `BEGIN IMMEDIATE` transaction with `synchronous=FULL`, so an
//! acknowledged edit survives `kill -9` and power loss, and two `lockstep serve` processes on
//! one file serialize on SQLite's write lock. Reads use their own connections, which WAL lets
//! read while the writer writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lockstep::format::Content;
use lockstep::wire::VersionInfo;
use lockstep::wire::{Blob, FarmMember, KeyInfo, RotationRecord, ScheduledChange, SyncTable};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::backend::{Backend, Durability, NewVersion, ScheduledRow, Tx};
use super::{Change, Result, StoreError};
use crate::audit::AuditEntry;
use crate::farm::{Member, Role};
use crate::proof::SwitchRow;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy => {
                StoreError::Unavailable(format!("the database is busy: {e}"))
            }
            _ => StoreError::Db(e.to_string()),
        }
    }
}

const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE production (
        key BLOB PRIMARY KEY,
        value BLOB NOT NULL,
        changed_by TEXT NOT NULL,
        changed_at_us INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE scheduled (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        effective_us INTEGER NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('put', 'delete')),
        key BLOB NOT NULL,
        value BLOB,
        created_by TEXT NOT NULL,
        created_at_us INTEGER NOT NULL,
        applied_version INTEGER
    );
    CREATE INDEX scheduled_pending ON scheduled (effective_us) WHERE applied_version IS NULL;
    CREATE TABLE versions (
        number INTEGER PRIMARY KEY,
        bytes BLOB NOT NULL,
        checksum INTEGER NOT NULL,
        digest TEXT NOT NULL,
        production_gen INTEGER NOT NULL,
        size INTEGER NOT NULL,
        entries INTEGER NOT NULL,
        created_us INTEGER NOT NULL,
        staged_us INTEGER,
        activated_us INTEGER,
        reason TEXT NOT NULL
    );
    CREATE TABLE sync (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        activation_us INTEGER NOT NULL,
        interval_us INTEGER NOT NULL,
        min_window_us INTEGER NOT NULL,
        staged_version INTEGER NOT NULL REFERENCES versions (number),
        active_version INTEGER NOT NULL REFERENCES versions (number),
        production_gen INTEGER NOT NULL
    );
    CREATE TABLE rotations (
        activation_us INTEGER PRIMARY KEY,
        rotated_at_us INTEGER NOT NULL,
        active_version INTEGER NOT NULL,
        staged_version INTEGER NOT NULL,
        next_activation_us INTEGER NOT NULL,
        rotated_by TEXT NOT NULL
    );
    CREATE TABLE farm (
        name TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        staged INTEGER NOT NULL,
        active INTEGER NOT NULL,
        offset_us INTEGER NOT NULL,
        error_us INTEGER NOT NULL,
        lagging INTEGER NOT NULL,
        last_checkin_us INTEGER NOT NULL,
        PRIMARY KEY (name, host, pid)
    );
    "#,
    // 2: the farm by host (see `farm`): what each member is to its host.
    r#"
    ALTER TABLE farm ADD COLUMN role TEXT NOT NULL DEFAULT '';
    ALTER TABLE farm ADD COLUMN leader_pid INTEGER;
    "#,
    // 3: downloads per version (see `downloads`). Its own table rather than a column of
    // `versions`: SQLite rewrites a whole row on update, and a version row holds the bytes.
    r#"
    CREATE TABLE downloads (
        version INTEGER PRIMARY KEY,
        count INTEGER NOT NULL
    );
    "#,
    // 4: retention (see `Store::prune`): when a version's bytes were dropped.
    r#"
    ALTER TABLE versions ADD COLUMN pruned_us INTEGER;
    "#,
    // 5: versions stored ahead of their rotation (`store::prepare`: the rotation then only
    // writes a row naming `blobs`' bytes by checksum), change sets that outlive retention
    // (`store::changeset`), pins.
    r#"
    CREATE TABLE blobs (
        checksum INTEGER PRIMARY KEY,
        bytes BLOB NOT NULL,
        for_us INTEGER NOT NULL,
        stored_us INTEGER NOT NULL
    );
    CREATE TABLE changesets (
        checksum INTEGER PRIMARY KEY,
        base INTEGER NOT NULL,
        changes BLOB NOT NULL
    );
    ALTER TABLE versions ADD COLUMN stored_ahead_us INTEGER;
    ALTER TABLE versions ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX versions_checksum ON versions (checksum);
    "#,
    // 6: the proof of activation (see `proof`): when each member started, and its reports of
    // switches; and the audit log (see `audit`).
    r#"
    ALTER TABLE farm ADD COLUMN since_us INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE switches (
        version INTEGER NOT NULL,
        name TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        checksum INTEGER NOT NULL,
        activation_us INTEGER NOT NULL,
        switched_us INTEGER NOT NULL,
        error_us INTEGER NOT NULL,
        late INTEGER NOT NULL,
        reported_us INTEGER NOT NULL,
        PRIMARY KEY (version, name, host, pid)
    );
    CREATE INDEX switches_reported ON switches (reported_us);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_us INTEGER NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        summary TEXT NOT NULL,
        peer TEXT NOT NULL
    );
    "#,
    // 7: urgent activations (see `Store::urgent`): the window an urgent change goes live in,
    // a request queued for the next rotation, and which activation times were urgent.
    r#"
    ALTER TABLE sync ADD COLUMN urgent_window_us INTEGER NOT NULL DEFAULT 1000000;
    ALTER TABLE sync ADD COLUMN urgent_queued INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE urgent_activations (
        activation_us INTEGER PRIMARY KEY,
        requested_us INTEGER NOT NULL,
        requested_by TEXT NOT NULL
    );
    "#,
    // 8: the blob secret (see `crate::blobs`): random, made once with the database, so that every
    // data server of it signs blob URLs alike. SQLite's randomblob draws on the OS's randomness.
    r#"
    CREATE TABLE blob_secret (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        secret BLOB NOT NULL
    );
    INSERT INTO blob_secret (id, secret) VALUES (1, randomblob(32));
    "#,
    // 9: the rotations that staged what was built before production's last changes, whose
    // staged version is restaged after them (see `store::prepare::restage_basis`).
    r#"
    CREATE TABLE restage_due (activation_us INTEGER PRIMARY KEY);
    "#,
    // 10: when each blob was stored, and for which activation time, in a table of their own.
    // SQLite reads a row's columns in order, and reaches a column stored after a large blob
    // only by walking the blob's overflow pages: for 100 MB, some 25,000 pages and tens of
    // milliseconds. The rotation's check that the bytes were stored ahead read `stored_us`
    // that way under the write lock, with the farm's check-ins of the activation time
    // waiting, and retention's scan for orphans read `for_us` that way every second. The
    // columns stay in `blobs` (written, never read): moving the bytes instead would copy every
    // version kept in one transaction at start-up. Filling this walks each blob once.
    r#"
    CREATE TABLE blob_times (
        checksum INTEGER PRIMARY KEY,
        for_us INTEGER NOT NULL,
        stored_us INTEGER NOT NULL
    );
    INSERT INTO blob_times (checksum, for_us, stored_us)
        SELECT checksum, for_us, stored_us FROM blobs;
    CREATE TRIGGER blob_times_follow_blobs AFTER DELETE ON blobs
    BEGIN
        DELETE FROM blob_times WHERE checksum = old.checksum;
    END;
    "#,
];

/// Read connections kept open between requests; more than this many concurrent reads open
/// (and close) connections of their own.
const MAX_IDLE_READERS: usize = 64;

pub struct Sqlite {
    /// Every write goes through this one connection, inside `BEGIN IMMEDIATE`.
    writer: Mutex<Connection>,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
}

fn open_writer(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // A new file: pages freed by retention go back to the file system on `PRAGMA
    // incremental_vacuum` (an older file reuses them for new versions; `lockstep vacuum`
    // converts it). Set before WAL mode, whose switch writes the file's first page and so
    // fixes its vacuum mode.
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if pages == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// A read connection. It sets no journal mode: WAL is a property of the file, set once by the
/// writer, and asking for it again takes a lock that stalls the writer behind SQLite's busy
/// handler.
fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

impl Sqlite {
    /// Opens (creating and migrating when needed) the database at `path`; `init` runs in the
    /// migrating transaction, so a new database is never seen half made.
    pub fn open(path: &Path, init: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<Sqlite> {
        let mut writer = open_writer(path)?;
        {
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let have: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            }
            init(&mut SqliteTx(&tx))?;
            tx.commit()?;
        }
        Ok(Sqlite {
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
        })
    }
}

impl Backend for Sqlite {
    fn reclaim(&self) -> Result<()> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Frees the pages retention emptied (a no-op on files made before auto_vacuum).
        conn.execute_batch("PRAGMA incremental_vacuum")?;
        Ok(())
    }

    fn write(
        &self,
        durability: Durability,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> Result<()> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if durability == Durability::Batched {
            // In WAL mode, NORMAL skips the commit's fsync but never risks corruption; the
            // next FULL commit makes these frames durable too.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            f(&mut SqliteTx(&tx))?;
            tx.commit()?;
            Ok(())
        })();
        if durability == Durability::Batched {
            conn.pragma_update(None, "synchronous", "FULL")?;
        }
        result
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let out = (|| {
            let tx = conn.transaction()?;
            f(&mut SqliteTx(&tx))
        })();
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }
}

fn to_i64(v: u64) -> i64 {
    v as i64
}

fn count(c: &Connection, sql: &str) -> Result<u64> {
    Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
}

fn key_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyInfo> {
    Ok(KeyInfo {
        key: Blob::from_bytes(&r.get::<_, Vec<u8>>(0)?),
        value: Blob::from_bytes(&r.get::<_, Vec<u8>>(1)?),
        changed_by: r.get(2)?,
        changed_at_us: r.get(3)?,
    })
}

/// One transaction on a SQLite connection.
struct SqliteTx<'a>(&'a Connection);

impl Tx for SqliteTx<'_> {
    fn initialised(&mut self) -> Result<bool> {
        Ok(self
            .0
            .query_row("SELECT COUNT(*) > 0 FROM sync", [], |r| r.get(0))?)
    }

    fn insert_sync(&mut self, s: &SyncTable, production_gen: i64) -> Result<()> {
        self.0.execute(
            "INSERT INTO sync (id, activation_us, interval_us, min_window_us,
                               staged_version, active_version, production_gen)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                s.activation_time_us,
                s.interval_us,
                s.min_window_us,
                to_i64(s.staged_version),
                to_i64(s.active_version),
                production_gen
            ],
        )?;
        Ok(())
    }

    fn sync(&mut self) -> Result<(SyncTable, i64)> {
        Ok(self.0.query_row(
            "SELECT activation_us, interval_us, min_window_us, staged_version, active_version,
                    production_gen FROM sync WHERE id = 1",
            [],
            |r| {
                Ok((
                    SyncTable {
                        activation_time_us: r.get(0)?,
                        interval_us: r.get(1)?,
                        min_window_us: r.get(2)?,
                        staged_version: r.get::<_, i64>(3)? as u64,
                        active_version: r.get::<_, i64>(4)? as u64,
                    },
                    r.get(5)?,
                ))
            },
        )?)
    }

    fn set_active(&mut self, version: u64, next_activation_us: i64) -> Result<()> {
        self.0.execute(
            "UPDATE sync SET active_version = ?1, activation_us = ?2 WHERE id = 1",
            params![to_i64(version), next_activation_us],
        )?;
        Ok(())
    }

    fn set_staged(&mut self, version: u64) -> Result<()> {
        self.0.execute(
            "UPDATE sync SET staged_version = ?1 WHERE id = 1",
            params![to_i64(version)],
        )?;
        Ok(())
    }

    fn set_cycle(
        &mut self,
        interval_us: i64,
        min_window_us: i64,
        activation_us: i64,
    ) -> Result<()> {
        self.0.execute(
            "UPDATE sync SET interval_us = ?1, min_window_us = ?2, activation_us = ?3 WHERE id = 1",
            params![interval_us, min_window_us, activation_us],
        )?;
        Ok(())
    }

    fn bump_production_gen(&mut self) -> Result<()> {
        self.0.execute(
            "UPDATE sync SET production_gen = production_gen + 1 WHERE id = 1",
            [],
        )?;
        Ok(())
    }

    fn production(&mut self) -> Result<Content> {
        let mut stmt = self.0.prepare_cached("SELECT key, value FROM production")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut map = Content::new();
        for row in rows {
            let (k, v) = row?;
            map.insert(k, v);
        }
        Ok(map)
    }

    fn write_production(&mut self, change: &Change, by: &str, now_us: i64) -> Result<bool> {
        let n = match change {
            Change::Put(k, v) => self.0.execute(
                "INSERT INTO production (key, value, changed_by, changed_at_us)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                    changed_by = excluded.changed_by, changed_at_us = excluded.changed_at_us
                 WHERE production.value IS NOT excluded.value",
                params![k, v, by, now_us],
            )?,
            Change::Delete(k) => self
                .0
                .execute("DELETE FROM production WHERE key = ?1", params![k])?,
        };
        Ok(n > 0)
    }

    fn clear_production(&mut self) -> Result<()> {
        self.0.execute("DELETE FROM production", [])?;
        Ok(())
    }

    fn production_get(&mut self, key: &[u8]) -> Result<Option<KeyInfo>> {
        Ok(self
            .0
            .query_row(
                "SELECT key, value, changed_by, changed_at_us FROM production WHERE key = ?1",
                params![key],
                key_info,
            )
            .optional()?)
    }

    fn production_from(&mut self, from: &[u8], limit: usize) -> Result<Vec<KeyInfo>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT key, value, changed_by, changed_at_us FROM production
             WHERE key >= ?1 ORDER BY key LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![from, limit], key_info)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn production_count(&mut self) -> Result<u64> {
        count(self.0, "SELECT COUNT(*) FROM production")
    }

    fn insert_scheduled(
        &mut self,
        effective_us: i64,
        change: &Change,
        by: &str,
        now_us: i64,
    ) -> Result<i64> {
        let (op, value) = match change {
            Change::Put(_, v) => ("put", Some(v.as_slice())),
            Change::Delete(_) => ("delete", None),
        };
        self.0.execute(
            "INSERT INTO scheduled (effective_us, op, key, value, created_by, created_at_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![effective_us, op, change.key(), value, by, now_us],
        )?;
        Ok(self.0.last_insert_rowid())
    }

    fn pending_changes_until(&mut self, until_us: i64) -> Result<Vec<(i64, Change)>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT id, op, key, value FROM scheduled
             WHERE applied_version IS NULL AND effective_us <= ?1
             ORDER BY effective_us, id",
        )?;
        let rows = stmt.query_map(params![until_us], |r| {
            let id: i64 = r.get(0)?;
            let op: String = r.get(1)?;
            let key: Vec<u8> = r.get(2)?;
            let value: Option<Vec<u8>> = r.get(3)?;
            Ok((id, Change::from_row(&op, key, value)))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn mark_applied(&mut self, id: i64, version: u64) -> Result<()> {
        self.0.execute(
            "UPDATE scheduled SET applied_version = ?2 WHERE id = ?1",
            params![id, to_i64(version)],
        )?;
        Ok(())
    }

    fn scheduled_within(&mut self, after_us: i64, until_us: i64) -> Result<bool> {
        Ok(self.0.query_row(
            "SELECT EXISTS (SELECT 1 FROM scheduled WHERE effective_us > ?1 AND effective_us <= ?2)",
            params![after_us, until_us],
            |r| r.get::<_, bool>(0),
        )?)
    }

    fn scheduled_pending(&mut self) -> Result<Vec<ScheduledChange>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT id, effective_us, op, key, value, created_by FROM scheduled
             WHERE applied_version IS NULL ORDER BY effective_us, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ScheduledChange {
                id: r.get(0)?,
                effective_us: r.get(1)?,
                op: r.get(2)?,
                key: Blob::from_bytes(&r.get::<_, Vec<u8>>(3)?),
                value: r
                    .get::<_, Option<Vec<u8>>>(4)?
                    .map(|v| Blob::from_bytes(&v)),
                created_by: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn scheduled_pending_count(&mut self) -> Result<u64> {
        count(
            self.0,
            "SELECT COUNT(*) FROM scheduled WHERE applied_version IS NULL",
        )
    }

    fn scheduled_all(&mut self) -> Result<Vec<ScheduledRow>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT id, effective_us, op, key, value, created_by, created_at_us, applied_version
             FROM scheduled ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let op: String = r.get(2)?;
            Ok(ScheduledRow {
                id: r.get(0)?,
                effective_us: r.get(1)?,
                change: Change::from_row(&op, r.get(3)?, r.get(4)?),
                created_by: r.get(5)?,
                created_at_us: r.get(6)?,
                applied_version: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn insert_scheduled_row(&mut self, row: &ScheduledRow) -> Result<()> {
        let (op, value) = match &row.change {
            Change::Put(_, v) => ("put", Some(v.as_slice())),
            Change::Delete(_) => ("delete", None),
        };
        self.0.execute(
            "INSERT INTO scheduled (id, effective_us, op, key, value, created_by, created_at_us,
                                    applied_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                row.id,
                row.effective_us,
                op,
                row.change.key(),
                value,
                row.created_by,
                row.created_at_us,
                row.applied_version.map(to_i64)
            ],
        )?;
        Ok(())
    }

    fn scheduled_count(&mut self) -> Result<u64> {
        count(self.0, "SELECT COUNT(*) FROM scheduled")
    }

    fn max_scheduled_id(&mut self) -> Result<i64> {
        Ok(self
            .0
            .query_row("SELECT COALESCE(MAX(id), 0) FROM scheduled", [], |r| {
                r.get(0)
            })?)
    }

    fn next_version_number(&mut self) -> Result<u64> {
        count(self.0, "SELECT COALESCE(MAX(number), 0) + 1 FROM versions")
    }

    fn insert_version(&mut self, v: &NewVersion<'_>) -> Result<()> {
        // The bytes go to `blobs`: SQLite rewrites a whole row on update, and a version's row
        // is updated when it is staged and activated, the rotation's write.
        self.insert_blob(v.checksum, v.bytes, v.created_us, v.created_us)?;
        self.0.execute(
            "INSERT INTO versions (number, bytes, checksum, digest, production_gen, size, entries,
                                   created_us, reason)
             VALUES (?1, X'', ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                to_i64(v.number),
                to_i64(v.checksum),
                v.digest,
                v.production_gen,
                v.bytes.len() as i64,
                to_i64(v.entries),
                v.created_us,
                v.reason
            ],
        )?;
        Ok(())
    }

    fn version_digest(&mut self, version: u64) -> Result<Option<(String, i64)>> {
        Ok(self
            .0
            .query_row(
                "SELECT digest, production_gen FROM versions WHERE number = ?1",
                params![to_i64(version)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn version_bytes(&mut self, version: u64) -> Result<Option<(Vec<u8>, u64)>> {
        Ok(self
            .0
            .query_row(
                "SELECT CASE WHEN length(v.bytes) > 0 THEN v.bytes
                             ELSE COALESCE(b.bytes, X'') END, v.checksum
                 FROM versions v LEFT JOIN blobs b ON b.checksum = v.checksum
                 WHERE v.number = ?1",
                params![to_i64(version)],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    fn version_checksum(&mut self, version: u64) -> Result<Option<u64>> {
        Ok(self
            .0
            .query_row(
                "SELECT checksum FROM versions WHERE number = ?1",
                params![to_i64(version)],
                |r| Ok(r.get::<_, i64>(0)? as u64),
            )
            .optional()?)
    }

    fn mark_staged(&mut self, version: u64, at_us: i64) -> Result<()> {
        self.0.execute(
            "UPDATE versions SET staged_us = ?2 WHERE number = ?1",
            params![to_i64(version), at_us],
        )?;
        Ok(())
    }

    fn mark_activated(&mut self, version: u64, at_us: i64) -> Result<()> {
        self.0.execute(
            "UPDATE versions SET activated_us = ?2 WHERE number = ?1 AND activated_us IS NULL",
            params![to_i64(version), at_us],
        )?;
        Ok(())
    }

    fn history(&mut self, limit: u64) -> Result<Vec<VersionInfo>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT number, checksum, size, entries, created_us, staged_us, activated_us, reason
             FROM versions ORDER BY number DESC LIMIT ?1",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![limit], |r| {
            Ok(VersionInfo {
                version: r.get::<_, i64>(0)? as u64,
                checksum: format!("{:016x}", r.get::<_, i64>(1)? as u64),
                size: r.get::<_, i64>(2)? as u64,
                entries: r.get::<_, i64>(3)? as u64,
                created_us: r.get(4)?,
                staged_us: r.get(5)?,
                activated_us: r.get(6)?,
                reason: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn version_count(&mut self) -> Result<u64> {
        count(self.0, "SELECT COUNT(*) FROM versions")
    }

    fn prune_versions(
        &mut self,
        below: u64,
        before_us: i64,
        keep: [u64; 2],
        now_us: i64,
    ) -> Result<u64> {
        let n = self.0.execute(
            "UPDATE versions SET bytes = X'', pruned_us = ?5
             WHERE number < ?1 AND created_us < ?2 AND number NOT IN (?3, ?4)
               AND pruned_us IS NULL AND pinned = 0",
            params![
                to_i64(below),
                before_us,
                to_i64(keep[0]),
                to_i64(keep[1]),
                now_us
            ],
        )?;
        self.0.execute(
            "DELETE FROM blobs WHERE checksum IN
                (SELECT checksum FROM versions WHERE pruned_us IS NOT NULL)",
            [],
        )?;
        Ok(n as u64)
    }

    fn mark_pruned(&mut self, version: u64, at_us: i64) -> Result<()> {
        self.0.execute(
            "UPDATE versions SET bytes = X'', pruned_us = ?2 WHERE number = ?1",
            params![to_i64(version), at_us],
        )?;
        self.0.execute(
            "DELETE FROM blobs WHERE checksum IN
                (SELECT checksum FROM versions WHERE number = ?1)",
            params![to_i64(version)],
        )?;
        Ok(())
    }

    fn version_pruned(&mut self, version: u64) -> Result<Option<i64>> {
        Ok(self
            .0
            .query_row(
                "SELECT pruned_us FROM versions WHERE number = ?1",
                params![to_i64(version)],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    fn log_rotation(&mut self, r: &RotationRecord) -> Result<()> {
        self.0.execute(
            "INSERT INTO rotations (activation_us, rotated_at_us, active_version,
                                    staged_version, next_activation_us, rotated_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.activation_time_us,
                r.rotated_at_us,
                to_i64(r.active_version),
                to_i64(r.staged_version),
                r.next_activation_us,
                r.rotated_by
            ],
        )?;
        Ok(())
    }

    fn last_rotation(&mut self) -> Result<Option<i64>> {
        Ok(self
            .0
            .query_row("SELECT MAX(activation_us) FROM rotations", [], |r| r.get(0))?)
    }

    fn rotations(&mut self) -> Result<Vec<RotationRecord>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT activation_us, rotated_at_us, active_version, staged_version, rotated_by,
                    next_activation_us
             FROM rotations ORDER BY activation_us",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RotationRecord {
                activation_time_us: r.get(0)?,
                rotated_at_us: r.get(1)?,
                active_version: r.get::<_, i64>(2)? as u64,
                staged_version: r.get::<_, i64>(3)? as u64,
                rotated_by: r.get(4)?,
                next_activation_us: r.get(5)?,
                urgent: false,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn rotation_count(&mut self) -> Result<u64> {
        count(self.0, "SELECT COUNT(*) FROM rotations")
    }

    fn write_farm(&mut self, batch: &[Member], expired_before_us: i64) -> Result<()> {
        self.0.execute(
            "DELETE FROM farm WHERE last_checkin_us < ?1",
            params![expired_before_us],
        )?;
        let mut stmt = self.0.prepare_cached(
            "INSERT OR REPLACE INTO farm (name, host, pid, staged, active, offset_us, error_us,
                                          lagging, last_checkin_us, role, leader_pid,
                                          since_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for Member {
            process: m,
            role,
            leader_pid,
            since_us,
        } in batch
        {
            stmt.execute(params![
                m.name,
                m.host,
                m.pid,
                to_i64(m.staged),
                to_i64(m.active),
                m.offset_us,
                m.error_us,
                m.lagging,
                m.last_checkin_us,
                role.as_str(),
                leader_pid,
                since_us
            ])?;
        }
        Ok(())
    }

    fn farm(&mut self, since_us: i64) -> Result<Vec<Member>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT name, host, pid, staged, active, offset_us, error_us, lagging,
                    last_checkin_us, role, leader_pid, since_us
             FROM farm WHERE last_checkin_us >= ?1",
        )?;
        let rows = stmt.query_map(params![since_us], |r| {
            Ok(Member {
                process: FarmMember {
                    name: r.get(0)?,
                    host: r.get(1)?,
                    pid: r.get(2)?,
                    staged: r.get::<_, i64>(3)? as u64,
                    active: r.get::<_, i64>(4)? as u64,
                    offset_us: r.get(5)?,
                    error_us: r.get(6)?,
                    lagging: r.get(7)?,
                    last_checkin_us: r.get(8)?,
                    silent_us: 0,
                    stale: false,
                },
                role: Role::parse(&r.get::<_, String>(9)?),
                leader_pid: r.get(10)?,
                since_us: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn add_downloads(&mut self, counts: &HashMap<u64, u64>) -> Result<()> {
        let mut stmt = self.0.prepare_cached(
            "INSERT INTO downloads (version, count) VALUES (?1, ?2)
             ON CONFLICT (version) DO UPDATE SET count = count + excluded.count",
        )?;
        for (version, n) in counts {
            stmt.execute(params![to_i64(*version), to_i64(*n)])?;
        }
        Ok(())
    }

    fn downloads(&mut self, oldest: u64, newest: u64) -> Result<HashMap<u64, u64>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT version, count FROM downloads WHERE version BETWEEN ?1 AND ?2",
        )?;
        let rows = stmt.query_map(params![to_i64(oldest), to_i64(newest)], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<HashMap<u64, u64>>>()?)
    }

    fn insert_blob(&mut self, checksum: u64, bytes: &[u8], for_us: i64, now_us: i64) -> Result<()> {
        self.0.execute(
            "INSERT OR REPLACE INTO blobs (checksum, bytes, for_us, stored_us)
             VALUES (?1, ?2, ?3, ?4)",
            params![to_i64(checksum), bytes, for_us, now_us],
        )?;
        self.0.execute(
            "INSERT OR REPLACE INTO blob_times (checksum, for_us, stored_us) VALUES (?1, ?2, ?3)",
            params![to_i64(checksum), for_us, now_us],
        )?;
        Ok(())
    }

    fn blob_stored(&mut self, checksum: u64) -> Result<Option<i64>> {
        Ok(self
            .0
            .query_row(
                "SELECT stored_us FROM blob_times WHERE checksum = ?1",
                params![to_i64(checksum)],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn insert_version_ahead(
        &mut self,
        v: &NewVersion<'_>,
        size: u64,
        stored_us: i64,
    ) -> Result<()> {
        self.0.execute(
            "INSERT INTO versions (number, bytes, checksum, digest, production_gen, size, entries,
                                   created_us, reason, stored_ahead_us)
             VALUES (?1, X'', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                to_i64(v.number),
                to_i64(v.checksum),
                v.digest,
                v.production_gen,
                to_i64(size),
                to_i64(v.entries),
                v.created_us,
                v.reason,
                stored_us
            ],
        )?;
        Ok(())
    }

    fn version_stored_ahead(&mut self, version: u64) -> Result<Option<i64>> {
        Ok(self
            .0
            .query_row(
                "SELECT stored_ahead_us FROM versions WHERE number = ?1",
                params![to_i64(version)],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    fn insert_changeset(&mut self, checksum: u64, base: u64, changes: &[u8]) -> Result<()> {
        self.0.execute(
            "INSERT OR REPLACE INTO changesets (checksum, base, changes) VALUES (?1, ?2, ?3)",
            params![to_i64(checksum), to_i64(base), changes],
        )?;
        Ok(())
    }

    fn changeset(&mut self, version: u64) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self
            .0
            .query_row(
                "SELECT c.base, c.changes FROM versions v
                 JOIN changesets c ON c.checksum = v.checksum WHERE v.number = ?1",
                params![to_i64(version)],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()?)
    }

    fn nearest_kept_after(&mut self, version: u64) -> Result<Option<u64>> {
        Ok(self
            .0
            .query_row(
                "SELECT MIN(number) FROM versions WHERE number > ?1 AND pruned_us IS NULL",
                params![to_i64(version)],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .map(|n| n as u64))
    }

    fn drop_orphans(&mut self, before_us: i64) -> Result<u64> {
        let n = self.0.execute(
            "DELETE FROM blobs WHERE checksum IN
                (SELECT checksum FROM blob_times WHERE for_us < ?1
                   AND checksum NOT IN (SELECT checksum FROM versions))",
            params![before_us],
        )?;
        self.0.execute(
            "DELETE FROM changesets WHERE checksum NOT IN (SELECT checksum FROM versions)
               AND checksum NOT IN (SELECT checksum FROM blob_times)",
            [],
        )?;
        Ok(n as u64)
    }

    fn set_pinned(&mut self, version: u64, pinned: bool) -> Result<bool> {
        let n = self.0.execute(
            "UPDATE versions SET pinned = ?2 WHERE number = ?1",
            params![to_i64(version), pinned],
        )?;
        Ok(n > 0)
    }

    fn version_pinned(&mut self, version: u64) -> Result<bool> {
        Ok(self
            .0
            .query_row(
                "SELECT pinned FROM versions WHERE number = ?1",
                params![to_i64(version)],
                |r| r.get::<_, bool>(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    fn database_bytes(&mut self) -> Result<u64> {
        let pages = count(self.0, "PRAGMA page_count")?;
        let size = count(self.0, "PRAGMA page_size")?;
        Ok(pages.saturating_mul(size))
    }

    fn prune_changesets(&mut self, before_us: i64) -> Result<u64> {
        let n = self.0.execute(
            "DELETE FROM changesets WHERE checksum IN
                (SELECT checksum FROM versions WHERE created_us < ?1)",
            params![before_us],
        )?;
        Ok(n as u64)
    }

    fn write_switches(&mut self, batch: &[SwitchRow], expired_before_us: i64) -> Result<()> {
        self.0.execute(
            "DELETE FROM switches WHERE reported_us < ?1",
            params![expired_before_us],
        )?;
        let mut stmt = self.0.prepare_cached(
            "INSERT OR REPLACE INTO switches (version, name, host, pid, checksum, activation_us,
                                              switched_us, error_us, late, reported_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for r in batch {
            stmt.execute(params![
                to_i64(r.report.version),
                r.name,
                r.host,
                r.pid,
                to_i64(r.report.checksum),
                r.report.activation_us,
                r.report.switched_us,
                r.report.error_us,
                r.report.late,
                r.reported_us
            ])?;
        }
        Ok(())
    }

    fn switches(&mut self, oldest: u64, newest: u64) -> Result<Vec<SwitchRow>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT version, name, host, pid, checksum, activation_us, switched_us, error_us,
                    late, reported_us
             FROM switches WHERE version BETWEEN ?1 AND ?2",
        )?;
        let rows = stmt.query_map(params![to_i64(oldest), to_i64(newest)], |r| {
            Ok(SwitchRow {
                name: r.get(1)?,
                host: r.get(2)?,
                pid: r.get(3)?,
                report: lockstep::wire::SwitchReport {
                    version: r.get::<_, i64>(0)? as u64,
                    checksum: r.get::<_, i64>(4)? as u64,
                    activation_us: r.get(5)?,
                    switched_us: r.get(6)?,
                    error_us: r.get(7)?,
                    late: r.get(8)?,
                },
                reported_us: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn insert_audit(&mut self, e: &AuditEntry) -> Result<()> {
        self.0.execute(
            "INSERT INTO audit (at_us, who, action, summary, peer) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![e.at_us, e.who, e.action, e.summary, e.peer],
        )?;
        Ok(())
    }

    fn audit(&mut self, limit: u64) -> Result<Vec<AuditEntry>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT id, at_us, who, action, summary, peer FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![to_i64(limit.min(i64::MAX as u64))], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at_us: r.get(1)?,
                who: r.get(2)?,
                action: r.get(3)?,
                summary: r.get(4)?,
                peer: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn urgent_state(&mut self) -> Result<(i64, bool)> {
        Ok(self.0.query_row(
            "SELECT urgent_window_us, urgent_queued FROM sync WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)),
        )?)
    }

    fn set_urgent_window(&mut self, window_us: i64) -> Result<()> {
        self.0.execute(
            "UPDATE sync SET urgent_window_us = ?1 WHERE id = 1",
            params![window_us],
        )?;
        Ok(())
    }

    fn set_urgent_queued(&mut self, queued: bool) -> Result<()> {
        self.0.execute(
            "UPDATE sync SET urgent_queued = ?1 WHERE id = 1",
            params![i64::from(queued)],
        )?;
        Ok(())
    }

    fn insert_urgent_activation(
        &mut self,
        activation_us: i64,
        by: &str,
        now_us: i64,
    ) -> Result<()> {
        self.0.execute(
            "INSERT INTO urgent_activations (activation_us, requested_us, requested_by)
             VALUES (?1, ?2, ?3)",
            params![activation_us, now_us, by],
        )?;
        Ok(())
    }

    fn urgent_activations(&mut self, from_us: i64, until_us: i64) -> Result<Vec<i64>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT activation_us FROM urgent_activations
             WHERE activation_us BETWEEN ?1 AND ?2 ORDER BY activation_us",
        )?;
        let rows = stmt.query_map(params![from_us, until_us], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn blob_secret(&mut self) -> Result<Vec<u8>> {
        Ok(self
            .0
            .query_row("SELECT secret FROM blob_secret WHERE id = 1", [], |r| {
                r.get(0)
            })?)
    }

    fn relog_staged(&mut self, activation_us: i64, from: u64, to: u64) -> Result<()> {
        self.0.execute(
            "UPDATE rotations SET staged_version = ?3
             WHERE activation_us = ?1 AND staged_version = ?2",
            params![activation_us, to_i64(from), to_i64(to)],
        )?;
        Ok(())
    }

    fn rotation_at(&mut self, activation_us: i64) -> Result<Option<(u64, u64, i64)>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .0
            .query_row(
                "SELECT active_version, staged_version, next_activation_us FROM rotations
                 WHERE activation_us = ?1",
                params![activation_us],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get(2)?,
                    ))
                },
            )
            .optional()?)
    }

    fn set_restage_due(&mut self, activation_us: i64, due: bool) -> Result<()> {
        match due {
            true => {
                self.0.execute(
                    "DELETE FROM restage_due WHERE activation_us < ?1",
                    params![activation_us],
                )?;
                self.0.execute(
                    "INSERT OR IGNORE INTO restage_due (activation_us) VALUES (?1)",
                    params![activation_us],
                )?
            }
            false => self.0.execute(
                "DELETE FROM restage_due WHERE activation_us = ?1",
                params![activation_us],
            )?,
        };
        Ok(())
    }

    fn restage_due(&mut self, activation_us: i64) -> Result<bool> {
        Ok(self.0.query_row(
            "SELECT COUNT(*) FROM restage_due WHERE activation_us = ?1",
            params![activation_us],
            |r| r.get::<_, i64>(0),
        )? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages this connection has read into its cache so far.
    fn pages_read(conn: &Connection) -> i32 {
        let (mut now, mut highest) = (0, 0);
        // SAFETY: the handle is this open connection's; the out-params are valid i32s.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_CACHE_MISS,
                &mut now,
                &mut highest,
                0,
            )
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        now
    }

    /// Three blobs of 16 MiB each: (checksum, for_us, stored_us).
    const BLOBS: [(u64, i64, i64); 3] = [(0x5eed, 10, 2), (0xfeed, 20, 3), (0xbeef, 30, 4)];

    fn bytes(checksum: u64) -> Vec<u8> {
        (0..16u32 << 20)
            .map(|i| (i % 251) as u8 ^ checksum as u8)
            .collect()
    }

    /// Pages read, from a cold connection, to learn when each blob was stored (what the
    /// rotation asks before it names bytes stored ahead) and which are orphans (what retention
    /// asks every second, in a transaction rolled back).
    fn pages_read_for_blob_times(path: &Path) -> i32 {
        let conn = Connection::open(path).unwrap();
        let before = pages_read(&conn);
        let tx = conn.unchecked_transaction().unwrap();
        for (checksum, _, stored_us) in BLOBS {
            assert_eq!(
                SqliteTx(&tx).blob_stored(checksum).unwrap(),
                Some(stored_us)
            );
        }
        // Every blob is an orphan (no version names it), but none was stored for before 5.
        assert_eq!(SqliteTx(&tx).drop_orphans(5).unwrap(), 0);
        let pages = pages_read(&conn) - before;
        // Two were stored for before 25. (Freeing their pages reads them on a file without
        // auto_vacuum's pointer map: that is the once-per-version drop, not the scan.)
        assert_eq!(SqliteTx(&tx).drop_orphans(25).unwrap(), 2);
        tx.rollback().unwrap();
        pages
    }

    /// Each blob's row as it stands: (checksum, for_us, stored_us, its bytes intact).
    fn blob_rows(path: &Path) -> Vec<(u64, i64, i64, bool)> {
        let conn = open_reader(path).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT b.checksum, t.for_us, t.stored_us, b.bytes
                 FROM blobs b JOIN blob_times t ON t.checksum = b.checksum ORDER BY t.for_us",
            )
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                let checksum = r.get::<_, i64>(0)? as u64;
                let kept: Vec<u8> = r.get(3)?;
                Ok((checksum, r.get(1)?, r.get(2)?, kept == bytes(checksum)))
            })
            .unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    fn expected_rows() -> Vec<(u64, i64, i64, bool)> {
        BLOBS.iter().map(|&(c, f, s)| (c, f, s, true)).collect()
    }

    #[test]
    fn the_rotations_check_for_bytes_stored_ahead_reads_none_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Sqlite::open(&path, &mut |_| Ok(())).unwrap();
        for (checksum, for_us, stored_us) in BLOBS {
            store
                .write(Durability::Full, &mut |tx| {
                    tx.insert_blob(checksum, &bytes(checksum), for_us, stored_us)
                })
                .unwrap();
        }
        let pages = pages_read_for_blob_times(&path);
        // The schema, the tables' roots and leaves: the three blobs are 12,288 pages.
        assert!(pages < 32, "{pages} pages read for the blobs' times");
        assert_eq!(blob_rows(&path), expected_rows());
    }

    #[test]
    fn a_new_database_gives_the_space_retention_frees_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Sqlite::open(&path, &mut |_| Ok(())).unwrap();
        let conn = open_reader(&path).unwrap();
        let mode: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, 2, "auto_vacuum is not INCREMENTAL");
    }

    #[test]
    fn a_database_from_before_migration_10_keeps_its_blobs_and_their_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            for (i, sql) in MIGRATIONS.iter().enumerate().take(9) {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", (i + 1) as i64)
                    .unwrap();
            }
            for (checksum, for_us, stored_us) in BLOBS {
                conn.execute(
                    "INSERT INTO blobs (checksum, bytes, for_us, stored_us)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![checksum as i64, bytes(checksum), for_us, stored_us],
                )
                .unwrap();
            }
        }
        Sqlite::open(&path, &mut |_| Ok(())).unwrap();
        assert_eq!(blob_rows(&path), expected_rows());
        assert!(pages_read_for_blob_times(&path) < 32);
        // A blob deleted takes its times with it.
        let conn = Connection::open(&path).unwrap();
        conn.execute("DELETE FROM blobs WHERE checksum = ?1", params![0xfeed_i64])
            .unwrap();
        let times: i64 = conn
            .query_row("SELECT COUNT(*) FROM blob_times", [], |r| r.get(0))
            .unwrap();
        assert_eq!(times, 2);
    }
}
