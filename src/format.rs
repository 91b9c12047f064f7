//! The version format: one contiguous, checksummed byte buffer that a client queries in place.
//!
//! A version is encoded once, by the data server at rotation, and from then on its bytes are
//! stored, served and held exactly as they are. Clients never build a map from it: the payload
//! is an rkyv archive of a hash map, so a lookup is a hash and a probe into the bytes that came
//! off the wire. That keeps "downloaded" to "ready to activate" down to one checksum pass and
//! one structural validation, and keeps a held version's memory at its encoded size.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//!  0  magic        8 bytes  "LKSTEPV1"
//!  8  format       u32      FORMAT_REVISION
//! 12  flags        u32      0 (reserved)
//! 16  version      u64      the version number the data server gave it
//! 24  created_us   i64      when it was encoded, data-server clock, µs since the Unix epoch
//! 32  payload_len  u64      bytes after the header
//! 40  entries      u64      number of keys
//! 48  reserved     u64      0
//! 56  checksum     u64      xxh3-64 of bytes 0..56 followed by the payload
//! 64  payload      rkyv archive of `Entries` (root at the end, as rkyv lays it out)
//! ```
//!
//! The header is 64 bytes so that the payload keeps the 16-byte alignment of the buffer it was
//! downloaded into; rkyv's validator refuses misaligned archives rather than reading them.

use std::collections::{BTreeMap, HashMap};

use rkyv::collections::swiss_table::{ArchivedHashMap, HashMapResolver};
use rkyv::rancor;
use rkyv::vec::ArchivedVec;
use xxhash_rust::xxh3::Xxh3;

/// First eight bytes of every encoded version.
pub const MAGIC: &[u8; 8] = b"LKSTEPV1";
/// Bumped whenever the layout above changes; a client refuses revisions it does not know.
pub const FORMAT_REVISION: u32 = 1;
/// Size of the fixed header before the rkyv payload.
pub const HEADER_LEN: usize = 64;
/// Alignment the payload needs in memory (rkyv's archive alignment).
pub const ALIGN: usize = 16;

/// A version's content as the data server builds it: every key with its value, in key order.
pub type Content = BTreeMap<Vec<u8>, Vec<u8>>;

/// A buffer with the alignment a version needs; downloads go straight into one.
pub type VersionBuf = crate::buffer::AlignedBuf;

/// What the archive holds: every key of the version with its value.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Default)]
pub struct Entries {
    pub map: HashMap<Vec<u8>, Vec<u8>>,
}

/// Why bytes are not a usable version.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("version is {0} bytes, shorter than its {HEADER_LEN}-byte header")]
    Truncated(usize),
    #[error("version does not start with the Lockstep magic")]
    BadMagic,
    #[error("version format revision {0} is not supported (this build reads {FORMAT_REVISION})")]
    UnsupportedRevision(u32),
    #[error("version header says {expected} payload bytes, buffer has {actual}")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("version checksum mismatch: header says {expected:016x}, bytes hash to {actual:016x}")]
    ChecksumMismatch { expected: u64, actual: u64 },
    #[error("version payload is not aligned to {ALIGN} bytes in memory")]
    Misaligned,
    #[error("version payload failed structural validation: {0}")]
    Invalid(String),
    #[error("version {actual} arrived where version {expected} was asked for")]
    WrongVersion { expected: u64, actual: u64 },
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// The fixed header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u64,
    pub created_us: i64,
    pub payload_len: u64,
    pub entries: u64,
    pub checksum: u64,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn checksum_of(header_prefix: &[u8], payload: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(header_prefix);
    h.update(payload);
    h.digest()
}

/// The checksum that bytes shaped like a version hash to (what the header's checksum field
/// must hold), whatever the header says; None if shorter than a header.
pub fn compute_checksum(bytes: &[u8]) -> Option<u64> {
    (bytes.len() >= HEADER_LEN).then(|| checksum_of(&bytes[..56], &bytes[HEADER_LEN..]))
}

