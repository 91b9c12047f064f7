//! The storage interface: what a database must do for the data server, and nothing more.
//!
//! The data server's logic (the rotation, scheduling, rollback, the interval, history) is
//! written once, in [`super`] and [`crate::rotation`], against [`Tx`]: one transaction's
//! queries, each returning a typed value. A backend ([`super::sqlite`], [`super::postgres`])
//! only opens connections, migrates its schema, runs a closure in a transaction and answers
//! these queries in its own SQL.
//!
//! A write transaction holds the sync row's lock from its first statement to its commit
//! (`BEGIN IMMEDIATE` in SQLite, `SELECT … FOR UPDATE` in PostgreSQL), so write transactions
//! on one database serialize however many data-server processes share it, and a read inside
//! one sees what the previous one committed.

use std::collections::HashMap;

use lockstep::format::Content;
use lockstep::wire::{KeyInfo, RotationRecord, ScheduledChange, SyncTable, VersionInfo};

use super::{Change, Result};
use crate::audit::AuditEntry;
use crate::farm::Member;
use crate::proof::SwitchRow;

/// How a write transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Durable when the commit returns: edits, schedules, rotations.
    Full,
    /// May be lost in a crash, never corrupted: the farm view and download counts, written
    /// every second, which must not wait for a disk (see [`crate::farm`]).
    Batched,
    /// Durable, in no order with the rotation (PostgreSQL takes no sync row lock): bytes
    /// stored ahead, which the rotation checks for before it names them.
    Unordered,
}

/// A row of `versions` as it is written: everything but the times set later.
pub struct NewVersion<'a> {
    pub number: u64,
    pub bytes: &'a [u8],
    pub checksum: u64,
    /// [`lockstep::format::content_digest`] of the content: equal content, equal digest.
    pub digest: &'a str,
    /// The production generation it was built from; -1 for content that is not production's.
    pub production_gen: i64,
    pub entries: u64,
    pub created_us: i64,
    pub reason: &'a str,
}

/// A row of `scheduled`, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRow {
    pub id: i64,
    pub effective_us: i64,
    pub change: Change,
    pub created_by: String,
    pub created_at_us: i64,
    pub applied_version: Option<u64>,
}

/// A database that holds the data server's state.
pub trait Backend: Send + Sync {
    /// Runs `f` in one write transaction holding the sync row's lock, and commits if it
    /// returns `Ok`. Nothing `f` wrote is kept if it returns an error.
    fn write(
        &self,
        durability: Durability,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>,
    ) -> Result<()>;

    /// Runs `f` on a consistent snapshot, without taking the write lock.
    fn read(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()>;

    /// Gives space freed by retention back, where the database does not do it by itself.
    fn reclaim(&self) -> Result<()> {
        Ok(())
    }
}

/// One transaction's queries. Reads in a write transaction see its own writes.
pub trait Tx {
    // The sync table: one row.
    /// Whether the sync row exists (false only in a new database, before [`Tx::insert_sync`]).
    fn initialised(&mut self) -> Result<bool>;
    fn insert_sync(&mut self, sync: &SyncTable, production_gen: i64) -> Result<()>;
    /// The table and production's generation (bumped by every production change).
    fn sync(&mut self) -> Result<(SyncTable, i64)>;
    fn set_active(&mut self, version: u64, next_activation_us: i64) -> Result<()>;
    fn set_staged(&mut self, version: u64) -> Result<()>;
    fn set_cycle(&mut self, interval_us: i64, min_window_us: i64, activation_us: i64)
        -> Result<()>;
    fn bump_production_gen(&mut self) -> Result<()>;

    // Production.
    fn production(&mut self) -> Result<Content>;
    /// Writes one change; whether it changed anything (a put of the same value does not).
    fn write_production(&mut self, change: &Change, by: &str, now_us: i64) -> Result<bool>;
    fn clear_production(&mut self) -> Result<()>;
    fn production_get(&mut self, key: &[u8]) -> Result<Option<KeyInfo>>;
    /// Entries with keys from `from` on, in key order, at most `limit`.
    fn production_from(&mut self, from: &[u8], limit: usize) -> Result<Vec<KeyInfo>>;
    fn production_count(&mut self) -> Result<u64>;

