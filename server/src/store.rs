//! The data server's durable state in embedded SQLite: production, scheduled changes, immutable
//! versions, the sync table, the rotation log and the farm.
//!
//! Every write is one `BEGIN IMMEDIATE` transaction on a database in WAL mode with
//! `synchronous=FULL`, so an acknowledged edit survives `kill -9` and power loss, and two
//! `lockstep serve` processes on one file serialize on SQLite's write lock. No client ever holds
//! a lock across the network: the rotation is done entirely inside the request that found it
//! due, and `rotations.activation_us` is a primary key, so a second rotation for the same
//! activation time cannot commit even if the in-transaction check were wrong.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;
use lockstep::format::{self, Content};
use lockstep::wire::{
    Blob, ChangedEntry, DiffResponse, Entry, FarmMember, KeyChanges, KeyInfo, RotationRecord,
    ScheduledChange, SyncTable, VersionInfo,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::downloads::{self, Downloads};
use crate::farm::{self, HostView, Member, Role};
use crate::{clock, rotation};

/// Why a store operation did not happen. Every variant leaves the database unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the state it was made against has changed.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Change {
    fn key(&self) -> &[u8] {
        match self {
            Change::Put(k, _) | Change::Delete(k) => k,
        }
    }

    fn apply_to(&self, map: &mut Content) {
        match self {
            Change::Put(k, v) => {
                map.insert(k.clone(), v.clone());
            }
            Change::Delete(k) => {
                map.remove(k);
            }
        }
    }
}

/// Verified bytes of one version, ready to serve without copying.
#[derive(Clone)]
pub struct StoredVersion {
    pub version: u64,
    pub checksum: u64,
    pub bytes: Bytes,
}

/// Settings a new database starts with.
#[derive(Debug, Clone, Copy)]
pub struct SyncSettings {
    pub interval_us: i64,
    pub min_window_us: i64,
}

/// What [`Store::set_interval`] did.
#[derive(Debug, Clone, Copy)]
pub struct IntervalChange {
    pub before: SyncTable,
    pub after: SyncTable,
    /// The activation time stayed because the staged version holds changes scheduled for it,
    /// which must not go live sooner.
    pub held_by_schedule: bool,
}

/// What [`Store::rollback`] did, or with `dry_run` would do.
#[derive(Debug, Clone)]
pub struct RollbackOutcome {
    /// The new staged version; `None` on a dry run.
    pub version: Option<u64>,
    /// Production's changes: from its content before to the rolled-back content.
    pub production: KeyChanges,
    pub activation_time_us: i64,
}

fn overflow(what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "{what} does not fit the data server's clock; set the interval again \
         (lockstep interval) to reschedule"
    ))
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
    // 3: downloads per version.
    downloads::SCHEMA,
];

/// How long a check-in may be answered from the sync table this process read last.
const SYNC_TABLE_TTL: std::time::Duration = std::time::Duration::from_millis(50);

/// Read connections kept open between requests; more than this many concurrent reads open
/// (and close) connections of their own.
const MAX_IDLE_READERS: usize = 64;

/// Versions whose verified bytes stay in memory; staged and active are the ones clients ask for.
const CACHED_VERSIONS: usize = 4;

pub struct Store {
    /// Every write goes through this one connection, inside `BEGIN IMMEDIATE`.
    writer: Mutex<Connection>,
    /// Idle read connections; WAL lets them read while the writer writes.
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    cache: Mutex<BTreeMap<u64, StoredVersion>>,
    /// Version number → checksum; versions are immutable, so this never goes stale.
    checksums: Mutex<HashMap<u64, u64>>,
    /// The sync table as this process last read or wrote it, and when: lets most check-ins
    /// answer without a database read (see [`Store::recent_sync_table`]).
    recent_sync: Mutex<Option<(SyncTable, std::time::Instant)>>,
    /// Members seen since the last flush, by (name, host, pid).
    farm: Mutex<HashMap<(String, String, u32), Member>>,
    downloads: Downloads,
}

