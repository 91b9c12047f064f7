//! The next staged version, built ahead of its rotation.
//!
//! The rotation at T moves production (with the scheduled changes due by the next activation)
//! into a new staged version. Encoding that version takes time in proportion to the data, and
//! the rotation holds the write lock that every other check-in at T waits for. So shortly
//! before T (see [`lead_us`]) each data server encodes the version the rotation will need, in
//! memory and outside any lock, and stores the bytes (with the version's change set) in a
//! transaction of their own, keyed by checksum, before T. Built for T (the header's time is
//! T), they are the same on every instance, and only the first stores them. The rotation then only writes a
//! version row naming them, if nothing it depends on has changed since ([`Basis`]) and they
//! are still there; it encodes as before otherwise. Bytes that no rotation used (their basis
//! changed, or the instance died between storing them and T) are deleted by retention
//! ([`super::backend::Tx::drop_orphans`]) once their activation time has passed.

use lockstep::format::{self, Content};

use super::backend::Tx;
use super::{changeset, Result, StoreError};
use crate::rotation;

/// Everything the rotation's new staged version depends on. Equal bases, equal versions:
/// production changes only with its generation, the scheduled changes due by `next` change
/// only by a new change (a higher id) or by being applied (which changes the generation), and
/// the number is the next free one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basis {
    pub production_gen: i64,
    pub max_scheduled_id: i64,
    /// The activation time being rotated, and the one after it.
    pub due_us: i64,
    pub next_us: i64,
    pub number: u64,
}

/// A version encoded for a rotation.
pub struct Prepared {
    pub basis: Basis,
    /// The production generation after the due scheduled changes.
    pub production_gen: i64,
    pub digest: String,
    /// The encoded version; emptied once stored ahead.
    pub bytes: Vec<u8>,
    pub size: u64,
    pub checksum: u64,
    pub entries: u64,
    pub created_us: i64,
    /// The staged version it replaces, and the encoded change set against it.
    pub base: u64,
    pub changes: Vec<u8>,
    /// When the bytes were stored ahead ([`super::backend::Tx::insert_blob`]), if they were.
    pub stored_us: Option<i64>,
}

/// How long before the activation time a data server builds the next version: the minimum
/// window (clients download in it, so the data server is expected to be busy then anyway), at
/// most 5 s; or, for data whose last build took `took_us`, twice that, so that it is stored
/// by T; never more than the interval.
pub fn lead_us(min_window_us: i64, took_us: i64, interval_us: i64) -> i64 {
    min_window_us
        .min(5_000_000)
        .max(took_us.saturating_mul(2))
        .min(interval_us)
}

/// The basis of the rotation of `due_us`, as `tx` sees it, if that rotation comes on time
/// (at `now_us`).
pub fn basis(tx: &mut dyn Tx, now_us: i64) -> Result<Basis> {
    let (sync, production_gen) = tx.sync()?;
    let due_us = sync.activation_time_us;
    let next_us = rotation::next_activation(
        due_us,
        sync.interval_us,
        sync.min_window_us,
        now_us.max(due_us),
    )
    .ok_or_else(|| super::overflow("the next activation time"))?;
    Ok(Basis {
        production_gen,
        max_scheduled_id: tx.max_scheduled_id()?,
        due_us,
        next_us,
        number: tx.next_version_number()?,
    })
}

/// Encodes the version the rotation of `basis` would stage; `None` if it would keep the
/// staged version (production has not changed since it was built).
pub fn prepare(tx: &mut dyn Tx, basis: Basis) -> Result<Option<Prepared>> {
    let (sync, _) = tx.sync()?;
    let due = tx.pending_changes_until(basis.next_us)?;
    let production_gen = basis.production_gen + i64::from(!due.is_empty());
    let (staged_digest, staged_gen) = super::staging::version_digest(tx, sync.staged_version)?;
    if staged_gen == production_gen {
        return Ok(None);
    }
    let mut content: Content = tx.production()?;
    for (_, change) in &due {
        change.apply_to(&mut content);
    }
    build(
        tx,
        basis,
        production_gen,
        sync.staged_version,
        &staged_digest,
        content,
    )
}

