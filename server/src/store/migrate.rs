//! `lockstep migrate --from lockstep.db --to postgres://…`: moves a data server's whole state
//! (production, scheduled changes, every version with its history, change set and pin, the
//! sync table, the rotation log with its urgent activations and restages due, the urgent
//! window, the audit log and download counts) into an empty database in
//! one transaction, which reads the copy back and checks counts and checksums before it
//! commits. The farm view and the switch reports of the proof of activation are not copied:
//! clients rebuild the farm as they check in. Stop the data servers on the source first: the
//! copy is of one moment.

use lockstep::format;
use lockstep::wire::SyncTable;

use super::backend::{Durability, NewVersion, Tx};
use super::{Change, Location, Result, Store, StoreError};

/// What was copied, and checked equal on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub sync: SyncTable,
    pub production_keys: u64,
    /// [`format::content_digest`] of production.
    pub production_digest: String,
    pub scheduled: u64,
    pub versions: u64,
    /// Every version's number and checksum, oldest first.
    pub checksums: Vec<(u64, u64)>,
    pub rotations: u64,
    /// The urgent window, µs, and whether a request is queued.
    pub urgent: (i64, bool),
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} production keys, {} scheduled changes, {} versions (checksums verified), \
             {} rotations; active version {}, staged {}; urgent window {} µs{}",
            self.production_keys,
            self.scheduled,
            self.versions,
            self.rotations,
            self.sync.active_version,
            self.sync.staged_version,
            self.urgent.0,
            if self.urgent.1 {
                ", an urgent request queued"
            } else {
                ""
            }
        )
    }
}

/// What a database holds, as [`Copied`] compares it.
fn summary(tx: &mut dyn Tx) -> Result<Copied> {
    let (sync, _) = tx.sync()?;
    let production = tx.production()?;
    let mut checksums = Vec::new();
    for info in tx.history(u64::MAX)?.into_iter().rev() {
        let (bytes, checksum) = tx
            .version_bytes(info.version)?
            .ok_or_else(|| StoreError::Corrupt(format!("version {} has no bytes", info.version)))?;
        if tx.version_pruned(info.version)?.is_some() {
            // Retention dropped its content: its catalogue entry is all there is to compare.
            checksums.push((info.version, checksum));
            continue;
        }
        let header = format::verify_checksum(&bytes).map_err(|e| {
            StoreError::Corrupt(format!("version {} is damaged: {e}", info.version))
        })?;
        if header.checksum != checksum || header.version != info.version {
            return Err(StoreError::Corrupt(format!(
                "version {} does not match its catalogue entry",
                info.version
            )));
        }
        checksums.push((info.version, checksum));
    }
    Ok(Copied {
        sync,
        production_keys: production.len() as u64,
        production_digest: format::content_digest(&production),
        scheduled: tx.scheduled_count()?,
        versions: checksums.len() as u64,
        checksums,
        rotations: tx.rotation_count()?,
        urgent: tx.urgent_state()?,
    })
}

/// Copies `from` into `to`, which must be a new database, and checks the copy.
pub fn migrate(from: &Location, to: &Location) -> Result<Copied> {
    if from == to {
        return Err(StoreError::BadRequest(
            "--from and --to are the same database".into(),
        ));
    }
    let source = Store::open_existing(from)?;
    let dest = Store::open_empty(to)?;
    let expected = source.read(summary)?;
    dest.write_with(Durability::Full, |out| {
        if out.initialised()? || out.version_count()? > 0 {
            return Err(StoreError::Conflict(format!(
                "{to} already holds a data server's state; migrate into a new, empty database"
            )));
        }
        source.read(|tx| copy(tx, out))?;
        // Checked before the commit: a copy that differs leaves nothing behind.
        let copied = summary(out)?;
        if copied != expected {
            return Err(StoreError::Corrupt(format!(
                "the copy differs from the source, so nothing was written (source: \
                 {expected}; copy: {copied})"
            )));
        }
        Ok(copied)
    })
}

/// Everything but the farm, from `tx` to `out`: versions first, which the sync row names.
fn copy(tx: &mut dyn Tx, out: &mut dyn Tx) -> Result<()> {
    for info in tx.history(u64::MAX)?.into_iter().rev() {
        let n = info.version;
        let missing = || StoreError::Corrupt(format!("version {n} is incomplete"));
        let (bytes, checksum) = tx.version_bytes(n)?.ok_or_else(missing)?;
        let (digest, production_gen) = tx.version_digest(n)?.ok_or_else(missing)?;
        let row = NewVersion {
            number: n,
            bytes: &bytes,
            checksum,
            digest: &digest,
            production_gen,
            entries: info.entries,
            created_us: info.created_us,
            reason: &info.reason,
        };
        // Stored as the source stores it: bytes stored ahead of their rotation stay so.
        match tx.version_stored_ahead(n)? {
            Some(at) => {
                if !bytes.is_empty() {
                    out.insert_blob(checksum, &bytes, at, at)?;
                }
                out.insert_version_ahead(&row, info.size, at)?;
            }
            None => out.insert_version(&row)?,
        }
        if let Some((base, changes)) = tx.changeset(n)? {
            out.insert_changeset(checksum, base, &changes)?;
        }
        if tx.version_pinned(n)? {
            out.set_pinned(n, true)?;
        }
        if let Some(at) = info.staged_us {
            out.mark_staged(n, at)?;
        }
        if let Some(at) = info.activated_us {
            out.mark_activated(n, at)?;
        }
        if let Some(at) = tx.version_pruned(n)? {
            out.mark_pruned(n, at)?;
        }
    }
    let (sync, production_gen) = tx.sync()?;
    out.insert_sync(&sync, production_gen)?;
    for info in tx.production_from(&[], usize::MAX)? {
        let (Some(key), Some(value)) = (info.key.into_bytes().ok(), info.value.into_bytes().ok())
        else {
            return Err(StoreError::Corrupt(
                "a production entry does not decode".into(),
            ));
        };
        out.write_production(
            &Change::Put(key, value),
            &info.changed_by,
            info.changed_at_us,
        )?;
    }
    for row in tx.scheduled_all()? {
        out.insert_scheduled_row(&row)?;
    }
    for r in tx.rotations()? {
        out.log_rotation(&r)?;
        // A restage after this rotation that is still due carries its edits to T'.
        if tx.restage_due(r.activation_time_us)? {
            out.set_restage_due(r.activation_time_us, true)?;
        }
    }
    // Urgent activation: its window, a request queued for the next rotation, and which
    // activation times urgent requests scheduled (the grid resumes after each).
    let (window_us, queued) = tx.urgent_state()?;
    out.set_urgent_window(window_us)?;
    out.set_urgent_queued(queued)?;
    for at in tx.urgent_activations(i64::MIN, i64::MAX)? {
        out.insert_urgent_activation(at, "migrate", at)?;
    }
    // The audit log, oldest first, so its order (and who did what) carries over.
    for entry in tx.audit(u64::MAX)?.into_iter().rev() {
        out.insert_audit(&entry)?;
    }
    let downloads = tx.downloads(0, i64::MAX as u64)?;
    out.add_downloads(&downloads)
}
