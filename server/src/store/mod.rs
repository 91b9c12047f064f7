//! The data server's durable state: production, scheduled changes, immutable versions, the
//! sync table, the rotation log and the farm, behind one small interface ([`backend::Tx`])
//! with a backend per database: embedded SQLite ([`sqlite`]) by default.
//!
//! This module is what the data server does with its state, written once for every backend:
//! every operation that writes is one write transaction, which holds the sync row's lock from
//! its start (so writers serialize however many data-server processes share the database), and
//! the rotation itself is [`crate::rotation::rotate_if_due`]. No client ever holds a lock across
//! the network: the rotation is done entirely inside the request that found it due.
//!
//! In memory, beside the database: the sync table read last ([`crate::sync_cache`]), verified
//! version bytes ([`crate::version_cache`]), check-ins waiting for the farm's batch
//! ([`crate::farm::Batch`]) and download counts ([`crate::downloads`]).

pub mod backend;
pub mod changeset;
pub mod migrate;
pub mod postgres;
pub mod prepare;
pub mod sqlite;
pub mod staging;
#[cfg(test)]
mod urgent_tests;

use std::path::PathBuf;

use lockstep::format::{self, Content};
use lockstep::wire::{
    Blob, ChangedEntry, DiffResponse, Entry, KeyChanges, KeyInfo, RotationRecord, ScheduledChange,
    SyncTable, VersionInfo,
};
use serde::{Deserialize, Serialize};

use crate::audit::AuditEntry;
use crate::downloads::Downloads;
use crate::farm::{self, HostView, Member};
use crate::proof::{self, ActivationProof};
use crate::sync_cache::SyncCache;
pub use crate::version_cache::StoredVersion;
use crate::version_cache::VersionCache;
use crate::{clock, rotation};
use backend::{Backend, Durability, Tx};

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
    /// The database cannot be reached now (down, restarting, busy); the request may be
    /// retried.
    #[error("{0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The audit entry a change makes of what it did (`None`: nothing to record, such as a put of
/// the value production already had). It runs inside the change's transaction, so the change
/// and its entry commit together; it may run twice, like any write (see [`Store::write`]).
pub type AuditOf<'a, T> = &'a dyn Fn(&T) -> Option<AuditEntry>;

/// For a change that no admin made.
pub fn unaudited<T>(_: &T) -> Option<AuditEntry> {
    None
}

/// A change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Change {
    pub fn key(&self) -> &[u8] {
        match self {
            Change::Put(k, _) | Change::Delete(k) => k,
        }
    }

    /// A change as a row of `scheduled` stores it: `op` is `put` or `delete`.
    pub fn from_row(op: &str, key: Vec<u8>, value: Option<Vec<u8>>) -> Change {
        match (op, value) {
            ("put", Some(v)) => Change::Put(key, v),
            _ => Change::Delete(key),
        }
    }

    pub fn apply_to(&self, map: &mut Content) {
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

/// What an urgent request (see [`Store::urgent`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrgentOutcome {
    /// The version staged now.
    pub version: u64,
    /// When production's content goes live: the urgent activation time U; for a queued
    /// request, the earliest it can (the rotation at `after_us`, plus the urgent window).
    pub live_at_us: i64,
    /// Queued for the rotation at `after_us` rather than staged for now + the window.
    pub queued: bool,
    pub after_us: i64,
    /// Production's content is active already: nothing to make live.
    pub already_live: bool,
}

/// Why a version was made, for a change scheduled for the staged activation while a restage
/// after T was due (see [`Store::schedule`]).
pub const SCHEDULED_RESTAGE: &str = "scheduled, with the edits made after the rotation's build";

/// The longest urgent window: an urgent change that may take longer is an ordinary one.
pub const MAX_URGENT_WINDOW_US: i64 = 10 * 60 * 1_000_000;

/// Makes production's content go live at U = now + the urgent window, in `tx` (which holds
/// the sync row's lock), without breaking what clients have armed:
/// - the staged version is replaced by production's content and its activation moved to U
///   only if the activation T it replaces is at least a check-in period after U (every live
///   client hears of U before T, so none activates the old staged version at T), no urgent
///   activation is pending (a second request never moves U nor replaces the version staged
///   for it), and no scheduled change in the staged version is effective after U (it would go
///   live before its time);
/// - otherwise the request is queued: the rotation at T takes now + the window as its next
///   activation instead of the grid point (see [`rotation`]), with production staged for it.
///
/// With `may_restage` false it queues rather than restages. A restage whose encode took so long
/// that T is no longer a check-in period after U (counted from the encode's end) clears it and
/// fails, so that the caller runs the transaction again, queued (see [`Store::write_urgent`]).
fn urgent_in(
    tx: &mut dyn Tx,
    by: &str,
    now_us: i64,
    may_restage: &mut bool,
) -> Result<UrgentOutcome> {
    // A due rotation first: its activation has happened for every client already.
    rotation::rotate_if_due(tx, now_us, by, None, true)?;
    // The write lock may have been waited for.
    let started = clock::now_us();
    let now_us = now_us.max(started);
    let (sync, gen) = tx.sync()?;
    let (window, _) = tx.urgent_state()?;
    let t = sync.activation_time_us;
    let production = format::content_digest(&tx.production()?);
    let (active, _) = staging::version_digest(tx, sync.active_version)?;
    let (staged, _) = staging::version_digest(tx, sync.staged_version)?;
    let mut out = UrgentOutcome {
        version: sync.staged_version,
        live_at_us: t,
        queued: false,
        after_us: t,
        already_live: production == active && staged == active,
    };
    if out.already_live {
        return Ok(out);
    }
    let u = now_us
        .checked_add(window)
        .ok_or_else(|| overflow("the urgent activation time"))?;
    let heard_before_t = u
        .checked_add(rotation::checkin_period_us(sync.interval_us))
        .is_some_and(|heard| heard <= t);
    let pending = !tx.urgent_activations(t, t)?.is_empty();
    if staged == production && (pending || !heard_before_t) {
        // Staged for T already, which is sooner than a queued request could be.
        return Ok(out);
    }
    if *may_restage && heard_before_t && !pending && !tx.scheduled_within(u, t)? {
        out.version = staging::restage_production(tx, sync.staged_version, gen, now_us, "urgent")?;
        // Reading production and encoding it take seconds at a million keys, longer than
        // the window: U counts from their end, so that it is still ahead when clients hear
        // of it. A later U holds fewer scheduled changes before T, but may leave less than a
        // check-in period.
        let u = u
            .checked_add(clock::now_us().saturating_sub(started).max(0))
            .ok_or_else(|| overflow("the urgent activation time"))?;
        if u.checked_add(rotation::checkin_period_us(sync.interval_us))
            .is_none_or(|heard| heard > t)
        {
            *may_restage = false;
            return Err(StoreError::Conflict(
                "the urgent restage took too long for the staged activation time; it is queued"
                    .into(),
            ));
        }
        tx.set_cycle(sync.interval_us, sync.min_window_us, u)?;
        tx.insert_urgent_activation(u, by, now_us)?;
        // A request queued before is in production too, and goes live sooner here.
        tx.set_urgent_queued(false)?;
        out.live_at_us = u;
        return Ok(out);
    }
    tx.set_urgent_queued(true)?;
    out.queued = true;
    out.live_at_us = t.saturating_add(window);
    Ok(out)
}