/// `GET /v1/admin/status`: [`lockstep::wire::StatusResponse`]'s fields, its farm members
/// carrying their role, and the farm grouped by host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub sync: SyncTable,
    pub server_time_us: i64,
    pub production_keys: u64,
    pub pending_scheduled: u64,
    pub versions: u64,
    pub rotations: u64,
    /// Every process, in [`farm::sort_for_view`]'s order.
    pub farm: Vec<Member>,
    pub hosts: Vec<HostView>,
}

/// One row of `GET /v1/admin/history`: [`VersionInfo`] and how many times the version was
/// downloaded (see [`crate::downloads`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRow {
    #[serde(flatten)]
    pub info: VersionInfo,
    pub downloads: u64,
}

fn open_writer(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
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

fn to_i64(v: u64) -> i64 {
    v as i64
}

fn read_sync(conn: &Connection) -> Result<(SyncTable, i64)> {
    Ok(conn.query_row(
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

fn load_production(tx: &Connection) -> Result<Content> {
    let mut stmt = tx.prepare_cached("SELECT key, value FROM production")?;
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

fn write_production(tx: &Transaction, change: &Change, by: &str, now_us: i64) -> Result<usize> {
    Ok(match change {
        Change::Put(k, v) => tx.execute(
            "INSERT INTO production (key, value, changed_by, changed_at_us) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                changed_by = excluded.changed_by, changed_at_us = excluded.changed_at_us
             WHERE production.value IS NOT excluded.value",
            params![k, v, by, now_us],
        )?,
        Change::Delete(k) => tx.execute("DELETE FROM production WHERE key = ?1", params![k])?,
    })
}

fn bump_production_gen(tx: &Transaction) -> Result<()> {
    tx.execute(
        "UPDATE sync SET production_gen = production_gen + 1 WHERE id = 1",
        [],
    )?;
    Ok(())
}

/// Encodes `content` as a new immutable version and stores it. Returns its number.
fn insert_version(
    tx: &Transaction,
    content: &Content,
    digest: &str,
    production_gen: i64,
    now_us: i64,
    reason: &str,
) -> Result<u64> {
    let number: i64 = tx.query_row(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM versions",
        [],
        |r| r.get(0),
    )?;
    let bytes = format::encode(number as u64, now_us, content)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let header = format::read_header(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute(
        "INSERT INTO versions (number, bytes, checksum, digest, production_gen, size, entries,
                               created_us, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            number,
            &bytes[..],
            to_i64(header.checksum),
            digest,
            production_gen,
            bytes.len() as i64,
            content.len() as i64,
            now_us,
            reason
        ],
    )?;
    Ok(number as u64)
}

/// Reads, verifies and decodes a stored version inside a transaction.
fn version_content_tx(conn: &Connection, version: u64) -> Result<Content> {
    let bytes: Vec<u8> = conn
        .query_row(
            "SELECT bytes FROM versions WHERE number = ?1",
            params![to_i64(version)],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("version {version} does not exist")))?;
    let (_, map) = format::decode(&bytes)
        .map_err(|e| StoreError::Corrupt(format!("stored version {version} is damaged: {e}")))?;
    Ok(map)
}

fn version_digest(conn: &Connection, version: u64) -> Result<(String, i64)> {
    Ok(conn.query_row(
        "SELECT digest, production_gen FROM versions WHERE number = ?1",
        params![to_i64(version)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Makes `content` the staged version, reusing the staged version when nothing changed.
fn restage(
    tx: &Transaction,
    sync: &SyncTable,
    content: &Content,
    production_gen: i64,
    now_us: i64,
    reason: &str,
) -> Result<u64> {
    let digest = format::content_digest(content);
    let (staged_digest, _) = version_digest(tx, sync.staged_version)?;
    if digest == staged_digest {
        return Ok(sync.staged_version);
    }
    let v = insert_version(tx, content, &digest, production_gen, now_us, reason)?;
    tx.execute(
        "UPDATE versions SET staged_us = ?2 WHERE number = ?1",
        params![to_i64(v), now_us],
    )?;
    tx.execute(
        "UPDATE sync SET staged_version = ?1 WHERE id = 1",
        params![to_i64(v)],
    )?;
    Ok(v)
}

fn pending_changes_until(tx: &Connection, until_us: i64) -> Result<Vec<(i64, Change)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, op, key, value FROM scheduled
         WHERE applied_version IS NULL AND effective_us <= ?1
         ORDER BY effective_us, id",
    )?;
    let rows = stmt.query_map(params![until_us], |r| {
        let id: i64 = r.get(0)?;
        let op: String = r.get(1)?;
        let key: Vec<u8> = r.get(2)?;
        let value: Option<Vec<u8>> = r.get(3)?;
        Ok((id, op, key, value))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, op, key, value) = row?;
        let change = match (op.as_str(), value) {
            ("put", Some(v)) => Change::Put(key, v),
            _ => Change::Delete(key),
        };
        out.push((id, change));
    }
    Ok(out)
}

impl Store {
    /// Opens (creating and migrating when needed) the database at `path`.
    ///
    /// `settings` seed a new database; for an existing one they change nothing.
    pub fn open(path: &Path, settings: SyncSettings, now_us: i64) -> Result<Store> {
        let mut writer = open_writer(path)?;
        {
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let have: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            }
            let initialised: bool =
                tx.query_row("SELECT COUNT(*) > 0 FROM sync", [], |r| r.get(0))?;
            if !initialised {
                clock::check_interval(settings.interval_us, settings.min_window_us)
                    .map_err(StoreError::BadRequest)?;
                let empty = Content::new();
                let digest = format::content_digest(&empty);
                let v = insert_version(&tx, &empty, &digest, 0, now_us, "initial")?;
                tx.execute(
                    "UPDATE versions SET staged_us = ?2, activated_us = ?2 WHERE number = ?1",
                    params![to_i64(v), now_us],
                )?;
                let first = rotation::first_activation(
                    settings.interval_us,
                    settings.min_window_us,
                    now_us,
                )
                .ok_or_else(|| overflow("the first activation time"))?;
                tx.execute(
                    "INSERT INTO sync (id, activation_us, interval_us, min_window_us,
                                       staged_version, active_version, production_gen)
                     VALUES (1, ?1, ?2, ?3, ?4, ?4, 0)",
                    params![
                        first,
                        settings.interval_us,
                        settings.min_window_us,
                        to_i64(v)
                    ],
                )?;
            }
            tx.commit()?;
        }
        Ok(Store {
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
            cache: Mutex::new(BTreeMap::new()),
            checksums: Mutex::new(HashMap::new()),
            recent_sync: Mutex::new(None),
            farm: Mutex::new(HashMap::new()),
            downloads: Downloads::default(),
        })
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    fn with_write_tx<T>(&self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        // Any write may have changed the sync table.
        *self.recent_sync.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(out)
    }

    /// The sync table read within the last [`SYNC_TABLE_TTL`], if no rotation is due yet.
    ///
    /// Another data-server process on the same database may change the table (a restage, a
    /// rollback) without this process knowing; the TTL bounds how long a check-in here can miss
    /// that, far below any retrieval window. A rotation is never served from here: once the
    /// activation time has passed, check-ins go to the database.
    pub fn recent_sync_table(&self, now_us: i64) -> Option<SyncTable> {
        let recent = *self.recent_sync.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .filter(|(t, at)| at.elapsed() < SYNC_TABLE_TTL && now_us < t.activation_time_us)
            .map(|(t, _)| t)
    }

    /// A checksum already known to this process.
    pub fn known_checksum(&self, version: u64) -> Option<u64> {
        self.checksums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&version)
            .copied()
    }

    fn remember_sync(&self, table: SyncTable) {
        *self.recent_sync.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((table, std::time::Instant::now()));
    }

    /// The sync table as it stands, without rotating.
    pub fn sync_table(&self) -> Result<SyncTable> {
        self.with_reader(|c| Ok(read_sync(c)?.0))
    }

    /// The retrieval step's rotation: if the activation time has passed, the first request to
    /// notice performs the rotation — active ← staged, staged ← production (with the scheduled
    /// changes due by the next activation), next activation on the grid — in one transaction.
    /// Returns the sync table after it, and whether this call rotated.
    pub fn rotate_if_due(&self, now_us: i64, by: &str) -> Result<(SyncTable, bool)> {
        // Almost every check-in finds nothing to do; a read answers it without the write lock.
        let sync = self.sync_table()?;
        if now_us < sync.activation_time_us {
            self.remember_sync(sync);
            return Ok((sync, false));
        }
        let rotated = self.with_write_tx(|tx| {
            let (sync, production_gen) = read_sync(tx)?;
            if now_us < sync.activation_time_us {
                // Someone else rotated between our read and our lock.
                return Ok((sync, false));
            }
            let due = sync.activation_time_us;
            // The write lock may have been waited for (an import, another rotation's fsync):
            // the next activation leaves its window after now, not after the check-in came.
            let now_us = now_us.max(clock::now_us());
            let next = rotation::next_activation(due, sync.interval_us, sync.min_window_us, now_us)
                .ok_or_else(|| overflow("the next activation time"))?;
            let new_active = sync.staged_version;
            tx.execute(
                "UPDATE versions SET activated_us = ?2 WHERE number = ?1 AND activated_us IS NULL",
                params![to_i64(new_active), due],
            )?;
            tx.execute(
                "UPDATE sync SET active_version = ?1, activation_us = ?2 WHERE id = 1",
                params![to_i64(new_active), next],
            )?;

            // Scheduled changes effective by `next` enter production now and this staged
            // version, so they go live at the first activation time at or after their time.
            let due_changes = pending_changes_until(tx, next)?;
            let mut gen = production_gen;
            if !due_changes.is_empty() {
                for (_, change) in &due_changes {
                    write_production(tx, change, "scheduled", now_us)?;
                }
                bump_production_gen(tx)?;
                gen += 1;
            }
            let (_, staged_gen) = version_digest(tx, new_active)?;
            let mut staged = new_active;
            if staged_gen != gen {
                let content = load_production(tx)?;
                let moved = SyncTable {
                    staged_version: new_active,
                    ..sync
                };
                staged = restage(tx, &moved, &content, gen, now_us, "rotation")?;
            }
            for (id, _) in &due_changes {
                tx.execute(
                    "UPDATE scheduled SET applied_version = ?2 WHERE id = ?1",
                    params![id, to_i64(staged)],
                )?;
            }
            tx.execute(
                "INSERT INTO rotations (activation_us, rotated_at_us, active_version,
                                        staged_version, next_activation_us, rotated_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![due, now_us, to_i64(new_active), to_i64(staged), next, by],
            )?;
            Ok((read_sync(tx)?.0, true))
        })?;
        self.remember_sync(rotated.0);
        Ok(rotated)
    }

    /// Validates nothing: callers check key and value limits first.
    pub fn apply(&self, changes: &[Change], by: &str, now_us: i64) -> Result<u64> {
        self.with_write_tx(|tx| {
            let mut changed = 0u64;
            for c in changes {
                changed += write_production(tx, c, by, now_us)? as u64;
            }
            if changed > 0 {
                bump_production_gen(tx)?;
            }
            Ok(changed)
        })
    }

    /// Records a change for `effective_us`. If that falls at or before the activation already
    /// staged, the staged version is rebuilt with the change so it still goes live at the first
    /// activation time at or after `effective_us`. Returns that activation time.
    pub fn schedule(
        &self,
        change: &Change,
        effective_us: i64,
        by: &str,
        now_us: i64,
    ) -> Result<i64> {
        if effective_us < now_us {
            return Err(StoreError::BadRequest(
                "effective time is in the past; omit the time to change production now".into(),
            ));
        }
        self.with_write_tx(|tx| {
            let (sync, _) = read_sync(tx)?;
            let (op, value) = match change {
                Change::Put(_, v) => ("put", Some(v.as_slice())),
                Change::Delete(_) => ("delete", None),
            };
            tx.execute(
                "INSERT INTO scheduled (effective_us, op, key, value, created_by, created_at_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![effective_us, op, change.key(), value, by, now_us],
            )?;
            let id = tx.last_insert_rowid();
            if effective_us > sync.activation_time_us {
                let live = rotation::ceil_to_grid(effective_us, sync.interval_us)
                    .filter(|t| *t <= clock::LATEST_US)
                    .ok_or_else(|| {
                        StoreError::BadRequest(format!(
                            "the first activation at or after {} falls after {}, the latest \
                             time there is; pick an earlier time",
                            clock::format_us(effective_us),
                            clock::format_us(clock::LATEST_US)
                        ))
                    })?;
                return Ok(live.max(sync.activation_time_us));
            }
            let mut content = version_content_tx(tx, sync.staged_version)?;
            change.apply_to(&mut content);
            write_production(tx, change, by, now_us)?;
            bump_production_gen(tx)?;
            // The restaged version is not production (other edits may wait in production for
            // the next rotation), so it gets a generation no production state has.
            let v = restage(tx, &sync, &content, -1, now_us, "scheduled")?;
            tx.execute(
                "UPDATE scheduled SET applied_version = ?2 WHERE id = ?1",
                params![id, to_i64(v)],
            )?;
            Ok(sync.activation_time_us)
        })
    }

    /// Changes the interval and the minimum retrieval window; `None` keeps what the table has,
    /// except that a window not given becomes half of an interval that changes.
    ///
    /// The staged version keeps its content; its activation moves to the first point of the new
    /// grid that leaves the new window (see [`rotation::rescheduled_activation`]), unless the
    /// current time is sooner or the staged version holds changes scheduled for its time.
    pub fn set_interval(
        &self,
        interval_us: Option<i64>,
        min_window_us: Option<i64>,
        now_us: i64,
    ) -> Result<IntervalChange> {
        self.with_write_tx(|tx| {
            let (before, _) = read_sync(tx)?;
            let interval = interval_us.unwrap_or(before.interval_us);
            let window = match min_window_us {
                Some(w) => w,
                None if interval == before.interval_us => before.min_window_us,
                None => interval / 2,
            };
            clock::check_interval(interval, window).map_err(StoreError::BadRequest)?;
            if (interval, window) == (before.interval_us, before.min_window_us) {
                return Ok(IntervalChange {
                    before,
                    after: before,
                    held_by_schedule: false,
                });
            }
            let mut activation = rotation::rescheduled_activation(
                before.activation_time_us,
                before.interval_us,
                interval,
                window,
                now_us,
            )
            .ok_or_else(|| overflow("the rescheduled activation time"))?;
            let held_by_schedule = activation < before.activation_time_us
                && tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM scheduled
                                    WHERE effective_us > ?1 AND effective_us <= ?2)",
                    params![activation, before.activation_time_us],
                    |r| r.get::<_, bool>(0),
                )?;
            if held_by_schedule {
                activation = before.activation_time_us;
            }
            tx.execute(
                "UPDATE sync SET interval_us = ?1, min_window_us = ?2, activation_us = ?3
                 WHERE id = 1",
                params![interval, window, activation],
            )?;
            Ok(IntervalChange {
                before,
                after: read_sync(tx)?.0,
                held_by_schedule,
            })
        })
    }

    /// Moves an activation time that has been rotated already to the first grid point after
    /// the minimum window. An older release could leave one behind (a time that wrapped around
    /// to a negative number); the rotation log's primary key then refused every rotation, so
    /// every check-in failed. Returns the times before and after, if it moved.
    pub fn reschedule_if_rotated(&self, now_us: i64) -> Result<Option<(i64, i64)>> {
        self.with_write_tx(|tx| {
            let (sync, _) = read_sync(tx)?;
            let rotated_up_to: Option<i64> =
                tx.query_row("SELECT MAX(activation_us) FROM rotations", [], |r| r.get(0))?;
            if rotated_up_to.is_none_or(|done| done < sync.activation_time_us) {
                return Ok(None);
            }
            let next = rotation::first_activation(sync.interval_us, sync.min_window_us, now_us)
                .ok_or_else(|| overflow("the rescheduled activation time"))?;
            tx.execute(
                "UPDATE sync SET activation_us = ?1 WHERE id = 1",
                params![next],
            )?;
            Ok(Some((sync.activation_time_us, next)))
        })
    }

    /// A new version with the content of `version`, staged for the next activation; production
    /// becomes that content too, so the next rotation does not undo the rollback. Edits made to
    /// production since are discarded from it (they stay in history); with `discard_edits`
    /// false the rollback is refused if there are any. A dry run reports and changes nothing.
    pub fn rollback(
        &self,
        version: u64,
        dry_run: bool,
        discard_edits: bool,
        by: &str,
        now_us: i64,
    ) -> Result<RollbackOutcome> {
        self.with_write_tx(|tx| {
            let content = version_content_tx(tx, version)?;
            let production = key_changes(&load_production(tx)?, &content);
            let (sync, _) = read_sync(tx)?;
            let mut outcome = RollbackOutcome {
                version: None,
                production,
                activation_time_us: sync.activation_time_us,
            };
            if dry_run {
                return Ok(outcome);
            }
            if !discard_edits && !outcome.production.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "production differs from version {version} in {} keys; a rollback would \
                     discard those edits (preview with dry_run, or allow it with discard_edits)",
                    outcome.production.added.len()
                        + outcome.production.removed.len()
                        + outcome.production.changed.len()
                )));
            }
            tx.execute("DELETE FROM production", [])?;
            for (k, v) in &content {
                write_production(tx, &Change::Put(k.clone(), v.clone()), by, now_us)?;
            }
            bump_production_gen(tx)?;
            let (sync, gen) = read_sync(tx)?;
            outcome.version = Some(restage(
                tx,
                &sync,
                &content,
                gen,
                now_us,
                &format!("rollback to {version}"),
            )?);
            Ok(outcome)
        })
    }

    /// One production entry.
    pub fn production_get(&self, key: &[u8]) -> Result<Option<KeyInfo>> {
        self.with_reader(|c| {
            Ok(c.query_row(
                "SELECT key, value, changed_by, changed_at_us FROM production WHERE key = ?1",
                params![key],
                key_info,
            )
            .optional()?)
        })
    }

    /// Production entries whose key starts with `prefix`, in key order.
    pub fn production_list(&self, prefix: &[u8], limit: usize) -> Result<Vec<KeyInfo>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT key, value, changed_by, changed_at_us FROM production
                 WHERE key >= ?1 ORDER BY key LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![prefix, limit as i64 + 1], key_info)?;
            let mut out = Vec::new();
            for row in rows {
                let info = row?;
                let key = info.key.clone().into_bytes().unwrap_or_default();
                if !key.starts_with(prefix) || out.len() == limit {
                    break;
                }
                out.push(info);
            }
            Ok(out)
        })
    }

    /// Changes waiting for their effective time.
    pub fn scheduled_pending(&self) -> Result<Vec<ScheduledChange>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
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
        })
    }

    /// The checksum a version was stored with.
    pub fn version_checksum(&self, version: u64) -> Result<u64> {
        if let Some(c) = self
            .checksums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&version)
        {
            return Ok(*c);
        }
        let checksum: i64 = self
            .with_reader(|c| {
                Ok(c.query_row(
                    "SELECT checksum FROM versions WHERE number = ?1",
                    params![to_i64(version)],
                    |r| r.get(0),
                )
                .optional()?)
            })?
            .ok_or_else(|| StoreError::NotFound(format!("version {version} does not exist")))?;
        self.checksums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(version, checksum as u64);
        Ok(checksum as u64)
    }

    /// The verified bytes of a version. Bytes that fail their checksum are reported as corrupt
    /// and never served.
    pub fn version_bytes(&self, version: u64) -> Result<StoredVersion> {
        if let Some(v) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&version)
        {
            return Ok(v.clone());
        }
        let (bytes, checksum): (Vec<u8>, i64) = self
            .with_reader(|c| {
                Ok(c.query_row(
                    "SELECT bytes, checksum FROM versions WHERE number = ?1",
                    params![to_i64(version)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
            })?
            .ok_or_else(|| StoreError::NotFound(format!("version {version} does not exist")))?;
        let header = format::verify_checksum(&bytes).map_err(|e| {
            StoreError::Corrupt(format!("stored version {version} is damaged: {e}"))
        })?;
        if header.version != version || header.checksum != checksum as u64 {
            return Err(StoreError::Corrupt(format!(
                "stored version {version} does not match its catalogue entry"
            )));
        }
        let stored = StoredVersion {
            version,
            checksum: header.checksum,
            bytes: Bytes::from(bytes),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(version, stored.clone());
        while cache.len() > CACHED_VERSIONS {
            cache.pop_first();
        }
        Ok(stored)
    }

    /// The decoded content of a version, for tools.
    pub fn version_content(&self, version: u64) -> Result<Content> {
        let stored = self.version_bytes(version)?;
        let (_, map) = format::decode(&stored.bytes).map_err(|e| {
            StoreError::Corrupt(format!("stored version {version} is damaged: {e}"))
        })?;
        Ok(map)
    }

    /// The newest `limit` versions, newest first, with their downloads counted up to now.
    pub fn history(&self, limit: u64) -> Result<Vec<VersionRow>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT number, checksum, size, entries, created_us, staged_us, activated_us,
                        reason
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
            let versions = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            let (Some(newest), Some(oldest)) = (versions.first(), versions.last()) else {
                return Ok(Vec::new());
            };
            let downloads = self.downloads.totals(c, oldest.version, newest.version)?;
            Ok(versions
                .into_iter()
                .map(|info| VersionRow {
                    downloads: downloads.get(&info.version).copied().unwrap_or(0),
                    info,
                })
                .collect())
        })
    }

    /// Counts one download of `version`: a 200 answer carrying its bytes.
    pub fn count_download(&self, version: u64) {
        self.downloads.count(version);
    }

    /// What changes from version `a` to version `b`.
    pub fn diff(&self, a: u64, b: u64) -> Result<DiffResponse> {
        let old = self.version_content(a)?;
        let new = self.version_content(b)?;
        Ok(DiffResponse {
            a,
            b,
            changes: key_changes(&old, &new),
        })
    }

    /// Remembers what a check-in told about the farm (the process, and a leader's followers);
    /// written to the database by [`Store::flush_batched`].
    pub fn record_checkin(&self, members: Vec<Member>) {
        let mut farm = self.farm.lock().unwrap_or_else(|e| e.into_inner());
        for m in members {
            let key = (
                m.process.name.clone(),
                m.process.host.clone(),
                m.process.pid,
            );
            farm.insert(key, m);
        }
    }

    /// Writes the check-ins and the downloads counted since the last flush, without an fsync:
    /// the farm view is a status display, rebuilt by the next check-ins after a crash, download
    /// counts may lose the last second's on a crash (see [`crate::downloads`]), and an fsync a
    /// second would hold the write lock that rotations and edits wait for. Members silent for
    /// [`farm::EXPIRE_AFTER_US`] are deleted in the same transaction as the farm's.
    pub fn flush_batched(&self, now_us: i64) -> Result<()> {
        let batch: Vec<Member> = {
            let mut farm = self.farm.lock().unwrap_or_else(|e| e.into_inner());
            farm.drain().map(|(_, m)| m).collect()
        };
        if batch.is_empty() && self.downloads.nothing_pending() {
            return Ok(());
        }
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // In WAL mode, NORMAL skips the commit's fsync but never risks corruption; the next
        // FULL commit makes these frames durable too.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = match batch.is_empty() {
            true => Ok(()),
            false => write_farm(&mut conn, &batch, now_us - farm::EXPIRE_AFTER_US),
        }
        .and_then(|()| self.downloads.flush(&mut conn));
        conn.pragma_update(None, "synchronous", "FULL")?;
        result
    }

    /// The sync table, counts and the farm, by process and by host: members silent for
    /// [`farm::EXPIRE_AFTER_US`] left out, those silent for [`farm::stale_after_us`] marked
    /// stale.
    pub fn status(&self, now_us: i64) -> Result<Status> {
        self.flush_batched(now_us)?;
        self.with_reader(|c| {
            let (sync, _) = read_sync(c)?;
            let count = |sql: &str| -> rusqlite::Result<u64> {
                c.query_row(sql, [], |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
            };
            let mut stmt = c.prepare_cached(
                "SELECT name, host, pid, staged, active, offset_us, error_us, lagging,
                        last_checkin_us, role, leader_pid
                 FROM farm WHERE last_checkin_us >= ?1",
            )?;
            let stale_after = farm::stale_after_us(sync.interval_us);
            let mut members = stmt
                .query_map(params![now_us - farm::EXPIRE_AFTER_US], |r| {
                    let last_checkin_us: i64 = r.get(8)?;
                    let silent_us = now_us.saturating_sub(last_checkin_us).max(0);
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
                            last_checkin_us,
                            silent_us,
                            stale: silent_us > stale_after,
                        },
                        role: Role::parse(&r.get::<_, String>(9)?),
                        leader_pid: r.get(10)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            farm::sort_for_view(&mut members);
            Ok(Status {
                sync,
                server_time_us: now_us,
                production_keys: count("SELECT COUNT(*) FROM production")?,
                pending_scheduled: count(
                    "SELECT COUNT(*) FROM scheduled WHERE applied_version IS NULL",
                )?,
                versions: count("SELECT COUNT(*) FROM versions")?,
                rotations: count("SELECT COUNT(*) FROM rotations")?,
                hosts: farm::by_host(&members),
                farm: members,
            })
        })
    }

    /// The rotation log, oldest first.
    pub fn rotations(&self) -> Result<Vec<RotationRecord>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
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
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

/// What changes from `old` to `new`, key by key.
fn key_changes(old: &Content, new: &Content) -> KeyChanges {
    let mut out = KeyChanges::default();
    for (k, v) in new {
        match old.get(k) {
            None => out.added.push(Entry {
                key: Blob::from_bytes(k),
                value: Blob::from_bytes(v),
            }),
            Some(o) if o != v => out.changed.push(ChangedEntry {
                key: Blob::from_bytes(k),
                old: Blob::from_bytes(o),
                new: Blob::from_bytes(v),
            }),
            Some(_) => {}
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.removed.push(Blob::from_bytes(k));
        }
    }
    out
}

fn key_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyInfo> {
    Ok(KeyInfo {
        key: Blob::from_bytes(&r.get::<_, Vec<u8>>(0)?),
        value: Blob::from_bytes(&r.get::<_, Vec<u8>>(1)?),
        changed_by: r.get(2)?,
        changed_at_us: r.get(3)?,
    })
}

fn write_farm(conn: &mut Connection, batch: &[Member], expired_before_us: i64) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "DELETE FROM farm WHERE last_checkin_us < ?1",
        params![expired_before_us],
    )?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO farm (name, host, pid, staged, active, offset_us, error_us,
                                          lagging, last_checkin_us, role, leader_pid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for Member {
            process: m,
            role,
            leader_pid,
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
                leader_pid
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}