/// Why a version was made, for one that a rotation staged from a build that production had
/// moved on from (an edit or a schedule after the build): production is restaged right after
/// its activation time ([`restage_basis`]).
pub const STALE: &str = "rotation, built before the last edits (restaged after)";

/// Why a version was made, for the restage that replaces a [`STALE`] one.
pub const RESTAGED: &str = "rotation, restaged with the edits made after its build";

/// The basis of the restage of production after the rotation of the activation time before
/// the table's, at `now_us`, if one is due: that rotation staged what was built shortly before
/// T while production moved on since (an edit or a schedule too late to build for: a
/// [`STALE`] version, or the staged version kept, see [`unchanged`]), and the staged version
/// is still the one it staged. Only while clients have the minimum window left to download
/// the restaged version before its activation time, and a check-in period to hear of it.
/// `due_us` is the activation time the rotation was for, `next_us` the one the restaged
/// version goes live at. A few small reads.
pub fn restage_basis(tx: &mut dyn Tx, now_us: i64) -> Result<Option<Basis>> {
    let (sync, production_gen) = tx.sync()?;
    // A client that does not long-poll hears of the restage at its next check-in, up to a
    // check-in period away: later than that before T', it may activate the version staged
    // now while the rest switch to the restaged one. The version then stays as staged and
    // the edits it lacks go live at the activation after T'.
    let lead = sync
        .min_window_us
        .max(rotation::checkin_period_us(sync.interval_us));
    if now_us.saturating_add(lead) > sync.activation_time_us {
        return Ok(None);
    }
    let Some(due_us) = tx.last_rotation()? else {
        return Ok(None);
    };
    let Some((_, staged, next_us)) = tx.rotation_at(due_us)? else {
        return Ok(None);
    };
    if next_us != sync.activation_time_us
        || staged != sync.staged_version
        || !tx.restage_due(due_us)?
    {
        tracing::trace!(next_us, staged, "no restage due");
        return Ok(None);
    }
    let (_, staged_gen) = super::staging::version_digest(tx, staged)?;
    if staged_gen == production_gen {
        tracing::trace!(staged_gen, "no restage due: production unchanged");
        return Ok(None);
    }
    Ok(Some(Basis {
        production_gen,
        max_scheduled_id: tx.max_scheduled_id()?,
        due_us,
        next_us,
        number: tx.next_version_number()?,
    }))
}

/// What a rotation of `basis` stages when production is the staged version's (as a build
/// shortly before T found it): the staged version itself. Held as the build ahead, so that a
/// rotation after an edit that came too late to build for keeps the staged version instead
/// of encoding under its lock, and production is restaged after T ([`restage_basis`]).
pub fn unchanged(tx: &mut dyn Tx, basis: Basis) -> Result<Prepared> {
    let (sync, _) = tx.sync()?;
    let (digest, production_gen) = super::staging::version_digest(tx, sync.staged_version)?;
    Ok(Prepared {
        basis,
        production_gen,
        digest,
        bytes: Vec::new(),
        size: 0,
        checksum: 0,
        entries: 0,
        created_us: basis.due_us,
        base: sync.staged_version,
        changes: Vec::new(),
        stored_us: None,
    })
}

/// Encodes production as the version that replaces the [`STALE`] staged one (`basis` from
/// [`restage_basis`]); `None` if its content is the staged version's. The scheduled changes
/// due by `basis.next_us` are in production already: the rotation applied them.
pub fn prepare_restage(tx: &mut dyn Tx, basis: Basis) -> Result<Option<Prepared>> {
    let (sync, _) = tx.sync()?;
    let (staged_digest, _) = super::staging::version_digest(tx, sync.staged_version)?;
    let content: Content = tx.production()?;
    build(
        tx,
        basis,
        basis.production_gen,
        sync.staged_version,
        &staged_digest,
        content,
    )
}