    // Scheduled changes.
    /// Records a change for `effective_us`; returns its id.
    fn insert_scheduled(
        &mut self,
        effective_us: i64,
        change: &Change,
        by: &str,
        now_us: i64,
    ) -> Result<i64>;
    /// Changes not applied yet and effective by `until_us`, in effective order.
    fn pending_changes_until(&mut self, until_us: i64) -> Result<Vec<(i64, Change)>>;
    fn mark_applied(&mut self, id: i64, version: u64) -> Result<()>;
    /// Whether any change (applied or not) is effective in `(after_us, until_us]`.
    fn scheduled_within(&mut self, after_us: i64, until_us: i64) -> Result<bool>;
    fn scheduled_pending(&mut self) -> Result<Vec<ScheduledChange>>;
    fn scheduled_pending_count(&mut self) -> Result<u64>;
    /// Every scheduled change, applied or not, in id order (for `lockstep migrate`).
    fn scheduled_all(&mut self) -> Result<Vec<ScheduledRow>>;
    /// Writes a row as [`Tx::scheduled_all`] read it, id included.
    fn insert_scheduled_row(&mut self, row: &ScheduledRow) -> Result<()>;
    fn scheduled_count(&mut self) -> Result<u64>;
    /// The highest id a scheduled change has had; 0 for none.
    fn max_scheduled_id(&mut self) -> Result<i64>;

