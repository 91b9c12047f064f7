//! Building versions: encoding content as a new immutable version and making it the staged one.
//! Used by the rotation, a scheduled change for the staged activation, and a rollback.

use lockstep::format::{self, Content};

use super::backend::{NewVersion, Tx};
use super::{changeset, Result, StoreError};

thread_local! {
    /// Versions this thread encoded in [`insert_version`]: what the rotation path would encode
    /// under the write lock, counted so that a test can tell it did not.
    static ENCODED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many versions this thread has encoded in [`insert_version`].
#[cfg(test)]
pub fn encoded_on_this_thread() -> u64 {
    ENCODED.with(|n| n.get())
}

/// Encodes `content` as a new immutable version and stores it. Returns its number.
pub fn insert_version(
    tx: &mut dyn Tx,
    content: &Content,
    digest: &str,
    production_gen: i64,
    now_us: i64,
    reason: &str,
) -> Result<u64> {
    let number = tx.next_version_number()?;
    ENCODED.with(|n| n.set(n.get() + 1));
    let bytes =
        format::encode(number, now_us, content).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let header = format::read_header(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.insert_version(&NewVersion {
        number,
        bytes: &bytes,
        checksum: header.checksum,
        digest,
        production_gen,
        entries: content.len() as u64,
        created_us: now_us,
        reason,
    })?;
    Ok(number)
}

/// The content digest and production generation of a stored version.
pub fn version_digest(tx: &mut dyn Tx, version: u64) -> Result<(String, i64)> {
    tx.version_digest(version)?
        .ok_or_else(|| StoreError::Corrupt(format!("version {version} is missing")))
}

/// Makes `content` the staged version, reusing `staged` (the staged version now) when its
/// content is the same. Returns the staged version.
pub fn restage(
    tx: &mut dyn Tx,
    staged: u64,
    content: &Content,
    production_gen: i64,
    now_us: i64,
    reason: &str,
) -> Result<u64> {
    let digest = format::content_digest(content);
    let (staged_digest, _) = version_digest(tx, staged)?;
    if digest == staged_digest {
        return Ok(staged);
    }
    let v = insert_version(tx, content, &digest, production_gen, now_us, reason)?;
    record_changes(tx, v, staged, content)?;
    tx.mark_staged(v, now_us)?;
    tx.set_staged(v)?;
    Ok(v)
}

/// Records what version `v` (with `content`) changes against `base`, the staged version it
/// replaces, so that its content can be rebuilt once retention drops its bytes.
fn record_changes(tx: &mut dyn Tx, v: u64, base: u64, content: &Content) -> Result<()> {
    let (Some((old, _)), Some(checksum)) = (tx.version_bytes(base)?, tx.version_checksum(v)?)
    else {
        return Ok(());
    };
    if old.is_empty() {
        return Ok(());
    }
    let changes = changeset::encode(&changeset::between(&old, content)?)?;
    tx.insert_changeset(checksum, base, &changes)
}

/// Makes a version built ahead of the rotation (its basis checked by the caller) the staged
/// version, where `staged` is the staged version now, giving `reason` as why it was made. Its
/// bytes were stored ahead, so this writes only a version row that names them; if they were
/// not (the database was out of reach then) the bytes held in memory are written here. `None`
/// if neither is there: the caller encodes.
pub fn stage_prepared(
    tx: &mut dyn Tx,
    staged: u64,
    p: &super::prepare::Prepared,
    now_us: i64,
    reason: &str,
) -> Result<Option<u64>> {
    let (staged_digest, _) = version_digest(tx, staged)?;
    if p.digest == staged_digest {
        return Ok(Some(staged));
    }
    let row = NewVersion {
        number: p.basis.number,
        bytes: &p.bytes,
        checksum: p.checksum,
        digest: &p.digest,
        production_gen: p.production_gen,
        entries: p.entries,
        created_us: p.created_us,
        reason,
    };
    let stored = match p.stored_us {
        Some(_) => tx.blob_stored(p.checksum)?,
        None => None,
    };
    match stored {
        Some(at) => tx.insert_version_ahead(&row, p.size, at)?,
        None if !p.bytes.is_empty() => {
            tx.insert_version(&row)?;
            tx.insert_changeset(p.checksum, p.base, &p.changes)?;
        }
        None => return Ok(None),
    }
    tx.mark_staged(p.basis.number, now_us)?;
    tx.set_staged(p.basis.number)?;
    Ok(Some(p.basis.number))
}

/// Makes production (at generation `gen`) the staged version, where `staged` is the staged
/// version now; production is read and encoded only if `staged` was not built from it.
pub fn restage_production(
    tx: &mut dyn Tx,
    staged: u64,
    gen: i64,
    now_us: i64,
    reason: &str,
) -> Result<u64> {
    let (_, staged_gen) = version_digest(tx, staged)?;
    if staged_gen == gen {
        return Ok(staged);
    }
    let content = tx.production()?;
    restage(tx, staged, &content, gen, now_us, reason)
}

/// A stored version's bytes and checksum; a clear error if it does not exist or retention
/// dropped its bytes.
pub fn stored_bytes(tx: &mut dyn Tx, version: u64) -> Result<(Vec<u8>, u64)> {
    let (bytes, checksum) = tx
        .version_bytes(version)?
        .ok_or_else(|| StoreError::NotFound(format!("version {version} does not exist")))?;
    if bytes.is_empty() {
        if let Some(at) = tx.version_pruned(version)? {
            return Err(StoreError::NotFound(format!(
                "version {version} is only in history: retention dropped its content at {} \
                 (lockstep serve --keep-versions, --keep-for)",
                crate::clock::format_us(at)
            )));
        }
    }
    Ok((bytes, checksum))
}

/// Reads, verifies and decodes a stored version inside a transaction; one whose bytes
/// retention dropped is rebuilt from change sets (see [`changeset::rebuild`]).
pub fn version_content(tx: &mut dyn Tx, version: u64) -> Result<Content> {
    if tx.version_pruned(version)?.is_some() {
        return changeset::rebuild(tx, version);
    }
    let (bytes, _) = stored_bytes(tx, version)?;
    let (_, map) = format::decode(&bytes)
        .map_err(|e| StoreError::Corrupt(format!("stored version {version} is damaged: {e}")))?;
    Ok(map)
}