/// Reads the header without checking the payload: enough to route or label bytes, never
/// enough to trust them.
pub fn read_header(bytes: &[u8]) -> Result<Header, FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Truncated(bytes.len()));
    }
    if &bytes[0..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let rev = u32_at(bytes, 8);
    if rev != FORMAT_REVISION {
        return Err(FormatError::UnsupportedRevision(rev));
    }
    Ok(Header {
        version: u64_at(bytes, 16),
        created_us: u64_at(bytes, 24) as i64,
        payload_len: u64_at(bytes, 32),
        entries: u64_at(bytes, 40),
        checksum: u64_at(bytes, 56),
    })
}

/// Checks the header and the checksum over the whole buffer. This is what the data server
/// does before serving stored bytes, and the first half of what a client does before staging.
pub fn verify_checksum(bytes: &[u8]) -> Result<Header, FormatError> {
    let header = read_header(bytes)?;
    let actual_len = (bytes.len() - HEADER_LEN) as u64;
    if header.payload_len != actual_len {
        return Err(FormatError::LengthMismatch {
            expected: header.payload_len,
            actual: actual_len,
        });
    }
    let actual = checksum_of(&bytes[..56], &bytes[HEADER_LEN..]);
    if actual != header.checksum {
        return Err(FormatError::ChecksumMismatch {
            expected: header.checksum,
            actual,
        });
    }
    Ok(header)
}

/// Full verification: header, checksum, then rkyv's structural validation of every pointer
/// and length in the payload. Only bytes that pass this may be staged or activated; after it,
/// lookups through [`entries_unchecked`] are sound for as long as the bytes live unchanged.
pub fn validate(bytes: &[u8]) -> Result<(Header, &ArchivedEntries), FormatError> {
    let header = verify_checksum(bytes)?;
    let payload = &bytes[HEADER_LEN..];
    if !(payload.as_ptr() as usize).is_multiple_of(ALIGN) {
        return Err(FormatError::Misaligned);
    }
    let entries = rkyv::access::<ArchivedEntries, rancor::Error>(payload)
        .map_err(|e| FormatError::Invalid(e.to_string()))?;
    if entries.map.len() as u64 != header.entries {
        return Err(FormatError::Invalid(format!(
            "header counts {} entries, archive holds {}",
            header.entries,
            entries.map.len()
        )));
    }
    Ok((header, entries))
}

/// The archive inside bytes that [`validate`] already accepted.
///
/// # Safety
/// `bytes` must be exactly a buffer that passed [`validate`] and has not changed since.
pub unsafe fn entries_unchecked(bytes: &[u8]) -> &ArchivedEntries {
    // SAFETY: the caller guarantees the archive was validated, which is rkyv's precondition.
    unsafe { rkyv::access_unchecked::<ArchivedEntries>(&bytes[HEADER_LEN..]) }
}

/// [`Entries`] archived straight from key-ordered pairs, without a copy into a `HashMap`. The
/// archive is the same type; what changes is that the bytes depend on the content alone.
/// Through a `HashMap` they depended on its random iteration order, so two encodings of one
/// content differed, and a client that rebuilds a version from a delta (see
/// [`crate::delta`]) must encode exactly the bytes the data server encoded.
struct SortedEntries<I>(I);

/// Borrowed bytes archived exactly as a `Vec<u8>` is (the same bytes, the same hash), so that
/// a version can be encoded from slices of other buffers without copying them first.
#[derive(PartialEq, Eq)]
struct Slice<'a>(&'a [u8]);

impl std::hash::Hash for Slice<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // What `Vec<u8>`'s `Hash` does: the slice's.
        self.0.hash(state)
    }
}

impl rkyv::Archive for Slice<'_> {
    type Archived = ArchivedVec<u8>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve(&self, resolver: rkyv::vec::VecResolver, out: rkyv::Place<ArchivedVec<u8>>) {
        ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<S> rkyv::Serialize<S> for Slice<'_>
where
    S: rancor::Fallible + rkyv::ser::Writer + rkyv::ser::Allocator + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<rkyv::vec::VecResolver, S::Error> {
        ArchivedVec::<u8>::serialize_from_slice(self.0, serializer)
    }
}

/// rkyv's own load factor for a `HashMap`, kept so that lookups probe as before.
const LOAD_FACTOR: (usize, usize) = (7, 8);

impl<'a, I> rkyv::Archive for SortedEntries<I>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + ExactSizeIterator + Clone,
{
    type Archived = ArchivedEntries;
    type Resolver = HashMapResolver;

