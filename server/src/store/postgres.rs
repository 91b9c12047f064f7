//! The backend for several data-server instances: one PostgreSQL database.
//!
//! The driver is `postgres` (the blocking client over `tokio-postgres`) with an `r2d2` pool:
//! the store is called on blocking threads, as with SQLite, and no async code reaches it.
//!
//! - **Writes serialize on the sync row.** A durable write transaction starts with
//!   `SELECT … FROM sync WHERE id = 1 FOR UPDATE`, PostgreSQL's `BEGIN IMMEDIATE`: the rotation,
//!   edits, schedules and rollbacks of every instance take turns, and each reads what the one
//!   before it committed. The rotation log's activation time is its primary key, so a second
//!   rotation for one activation time cannot commit even if the in-transaction check were wrong.
//! - **Migrations** are numbered and run under a session advisory lock, so instances that start
//!   at once migrate one after another; the second finds the work done.
//! - **A lost connection** is noticed by the pool (each connection is checked when taken) and
//!   replaced. A transaction that loses its connection (a restart, `pg_terminate_backend`)
//!   runs once more on a fresh one when that is safe: it failed before its `COMMIT` was sent,
//!   or it failed during the commit and `txid_status` of its transaction id, asked on another
//!   connection, says it aborted (when it says committed, the commit is reported as done).
//!   A request that meets a database that is down gets [`StoreError::Unavailable`] (a 503)
//!   within [`CONNECT_TIMEOUT`], and the data server answers what it can from memory
//!   meanwhile (see [`crate::store::Store::rotate_if_due`]). An outage is logged when it
//!   starts and when it ends, not once per request; a pool whose connections are all busy
//!   is not an outage.
//! - **Version bytes** are `bytea`; each instance keeps the ones it serves in its
//!   [`crate::version_cache`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lockstep::format::Content;
use lockstep::wire::{
    Blob, FarmMember, KeyInfo, RotationRecord, ScheduledChange, SyncTable, VersionInfo,
};
use postgres::{NoTls, Row, Transaction};
use r2d2_postgres::PostgresConnectionManager;

use super::backend::{Backend, Durability, NewVersion, ScheduledRow, Tx};
use super::{Change, Result, StoreError};
use crate::audit::AuditEntry;
use crate::farm::{Member, Role};
use crate::proof::SwitchRow;

/// How long a request waits for a connection (or a new one to open) before it is answered
/// 503: well inside a client's check-in timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// [`CONNECT_TIMEOUT`] while the database is known to be out of reach.
const OUTAGE_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// Connections per instance: the blocking threads that may wait on the database at once.
const POOL_SIZE: u32 = 16;

/// The advisory lock key that migrations run under ("lockstep" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x6c6f_636b_7374_6570;

const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's migrations 1 to 3.
    r#"
    CREATE TABLE production (
        key BYTEA PRIMARY KEY,
        value BYTEA NOT NULL,
        changed_by TEXT NOT NULL,
        changed_at_us BIGINT NOT NULL
    );
    CREATE TABLE scheduled (
        id BIGSERIAL PRIMARY KEY,
        effective_us BIGINT NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('put', 'delete')),
        key BYTEA NOT NULL,
        value BYTEA,
        created_by TEXT NOT NULL,
        created_at_us BIGINT NOT NULL,
        applied_version BIGINT
    );
    CREATE INDEX scheduled_pending ON scheduled (effective_us) WHERE applied_version IS NULL;
    CREATE TABLE versions (
        number BIGINT PRIMARY KEY,
        bytes BYTEA NOT NULL,
        checksum BIGINT NOT NULL,
        digest TEXT NOT NULL,
        production_gen BIGINT NOT NULL,
        size BIGINT NOT NULL,
        entries BIGINT NOT NULL,
        created_us BIGINT NOT NULL,
        staged_us BIGINT,
        activated_us BIGINT,
        reason TEXT NOT NULL
    );
    CREATE TABLE sync (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        activation_us BIGINT NOT NULL,
        interval_us BIGINT NOT NULL,
        min_window_us BIGINT NOT NULL,
        staged_version BIGINT NOT NULL REFERENCES versions (number),
        active_version BIGINT NOT NULL REFERENCES versions (number),
        production_gen BIGINT NOT NULL
    );
    CREATE TABLE rotations (
        activation_us BIGINT PRIMARY KEY,
        rotated_at_us BIGINT NOT NULL,
        active_version BIGINT NOT NULL,
        staged_version BIGINT NOT NULL,
        next_activation_us BIGINT NOT NULL,
        rotated_by TEXT NOT NULL
    );
    CREATE TABLE farm (
        name TEXT NOT NULL,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        staged BIGINT NOT NULL,
        active BIGINT NOT NULL,
        offset_us BIGINT NOT NULL,
        error_us BIGINT NOT NULL,
        lagging BOOLEAN NOT NULL,
        last_checkin_us BIGINT NOT NULL,
        role TEXT NOT NULL DEFAULT '',
        leader_pid BIGINT,
        PRIMARY KEY (name, host, pid)
    );
    CREATE TABLE downloads (
        version BIGINT PRIMARY KEY,
        count BIGINT NOT NULL
    );
    "#,
    // 2: retention (see `Store::prune`): when a version's bytes were dropped.
    r#"
    ALTER TABLE versions ADD COLUMN pruned_us BIGINT;
    "#,
    // 3: SQLite's migration 5: versions stored ahead of their rotation, change sets, pins.
    r#"
    CREATE TABLE blobs (
        checksum BIGINT PRIMARY KEY,
        bytes BYTEA NOT NULL,
        for_us BIGINT NOT NULL,
        stored_us BIGINT NOT NULL
    );
    CREATE TABLE changesets (
        checksum BIGINT PRIMARY KEY,
        base BIGINT NOT NULL,
        changes BYTEA NOT NULL
    );
    ALTER TABLE versions ADD COLUMN stored_ahead_us BIGINT;
    ALTER TABLE versions ADD COLUMN pinned BOOLEAN NOT NULL DEFAULT false;
    CREATE INDEX versions_checksum ON versions (checksum);
    "#,
    // 4: SQLite's migration 6: the proof of activation (see `proof`) and the audit log.
    r#"
    ALTER TABLE farm ADD COLUMN since_us BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE switches (
        version BIGINT NOT NULL,
        name TEXT NOT NULL,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        checksum BIGINT NOT NULL,
        activation_us BIGINT NOT NULL,
        switched_us BIGINT NOT NULL,
        error_us BIGINT NOT NULL,
        late BOOLEAN NOT NULL,
        reported_us BIGINT NOT NULL,
        PRIMARY KEY (version, name, host, pid)
    );
    CREATE INDEX switches_reported ON switches (reported_us);
    CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
        at_us BIGINT NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        summary TEXT NOT NULL,
        peer TEXT NOT NULL
    );
    "#,
    // 5: SQLite's migration 7: urgent activations.
    r#"
    ALTER TABLE sync ADD COLUMN urgent_window_us BIGINT NOT NULL DEFAULT 1000000;
    ALTER TABLE sync ADD COLUMN urgent_queued BOOLEAN NOT NULL DEFAULT false;
    CREATE TABLE urgent_activations (
        activation_us BIGINT PRIMARY KEY,
        requested_us BIGINT NOT NULL,
        requested_by TEXT NOT NULL
    );
    "#,
    // 6: SQLite's migration 8: the blob secret, 32 random bytes from two gen_random_uuid()s
    // (pg_strong_random; core since PostgreSQL 13, no pgcrypto), 244 of them random bits.
    r#"
    CREATE TABLE blob_secret (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        secret BYTEA NOT NULL
    );
    INSERT INTO blob_secret (id, secret) VALUES (1, decode(
        replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
    "#,
    // 7: SQLite's migration 9: the rotations whose staged version is restaged after them.
    r#"
    CREATE TABLE restage_due (activation_us BIGINT PRIMARY KEY);
    "#,
];

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

pub struct Postgres {
    pool: Pool,
    /// Since when requests have found the database out of reach, if they do now.
    outage: Mutex<Option<Instant>>,
    in_outage: AtomicBool,
}

/// How a write transaction's attempt failed.
enum Failed {
    /// No connection could be had: the database is down, not a connection lost mid-way.
    NoConnection(StoreError),
    /// Before `COMMIT` was sent: nothing it wrote is kept.
    Before(StoreError),
    /// While committing: it may or may not have committed; `xid` tells which.
    Commit { xid: i64, error: StoreError },
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Before(e)
    }
}

