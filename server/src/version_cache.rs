//! Verified version bytes kept in memory, so that downloads do not read the database every
//! time, and a data server whose database is down still serves the versions it holds.
//!
//! Versions are immutable, but a number names one version only within one database (a
//! database restored from a backup or made afresh reuses numbers), so an entry is used only
//! while the database gives that number the same checksum: the checksum is the key that
//! matters, the number only finds it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

/// Versions whose verified bytes stay in memory; staged and active are the ones clients ask
/// for, and the two before them are what a lagging client may still want.
const CACHED_VERSIONS: usize = 4;

/// Verified bytes of one version, ready to serve without copying.
#[derive(Clone)]
pub struct StoredVersion {
    pub version: u64,
    pub checksum: u64,
    pub bytes: Bytes,
}

#[derive(Default)]
pub struct VersionCache {
    bytes: Mutex<BTreeMap<u64, StoredVersion>>,
    /// Version number → checksum, as this database stored it.
    checksums: Mutex<HashMap<u64, u64>>,
}

impl VersionCache {
    pub fn checksum(&self, version: u64) -> Option<u64> {
        let checksums = self.checksums.lock().unwrap_or_else(|e| e.into_inner());
        checksums.get(&version).copied()
    }

    pub fn remember_checksum(&self, version: u64, checksum: u64) {
        let mut checksums = self.checksums.lock().unwrap_or_else(|e| e.into_inner());
        checksums.insert(version, checksum);
    }

    /// The bytes of `version`, if held with the checksum the database gave it.
    pub fn get(&self, version: u64) -> Option<StoredVersion> {
        let checksum = self.checksum(version)?;
        let cache = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&version)
            .filter(|v| v.checksum == checksum)
            .cloned()
    }

    /// The numbers of the versions whose bytes are held.
    pub fn numbers(&self) -> Vec<u64> {
        let cache = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        cache.keys().copied().collect()
    }

    /// Lets go of the bytes of `versions` (retention dropped their content: a download of one
    /// must say so, not serve it from memory until newer versions push it out).
    pub fn forget(&self, versions: &[u64]) {
        let mut cache = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        for v in versions {
            cache.remove(v);
        }
    }

    pub fn insert(&self, stored: StoredVersion) {
        self.remember_checksum(stored.version, stored.checksum);
        let mut cache = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(stored.version, stored);
        while cache.len() > CACHED_VERSIONS {
            cache.pop_first();
        }
    }
}