    fn resolve(&self, resolver: HashMapResolver, out: rkyv::Place<ArchivedEntries>) {
        rkyv::munge::munge!(let ArchivedEntries { map } = out);
        ArchivedHashMap::resolve_from_len(self.0.len(), LOAD_FACTOR, resolver, map);
    }
}

impl<'a, I, S> rkyv::Serialize<S> for SortedEntries<I>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + ExactSizeIterator + Clone,
    S: rancor::Fallible + rkyv::ser::Writer + rkyv::ser::Allocator + ?Sized,
    S::Error: rancor::Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<HashMapResolver, S::Error> {
        let pairs = self.0.clone().map(|(k, v)| (Slice(k), Slice(v)));
        ArchivedHashMap::<ArchivedVec<u8>, ArchivedVec<u8>>::serialize_from_iter::<
            _,
            _,
            _,
            Slice,
            Slice,
            _,
        >(pairs, LOAD_FACTOR, serializer)
    }
}

/// Encodes a version. Called once per version, by the data server at rotation: the same
/// content always gives the same bytes.
pub fn encode(version: u64, created_us: i64, entries: &Content) -> Result<VersionBuf, FormatError> {
    encode_sorted(
        version,
        created_us,
        entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    )
}

/// [`encode`] from borrowed pairs, which must be in strictly ascending key order (as a
/// `BTreeMap` iterates): a client rebuilding a version from a delta encodes the keys and values
/// where they lie, in the version it holds and in the delta, without copying them.
pub fn encode_sorted<'a, I>(
    version: u64,
    created_us: i64,
    pairs: I,
) -> Result<VersionBuf, FormatError>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + ExactSizeIterator + Clone,
{
    let count = pairs.len();
    let estimate = pairs
        .clone()
        .map(|(k, v)| k.len() + v.len() + 32)
        .sum::<usize>()
        + 64;
    let root = SortedEntries(pairs);
    let mut buf = VersionBuf::try_with_capacity(HEADER_LEN + estimate)
        .map_err(|e| FormatError::Encode(e.to_string()))?;
    buf.try_extend_from_slice(&[0u8; HEADER_LEN])
        .map_err(|e| FormatError::Encode(e.to_string()))?;
    let mut buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&root, buf)
        .map_err(|e| FormatError::Encode(e.to_string()))?;
    let payload_len = (buf.len() - HEADER_LEN) as u64;
    {
        let h = &mut buf[..HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&FORMAT_REVISION.to_le_bytes());
        h[12..16].copy_from_slice(&0u32.to_le_bytes());
        h[16..24].copy_from_slice(&version.to_le_bytes());
        h[24..32].copy_from_slice(&created_us.to_le_bytes());
        h[32..40].copy_from_slice(&payload_len.to_le_bytes());
        h[40..48].copy_from_slice(&(count as u64).to_le_bytes());
        h[48..56].copy_from_slice(&0u64.to_le_bytes());
    }
    let sum = checksum_of(&buf[..56], &buf[HEADER_LEN..]);
    buf[56..64].copy_from_slice(&sum.to_le_bytes());
    Ok(buf)
}

/// Copies bytes into a buffer with the alignment [`validate`] needs.
pub fn aligned_copy(bytes: &[u8]) -> VersionBuf {
    let mut buf = VersionBuf::new();
    buf.extend_from_slice(bytes);
    buf
}

/// Decodes a validated version into an ordered map; for tools (diff, get by version), not for
/// the read path.
pub fn decode(bytes: &[u8]) -> Result<(Header, Content), FormatError> {
    let aligned;
    let bytes = if (bytes.as_ptr() as usize + HEADER_LEN).is_multiple_of(ALIGN) {
        bytes
    } else {
        aligned = aligned_copy(bytes);
        &aligned[..]
    };
    let (header, entries) = validate(bytes)?;
    let map = entries
        .map
        .iter()
        .map(|(k, v)| (k.as_slice().to_vec(), v.as_slice().to_vec()))
        .collect();
    Ok((header, map))
}

/// Looks a key up in a validated archive, without allocating.
#[inline]
pub fn lookup<'a>(entries: &'a ArchivedEntries, key: &[u8]) -> Option<&'a [u8]> {
    entries.map.get(key).map(|v| v.as_slice())
}