/// [`Store::rollback`]'s transaction; with `stage` false only production changes (the
/// version staged now stays, for an urgent rollback that must not replace the version an
/// urgent activation pending already has staged).
fn rollback_in(
    tx: &mut dyn Tx,
    version: u64,
    dry_run: bool,
    discard_edits: bool,
    stage: bool,
    by: &str,
    now_us: i64,
) -> Result<RollbackOutcome> {
    let content = staging::version_content(tx, version)?;
    let production = key_changes(&tx.production()?, &content);
    let (sync, _) = tx.sync()?;
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
    tx.clear_production()?;
    for (k, v) in &content {
        tx.write_production(&Change::Put(k.clone(), v.clone()), by, now_us)?;
    }
    tx.bump_production_gen()?;
    let (sync, gen) = tx.sync()?;
    if !stage {
        return Ok(outcome);
    }
    outcome.version = Some(staging::restage(
        tx,
        sync.staged_version,
        &content,
        gen,
        now_us,
        &format!("rollback to {version}"),
    )?);
    Ok(outcome)
}

pub(crate) fn overflow(what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "{what} does not fit the data server's clock; set the interval again \
         (lockstep interval) to reschedule"
    ))
}

/// Default of [`Store::set_inline_encode_max_us`]: 25 ms, half the herd's goal at T (a 1000
/// check-in herd answered within 50 ms at its 99th percentile).
pub const INLINE_ENCODE_MAX_US: i64 = 25_000;

pub struct Store {
    db: Box<dyn Backend>,
    /// The next staged version, built ahead of its rotation (see [`prepare`]).
    prepared: std::sync::Mutex<Option<prepare::Prepared>>,
    /// How long the last build of [`Store::prepare_next`] took, µs (0: none yet).
    prepare_took_us: std::sync::atomic::AtomicI64,
    /// How long the last store of such a build took, µs: one that would not end before its
    /// activation time is not begun (it would hold the write lock the rotation waits for).
    store_took_us: std::sync::atomic::AtomicI64,
    /// A rotation that finds nothing built for T encodes production itself only if the last
    /// build took less than this, µs (`serve --inline-encode-max`).
    inline_encode_max_us: std::sync::atomic::AtomicI64,
    /// The last basis [`Store::restage_stale`] built for, so that it builds once per state.
    restaged: std::sync::Mutex<Option<prepare::Basis>>,
    /// Set (and told) after a rotation of this process: the preparing thread looks for a
    /// restage at once rather than at its next poll (see [`Store::prepare_wait`]).
    rotated: (std::sync::Mutex<bool>, std::sync::Condvar),
    /// Held by the one request of this process that goes on to the write transaction of a
    /// due rotation (see [`Store::rotate_if_due`]), with when and why the last one failed.
    rotating: std::sync::Mutex<Option<(std::time::Instant, String)>>,
    sync: SyncCache,
    versions: VersionCache,
    farm: farm::Batch,
    downloads: Downloads,
    /// Switch reports waiting for the farm's batch (see [`crate::proof`]).
    switches: proof::Batch,
    /// Silence after which a member leaves the farm view (`serve --farm-expiry`).
    farm_expiry_us: std::sync::atomic::AtomicI64,
    /// Told after every durable write of this process, which may have changed the sync
    /// table: the long-poll watcher reads it again at once (see [`crate::waiters`]).
    changed: tokio::sync::Notify,
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
    /// The space the database takes, as it counts it (SQLite's pages, PostgreSQL's
    /// `pg_database_size`).
    #[serde(default)]
    pub database_bytes: u64,
    /// How soon an urgent change goes live, µs (see [`Store::urgent`]).
    #[serde(default)]
    pub urgent_window_us: i64,
    /// An urgent request waits for the rotation at the activation time.
    #[serde(default)]
    pub urgent_queued: bool,
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
    /// When retention dropped the version's content (its row stays); absent while it has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_us: Option<i64>,
    /// Retention keeps its content (`lockstep pin`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// When its bytes were stored, ahead of the rotation that staged it (see [`prepare`]);
    /// absent for a version encoded at its rotation, rollback or schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_ahead_us: Option<i64>,
}

/// `POST /v1/admin/pin` and `/v1/admin/unpin`: the request (`version`) and the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinChange {
    pub version: u64,
    #[serde(default)]
    pub pinned: bool,
    #[serde(default)]
    pub message: String,
}

/// How many versions keep their content (see [`Store::prune`]).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// The newest this many versions.
    pub keep_versions: u64,
    /// Versions created within this long.
    pub keep_for_us: i64,
    /// Versions created within this long keep their change set (see [`changeset`]).
    pub keep_changes_for_us: i64,
}

/// Seeds a new database: an empty first version, staged and active, and the first activation
/// time. Changes nothing in a database that has its sync table.
fn initialise(tx: &mut dyn Tx, settings: SyncSettings, now_us: i64) -> Result<()> {
    if tx.initialised()? {
        return Ok(());
    }
    clock::check_interval(settings.interval_us, settings.min_window_us)
        .map_err(StoreError::BadRequest)?;
    let empty = Content::new();
    let digest = format::content_digest(&empty);
    let v = staging::insert_version(tx, &empty, &digest, 0, now_us, "initial")?;
    tx.mark_staged(v, now_us)?;
    tx.mark_activated(v, now_us)?;
    let first = rotation::first_activation(settings.interval_us, settings.min_window_us, now_us)
        .ok_or_else(|| overflow("the first activation time"))?;
    tx.insert_sync(
        &SyncTable {
            activation_time_us: first,
            interval_us: settings.interval_us,
            min_window_us: settings.min_window_us,
            staged_version: v,
            active_version: v,
        },
        0,
    )
}

/// Where the state lives: `lockstep serve --db` (or `LOCKSTEP_DB`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file: a path, or `sqlite:PATH`.
    Sqlite(PathBuf),
    /// A PostgreSQL database: `postgres://user@host:port/db` (or `postgresql://`).
    Postgres(String),
}