/// Encodes `content` as the version `basis` names, with its change set against `staged`;
/// `None` if it is the staged version's content.
fn build(
    tx: &mut dyn Tx,
    basis: Basis,
    production_gen: i64,
    staged: u64,
    staged_digest: &str,
    content: Content,
) -> Result<Option<Prepared>> {
    let digest = format::content_digest(&content);
    if digest == staged_digest {
        return Ok(None);
    }
    // From the basis, not the clock: every instance that builds for this rotation makes the
    // same bytes, so they are stored once (see `Store::prepare_next`).
    let created_us = basis.due_us;
    let bytes = format::encode(basis.number, created_us, &content)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let header = format::read_header(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let (staged_bytes, _) = super::staging::stored_bytes(tx, staged)?;
    let changes = changeset::encode(&changeset::between(&staged_bytes, &content)?)?;
    Ok(Some(Prepared {
        basis,
        production_gen,
        digest,
        checksum: header.checksum,
        entries: content.len() as u64,
        size: bytes.len() as u64,
        bytes: bytes.to_vec(),
        created_us,
        base: staged,
        changes,
        stored_us: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{Change, Location, Store, SyncSettings};

    const S: i64 = 1_000_000;

    fn store(dir: &std::path::Path) -> Store {
        let settings = SyncSettings {
            interval_us: 10 * S,
            min_window_us: 5 * S,
        };
        let at = Location::Sqlite(dir.join("db"));
        let s = Store::open(&at, settings, crate::clock::now_us()).unwrap();
        // These tests stand for data too large to encode under the rotation's lock.
        s.set_inline_encode_max_us(0);
        s
    }

    /// A store whose data is cheap enough to encode at T.
    fn cheap_store(dir: &std::path::Path) -> Store {
        let s = store(dir);
        s.set_inline_encode_max_us(i64::MAX);
        s
    }

    fn put(s: &Store, value: &str) {
        let change = Change::Put(b"price".to_vec(), value.as_bytes().to_vec());
        s.apply(
            &[change],
            "test",
            crate::clock::now_us(),
            &super::super::unaudited,
        )
        .unwrap();
    }

    fn staged_price(s: &Store) -> Vec<u8> {
        let sync = s.sync_table().unwrap();
        let content = s.version_content(sync.staged_version).unwrap();
        content[&b"price"[..]].clone()
    }

    #[test]
    fn a_rotation_stores_the_version_built_ahead_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        let (sync, rotated) = s.rotate_if_due(t + 1, "test").unwrap();
        assert!(rotated);
        assert_eq!(staged_price(&s), b"a");
        let row = s.history(1).unwrap().remove(0);
        assert_eq!(row.info.version, sync.staged_version);
        assert!(
            row.info.created_us == t && row.stored_ahead_us.is_some_and(|at| at < t),
            "not the version built ahead: {row:?}"
        );
    }

    fn newest_reason(s: &Store) -> String {
        s.history(1).unwrap().remove(0).info.reason
    }

    #[test]
    fn the_herd_rotation_encodes_nothing_when_an_edit_came_after_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        put(&s, "b");
        let encoded = super::super::staging::encoded_on_this_thread();
        let (sync, rotated) = s.rotate_if_due(t + 1, "test").unwrap();
        assert!(rotated);
        assert_eq!(
            super::super::staging::encoded_on_this_thread(),
            encoded,
            "the rotation encoded a version under the write lock"
        );
        // The build, as it was: production is restaged after T, before T'.
        assert_eq!(staged_price(&s), b"a");
        assert_eq!(newest_reason(&s), super::STALE);
        let t_next = sync.activation_time_us;
        assert!(
            !s.restage_stale(t_next - S).unwrap(),
            "restaged inside the window"
        );
        assert!(s.restage_stale(t + 2).unwrap());
        let after = s.sync_table().unwrap();
        assert_eq!(staged_price(&s), b"b");
        assert_eq!(newest_reason(&s), super::RESTAGED);
        assert_eq!(
            after.activation_time_us, t_next,
            "the activation time moved"
        );
        assert_eq!(after.active_version, sync.active_version);
        assert!(after.staged_version > sync.staged_version);
        // The rotation log names what goes live at T', so its chain stays whole.
        let logged = s.rotations().unwrap();
        let at_t = logged.iter().find(|r| r.activation_time_us == t).unwrap();
        assert_eq!(at_t.staged_version, after.staged_version);
        // Once: a restaged version is not restaged again.
        assert!(!s.restage_stale(t + 3).unwrap());
    }

    #[test]
    fn a_rotation_after_an_edit_too_late_to_build_for_keeps_the_staged_version_and_restages_after_t(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        s.rotate_if_due(t + 1, "test").unwrap();
        let t2 = s.sync_table().unwrap().activation_time_us;
        // Production is the staged version's shortly before T: nothing to build.
        assert!(!s.prepare_next(t2 - S).unwrap());
        put(&s, "b");
        let encoded = super::super::staging::encoded_on_this_thread();
        let (sync, rotated) = s.rotate_if_due(t2 + 1, "test").unwrap();
        assert!(rotated);
        assert_eq!(
            super::super::staging::encoded_on_this_thread(),
            encoded,
            "the rotation encoded a version under the write lock"
        );
        assert_eq!(sync.staged_version, sync.active_version);
        // Not once the minimum window before T' has begun: clients could not download it.
        assert!(!s.restage_stale(sync.activation_time_us - S).unwrap());
        assert!(s.restage_stale(t2 + 2).unwrap());
        let after = s.sync_table().unwrap();
        assert_eq!(staged_price(&s), b"b");
        assert_eq!(after.activation_time_us, sync.activation_time_us);
        let logged = s.rotations().unwrap();
        let at_t2 = logged.iter().find(|r| r.activation_time_us == t2).unwrap();
        assert_eq!(at_t2.staged_version, after.staged_version);
        assert!(!s.restage_stale(t2 + 3).unwrap());
    }

    #[test]
    fn a_rotation_with_nothing_built_for_t_keeps_the_staged_version_and_restages_after_t() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        s.rotate_if_due(t + 1, "test").unwrap();
        let t2 = s.sync_table().unwrap().activation_time_us;
        // The build for T2 did not finish in time (none is held), and an edit came.
        put(&s, "b");
        let encoded = super::super::staging::encoded_on_this_thread();
        let (sync, rotated) = s.rotate_if_due(t2 + 1, "test").unwrap();
        assert!(rotated);
        assert_eq!(
            super::super::staging::encoded_on_this_thread(),
            encoded,
            "the rotation encoded a version under the write lock"
        );
        assert_eq!(sync.staged_version, sync.active_version);
        assert!(s.restage_stale(t2 + 2).unwrap(), "no restage after T");
        let after = s.sync_table().unwrap();
        assert_eq!(staged_price(&s), b"b");
        assert_eq!(after.activation_time_us, sync.activation_time_us);
        let logged = s.rotations().unwrap();
        let at_t2 = logged.iter().find(|r| r.activation_time_us == t2).unwrap();
        assert_eq!(at_t2.staged_version, after.staged_version);
    }

    #[test]
    fn a_rotation_encodes_cheap_data_rather_than_stage_a_build_production_moved_on_from() {
        let dir = tempfile::tempdir().unwrap();
        let s = cheap_store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        put(&s, "b");
        let (sync, rotated) = s.rotate_if_due(t + 1, "test").unwrap();
        assert!(rotated);
        // The edit is in the version staged at T: it goes live at T' with no restage, which
        // very short intervals leave no time for.
        assert_eq!(staged_price(&s), b"b");
        assert_eq!(newest_reason(&s), "rotation");
        assert!(!s.restage_stale(t + 2).unwrap());
        assert_eq!(s.sync_table().unwrap().staged_version, sync.staged_version);
        // With nothing built for T, too, cheap data is encoded at T.
        put(&s, "c");
        let t2 = sync.activation_time_us;
        s.rotate_if_due(t2 + 1, "test").unwrap();
        assert_eq!(staged_price(&s), b"c");
    }

    #[test]
    fn a_restage_after_t_that_failed_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        put(&s, "b");
        s.rotate_if_due(t + 1, "test").unwrap();
        // The database refuses the version row once (as a busy database or a reconnect
        // would fail the transaction), after the bytes were stored.
        let db = rusqlite::Connection::open(dir.path().join("db")).unwrap();
        db.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON versions
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
        let err = s.restage_stale(t + 2).unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        db.execute_batch("DROP TRIGGER refuse").unwrap();
        assert!(
            s.restage_stale(t + 3).unwrap(),
            "the failed restage was not tried again"
        );
        assert_eq!(staged_price(&s), b"b");
        assert_eq!(newest_reason(&s), super::RESTAGED);
    }

    #[test]
    fn no_restage_after_t_later_than_a_checkin_period_before_its_activation() {
        let dir = tempfile::tempdir().unwrap();
        // Clients check in every 15 s; the minimum window is 1 s.
        let settings = SyncSettings {
            interval_us: 60 * S,
            min_window_us: S,
        };
        let at = Location::Sqlite(dir.path().join("db"));
        let s = Store::open(&at, settings, crate::clock::now_us()).unwrap();
        s.set_inline_encode_max_us(0);
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S / 2).unwrap());
        put(&s, "b");
        let (sync, _) = s.rotate_if_due(t + 1, "test").unwrap();
        let t_next = sync.activation_time_us;
        // Inside the window's lead but not a check-in period's: a client that checked in
        // just before would activate the version staged now at T'.
        assert!(
            !s.restage_stale(t_next - 10 * S).unwrap(),
            "restaged less than a check-in period before its activation"
        );
        assert_eq!(staged_price(&s), b"a");
        assert!(s.restage_stale(t_next - 16 * S).unwrap());
        assert_eq!(staged_price(&s), b"b");
    }

    #[test]
    fn a_change_scheduled_for_t_next_while_a_restage_is_due_keeps_the_edits() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        put(&s, "b");
        let (sync, _) = s.rotate_if_due(t + 1, "test").unwrap();
        assert_eq!(newest_reason(&s), super::STALE);
        // Before the restage: a change for T', which rebuilds the staged version.
        let change = Change::Put(b"fee".to_vec(), b"scheduled".to_vec());
        let live = s
            .schedule(&change, t + 3 * S, "test", t + 2, &super::super::unaudited)
            .unwrap();
        assert_eq!(live, sync.activation_time_us);
        let after = s.sync_table().unwrap();
        let content = s.version_content(after.staged_version).unwrap();
        assert_eq!(
            content[&b"price"[..]],
            b"b",
            "the edit after the build waits for T''"
        );
        assert_eq!(content[&b"fee"[..]], b"scheduled");
        assert_eq!(after.activation_time_us, sync.activation_time_us);
        let logged = s.rotations().unwrap();
        let at_t = logged.iter().find(|r| r.activation_time_us == t).unwrap();
        assert_eq!(at_t.staged_version, after.staged_version);
        // Nothing left for the preparing thread.
        assert!(!s.restage_stale(t + 3).unwrap());
        assert_eq!(s.sync_table().unwrap().staged_version, after.staged_version);
    }

    #[test]
    fn a_restage_after_t_gives_way_to_a_staged_version_changed_since() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let other = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        put(&s, "b");
        s.rotate_if_due(t + 1, "test").unwrap();
        // Another instance restages first: this one finds nothing left to do.
        assert!(other.restage_stale(t + 2).unwrap());
        let staged = s.sync_table().unwrap().staged_version;
        assert!(!s.restage_stale(t + 3).unwrap());
        assert_eq!(s.sync_table().unwrap().staged_version, staged);
        assert_eq!(staged_price(&s), b"b");
    }

    #[test]
    fn a_change_scheduled_after_the_build_for_the_next_activation_is_in_the_version_staged() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        // Due at the activation after T, scheduled after the build, with an edit as well.
        let change = Change::Put(b"price".to_vec(), b"scheduled".to_vec());
        s.schedule(
            &change,
            t + 5 * S,
            "test",
            crate::clock::now_us(),
            &super::super::unaudited,
        )
        .unwrap();
        put(&s, "b");
        s.rotate_if_due(t + 1, "test").unwrap();
        assert!(s.restage_stale(t + 2).unwrap());
        assert_eq!(staged_price(&s), b"scheduled");
    }

    fn blob_stored(s: &Store, checksum: u64) -> Option<i64> {
        s.read(|tx| tx.blob_stored(checksum)).unwrap()
    }

    fn retention() -> super::super::Retention {
        super::super::Retention {
            keep_versions: 100,
            keep_for_us: 3_600 * S,
            keep_changes_for_us: 3_600 * S,
        }
    }

    #[test]
    fn the_rotation_names_bytes_stored_before_it_and_writes_none() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        let checksum = {
            let held = s.prepared.lock().unwrap();
            let p = held.as_ref().unwrap();
            assert!(
                p.stored_us.is_some() && p.bytes.is_empty(),
                "not stored ahead"
            );
            p.checksum
        };
        let stored = blob_stored(&s, checksum).expect("no bytes stored ahead");
        let (sync, _) = s.rotate_if_due(t + 1, "test").unwrap();
        let row = s.history(1).unwrap().remove(0);
        assert_eq!(row.info.version, sync.staged_version);
        assert_eq!(row.stored_ahead_us, Some(stored));
        assert_eq!(s.version_checksum(sync.staged_version).unwrap(), checksum);
        assert_eq!(staged_price(&s), b"a");
        // Used, so retention keeps them.
        s.prune(retention(), crate::clock::now_us()).unwrap();
        assert_eq!(blob_stored(&s, checksum), Some(stored));
    }

    #[test]
    fn a_second_instance_builds_the_same_bytes_and_does_not_write_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let other = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        let first = s.prepared.lock().unwrap().as_ref().unwrap().checksum;
        let stored = blob_stored(&s, first).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(other.prepare_next(t - S / 2).unwrap());
        let held = other.prepared.lock().unwrap();
        let second = held.as_ref().unwrap();
        assert_eq!(
            second.checksum, first,
            "the instances built different bytes"
        );
        assert_eq!(second.stored_us, Some(stored));
        assert_eq!(blob_stored(&s, first), Some(stored), "written again");
    }

    #[test]
    fn bytes_stored_ahead_that_no_rotation_used_are_deleted_after_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "a");
        let t = s.sync_table().unwrap().activation_time_us;
        assert!(s.prepare_next(t - S).unwrap());
        let checksum = s.prepared.lock().unwrap().as_ref().unwrap().checksum;
        // The instance dies between storing them and T: another rotates without them.
        drop(s);
        let s = cheap_store(dir.path());
        s.prune(retention(), crate::clock::now_us()).unwrap();
        assert!(
            blob_stored(&s, checksum).is_some(),
            "deleted before their T"
        );
        let (sync, rotated) = s.rotate_if_due(t + 1, "test").unwrap();
        assert!(rotated);
        assert_eq!(staged_price(&s), b"a");
        assert_ne!(s.version_checksum(sync.staged_version).unwrap(), checksum);
        assert_eq!(s.history(1).unwrap()[0].stored_ahead_us, None);
        s.prune(retention(), crate::clock::now_us()).unwrap();
        assert_eq!(blob_stored(&s, checksum), None, "an orphan was kept");
    }

    #[test]
    fn nothing_is_built_before_the_lead_or_for_unchanged_production() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let t = s.sync_table().unwrap().activation_time_us;
        // Production is the staged version's: nothing to build.
        assert!(!s.prepare_next(t - S).unwrap());
        put(&s, "a");
        // Earlier than the minimum window before the activation time.
        assert!(!s.prepare_next(t - 6 * S).unwrap());
        assert!(s.prepare_next(t - S).unwrap());
        // Built once for what the database holds.
        assert!(!s.prepare_next(t - S / 2).unwrap());
    }
}