/// Like [`lookup`], for an archive that came off the network: every key a probe compares and
/// the value it answers must lie inside `bytes`, the version the archive was validated in.
/// rkyv's validation of a hash table (0.8.18) checks the buckets its control bytes mark full,
/// but not every wrapped control byte a probe reads, so a probe can reach a bucket nobody
/// checked. The `version` fuzz target found forged archives that validate and whose lookups
/// then read a key from unmapped memory (a SIGSEGV in `sync_get`) or answered a 587 MB value
/// from beyond the buffer (fuzz/corpus/version/oob-*). A few comparisons per probe.
#[inline]
pub fn lookup_within<'a>(
    bytes: &'a [u8],
    entries: &'a ArchivedEntries,
    key: &[u8],
) -> Option<&'a [u8]> {
    let range = bytes.as_ptr_range();
    let (start, end) = (range.start as usize, range.end as usize);
    let inside = |v: &ArchivedVec<u8>| {
        let at = v.as_ptr() as usize;
        at >= start && at.checked_add(v.len()).is_some_and(|e| e <= end)
    };
    let (_, value) = entries
        .map
        .get_key_value_with(key, |q: &[u8], k: &ArchivedVec<u8>| {
            inside(k) && q == k.as_slice()
        })?;
    let header = value as *const ArchivedVec<u8> as usize;
    let header_inside = header >= start
        && header
            .checked_add(std::mem::size_of::<ArchivedVec<u8>>())
            .is_some_and(|e| e <= end);
    (header_inside && inside(value)).then(|| value.as_slice())
}

/// A digest of the content alone (not the version number or time), so the data server can tell
/// that production has not changed and create no new version.
pub fn content_digest(entries: &Content) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    for (k, v) in entries {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v);
    }
    format!("{:032x}", h.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Content {
        let mut m = Content::new();
        m.insert(b"price:apple".to_vec(), b"1.25".to_vec());
        m.insert(b"price:pear".to_vec(), b"2.00".to_vec());
        m.insert(vec![0, 255, 7], vec![]);
        m
    }

    #[test]
    fn round_trip_and_lookup_in_place() {
        let buf = encode(7, 1234, &sample()).unwrap();
        let (h, e) = validate(&buf).unwrap();
        assert_eq!(h.version, 7);
        assert_eq!(h.created_us, 1234);
        assert_eq!(h.entries, 3);
        assert_eq!(lookup(e, b"price:apple"), Some(&b"1.25"[..]));
        assert_eq!(lookup(e, &[0, 255, 7]), Some(&b""[..]));
        assert_eq!(lookup(e, b"price:plum"), None);
        assert_eq!(decode(&buf).unwrap().1, sample());
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let buf = encode(1, 0, &sample()).unwrap();
        for i in 0..buf.len() {
            let mut bad = aligned_copy(&buf);
            bad[i] ^= 0x5a;
            assert!(validate(&bad).is_err(), "flip at byte {i} was accepted");
        }
    }

    #[test]
    fn truncation_and_garbage_are_rejected() {
        let buf = encode(1, 0, &sample()).unwrap();
        for len in [0, 10, HEADER_LEN - 1, HEADER_LEN, buf.len() - 1] {
            let cut = aligned_copy(&buf[..len]);
            assert!(validate(&cut).is_err(), "truncation to {len} accepted");
        }
        let garbage = aligned_copy(&[0xabu8; 4096]);
        assert!(matches!(validate(&garbage), Err(FormatError::BadMagic)));
    }

    #[test]
    fn forged_payload_with_recomputed_checksum_fails_structure() {
        // A forger who knows the checksum algorithm still cannot get a structurally bad
        // archive past validation.
        let mut bad = encode(1, 0, &sample()).unwrap();
        let n = bad.len();
        for b in &mut bad[n - 8..n] {
            *b = 0xff;
        }
        let sum = checksum_of(&bad[..56], &bad[HEADER_LEN..]);
        bad[56..64].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(validate(&bad), Err(FormatError::Invalid(_))));
    }

    #[test]
    fn content_digest_ignores_version_number() {
        let a = sample();
        let mut b = sample();
        assert_eq!(content_digest(&a), content_digest(&b));
        b.insert(b"k".to_vec(), b"v".to_vec());
        assert_ne!(content_digest(&a), content_digest(&b));
    }
}