impl From<postgres::Error> for Failed {
    fn from(e: postgres::Error) -> Self {
        Failed::Before(e.into())
    }
}

/// What `txid_status` says of a transaction whose commit lost its connection.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Committed,
    Aborted,
    Unknown(String),
}

/// Whether `url` names a PostgreSQL database rather than a SQLite file.
pub fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        let lost = e.is_closed()
            || (e.code().is_none() && io)
            || e.code().is_some_and(|c| {
                c.code().starts_with("08")
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                        SqlState::T_R_DEADLOCK_DETECTED,
                        SqlState::T_R_SERIALIZATION_FAILURE,
                    ]
                    .contains(c)
            });
        // The driver's `Display` says only "db error"; the server's message says what.
        let text = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        if lost {
            StoreError::Unavailable(format!(
                "the database cannot be reached now ({text}); retry shortly"
            ))
        } else {
            StoreError::Db(text)
        }
    }
}

fn unreachable(e: r2d2::Error) -> StoreError {
    StoreError::Unavailable(format!(
        "the database cannot be reached now ({e}); retry shortly"
    ))
}

impl Postgres {
    /// Connects to `url`, migrates the schema under the migration lock and runs `init` in a
    /// transaction that holds it too, so a new database is made once and never seen half made.
    pub fn open(url: &str, init: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<Postgres> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::BadRequest(format!("bad PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("lockstep");
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            .test_on_check_out(true)
            // r2d2 would log every failed attempt of its own; an outage is logged once here
            // (see `Postgres::conn`) and once per kind by the start-up's retries.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager)
            .map_err(unreachable)?;
        let mut conn = pool.get().map_err(unreachable)?;
        conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
        let migrated = (|| -> Result<()> {
            conn.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version INTEGER PRIMARY KEY,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )",
            )?;
            let have: i32 = conn
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )?
                .get(0);
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
                let mut tx = conn.transaction()?;
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[&(i as i32 + 1)],
                )?;
                tx.commit()?;
            }
            let mut tx = conn.transaction()?;
            init(&mut PgTx {
                tx: &mut tx,
                write: true,
            })?;
            tx.commit()?;
            Ok(())
        })();
        let unlocked = conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
        migrated?;
        unlocked?;
        Ok(Postgres {
            pool,
            outage: Mutex::new(None),
            in_outage: AtomicBool::new(false),
        })
    }

    /// A connection from the pool. Not getting one within the timeout means the database is
    /// down (the pool could not open connections: an outage, logged when it starts and when
    /// it ends) or busy (every connection of this instance in use all that time: a herd, not
    /// an outage).
    fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        // During an outage the pool keeps reconnecting in the background; a request need not
        // wait the whole timeout each time to learn that it has not yet.
        let wait = match self.in_outage.load(Ordering::Relaxed) {
            true => OUTAGE_CONNECT_TIMEOUT,
            false => CONNECT_TIMEOUT,
        };
        match self.pool.get_timeout(wait) {
            Ok(conn) => {
                if self.in_outage.load(Ordering::Relaxed) {
                    let mut since = self.outage.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(t) = since.take() {
                        tracing::info!("the database answers again, after {:.1?}", t.elapsed());
                    }
                    self.in_outage.store(false, Ordering::Relaxed);
                }
                Ok(conn)
            }
            Err(_) if self.pool.state().connections >= POOL_SIZE => {
                Err(StoreError::Unavailable(format!(
                    "the database is busy: all {POOL_SIZE} connections of this data server \
                     stayed in use for {wait:.1?}; retry shortly"
                )))
            }
            Err(e) => {
                let e = unreachable(e);
                let mut since = self.outage.lock().unwrap_or_else(|e| e.into_inner());
                if since.is_none() {
                    tracing::warn!(
                        "{e}; answering 503 to what needs the database until it answers"
                    );
                    *since = Some(Instant::now());
                }
                self.in_outage.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// One attempt at a write transaction, on a connection from the pool.
    fn try_write(
        &self,
        durability: Durability,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> std::result::Result<(), Failed> {
        let mut conn = self.conn().map_err(Failed::NoConnection)?;
        let mut tx = conn.transaction()?;
        // The transaction id comes with the first statement: should the connection drop
        // during the commit, `txid_status` on another one tells whether it committed.
        let xid: i64 = match durability {
            // Every durable write takes the sync row's lock first, as `BEGIN IMMEDIATE` does.
            Durability::Full => {
                let locked = tx.query(
                    "SELECT txid_current() FROM sync WHERE id = 1 FOR UPDATE",
                    &[],
                )?;
                match locked.first() {
                    Some(row) => row.get(0),
                    // A database being filled by `lockstep migrate` has no sync row yet.
                    None => tx.query_one("SELECT txid_current()", &[])?.get(0),
                }
            }
            Durability::Unordered => tx.query_one("SELECT txid_current()", &[])?.get(0),
            // The farm and download counts need no order with the rotation, and no fsync.
            Durability::Batched => {
                tx.batch_execute("SET LOCAL synchronous_commit = off")?;
                tx.query_one("SELECT txid_current()", &[])?.get(0)
            }
        };
        f(&mut PgTx {
            tx: &mut tx,
            write: true,
        })?;
        tx.commit().map_err(|e| Failed::Commit {
            xid,
            error: e.into(),
        })
    }

    /// Whether transaction `xid`, whose commit lost its connection, committed. A backend cut
    /// off mid-commit may take a moment to finish or abort it, so an answer of "in progress"
    /// is asked again for up to a second.
    fn outcome(&self, xid: i64) -> Outcome {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let status = self.conn().and_then(|mut c| {
                Ok(c.query_one("SELECT txid_status($1)", &[&xid])?
                    .get::<_, Option<String>>(0))
            });
            match status.as_ref().map(|s| s.as_deref()) {
                Ok(Some("committed")) => return Outcome::Committed,
                Ok(Some("aborted")) => return Outcome::Aborted,
                Ok(Some("in progress")) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(other) => return Outcome::Unknown(format!("its status is {other:?}")),
                Err(e) => return Outcome::Unknown(e.to_string()),
            }
        }
    }

    fn write_retrying(
        &self,
        durability: Durability,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> Result<()> {
        let mut retried = false;
        loop {
            let lost = match self.try_write(durability, f) {
                Ok(()) => return Ok(()),
                Err(Failed::Before(StoreError::Unavailable(e))) => e,
                Err(Failed::Before(e) | Failed::NoConnection(e)) => return Err(e),
                Err(Failed::Commit { xid, error }) => match self.outcome(xid) {
                    Outcome::Committed => return Ok(()),
                    Outcome::Aborted => error.to_string(),
                    Outcome::Unknown(why) => {
                        return Err(StoreError::Unavailable(format!(
                            "the connection to the database was lost during a commit, and \
                             whether it committed cannot be learnt now ({why}); {error}"
                        )))
                    }
                },
            };
            // Nothing of the attempt was kept: once more, on a fresh connection.
            if retried {
                return Err(StoreError::Unavailable(lost));
            }
            tracing::debug!(
                "a write lost its database connection before committing; retrying: {lost}"
            );
            retried = true;
        }
    }

    fn try_read(
        &self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> std::result::Result<(), Failed> {
        let mut conn = self.conn().map_err(Failed::NoConnection)?;
        let mut tx = conn
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        f(&mut PgTx {
            tx: &mut tx,
            write: false,
        })?;
        tx.commit()?;
        Ok(())
    }
}

impl Backend for Postgres {
    /// A plain `VACUUM` of the tables retention empties: the dropped versions' TOAST chunks
    /// become free space that the next versions reuse, so the database stays bounded even
    /// when autovacuum has not come round yet. (Only `VACUUM FULL` gives space back to the
    /// file system, and it locks the tables.)
    fn reclaim(&self) -> Result<()> {
        let mut conn = self.pool.get().map_err(|e| {
            StoreError::Unavailable(format!(
                "the database cannot be reached now ({e}); retry shortly"
            ))
        })?;
        conn.batch_execute("VACUUM versions, blobs, changesets")?;
        Ok(())
    }

    fn write(
        &self,
        durability: Durability,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> Result<()> {
        self.write_retrying(durability, f)
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        // A read changes nothing: one that lost its connection can always run again.
        let read = match self.try_read(f) {
            Err(Failed::Before(StoreError::Unavailable(_))) => self.try_read(f),
            read => read,
        };
        read.map_err(|e| match e {
            Failed::NoConnection(e) | Failed::Before(e) | Failed::Commit { error: e, .. } => e,
        })
    }
}

fn to_i64(v: u64) -> i64 {
    v as i64
}

fn key_info(r: &Row) -> KeyInfo {
    KeyInfo {
        key: Blob::from_bytes(r.get::<_, &[u8]>(0)),
        value: Blob::from_bytes(r.get::<_, &[u8]>(1)),
        changed_by: r.get(2),
        changed_at_us: r.get(3),
    }
}

/// One transaction on a pooled connection.
struct PgTx<'a, 'c> {
    tx: &'a mut Transaction<'c>,
    /// A write transaction reads the sync row `FOR UPDATE`.
    write: bool,
}

impl PgTx<'_, '_> {
    fn count(&mut self, sql: &str) -> Result<u64> {
        Ok(self.tx.query_one(sql, &[])?.get::<_, i64>(0) as u64)
    }

    fn exec(&mut self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<u64> {
        Ok(self.tx.execute(sql, params)?)
    }
}

impl Tx for PgTx<'_, '_> {
    fn initialised(&mut self) -> Result<bool> {
        Ok(self
            .tx
            .query_one("SELECT COUNT(*) > 0 FROM sync", &[])?
            .get(0))
    }

    fn insert_sync(&mut self, s: &SyncTable, production_gen: i64) -> Result<()> {
        self.exec(
            "INSERT INTO sync (id, activation_us, interval_us, min_window_us,
                               staged_version, active_version, production_gen)
             VALUES (1, $1, $2, $3, $4, $5, $6)",
            &[
                &s.activation_time_us,
                &s.interval_us,
                &s.min_window_us,
                &to_i64(s.staged_version),
                &to_i64(s.active_version),
                &production_gen,
            ],
        )?;
        Ok(())
    }

    fn sync(&mut self) -> Result<(SyncTable, i64)> {
        let sql = if self.write {
            "SELECT activation_us, interval_us, min_window_us, staged_version, active_version,
                    production_gen FROM sync WHERE id = 1 FOR UPDATE"
        } else {
            "SELECT activation_us, interval_us, min_window_us, staged_version, active_version,
                    production_gen FROM sync WHERE id = 1"
        };
        let r = self.tx.query_one(sql, &[])?;
        Ok((
            SyncTable {
                activation_time_us: r.get(0),
                interval_us: r.get(1),
                min_window_us: r.get(2),
                staged_version: r.get::<_, i64>(3) as u64,
                active_version: r.get::<_, i64>(4) as u64,
            },
            r.get(5),
        ))
    }

    fn set_active(&mut self, version: u64, next_activation_us: i64) -> Result<()> {
        self.exec(
            "UPDATE sync SET active_version = $1, activation_us = $2 WHERE id = 1",
            &[&to_i64(version), &next_activation_us],
        )?;
        Ok(())
    }

    fn set_staged(&mut self, version: u64) -> Result<()> {
        self.exec(
            "UPDATE sync SET staged_version = $1 WHERE id = 1",
            &[&to_i64(version)],
        )?;
        Ok(())
    }

    fn set_cycle(
        &mut self,
        interval_us: i64,
        min_window_us: i64,
        activation_us: i64,
    ) -> Result<()> {
        self.exec(
            "UPDATE sync SET interval_us = $1, min_window_us = $2, activation_us = $3 WHERE id = 1",
            &[&interval_us, &min_window_us, &activation_us],
        )?;
        Ok(())
    }

    fn bump_production_gen(&mut self) -> Result<()> {
        self.exec(
            "UPDATE sync SET production_gen = production_gen + 1 WHERE id = 1",
            &[],
        )?;
        Ok(())
    }

    fn production(&mut self) -> Result<Content> {
        let mut map = Content::new();
        for r in self.tx.query("SELECT key, value FROM production", &[])? {
            map.insert(r.get(0), r.get(1));
        }
        Ok(map)
    }

    fn write_production(&mut self, change: &Change, by: &str, now_us: i64) -> Result<bool> {
        let n = match change {
            Change::Put(k, v) => self.exec(
                "INSERT INTO production (key, value, changed_by, changed_at_us)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                    changed_by = excluded.changed_by, changed_at_us = excluded.changed_at_us
                 WHERE production.value IS DISTINCT FROM excluded.value",
                &[k, v, &by, &now_us],
            )?,
            Change::Delete(k) => self.exec("DELETE FROM production WHERE key = $1", &[k])?,
        };
        Ok(n > 0)
    }

    fn clear_production(&mut self) -> Result<()> {
        self.exec("DELETE FROM production", &[])?;
        Ok(())
    }

    fn production_get(&mut self, key: &[u8]) -> Result<Option<KeyInfo>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT key, value, changed_by, changed_at_us FROM production WHERE key = $1",
                &[&key],
            )?
            .map(|r| key_info(&r)))
    }

    fn production_from(&mut self, from: &[u8], limit: usize) -> Result<Vec<KeyInfo>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .tx
            .query(
                "SELECT key, value, changed_by, changed_at_us FROM production
                 WHERE key >= $1 ORDER BY key LIMIT $2",
                &[&from, &limit],
            )?
            .iter()
            .map(key_info)
            .collect())
    }

    fn production_count(&mut self) -> Result<u64> {
        self.count("SELECT COUNT(*) FROM production")
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
        Ok(self
            .tx
            .query_one(
                "INSERT INTO scheduled (effective_us, op, key, value, created_by, created_at_us)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&effective_us, &op, &change.key(), &value, &by, &now_us],
            )?
            .get(0))
    }

    fn pending_changes_until(&mut self, until_us: i64) -> Result<Vec<(i64, Change)>> {
        Ok(self
            .tx
            .query(
                "SELECT id, op, key, value FROM scheduled
                 WHERE applied_version IS NULL AND effective_us <= $1
                 ORDER BY effective_us, id",
                &[&until_us],
            )?
            .iter()
            .map(|r| {
                let op: &str = r.get(1);
                (r.get(0), Change::from_row(op, r.get(2), r.get(3)))
            })
            .collect())
    }

    fn mark_applied(&mut self, id: i64, version: u64) -> Result<()> {
        self.exec(
            "UPDATE scheduled SET applied_version = $2 WHERE id = $1",
            &[&id, &to_i64(version)],
        )?;
        Ok(())
    }

    fn scheduled_within(&mut self, after_us: i64, until_us: i64) -> Result<bool> {
        Ok(self
            .tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM scheduled
                                WHERE effective_us > $1 AND effective_us <= $2)",
                &[&after_us, &until_us],
            )?
            .get(0))
    }

    fn scheduled_pending(&mut self) -> Result<Vec<ScheduledChange>> {
        Ok(self
            .tx
            .query(
                "SELECT id, effective_us, op, key, value, created_by FROM scheduled
                 WHERE applied_version IS NULL ORDER BY effective_us, id",
                &[],
            )?
            .iter()
            .map(|r| ScheduledChange {
                id: r.get(0),
                effective_us: r.get(1),
                op: r.get(2),
                key: Blob::from_bytes(r.get::<_, &[u8]>(3)),
                value: r.get::<_, Option<&[u8]>>(4).map(Blob::from_bytes),
                created_by: r.get(5),
            })
            .collect())
    }

    fn scheduled_pending_count(&mut self) -> Result<u64> {
        self.count("SELECT COUNT(*) FROM scheduled WHERE applied_version IS NULL")
    }

    fn scheduled_all(&mut self) -> Result<Vec<ScheduledRow>> {
        Ok(self
            .tx
            .query(
                "SELECT id, effective_us, op, key, value, created_by, created_at_us,
                        applied_version
                 FROM scheduled ORDER BY id",
                &[],
            )?
            .iter()
            .map(|r| ScheduledRow {
                id: r.get(0),
                effective_us: r.get(1),
                change: Change::from_row(r.get(2), r.get(3), r.get(4)),
                created_by: r.get(5),
                created_at_us: r.get(6),
                applied_version: r.get::<_, Option<i64>>(7).map(|v| v as u64),
            })
            .collect())
    }

    fn insert_scheduled_row(&mut self, row: &ScheduledRow) -> Result<()> {
        let (op, value) = match &row.change {
            Change::Put(_, v) => ("put", Some(v.as_slice())),
            Change::Delete(_) => ("delete", None),
        };
        self.exec(
            "INSERT INTO scheduled (id, effective_us, op, key, value, created_by, created_at_us,
                                    applied_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &row.id,
                &row.effective_us,
                &op,
                &row.change.key(),
                &value,
                &row.created_by,
                &row.created_at_us,
                &row.applied_version.map(to_i64),
            ],
        )?;
        // Ids given explicitly leave the sequence behind: the next change gets a new one.
        self.tx.query_one(
            "SELECT setval(pg_get_serial_sequence('scheduled', 'id'), GREATEST($1::BIGINT, 1))",
            &[&row.id],
        )?;
        Ok(())
    }

    fn scheduled_count(&mut self) -> Result<u64> {
        self.count("SELECT COUNT(*) FROM scheduled")
    }

    fn max_scheduled_id(&mut self) -> Result<i64> {
        Ok(self
            .tx
            .query_one("SELECT COALESCE(MAX(id), 0)::BIGINT FROM scheduled", &[])?
            .get(0))
    }

    fn next_version_number(&mut self) -> Result<u64> {
        self.count("SELECT COALESCE(MAX(number), 0) + 1 FROM versions")
    }

    fn insert_version(&mut self, v: &NewVersion<'_>) -> Result<()> {
        // The bytes go to `blobs`, as SQLite's do: one place for retention to delete them.
        self.insert_blob(v.checksum, v.bytes, v.created_us, v.created_us)?;
        self.exec(
            "INSERT INTO versions (number, bytes, checksum, digest, production_gen, size, entries,
                                   created_us, reason)
             VALUES ($1, '', $2, $3, $4, $5, $6, $7, $8)",
            &[
                &to_i64(v.number),
                &to_i64(v.checksum),
                &v.digest,
                &v.production_gen,
                &(v.bytes.len() as i64),
                &to_i64(v.entries),
                &v.created_us,
                &v.reason,
            ],
        )?;
        Ok(())
    }

    fn version_digest(&mut self, version: u64) -> Result<Option<(String, i64)>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT digest, production_gen FROM versions WHERE number = $1",
                &[&to_i64(version)],
            )?
            .map(|r| (r.get(0), r.get(1))))
    }

    fn version_bytes(&mut self, version: u64) -> Result<Option<(Vec<u8>, u64)>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT CASE WHEN length(v.bytes) > 0 THEN v.bytes
                             ELSE COALESCE(b.bytes, '') END, v.checksum
                 FROM versions v LEFT JOIN blobs b ON b.checksum = v.checksum
                 WHERE v.number = $1",
                &[&to_i64(version)],
            )?
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64)))
    }

    fn version_checksum(&mut self, version: u64) -> Result<Option<u64>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT checksum FROM versions WHERE number = $1",
                &[&to_i64(version)],
            )?
            .map(|r| r.get::<_, i64>(0) as u64))
    }

    fn mark_staged(&mut self, version: u64, at_us: i64) -> Result<()> {
        self.exec(
            "UPDATE versions SET staged_us = $2 WHERE number = $1",
            &[&to_i64(version), &at_us],
        )?;
        Ok(())
    }

    fn mark_activated(&mut self, version: u64, at_us: i64) -> Result<()> {
        self.exec(
            "UPDATE versions SET activated_us = $2 WHERE number = $1 AND activated_us IS NULL",
            &[&to_i64(version), &at_us],
        )?;
        Ok(())
    }

    fn history(&mut self, limit: u64) -> Result<Vec<VersionInfo>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .tx
            .query(
                "SELECT number, checksum, size, entries, created_us, staged_us, activated_us,
                        reason
                 FROM versions ORDER BY number DESC LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|r| VersionInfo {
                version: r.get::<_, i64>(0) as u64,
                checksum: format!("{:016x}", r.get::<_, i64>(1) as u64),
                size: r.get::<_, i64>(2) as u64,
                entries: r.get::<_, i64>(3) as u64,
                created_us: r.get(4),
                staged_us: r.get(5),
                activated_us: r.get(6),
                reason: r.get(7),
            })
            .collect())
    }

    fn version_count(&mut self) -> Result<u64> {
        self.count("SELECT COUNT(*) FROM versions")
    }

    fn prune_versions(
        &mut self,
        below: u64,
        before_us: i64,
        keep: [u64; 2],
        now_us: i64,
    ) -> Result<u64> {
        let n = self.exec(
            "UPDATE versions SET bytes = '', pruned_us = $5
             WHERE number < $1 AND created_us < $2 AND number <> $3 AND number <> $4
               AND pruned_us IS NULL AND NOT pinned",
            &[
                &to_i64(below),
                &before_us,
                &to_i64(keep[0]),
                &to_i64(keep[1]),
                &now_us,
            ],
        )?;
        // Deleted rather than emptied: their TOAST chunks become dead tuples that (auto)vacuum
        // gives back for reuse (see `Postgres::reclaim`).
        self.exec(
            "DELETE FROM blobs WHERE checksum IN
                (SELECT checksum FROM versions WHERE pruned_us IS NOT NULL)",
            &[],
        )?;
        Ok(n)
    }

    fn mark_pruned(&mut self, version: u64, at_us: i64) -> Result<()> {
        self.exec(
            "UPDATE versions SET bytes = '', pruned_us = $2 WHERE number = $1",
            &[&to_i64(version), &at_us],
        )?;
        self.exec(
            "DELETE FROM blobs WHERE checksum IN
                (SELECT checksum FROM versions WHERE number = $1)",
            &[&to_i64(version)],
        )?;
        Ok(())
    }

    fn version_pruned(&mut self, version: u64) -> Result<Option<i64>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT pruned_us FROM versions WHERE number = $1",
                &[&to_i64(version)],
            )?
            .and_then(|r| r.get(0)))
    }

    fn log_rotation(&mut self, r: &RotationRecord) -> Result<()> {
        self.exec(
            "INSERT INTO rotations (activation_us, rotated_at_us, active_version,
                                    staged_version, next_activation_us, rotated_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &r.activation_time_us,
                &r.rotated_at_us,
                &to_i64(r.active_version),
                &to_i64(r.staged_version),
                &r.next_activation_us,
                &r.rotated_by,
            ],
        )?;
        Ok(())
    }

    fn last_rotation(&mut self) -> Result<Option<i64>> {
        Ok(self
            .tx
            .query_one("SELECT MAX(activation_us) FROM rotations", &[])?
            .get(0))
    }

    fn rotations(&mut self) -> Result<Vec<RotationRecord>> {
        Ok(self
            .tx
            .query(
                "SELECT activation_us, rotated_at_us, active_version, staged_version, rotated_by,
                        next_activation_us
                 FROM rotations ORDER BY activation_us",
                &[],
            )?
            .iter()
            .map(|r| RotationRecord {
                activation_time_us: r.get(0),
                rotated_at_us: r.get(1),
                active_version: r.get::<_, i64>(2) as u64,
                staged_version: r.get::<_, i64>(3) as u64,
                rotated_by: r.get(4),
                next_activation_us: r.get(5),
                urgent: false,
            })
            .collect())
    }

    fn rotation_count(&mut self) -> Result<u64> {
        self.count("SELECT COUNT(*) FROM rotations")
    }

    fn write_farm(&mut self, batch: &[Member], expired_before_us: i64) -> Result<()> {
        self.exec(
            "DELETE FROM farm WHERE last_checkin_us < $1",
            &[&expired_before_us],
        )?;
        // In key order: two instances flushing at once then lock rows in the same order and
        // never deadlock.
        let mut batch: Vec<&Member> = batch.iter().collect();
        batch.sort_by(|a, b| {
            (&a.process.name, &a.process.host, a.process.pid).cmp(&(
                &b.process.name,
                &b.process.host,
                b.process.pid,
            ))
        });
        let stmt = self.tx.prepare(
            "INSERT INTO farm (name, host, pid, staged, active, offset_us, error_us, lagging,
                               last_checkin_us, role, leader_pid, since_us)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (name, host, pid) DO UPDATE SET staged = excluded.staged,
                active = excluded.active, offset_us = excluded.offset_us,
                error_us = excluded.error_us, lagging = excluded.lagging,
                last_checkin_us = excluded.last_checkin_us, role = excluded.role,
                leader_pid = excluded.leader_pid, since_us = excluded.since_us
             WHERE farm.last_checkin_us <= excluded.last_checkin_us",
        )?;
        for Member {
            process: m,
            role,
            leader_pid,
            since_us,
        } in batch
        {
            self.tx.execute(
                &stmt,
                &[
                    &m.name,
                    &m.host,
                    &i64::from(m.pid),
                    &to_i64(m.staged),
                    &to_i64(m.active),
                    &m.offset_us,
                    &m.error_us,
                    &m.lagging,
                    &m.last_checkin_us,
                    &role.as_str(),
                    &leader_pid.map(i64::from),
                    since_us,
                ],
            )?;
        }
        Ok(())
    }

    fn farm(&mut self, since_us: i64) -> Result<Vec<Member>> {
        Ok(self
            .tx
            .query(
                "SELECT name, host, pid, staged, active, offset_us, error_us, lagging,
                        last_checkin_us, role, leader_pid, since_us
                 FROM farm WHERE last_checkin_us >= $1",
                &[&since_us],
            )?
            .iter()
            .map(|r| Member {
                process: FarmMember {
                    name: r.get(0),
                    host: r.get(1),
                    pid: r.get::<_, i64>(2) as u32,
                    staged: r.get::<_, i64>(3) as u64,
                    active: r.get::<_, i64>(4) as u64,
                    offset_us: r.get(5),
                    error_us: r.get(6),
                    lagging: r.get(7),
                    last_checkin_us: r.get(8),
                    silent_us: 0,
                    stale: false,
                },
                role: Role::parse(r.get(9)),
                leader_pid: r.get::<_, Option<i64>>(10).map(|p| p as u32),
                since_us: r.get(11),
            })
            .collect())
    }

    fn add_downloads(&mut self, counts: &HashMap<u64, u64>) -> Result<()> {
        let mut counts: Vec<(&u64, &u64)> = counts.iter().collect();
        counts.sort();
        let stmt = self.tx.prepare(
            "INSERT INTO downloads (version, count) VALUES ($1, $2)
             ON CONFLICT (version) DO UPDATE SET count = downloads.count + excluded.count",
        )?;
        for (version, n) in counts {
            self.tx.execute(&stmt, &[&to_i64(*version), &to_i64(*n)])?;
        }
        Ok(())
    }

    fn downloads(&mut self, oldest: u64, newest: u64) -> Result<HashMap<u64, u64>> {
        Ok(self
            .tx
            .query(
                "SELECT version, count FROM downloads WHERE version BETWEEN $1 AND $2",
                &[&to_i64(oldest), &to_i64(newest)],
            )?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
            .collect())
    }

    fn insert_blob(&mut self, checksum: u64, bytes: &[u8], for_us: i64, now_us: i64) -> Result<()> {
        self.exec(
            "INSERT INTO blobs (checksum, bytes, for_us, stored_us) VALUES ($1, $2, $3, $4)
             ON CONFLICT (checksum) DO UPDATE SET bytes = excluded.bytes,
                for_us = excluded.for_us, stored_us = excluded.stored_us",
            &[&to_i64(checksum), &bytes, &for_us, &now_us],
        )?;
        Ok(())
    }

    fn blob_stored(&mut self, checksum: u64) -> Result<Option<i64>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT stored_us FROM blobs WHERE checksum = $1",
                &[&to_i64(checksum)],
            )?
            .map(|r| r.get(0)))
    }

    fn insert_version_ahead(
        &mut self,
        v: &NewVersion<'_>,
        size: u64,
        stored_us: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO versions (number, bytes, checksum, digest, production_gen, size, entries,
                                   created_us, reason, stored_ahead_us)
             VALUES ($1, '', $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &to_i64(v.number),
                &to_i64(v.checksum),
                &v.digest,
                &v.production_gen,
                &to_i64(size),
                &to_i64(v.entries),
                &v.created_us,
                &v.reason,
                &stored_us,
            ],
        )?;
        Ok(())
    }

    fn version_stored_ahead(&mut self, version: u64) -> Result<Option<i64>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT stored_ahead_us FROM versions WHERE number = $1",
                &[&to_i64(version)],
            )?
            .and_then(|r| r.get(0)))
    }

    fn insert_changeset(&mut self, checksum: u64, base: u64, changes: &[u8]) -> Result<()> {
        self.exec(
            "INSERT INTO changesets (checksum, base, changes) VALUES ($1, $2, $3)
             ON CONFLICT (checksum) DO UPDATE SET base = excluded.base,
                changes = excluded.changes",
            &[&to_i64(checksum), &to_i64(base), &changes],
        )?;
        Ok(())
    }

    fn changeset(&mut self, version: u64) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT c.base, c.changes FROM versions v
                 JOIN changesets c ON c.checksum = v.checksum WHERE v.number = $1",
                &[&to_i64(version)],
            )?
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
    }

    fn nearest_kept_after(&mut self, version: u64) -> Result<Option<u64>> {
        Ok(self
            .tx
            .query_one(
                "SELECT MIN(number) FROM versions WHERE number > $1 AND pruned_us IS NULL",
                &[&to_i64(version)],
            )?
            .get::<_, Option<i64>>(0)
            .map(|n| n as u64))
    }

    fn drop_orphans(&mut self, before_us: i64) -> Result<u64> {
        let n = self.exec(
            "DELETE FROM blobs b WHERE b.for_us < $1
               AND NOT EXISTS (SELECT 1 FROM versions v WHERE v.checksum = b.checksum)",
            &[&before_us],
        )?;
        self.exec(
            "DELETE FROM changesets c
             WHERE NOT EXISTS (SELECT 1 FROM versions v WHERE v.checksum = c.checksum)
               AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.checksum = c.checksum)",
            &[],
        )?;
        Ok(n)
    }

    fn set_pinned(&mut self, version: u64, pinned: bool) -> Result<bool> {
        let n = self.exec(
            "UPDATE versions SET pinned = $2 WHERE number = $1",
            &[&to_i64(version), &pinned],
        )?;
        Ok(n > 0)
    }

    fn version_pinned(&mut self, version: u64) -> Result<bool> {
        Ok(self
            .tx
            .query_opt(
                "SELECT pinned FROM versions WHERE number = $1",
                &[&to_i64(version)],
            )?
            .is_some_and(|r| r.get(0)))
    }

    fn database_bytes(&mut self) -> Result<u64> {
        let n: i64 = self
            .tx
            .query_one("SELECT pg_database_size(current_database())", &[])?
            .get(0);
        Ok(n.max(0) as u64)
    }

    fn prune_changesets(&mut self, before_us: i64) -> Result<u64> {
        self.exec(
            "DELETE FROM changesets WHERE checksum IN
                (SELECT checksum FROM versions WHERE created_us < $1)",
            &[&before_us],
        )
    }

    fn write_switches(&mut self, batch: &[SwitchRow], expired_before_us: i64) -> Result<()> {
        self.exec(
            "DELETE FROM switches WHERE reported_us < $1",
            &[&expired_before_us],
        )?;
        // In key order, as the farm's: concurrent flushes never deadlock.
        let mut batch: Vec<&SwitchRow> = batch.iter().collect();
        batch.sort_by(|a, b| {
            (a.report.version, &a.name, &a.host, a.pid).cmp(&(
                b.report.version,
                &b.name,
                &b.host,
                b.pid,
            ))
        });
        let stmt = self.tx.prepare(
            "INSERT INTO switches (version, name, host, pid, checksum, activation_us,
                                   switched_us, error_us, late, reported_us)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (version, name, host, pid) DO UPDATE SET checksum = excluded.checksum,
                activation_us = excluded.activation_us, switched_us = excluded.switched_us,
                error_us = excluded.error_us, late = excluded.late,
                reported_us = excluded.reported_us",
        )?;
        for r in batch {
            self.tx.execute(
                &stmt,
                &[
                    &to_i64(r.report.version),
                    &r.name,
                    &r.host,
                    &i64::from(r.pid),
                    &to_i64(r.report.checksum),
                    &r.report.activation_us,
                    &r.report.switched_us,
                    &r.report.error_us,
                    &r.report.late,
                    &r.reported_us,
                ],
            )?;
        }
        Ok(())
    }

    fn switches(&mut self, oldest: u64, newest: u64) -> Result<Vec<SwitchRow>> {
        Ok(self
            .tx
            .query(
                "SELECT version, name, host, pid, checksum, activation_us, switched_us, error_us,
                        late, reported_us
                 FROM switches WHERE version BETWEEN $1 AND $2",
                &[&to_i64(oldest), &to_i64(newest)],
            )?
            .iter()
            .map(|r| SwitchRow {
                name: r.get(1),
                host: r.get(2),
                pid: r.get::<_, i64>(3) as u32,
                report: lockstep::wire::SwitchReport {
                    version: r.get::<_, i64>(0) as u64,
                    checksum: r.get::<_, i64>(4) as u64,
                    activation_us: r.get(5),
                    switched_us: r.get(6),
                    error_us: r.get(7),
                    late: r.get(8),
                },
                reported_us: r.get(9),
            })
            .collect())
    }

    fn insert_audit(&mut self, e: &AuditEntry) -> Result<()> {
        self.exec(
            "INSERT INTO audit (at_us, who, action, summary, peer) VALUES ($1, $2, $3, $4, $5)",
            &[&e.at_us, &e.who, &e.action, &e.summary, &e.peer],
        )?;
        Ok(())
    }

    fn audit(&mut self, limit: u64) -> Result<Vec<AuditEntry>> {
        Ok(self
            .tx
            .query(
                "SELECT id, at_us, who, action, summary, peer FROM audit
                 ORDER BY id DESC LIMIT $1",
                &[&to_i64(limit.min(i64::MAX as u64))],
            )?
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at_us: r.get(1),
                who: r.get(2),
                action: r.get(3),
                summary: r.get(4),
                peer: r.get(5),
            })
            .collect())
    }

    fn urgent_state(&mut self) -> Result<(i64, bool)> {
        let r = self.tx.query_one(
            "SELECT urgent_window_us, urgent_queued FROM sync WHERE id = 1",
            &[],
        )?;
        Ok((r.get(0), r.get(1)))
    }

    fn set_urgent_window(&mut self, window_us: i64) -> Result<()> {
        self.exec(
            "UPDATE sync SET urgent_window_us = $1 WHERE id = 1",
            &[&window_us],
        )?;
        Ok(())
    }

    fn set_urgent_queued(&mut self, queued: bool) -> Result<()> {
        self.exec(
            "UPDATE sync SET urgent_queued = $1 WHERE id = 1",
            &[&queued],
        )?;
        Ok(())
    }

    fn insert_urgent_activation(
        &mut self,
        activation_us: i64,
        by: &str,
        now_us: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO urgent_activations (activation_us, requested_us, requested_by)
             VALUES ($1, $2, $3)",
            &[&activation_us, &now_us, &by],
        )?;
        Ok(())
    }

    fn urgent_activations(&mut self, from_us: i64, until_us: i64) -> Result<Vec<i64>> {
        Ok(self
            .tx
            .query(
                "SELECT activation_us FROM urgent_activations
                 WHERE activation_us BETWEEN $1 AND $2 ORDER BY activation_us",
                &[&from_us, &until_us],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn blob_secret(&mut self) -> Result<Vec<u8>> {
        Ok(self
            .tx
            .query_one("SELECT secret FROM blob_secret WHERE id = 1", &[])?
            .get(0))
    }

    fn relog_staged(&mut self, activation_us: i64, from: u64, to: u64) -> Result<()> {
        self.exec(
            "UPDATE rotations SET staged_version = $3
             WHERE activation_us = $1 AND staged_version = $2",
            &[&activation_us, &to_i64(from), &to_i64(to)],
        )?;
        Ok(())
    }

    fn rotation_at(&mut self, activation_us: i64) -> Result<Option<(u64, u64, i64)>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT active_version, staged_version, next_activation_us FROM rotations
                 WHERE activation_us = $1",
                &[&activation_us],
            )?
            .map(|r| {
                (
                    r.get::<_, i64>(0) as u64,
                    r.get::<_, i64>(1) as u64,
                    r.get(2),
                )
            }))
    }

    fn set_restage_due(&mut self, activation_us: i64, due: bool) -> Result<()> {
        match due {
            true => {
                self.exec(
                    "DELETE FROM restage_due WHERE activation_us < $1",
                    &[&activation_us],
                )?;
                self.exec(
                    "INSERT INTO restage_due (activation_us) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&activation_us],
                )?
            }
            false => self.exec(
                "DELETE FROM restage_due WHERE activation_us = $1",
                &[&activation_us],
            )?,
        };
        Ok(())
    }

    fn restage_due(&mut self, activation_us: i64) -> Result<bool> {
        Ok(self
            .tx
            .query_opt(
                "SELECT 1 FROM restage_due WHERE activation_us = $1",
                &[&activation_us],
            )?
            .is_some())
    }
}