    // Immutable versions.
    fn next_version_number(&mut self) -> Result<u64>;
    fn insert_version(&mut self, v: &NewVersion<'_>) -> Result<()>;
    /// The version's content digest and production generation.
    fn version_digest(&mut self, version: u64) -> Result<Option<(String, i64)>>;
    /// The version's bytes and the checksum it was stored with.
    fn version_bytes(&mut self, version: u64) -> Result<Option<(Vec<u8>, u64)>>;
    fn version_checksum(&mut self, version: u64) -> Result<Option<u64>>;
    fn mark_staged(&mut self, version: u64, at_us: i64) -> Result<()>;
    /// Sets the activation time of a version activated for the first time.
    fn mark_activated(&mut self, version: u64, at_us: i64) -> Result<()>;
    /// The newest `limit` versions, newest first.
    fn history(&mut self, limit: u64) -> Result<Vec<VersionInfo>>;
    fn version_count(&mut self) -> Result<u64>;
    /// Drops the bytes of versions numbered below `below` and created before `before_us`,
    /// except `keep` (the active and staged versions) and pinned ones; their catalogue rows and
    /// change sets stay. Returns how many it dropped.
    fn prune_versions(
        &mut self,
        below: u64,
        before_us: i64,
        keep: [u64; 2],
        now_us: i64,
    ) -> Result<u64>;
    /// Records that a version's bytes were dropped at `at_us` (for `lockstep migrate`).
    fn mark_pruned(&mut self, version: u64, at_us: i64) -> Result<()>;
    /// When a version's bytes were dropped, if they were.
    fn version_pruned(&mut self, version: u64) -> Result<Option<i64>>;

    // The rotation log: its activation time is a unique key.
    fn log_rotation(&mut self, r: &RotationRecord) -> Result<()>;
    fn last_rotation(&mut self) -> Result<Option<i64>>;
    fn rotations(&mut self) -> Result<Vec<RotationRecord>>;
    fn rotation_count(&mut self) -> Result<u64>;

    // The farm and downloads: batched writes.
    /// Upserts the members and deletes those last seen before `expired_before_us`.
    fn write_farm(&mut self, batch: &[Member], expired_before_us: i64) -> Result<()>;
    /// Members seen at or after `since_us`, with `silent_us` and `stale` unset.
    fn farm(&mut self, since_us: i64) -> Result<Vec<Member>>;
    fn add_downloads(&mut self, counts: &HashMap<u64, u64>) -> Result<()>;
    fn downloads(&mut self, oldest: u64, newest: u64) -> Result<HashMap<u64, u64>>;

    // Versions stored ahead of their rotation (see `store::prepare`), change sets (see
    // `store::changeset`) and pins.
    /// Stores a version's bytes, keyed by its checksum, before the rotation of `for_us` that
    /// may use them; a rotation that does not leaves them to [`Tx::drop_orphans`].
    fn insert_blob(&mut self, checksum: u64, bytes: &[u8], for_us: i64, now_us: i64) -> Result<()>;
    /// When the bytes with this checksum were stored ahead, if they are.
    fn blob_stored(&mut self, checksum: u64) -> Result<Option<i64>>;
    /// Inserts a version row whose bytes ([`Tx::insert_blob`]) were stored ahead at
    /// `stored_us`: `v.bytes` is not written, and `size` is their length.
    fn insert_version_ahead(&mut self, v: &NewVersion<'_>, size: u64, stored_us: i64)
        -> Result<()>;
    /// When the version's bytes were stored ahead of its rotation, if they were.
    fn version_stored_ahead(&mut self, version: u64) -> Result<Option<i64>>;
    /// Records what the version with `checksum` changed against version `base`.
    fn insert_changeset(&mut self, checksum: u64, base: u64, changes: &[u8]) -> Result<()>;
    /// The version's change set: its base version and the encoded changes.
    fn changeset(&mut self, version: u64) -> Result<Option<(u64, Vec<u8>)>>;
    /// The lowest-numbered version after `version` whose bytes are kept.
    fn nearest_kept_after(&mut self, version: u64) -> Result<Option<u64>>;
    /// Deletes bytes and change sets stored ahead for a rotation before `before_us` that no
    /// version uses (that rotation staged something else, or its instance died first).
    fn drop_orphans(&mut self, before_us: i64) -> Result<u64>;
    /// Pins or unpins a version; false if it does not exist.
    fn set_pinned(&mut self, version: u64, pinned: bool) -> Result<bool>;
    fn version_pinned(&mut self, version: u64) -> Result<bool>;
    /// The space the database takes, in bytes, as the database counts it.
    fn database_bytes(&mut self) -> Result<u64>;
    /// Deletes the change sets of versions created before `before_us`; returns how many.
    fn prune_changesets(&mut self, before_us: i64) -> Result<u64>;

    // The proof of activation (see `crate::proof`): batched writes.
    /// Upserts switch reports and deletes those reported before `expired_before_us`.
    fn write_switches(&mut self, batch: &[SwitchRow], expired_before_us: i64) -> Result<()>;
    /// Reports of switches to versions `oldest..=newest`.
    fn switches(&mut self, oldest: u64, newest: u64) -> Result<Vec<SwitchRow>>;

    // The audit log (see `crate::audit`).
    fn insert_audit(&mut self, entry: &AuditEntry) -> Result<()>;
    /// The newest `limit` entries, newest first.
    fn audit(&mut self, limit: u64) -> Result<Vec<AuditEntry>>;

    // Urgent activations (see `Store::urgent`).
    /// The urgent window, µs, and whether an urgent request waits for the next rotation.
    fn urgent_state(&mut self) -> Result<(i64, bool)>;
    fn set_urgent_window(&mut self, window_us: i64) -> Result<()>;
    fn set_urgent_queued(&mut self, queued: bool) -> Result<()>;
    /// Records that the activation at `activation_us` was scheduled by an urgent request.
    fn insert_urgent_activation(&mut self, activation_us: i64, by: &str, now_us: i64)
        -> Result<()>;
    /// The urgent activation times in `[from_us, until_us]`, in order.
    fn urgent_activations(&mut self, from_us: i64, until_us: i64) -> Result<Vec<i64>>;

    // Blob URLs (see `crate::blobs`).
    /// The secret blob keys are made with, created by a migration.
    fn blob_secret(&mut self) -> Result<Vec<u8>>;

    // The restage after a rotation that staged a build production had moved on from (see
    // `store::prepare::STALE`).
    /// Makes the rotation log's entry for `activation_us` name `to` as the version it staged
    /// where it names `from`: `to` replaced it before its activation.
    fn relog_staged(&mut self, activation_us: i64, from: u64, to: u64) -> Result<()>;
    /// The rotation log's entry for `activation_us`: the versions it activated and staged,
    /// and the activation time it set.
    fn rotation_at(&mut self, activation_us: i64) -> Result<Option<(u64, u64, i64)>>;
    /// Records (or clears) that the rotation of `activation_us` staged what was built before
    /// production's last changes, so that production is to be restaged after it. Recording
    /// forgets the rotations before it.
    fn set_restage_due(&mut self, activation_us: i64, due: bool) -> Result<()>;
    fn restage_due(&mut self, activation_us: i64) -> Result<bool>;
}