impl Location {
    /// A value that looks like a URL (`scheme:…`) but is neither PostgreSQL's nor `sqlite:` is
    /// refused: a typo such as `postgres:/db` would otherwise become a new SQLite file.
    pub fn parse(db: &str) -> std::result::Result<Location, String> {
        if postgres::is_url(db) {
            return Ok(Location::Postgres(db.to_owned()));
        }
        if let Some(path) = db.strip_prefix("sqlite:") {
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        let scheme = db.split_once(':').map(|(s, _)| s);
        let looks_like_url = scheme.is_some_and(|s| {
            s.len() > 1
                && s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        if looks_like_url {
            return Err(format!(
                "the database {db:?} looks like a URL lockstep does not read: write \
                 postgres://user@host:port/db for PostgreSQL, or a path (sqlite:PATH for one \
                 with a colon) for SQLite"
            ));
        }
        Ok(Location::Sqlite(PathBuf::from(db)))
    }
}

impl std::fmt::Display for Location {
    /// The location without a password a URL may carry.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                match rest.split_once('@') {
                    Some((user, host)) if user.contains(':') => {
                        let name = user.split(':').next().unwrap_or_default();
                        write!(f, "{scheme}://{name}:***@{host}")
                    }
                    _ => write!(f, "{url}"),
                }
            }
        }
    }
}

impl Store {
    /// Opens (creating and migrating when needed) the database at `location`.
    ///
    /// `settings` seed a new database; for an existing one they change nothing.
    pub fn open(location: &Location, settings: SyncSettings, now_us: i64) -> Result<Store> {
        let mut init = |tx: &mut dyn Tx| initialise(tx, settings, now_us);
        let db: Box<dyn Backend> = match location {
            Location::Sqlite(path) => Box::new(sqlite::Sqlite::open(path, &mut init)?),
            Location::Postgres(url) => Box::new(postgres::Postgres::open(url, &mut init)?),
        };
        Ok(Store::with_backend(db))
    }

    /// Opens a database that must exist and hold a data server's state; creates nothing.
    pub fn open_existing(location: &Location) -> Result<Store> {
        if let Location::Sqlite(path) = location {
            if !path.exists() {
                return Err(StoreError::NotFound(format!("{location} does not exist")));
            }
        }
        let store = Store::open_empty(location)?;
        if !store.read(|tx| tx.initialised())? {
            return Err(StoreError::NotFound(format!(
                "{location} holds no data server's state"
            )));
        }
        Ok(store)
    }

    /// Opens (creating and migrating when needed) a database without seeding it.
    pub fn open_empty(location: &Location) -> Result<Store> {
        let mut init = |_: &mut dyn Tx| Ok(());
        let db: Box<dyn Backend> = match location {
            Location::Sqlite(path) => Box::new(sqlite::Sqlite::open(path, &mut init)?),
            Location::Postgres(url) => Box::new(postgres::Postgres::open(url, &mut init)?),
        };
        Ok(Store::with_backend(db))
    }

