//! Key-level change sets: what a version changed against the version it replaced, kept when
//! retention drops the version's full bytes, so that history, diff and rollback still reach it.
//!
//! A change set holds only the keys that differ, each with its value before and after, so it
//! can be applied forwards (from an older full version) or backwards (from a newer one).
//! Rebuilt content is used only if its digest is the one the version was stored with.
//!
//! Encoding (little-endian): per entry, the key's length (u32) and bytes, a flags byte (1: a
//! value before, 2: a value after), then each value present as length (u32) and bytes.

use lockstep::format::{self, Content};

use super::backend::Tx;
use super::{Result, StoreError};

/// One key's change: its value before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub key: Vec<u8>,
    pub old: Option<Vec<u8>>,
    pub new: Option<Vec<u8>>,
}

/// How many change sets a rebuild follows at most, either way.
const MAX_STEPS: usize = 100_000;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("a stored change set is damaged: {what}"))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<()> {
    let len = u32::try_from(b.len()).map_err(|_| corrupt("a key or value over 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

pub fn encode(changes: &[KeyChange]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for c in changes {
        put_bytes(&mut out, &c.key)?;
        out.push(u8::from(c.old.is_some()) | (u8::from(c.new.is_some()) << 1));
        for v in [&c.old, &c.new].into_iter().flatten() {
            put_bytes(&mut out, v)?;
        }
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("it ends inside an entry"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let mut len = [0u8; 4];
        len.copy_from_slice(self.take(4)?);
        Ok(self.take(u32::from_le_bytes(len) as usize)?.to_vec())
    }
}

pub fn decode(bytes: &[u8]) -> Result<Vec<KeyChange>> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let key = r.bytes()?;
        let flags = r.take(1)?[0];
        if flags > 3 {
            return Err(corrupt("unknown flags"));
        }
        let old = if flags & 1 != 0 {
            Some(r.bytes()?)
        } else {
            None
        };
        let new = if flags & 2 != 0 {
            Some(r.bytes()?)
        } else {
            None
        };
        out.push(KeyChange { key, old, new });
    }
    Ok(out)
}

/// The keys whose values differ from `old` (a stored version's bytes) to `new`. Reads `old`
/// in place (its structure checked), without decoding it into a map.
pub fn between(old: &[u8], new: &Content) -> Result<Vec<KeyChange>> {
    let aligned = format::aligned_copy(old);
    let (_, entries) = format::validate(&aligned)
        .map_err(|e| StoreError::Corrupt(format!("a stored version is damaged: {e}")))?;
    let mut out = Vec::new();
    for (k, v) in new {
        let before = format::lookup(entries, k);
        if before != Some(v.as_slice()) {
            out.push(KeyChange {
                key: k.clone(),
                old: before.map(<[u8]>::to_vec),
                new: Some(v.clone()),
            });
        }
    }
    for (k, v) in entries.map.iter() {
        if !new.contains_key(k.as_slice()) {
            out.push(KeyChange {
                key: k.as_slice().to_vec(),
                old: Some(v.as_slice().to_vec()),
                new: None,
            });
        }
    }
    Ok(out)
}

fn set(content: &mut Content, key: &[u8], value: &Option<Vec<u8>>) {
    match value {
        Some(v) => {
            content.insert(key.to_vec(), v.clone());
        }
        None => {
            content.remove(key);
        }
    }
}

fn forward(content: &mut Content, changes: &[KeyChange]) {
    for c in changes {
        set(content, &c.key, &c.new);
    }
}

fn backward(content: &mut Content, changes: &[KeyChange]) {
    for c in changes {
        set(content, &c.key, &c.old);
    }
}

/// The full content of a version still stored whole; `None` if retention dropped it.
fn full(tx: &mut dyn Tx, version: u64) -> Result<Option<Content>> {
    if tx.version_pruned(version)?.is_some() {
        return Ok(None);
    }
    match tx.version_bytes(version)? {
        Some((bytes, _)) if !bytes.is_empty() => {
            let (_, map) = format::decode(&bytes).map_err(|e| {
                StoreError::Corrupt(format!("stored version {version} is damaged: {e}"))
            })?;
            Ok(Some(map))
        }
        _ => Ok(None),
    }
}

/// From an older full version: `target`'s change set, its base's, … until one is stored whole.
fn from_older(tx: &mut dyn Tx, target: u64) -> Result<Option<Content>> {
    let mut chain: Vec<Vec<KeyChange>> = Vec::new();
    let mut at = target;
    for _ in 0..MAX_STEPS {
        if at != target {
            if let Some(mut content) = full(tx, at)? {
                for changes in chain.iter().rev() {
                    forward(&mut content, changes);
                }
                return Ok(Some(content));
            }
        }
        let Some((base, data)) = tx.changeset(at)? else {
            return Ok(None);
        };
        if base >= at {
            return Ok(None);
        }
        chain.push(decode(&data)?);
        at = base;
    }
    Ok(None)
}

/// From the nearest newer full version, undoing change sets back to `target`.
fn from_newer(tx: &mut dyn Tx, target: u64) -> Result<Option<Content>> {
    let Some(kept) = tx.nearest_kept_after(target)? else {
        return Ok(None);
    };
    let Some(mut content) = full(tx, kept)? else {
        return Ok(None);
    };
    let mut at = kept;
    for _ in 0..MAX_STEPS {
        if at == target {
            return Ok(Some(content));
        }
        let Some((base, data)) = tx.changeset(at)? else {
            return Ok(None);
        };
        if base >= at || base < target {
            return Ok(None);
        }
        backward(&mut content, &decode(&data)?);
        at = base;
    }
    Ok(None)
}

/// The content of a version whose bytes retention dropped, rebuilt from the nearest version
/// kept whole and the change sets between, and checked against the digest it was stored with.
pub fn rebuild(tx: &mut dyn Tx, version: u64) -> Result<Content> {
    let (digest, _) = tx
        .version_digest(version)?
        .ok_or_else(|| StoreError::NotFound(format!("version {version} does not exist")))?;
    for content in [from_newer(tx, version)?, from_older(tx, version)?]
        .into_iter()
        .flatten()
    {
        if format::content_digest(&content) == digest {
            return Ok(content);
        }
        tracing::warn!("version {version} rebuilt from change sets does not match its digest");
    }
    let at = tx.version_pruned(version)?.unwrap_or_default();
    Err(StoreError::NotFound(format!(
        "version {version} is only in history: retention dropped its content at {} and no \
         change sets lead to it (lockstep serve --keep-versions, --keep-for; lockstep pin)",
        crate::clock::format_us(at)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(pairs: &[(&str, &str)]) -> Content {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_change_set_holds_only_changed_keys_and_applies_both_ways() {
        let old = content(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let new = content(&[("a", "1"), ("b", "20"), ("d", "4")]);
        let bytes = format::encode(7, 0, &old).unwrap();
        let changes = between(&bytes, &new).unwrap();
        assert_eq!(changes.len(), 3, "{changes:?}");
        let round = decode(&encode(&changes).unwrap()).unwrap();
        assert_eq!(round, changes);
        let mut c = old.clone();
        forward(&mut c, &round);
        assert_eq!(c, new);
        backward(&mut c, &round);
        assert_eq!(c, old);
    }

    #[test]
    fn a_damaged_change_set_is_an_error_not_a_panic() {
        let good = encode(&[KeyChange {
            key: b"k".to_vec(),
            old: None,
            new: Some(b"v".to_vec()),
        }])
        .unwrap();
        for cut in 1..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&[1, 0, 0, 0, b'k', 9]).is_err());
        assert!(decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