    fn with_backend(db: Box<dyn Backend>) -> Store {
        Store {
            db,
            prepared: std::sync::Mutex::new(None),
            prepare_took_us: std::sync::atomic::AtomicI64::new(0),
            store_took_us: std::sync::atomic::AtomicI64::new(0),
            inline_encode_max_us: std::sync::atomic::AtomicI64::new(INLINE_ENCODE_MAX_US),
            restaged: std::sync::Mutex::new(None),
            rotated: (std::sync::Mutex::new(false), std::sync::Condvar::new()),
            rotating: std::sync::Mutex::new(None),
            sync: SyncCache::default(),
            versions: VersionCache::default(),
            farm: farm::Batch::default(),
            downloads: Downloads::default(),
            switches: proof::Batch::default(),
            farm_expiry_us: std::sync::atomic::AtomicI64::new(farm::EXPIRE_AFTER_US),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// One read transaction. `f` may run twice: a backend runs it again when the first
    /// attempt lost its connection (see [`postgres`]).
    fn read<T>(&self, mut f: impl FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        let mut out = None;
        self.db.read(&mut |tx| {
            out = Some(f(tx)?);
            Ok(())
        })?;
        Ok(out.expect("the read ran"))
    }

    /// One write transaction; `f` may run twice, as in [`Store::read`], and only the run that
    /// committed gives the result.
    fn write_with<T>(
        &self,
        durability: Durability,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T>,
    ) -> Result<T> {
        let mut out = None;
        self.db.write(durability, &mut |tx| {
            // What an attempt that did not commit returned (a lock guard, say) goes first.
            out = None;
            out = Some(f(tx)?);
            Ok(())
        })?;
        Ok(out.expect("the write ran"))
    }

    /// One durable write transaction. Any write may have changed the sync table, so the next
    /// check-in reads it again.
    fn write<T>(&self, f: impl FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        let out = self.write_with(Durability::Full, f);
        self.sync.expire();
        self.changed.notify_one();
        out
    }

    /// One durable write transaction that also writes the audit entry `audit` makes of its
    /// result, if any: a change and its entry commit together or not at all.
    fn write_audited<T>(
        &self,
        audit: AuditOf<T>,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T>,
    ) -> Result<T> {
        self.write(|tx| {
            let out = f(tx)?;
            if let Some(entry) = audit(&out) {
                tx.insert_audit(&entry)?;
            }
            Ok(out)
        })
    }

    /// The sync table read within the last few milliseconds, if no rotation is due yet (see
    /// [`crate::sync_cache`]).
    pub fn recent_sync_table(&self, now_us: i64) -> Option<SyncTable> {
        self.sync.recent(now_us)
    }

    /// Whether the sync table this process read last, however long ago, says its activation
    /// time has passed by `now_us`: the farm's check-ins of that instant are on their way.
    pub fn rotation_due(&self, now_us: i64) -> bool {
        self.sync.due(now_us)
    }

    /// Told after each durable write of this process (see [`crate::waiters`]).
    pub fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    /// A checksum already known to this process.
    pub fn known_checksum(&self, version: u64) -> Option<u64> {
        self.versions.checksum(version)
    }

    /// The sync table as it stands, without rotating.
    pub fn sync_table(&self) -> Result<SyncTable> {
        self.read(|tx| Ok(tx.sync()?.0))
    }

    /// The retrieval step's rotation: if the activation time has passed, the first request to
    /// notice performs the rotation (see [`rotation::rotate_if_due`]) in one write
    /// transaction. Returns the sync table after it, and whether this call rotated.
    pub fn rotate_if_due(&self, now_us: i64, by: &str) -> Result<(SyncTable, bool)> {
        // Almost every check-in finds nothing to do; a read answers it without the write lock.
        // Once the table this process read last says the activation time has passed, the herd
        // of that instant skips the read: each goes straight to the rotation's turn below,
        // instead of a thousand reads queueing for the database's connections first.
        if !self.sync.due(now_us) {
            let sync = match self.sync_table() {
                Ok(sync) => sync,
                // With the database out of reach, a check-in with nothing due is answered from
                // the table read last: clients keep their cycle, and no rotation is missed,
                // since one due is never answered from memory.
                Err(StoreError::Unavailable(e)) => match self.sync.last_known(now_us) {
                    Some(sync) => return Ok((sync, false)),
                    None => return Err(StoreError::Unavailable(e)),
                },
                Err(e) => return Err(e),
            };
            if now_us < sync.activation_time_us {
                self.sync.remember(sync);
                return Ok((sync, false));
            }
        }
        // The herd at an activation time: one request of this process at a time goes on to
        // the write transaction (with the version built ahead); the others wait for it and are
        // answered from the table it leaves, instead of each taking the sync row's lock and a
        // commit in turn, and instead of one of them rotating without the version built ahead
        // while another holds it.
        let mut turn = self.rotating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sync) = self.sync.recent(now_us) {
            return Ok((sync, false));
        }
        // With the database out of reach, the requests that waited fail with the one before
        // them rather than each waiting out a connection timeout in turn.
        if let Some((at, e)) = turn.as_ref() {
            if at.elapsed() < std::time::Duration::from_millis(100) {
                return Err(StoreError::Unavailable(e.clone()));
            }
        }
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // Encoding under the lock holds the herd for as long as it takes: only data whose last
        // build took less than the limit is encoded here when nothing was built for T.
        let took = self
            .prepare_took_us
            .load(std::sync::atomic::Ordering::Relaxed);
        let may_encode = took
            < self
                .inline_encode_max_us
                .load(std::sync::atomic::Ordering::Relaxed);
        let started = std::time::Instant::now();
        let mut due_us = 0;
        let rotated = self.write(|tx| {
            due_us = tx.sync()?.0.activation_time_us;
            rotation::rotate_if_due(tx, now_us, by, prepared.as_ref(), may_encode)
        });
        *turn = match &rotated {
            Err(StoreError::Unavailable(e)) => Some((std::time::Instant::now(), e.clone())),
            _ => None,
        };
        let rotated = rotated?;
        self.sync.remember(rotated.0);
        if rotated.1 {
            // A restage due after it has only the window before T' to be downloaded in.
            *self.rotated.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.rotated.1.notify_all();
            tracing::info!(
                by,
                active = rotated.0.active_version,
                staged = rotated.0.staged_version,
                "rotation: version {} active since {}; version {} staged for {} ({} ms; built \
                 ahead: {})",
                rotated.0.active_version,
                clock::format_us(due_us),
                rotated.0.staged_version,
                clock::format_us(rotated.0.activation_time_us),
                started.elapsed().as_millis(),
                match &prepared {
                    None => "no",
                    Some(p) if p.stored_us.is_some() => "yes, stored",
                    Some(p) if p.bytes.is_empty() => "nothing to build then",
                    Some(_) => "yes, not stored",
                }
            );
        }
        Ok(rotated)
    }

    /// Records how long a store of a version's bytes that began at `began_us` took, commit
    /// included: the durable write is what a rotation would wait behind.
    fn note_store_took(&self, began_us: i64) {
        self.store_took_us.store(
            clock::now_us().saturating_sub(began_us),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// A rotation that finds nothing built for its activation time encodes production itself
    /// only if this process's last build took less than `limit_us` (0: never); it keeps the
    /// version that becomes active as the staged one otherwise, and production is restaged
    /// after T. Larger data would hold every check-in at T for the encode.
    pub fn set_inline_encode_max_us(&self, limit_us: i64) {
        self.inline_encode_max_us
            .store(limit_us.max(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// The preparing thread's sleep between two rounds: `timeout`, or until this process
    /// rotates.
    pub fn prepare_wait(&self, timeout: std::time::Duration) {
        let (flag, told) = &self.rotated;
        let mut rotated = flag.lock().unwrap_or_else(|e| e.into_inner());
        if !*rotated {
            rotated = told
                .wait_timeout(rotated, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *rotated = false;
    }

    /// How long the preparing thread may sleep between two calls of [`Store::prepare_next`].
    pub fn prepare_poll(&self, now_us: i64) -> std::time::Duration {
        let lead = match self.sync.recent(now_us) {
            Some(sync) => prepare::lead_us(sync.min_window_us, 0, sync.interval_us),
            None => self.sync_table().map_or(1_000_000, |sync| {
                prepare::lead_us(sync.min_window_us, 0, sync.interval_us)
            }),
        };
        std::time::Duration::from_micros((lead / 4).clamp(5_000, 250_000) as u64)
    }

    /// Builds the version the next rotation will stage, if the activation time is less than
    /// [`prepare::lead_us`] away, the build can be stored before it, and it is not built yet
    /// for what the database holds now.
    /// Returns whether it built one. Reads only: any instance may do it, at any time.
    pub fn prepare_next(&self, now_us: i64) -> Result<bool> {
        let sync = match self.sync.recent(now_us) {
            Some(sync) => sync,
            None => self.sync_table()?,
        };
        let took = self
            .prepare_took_us
            .load(std::sync::atomic::Ordering::Relaxed);
        let lead = prepare::lead_us(sync.min_window_us, took, sync.interval_us);
        if now_us >= sync.activation_time_us || now_us < sync.activation_time_us - lead {
            return Ok(false);
        }
        // A build that cannot be stored by T would only take the CPU from the rotation.
        if now_us.saturating_add(took) > sync.activation_time_us {
            return Ok(false);
        }
        let started = clock::now_us();
        let basis = self.read(|tx| prepare::basis(tx, sync.activation_time_us))?;
        let held = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_some_and(|p| p.basis == basis) {
            return Ok(false);
        }
        drop(held);
        // The encode at background priority (the database writes below are not: a lowered
        // thread holding the write lock would hold up a rotation behind it).
        let Some(mut built) = crate::background::lowered("build", || {
            self.read(|tx| {
                let now = prepare::basis(tx, sync.activation_time_us)?;
                match now == basis {
                    true => prepare::prepare(tx, basis),
                    false => Ok(None),
                }
            })
        })?
        else {
            // Nothing to build: production is the staged version's. Held all the same, so
            // that an edit too late to build for does not make the rotation encode.
            let unchanged = self.read(|tx| match prepare::basis(tx, basis.due_us)? == basis {
                true => prepare::unchanged(tx, basis).map(Some),
                false => Ok(None),
            })?;
            if let Some(unchanged) = unchanged {
                *self.prepared.lock().unwrap_or_else(|e| e.into_inner()) = Some(unchanged);
            }
            return Ok(false);
        };
        // Stored now, in a durable transaction of its own, so that the rotation at T neither
        // writes nor syncs these bytes. (Batched, the fsync of SQLite's log would fall on the
        // rotation's commit instead.) Unordered: PostgreSQL takes no sync row lock for it, as
        // the rotation checks the basis and that the bytes are there before naming them.
        // Built for a rotation or a version number that has moved on since: no rotation would
        // name these bytes. (An edit or a schedule since does not make them useless: the
        // rotation stages them and production is restaged after it, see `restage_stale`.)
        // (Read outside the write, which takes no lock for it: the rotation checks under its
        // lock.)
        let now = self.read(|tx| prepare::basis(tx, built.basis.due_us))?;
        let moved = (now.due_us, now.number) != (built.basis.due_us, built.basis.number);
        let inserted = std::cell::Cell::new(false);
        let stored = match moved {
            true => Ok(None),
            false => self.write_with(Durability::Unordered, |tx| {
                let at = clock::now_us();
                // Too late for its rotation: none would name these bytes. Nor is a store begun
                // that would not end before T, as the last one took: it would hold the write
                // lock (SQLite's, or PostgreSQL's log flush) that the rotation waits for.
                let store_took = self
                    .store_took_us
                    .load(std::sync::atomic::Ordering::Relaxed);
                if at.saturating_add(store_took) >= built.basis.due_us {
                    return Ok(None);
                }
                // Every instance builds the same bytes for a basis: the first to store them does.
                if let Some(stored) = tx.blob_stored(built.checksum)? {
                    return Ok(Some(stored));
                }
                tx.insert_blob(built.checksum, &built.bytes, built.basis.due_us, at)?;
                tx.insert_changeset(built.checksum, built.base, &built.changes)?;
                inserted.set(true);
                Ok(Some(at))
            }),
        };
        if let (Ok(Some(at)), true) = (&stored, inserted.get()) {
            self.note_store_took(*at);
        }
        self.prepare_took_us.store(
            clock::now_us().saturating_sub(started),
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::debug!(
            "the version for {} was built in {} ms: {}",
            clock::format_us(built.basis.due_us),
            (clock::now_us() - started) / 1000,
            match &stored {
                Ok(None) if moved => "not stored, the rotation or version number moved on",
                Ok(None) => "not stored, too late for its activation time",
                Ok(Some(_)) => "stored",
                Err(_) => "not stored, the database did not take it",
            }
        );
        match stored {
            Ok(None) => return Ok(false),
            Ok(Some(at)) => {
                built.stored_us = Some(at);
                built.bytes = Vec::new();
            }
            // The rotation writes the bytes held here instead.
            Err(e) => tracing::warn!("cannot store the next version ahead: {e}"),
        }
        *self.prepared.lock().unwrap_or_else(|e| e.into_inner()) = Some(built);
        Ok(true)
    }

    /// Restages production in place of a staged version that a rotation staged from a build
    /// production had moved on from ([`prepare::STALE`]), before the activation time it goes
    /// live at, so that the edits it lacks go live then too. Encodes outside any lock, stores
    /// the bytes in a transaction of their own, then writes the version row naming them if the
    /// staged version and production are still what it was built from (a normal restage,
    /// checked under the sync row's lock). Any instance may do it; the first one does.
    /// Returns whether it restaged.
    pub fn restage_stale(&self, now_us: i64) -> Result<bool> {
        let Some(basis) = self.read(|tx| prepare::restage_basis(tx, now_us))? else {
            return Ok(false);
        };
        if *self.restaged.lock().unwrap_or_else(|e| e.into_inner()) == Some(basis) {
            return Ok(false);
        }
        // Remembered only once it ends (restaged, or gave way): an error on the way (a busy
        // database, a reconnect) is tried again at the next round, or the edits it carries
        // would wait for T''.
        let out = self.restage_basis_once(basis, now_us);
        if out.is_ok() {
            *self.restaged.lock().unwrap_or_else(|e| e.into_inner()) = Some(basis);
        }
        out
    }

    /// [`Store::restage_stale`] for `basis`, once.
    fn restage_basis_once(&self, basis: prepare::Basis, now_us: i64) -> Result<bool> {
        let still = |tx: &mut dyn Tx| -> Result<bool> {
            Ok(prepare::restage_basis(tx, clock::now_us())? == Some(basis))
        };
        // Encoded at background priority: this runs just after T, as the farm checks in.
        let Some(mut built) = crate::background::lowered("build", || {
            self.read(|tx| match still(tx)? {
                true => prepare::prepare_restage(tx, basis),
                false => Ok(None),
            })
        })?
        else {
            return Ok(false);
        };
        let inserted = std::cell::Cell::new(false);
        let stored = self.write_with(Durability::Unordered, |tx| {
            if let Some(stored) = tx.blob_stored(built.checksum)? {
                return Ok(stored);
            }
            let at = clock::now_us();
            tx.insert_blob(built.checksum, &built.bytes, basis.next_us, at)?;
            tx.insert_changeset(built.checksum, built.base, &built.changes)?;
            inserted.set(true);
            Ok(at)
        })?;
        if inserted.get() {
            self.note_store_took(stored);
        }
        built.stored_us = Some(stored);
        built.bytes = Vec::new();
        let restaged = self.write(|tx| {
            if !still(tx)? {
                return Ok(None);
            }
            let (sync, _) = tx.sync()?;
            let at = clock::now_us();
            let v =
                staging::stage_prepared(tx, sync.staged_version, &built, at, prepare::RESTAGED)?;
            // The rotation log names what goes live at T', so that its chain stays whole.
            if let Some(v) = v.filter(|v| *v != sync.staged_version) {
                tx.relog_staged(basis.due_us, sync.staged_version, v)?;
            }
            // Once: edits after this one wait for the next rotation, as after any other.
            tx.set_restage_due(basis.due_us, false)?;
            Ok(v)
        })?;
        if let Some(v) = restaged {
            tracing::info!(
                "version {v} restaged for {} in {} ms: the version the rotation staged was \
                 built before the last edits",
                clock::format_us(basis.next_us),
                (clock::now_us() - now_us) / 1000
            );
        }
        Ok(restaged.is_some())
    }

    /// Validates nothing: callers check key and value limits first. Returns how many changes
    /// changed production.
    pub fn apply(
        &self,
        changes: &[Change],
        by: &str,
        now_us: i64,
        audit: AuditOf<u64>,
    ) -> Result<u64> {
        self.write_audited(audit, |tx| {
            let mut changed = 0u64;
            for c in changes {
                changed += u64::from(tx.write_production(c, by, now_us)?);
            }
            if changed > 0 {
                tx.bump_production_gen()?;
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
        audit: AuditOf<i64>,
    ) -> Result<i64> {
        if effective_us < now_us {
            return Err(StoreError::BadRequest(
                "effective time is in the past; omit the time to change production now".into(),
            ));
        }
        // As for a rollback: a due rotation first, so a restage never rebuilds a version
        // that every client has already switched to.
        self.rotate_if_due(now_us, by)?;
        self.write_audited(audit, |tx| {
            let (sync, _) = tx.sync()?;
            let id = tx.insert_scheduled(effective_us, change, by, now_us)?;
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
            // A restage after T that is due carries production's edits to T' (the staged
            // version is a build production moved on from): built on the staged version, this
            // one would cancel it and those edits would wait for T''.
            let v = match prepare::restage_basis(tx, now_us)? {
                Some(basis) => {
                    tx.write_production(change, by, now_us)?;
                    tx.bump_production_gen()?;
                    let gen = tx.sync()?.1;
                    let v = staging::restage_production(
                        tx,
                        sync.staged_version,
                        gen,
                        now_us,
                        SCHEDULED_RESTAGE,
                    )?;
                    if v != sync.staged_version {
                        tx.relog_staged(basis.due_us, sync.staged_version, v)?;
                    }
                    tx.set_restage_due(basis.due_us, false)?;
                    v
                }
                None => {
                    let mut content = staging::version_content(tx, sync.staged_version)?;
                    change.apply_to(&mut content);
                    tx.write_production(change, by, now_us)?;
                    tx.bump_production_gen()?;
                    // The restaged version is not production (other edits may wait in
                    // production for the next rotation), so it gets a generation no
                    // production state has.
                    staging::restage(tx, sync.staged_version, &content, -1, now_us, "scheduled")?
                }
            };
            tx.mark_applied(id, v)?;
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
        self.set_interval_audited(interval_us, min_window_us, now_us, &unaudited)
    }

    /// [`Store::set_interval`], with the audit entry `audit` makes of the change written in
    /// its transaction.
    pub fn set_interval_audited(
        &self,
        interval_us: Option<i64>,
        min_window_us: Option<i64>,
        now_us: i64,
        audit: AuditOf<IntervalChange>,
    ) -> Result<IntervalChange> {
        // The activation that is due belongs to the old interval: perform it first. Best
        // effort: `serve` sets the interval before it repairs a wedged activation time (one
        // already in the rotation log), whose rotation cannot commit until then; a database
        // out of reach fails the write below all the same.
        let _ = self.rotate_if_due(now_us, "interval");
        self.write_audited(audit, |tx| {
            let (before, _) = tx.sync()?;
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
                && tx.scheduled_within(activation, before.activation_time_us)?;
            if held_by_schedule {
                activation = before.activation_time_us;
            }
            tx.set_cycle(interval, window, activation)?;
            Ok(IntervalChange {
                before,
                after: tx.sync()?.0,
                held_by_schedule,
            })
        })
    }

    /// Moves an activation time that has been rotated already to the first grid point after
    /// the minimum window. An older release could leave one behind (a time that wrapped around
    /// to a negative number); the rotation log's key then refused every rotation, so every
    /// check-in failed. Returns the times before and after, if it moved.
    pub fn reschedule_if_rotated(&self, now_us: i64) -> Result<Option<(i64, i64)>> {
        self.write(|tx| {
            let (sync, _) = tx.sync()?;
            let rotated_up_to = tx.last_rotation()?;
            if rotated_up_to.is_none_or(|done| done < sync.activation_time_us) {
                return Ok(None);
            }
            let next = rotation::first_activation(sync.interval_us, sync.min_window_us, now_us)
                .ok_or_else(|| overflow("the rescheduled activation time"))?;
            tx.set_cycle(sync.interval_us, sync.min_window_us, next)?;
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
        audit: AuditOf<RollbackOutcome>,
    ) -> Result<RollbackOutcome> {
        // A rotation that is due has happened for every client already, whether or not a
        // check-in has performed it here yet: perform it first, so that this rollback stages
        // for the next activation instead of replacing what the last one activated.
        if !dry_run {
            self.rotate_if_due(now_us, by)?;
        }
        self.write_audited(audit, |tx| {
            rollback_in(tx, version, dry_run, discard_edits, true, by, now_us)
        })
    }

    /// Makes production's content go live at now + the urgent window, or at the first
    /// activation after the one staged now when that cannot be done safely (see
    /// [`urgent_in`]). Clients long-polling are woken by the table's change.
    pub fn urgent(
        &self,
        by: &str,
        now_us: i64,
        audit: AuditOf<UrgentOutcome>,
    ) -> Result<UrgentOutcome> {
        self.write_urgent(audit, |tx, may| urgent_in(tx, by, now_us, may))
    }

    /// [`Store::write_audited`] of an urgent request: run again, queued, if its restage
    /// took too long (see [`urgent_in`]).
    fn write_urgent<T>(
        &self,
        audit: AuditOf<T>,
        mut f: impl FnMut(&mut dyn Tx, &mut bool) -> Result<T>,
    ) -> Result<T> {
        let mut may_restage = true;
        let first = self.write_audited(audit, |tx| f(tx, &mut may_restage));
        if first.is_ok() || may_restage {
            return first;
        }
        self.write_audited(audit, |tx| f(tx, &mut may_restage))
    }

    /// [`Store::apply`] and [`Store::urgent`] in one transaction: the changes go live at once
    /// or not at all.
    pub fn apply_urgent(
        &self,
        changes: &[Change],
        by: &str,
        now_us: i64,
        audit: AuditOf<(u64, UrgentOutcome)>,
    ) -> Result<(u64, UrgentOutcome)> {
        self.write_urgent(audit, |tx, may| {
            let mut changed = 0u64;
            for c in changes {
                changed += u64::from(tx.write_production(c, by, now_us)?);
            }
            if changed > 0 {
                tx.bump_production_gen()?;
            }
            Ok((changed, urgent_in(tx, by, now_us, may)?))
        })
    }

    /// [`Store::rollback`], made live by [`Store::urgent`] in the same transaction.
    pub fn rollback_urgent(
        &self,
        version: u64,
        discard_edits: bool,
        by: &str,
        now_us: i64,
        audit: AuditOf<(RollbackOutcome, UrgentOutcome)>,
    ) -> Result<(RollbackOutcome, UrgentOutcome)> {
        self.rotate_if_due(now_us, by)?;
        self.write_urgent(audit, |tx, may| {
            rotation::rotate_if_due(tx, now_us, by, None, true)?;
            let t = tx.sync()?.0.activation_time_us;
            let stage = tx.urgent_activations(t, t)?.is_empty();
            let mut out = rollback_in(tx, version, false, discard_edits, stage, by, now_us)?;
            let urgent = urgent_in(tx, by, now_us, may)?;
            out.activation_time_us = urgent.live_at_us;
            Ok((out, urgent))
        })
    }

    /// Sets how soon an urgent change goes live (1 ms to [`MAX_URGENT_WINDOW_US`]).
    pub fn set_urgent_window(&self, window_us: i64, audit: AuditOf<i64>) -> Result<i64> {
        if !(1_000..=MAX_URGENT_WINDOW_US).contains(&window_us) {
            return Err(StoreError::BadRequest(format!(
                "the urgent window must be 1ms to {}s",
                MAX_URGENT_WINDOW_US / 1_000_000
            )));
        }
        self.write_audited(audit, |tx| {
            tx.set_urgent_window(window_us)?;
            Ok(window_us)
        })
    }

    /// One production entry.
    pub fn production_get(&self, key: &[u8]) -> Result<Option<KeyInfo>> {
        self.read(|tx| tx.production_get(key))
    }

    /// Production entries whose key starts with `prefix`, in key order.
    pub fn production_list(&self, prefix: &[u8], limit: usize) -> Result<Vec<KeyInfo>> {
        let from = self.read(|tx| tx.production_from(prefix, limit.saturating_add(1)))?;
        let mut out = Vec::new();
        for info in from {
            let key = info.key.clone().into_bytes().unwrap_or_default();
            if !key.starts_with(prefix) || out.len() == limit {
                break;
            }
            out.push(info);
        }
        Ok(out)
    }

    /// Changes waiting for their effective time.
    pub fn scheduled_pending(&self) -> Result<Vec<ScheduledChange>> {
        self.read(|tx| tx.scheduled_pending())
    }

    /// The checksum a version was stored with.
    pub fn version_checksum(&self, version: u64) -> Result<u64> {
        if let Some(c) = self.versions.checksum(version) {
            return Ok(c);
        }
        let checksum = self
            .read(|tx| tx.version_checksum(version))?
            .ok_or_else(|| StoreError::NotFound(format!("version {version} does not exist")))?;
        self.versions.remember_checksum(version, checksum);
        Ok(checksum)
    }

    /// The secret blob URLs are signed with (see [`crate::blobs`]): one per database, so every
    /// data server of a PostgreSQL database signs alike.
    pub fn blob_secret(&self) -> Result<Vec<u8>> {
        self.read(|tx| tx.blob_secret())
    }

    /// The verified bytes of a version. Bytes that fail their checksum are reported as corrupt
    /// and never served.
    pub fn version_bytes(&self, version: u64) -> Result<StoredVersion> {
        if let Some(v) = self.versions.get(version) {
            return Ok(v);
        }
        let (bytes, checksum) = self.read(|tx| staging::stored_bytes(tx, version))?;
        let header = format::verify_checksum(&bytes).map_err(|e| {
            StoreError::Corrupt(format!("stored version {version} is damaged: {e}"))
        })?;
        if header.version != version || header.checksum != checksum {
            return Err(StoreError::Corrupt(format!(
                "stored version {version} does not match its catalogue entry"
            )));
        }
        let stored = StoredVersion {
            version,
            checksum: header.checksum,
            bytes: bytes::Bytes::from(bytes),
        };
        self.versions.insert(stored.clone());
        Ok(stored)
    }

    /// The decoded content of a version, for tools; one whose bytes retention dropped is
    /// rebuilt from change sets (see [`changeset::rebuild`]).
    pub fn version_content(&self, version: u64) -> Result<Content> {
        let stored = match self.version_bytes(version) {
            Err(StoreError::NotFound(e)) => {
                return match self.read(|tx| tx.version_pruned(version))? {
                    Some(_) => self.read(|tx| changeset::rebuild(tx, version)),
                    None => Err(StoreError::NotFound(e)),
                }
            }
            other => other?,
        };
        let (_, map) = format::decode(&stored.bytes).map_err(|e| {
            StoreError::Corrupt(format!("stored version {version} is damaged: {e}"))
        })?;
        Ok(map)
    }

    /// The newest `limit` versions, newest first, with their downloads counted up to now.
    pub fn history(&self, limit: u64) -> Result<Vec<VersionRow>> {
        self.read(|tx| {
            let versions = tx.history(limit)?;
            let (Some(newest), Some(oldest)) = (versions.first(), versions.last()) else {
                return Ok(Vec::new());
            };
            let downloads = self.downloads.totals(tx, oldest.version, newest.version)?;
            let mut rows = Vec::with_capacity(versions.len());
            for info in versions {
                rows.push(VersionRow {
                    downloads: downloads.get(&info.version).copied().unwrap_or(0),
                    pruned_us: tx.version_pruned(info.version)?,
                    pinned: tx.version_pinned(info.version)?,
                    stored_ahead_us: tx.version_stored_ahead(info.version)?,
                    info,
                });
            }
            Ok(rows)
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
        self.farm.record(members);
    }

    /// Writes the check-ins and the downloads counted since the last flush, without an fsync:
    /// the farm view is a status display, rebuilt by the next check-ins after a crash, download
    /// counts may lose the last second's on a crash (see [`crate::downloads`]), and an fsync a
    /// second would hold the write lock that rotations and edits wait for. Members silent for
    /// the farm expiry are deleted in the same transaction as the farm's.
    pub fn flush_batched(&self, now_us: i64) -> Result<()> {
        let batch = self.farm.take();
        let switches = self.switches.take();
        if batch.is_empty() && switches.is_empty() && self.downloads.nothing_pending() {
            return Ok(());
        }
        let written = self.write_with(Durability::Batched, |tx| {
            if !batch.is_empty() {
                let expiry = self.farm_expiry(tx.sync()?.0.interval_us);
                tx.write_farm(&batch, now_us.saturating_sub(expiry))?;
            }
            if !switches.is_empty() {
                let keep = proof::keep_us(tx.sync()?.0.interval_us);
                tx.write_switches(&switches, now_us.saturating_sub(keep))?;
            }
            self.downloads.flush(tx)
        });
        match written {
            Ok(flushing) => {
                flushing.committed();
                Ok(())
            }
            Err(e) => {
                self.farm.restore(batch);
                self.switches.restore(switches);
                Err(e)
            }
        }
    }

    /// The sync table, counts and the farm, by process and by host: members silent for
    /// the farm expiry (`serve --farm-expiry`) left out, those silent for [`farm::stale_after_us`] marked
    /// stale.
    pub fn status(&self, now_us: i64) -> Result<Status> {
        self.flush_batched(now_us)?;
        self.read(|tx| {
            let (sync, _) = tx.sync()?;
            let mut members = tx.farm(now_us.saturating_sub(self.farm_expiry(sync.interval_us)))?;
            farm::mark_silence(&mut members, now_us, sync.interval_us);
            farm::sort_for_view(&mut members);
            let (urgent_window_us, urgent_queued) = tx.urgent_state()?;
            Ok(Status {
                sync,
                server_time_us: now_us,
                urgent_window_us,
                urgent_queued,
                production_keys: tx.production_count()?,
                pending_scheduled: tx.scheduled_pending_count()?,
                versions: tx.version_count()?,
                rotations: tx.rotation_count()?,
                database_bytes: tx.database_bytes()?,
                hosts: farm::by_host(&members),
                farm: members,
            })
        })
    }

    /// Drops the content of versions that are neither active, staged, pinned, among the newest
    /// `keep_versions` nor created within `keep_for_us`; their history rows and change sets
    /// stay, so history, diffs and rollbacks still reach them (see [`changeset::rebuild`]).
    /// Deletes bytes stored ahead for a rotation that has passed without using them. Returns
    /// how many versions it dropped, and gives the space back (SQLite's incremental vacuum,
    /// PostgreSQL's `VACUUM`).
    pub fn prune(&self, retention: Retention, now_us: i64) -> Result<u64> {
        // Not `write`: it never changes the sync table, and telling the long-poll watcher
        // every second would hide whether its own poll notices other instances' changes.
        let (pruned, orphans) = self.write_with(Durability::Full, |tx| {
            let (sync, _) = tx.sync()?;
            let newest = tx.next_version_number()?.saturating_sub(1);
            let below = newest.saturating_sub(retention.keep_versions) + 1;
            let before_us = now_us.saturating_sub(retention.keep_for_us);
            let keep = [sync.active_version, sync.staged_version];
            let pruned = tx.prune_versions(below, before_us, keep, now_us)?;
            let changes_before = now_us.saturating_sub(retention.keep_changes_for_us);
            let dropped = tx.prune_changesets(changes_before)?;
            Ok((pruned, dropped + tx.drop_orphans(sync.activation_time_us)?))
        })?;
        if pruned > 0 {
            // Versions made for deltas and blobs are read into memory without a client asking
            // for them; the ones whose content was just dropped leave it too.
            let held = self.versions.numbers();
            let dropped = self.read(|tx| {
                let mut dropped = Vec::new();
                for &v in &held {
                    if tx.version_pruned(v)?.is_some() {
                        dropped.push(v);
                    }
                }
                Ok(dropped)
            })?;
            self.versions.forget(&dropped);
        }
        if pruned + orphans > 0 {
            self.db.reclaim()?;
        }
        Ok(pruned)
    }

    /// Pins a version (retention keeps its content) or unpins it.
    pub fn pin(&self, version: u64, pinned: bool, audit: AuditOf<()>) -> Result<()> {
        self.write_audited(audit, |tx| {
            if pinned {
                if let Some(at) = tx.version_pruned(version)? {
                    return Err(StoreError::Conflict(format!(
                        "version {version}'s content was dropped at {}; a pin keeps content,                          it cannot bring it back (lockstep rollback {version} stages a version                          with that content, rebuilt from change sets)",
                        clock::format_us(at)
                    )));
                }
            }
            if !tx.set_pinned(version, pinned)? {
                return Err(StoreError::NotFound(format!(
                    "version {version} does not exist"
                )));
            }
            Ok(())
        })
    }

    /// The rotation log, oldest first.
    pub fn rotations(&self) -> Result<Vec<RotationRecord>> {
        self.read(|tx| {
            let mut rotations = tx.rotations()?;
            if let (Some(first), Some(last)) = (rotations.first(), rotations.last()) {
                let urgent =
                    tx.urgent_activations(first.activation_time_us, last.activation_time_us)?;
                for r in &mut rotations {
                    r.urgent = urgent.binary_search(&r.activation_time_us).is_ok();
                }
            }
            Ok(rotations)
        })
    }

    /// Remembers a check-in's switch report; written by [`Store::flush_batched`].
    pub fn record_switch(&self, row: proof::SwitchRow) {
        self.switches.record(row);
    }

    /// The newest `limit` activations that switched the farm to another version, newest
    /// first, each with its proof (see [`proof::prove`]).
    pub fn activations(&self, limit: u64, now_us: i64) -> Result<Vec<ActivationProof>> {
        self.flush_batched(now_us)?;
        self.read(|tx| {
            let (sync, _) = tx.sync()?;
            // Versions staged and replaced before their time never activated: look further.
            let scan = limit.saturating_mul(4).saturating_add(16);
            let activated: Vec<proof::Activated> = tx
                .history(scan)?
                .into_iter()
                .filter(|v| v.reason != "initial")
                .filter_map(|v| {
                    Some(proof::Activated {
                        activation_us: v.activated_us?,
                        version: v.version,
                        checksum: lockstep::wire::parse_checksum_hex(&v.checksum)?,
                    })
                })
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .collect();
            let (Some(newest), Some(oldest)) = (activated.first(), activated.last()) else {
                return Ok(Vec::new());
            };
            let reports = tx.switches(oldest.version, newest.version)?;
            let since = oldest
                .activation_us
                .saturating_sub(farm::stale_after_us(sync.interval_us));
            let members = tx.farm(since)?;
            let urgent = tx.urgent_activations(oldest.activation_us, newest.activation_us)?;
            Ok(activated
                .iter()
                .map(|a| ActivationProof {
                    urgent: urgent.binary_search(&a.activation_us).is_ok(),
                    ..proof::prove(*a, sync.interval_us, &reports, &members)
                })
                .collect())
        })
    }

    /// Sets how long a silent member stays in the farm view (greyed as stale from
    /// [`farm::stale_after_us`] on).
    pub fn set_farm_expiry(&self, expiry_us: i64) {
        self.farm_expiry_us
            .store(expiry_us, std::sync::atomic::Ordering::Relaxed);
    }

    /// The farm expiry for a table with this interval: never before a member has been shown
    /// stale for a check-in period.
    fn farm_expiry(&self, interval_us: i64) -> i64 {
        let configured = self
            .farm_expiry_us
            .load(std::sync::atomic::Ordering::Relaxed);
        configured.max(farm::stale_after_us(interval_us) + rotation::checkin_period_us(interval_us))
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit(&self, limit: u64) -> Result<Vec<AuditEntry>> {
        self.read(|tx| tx.audit(limit))
    }

    /// Whether the database answers a read now: the readiness probe.
    pub fn ready(&self) -> Result<SyncTable> {
        self.read(|tx| Ok(tx.sync()?.0))
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
