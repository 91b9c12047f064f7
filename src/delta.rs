//! Deltas: how a client that holds version A gets version B without downloading B whole.
//!
//! A delta names the version it applies to (A's checksum) and the version it makes (B's
//! number, creation time, length, entry count and checksum), then lists B's changes against A
//! by key: keys deleted, keys inserted or given a new value. The client rebuilds B's content
//! from A's and the changes and encodes it with [`format::encode`], the very code the data
//! server encoded B with, so the result is byte for byte B when the delta is honest; it is
//! staged only if its checksum is the one the check-in announced. A delta is therefore never
//! trusted for what it claims: a forged or corrupt one fails a check and costs a full download,
//! never a wrong version.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//!  0  magic          8 bytes  "LKSTEPD1"
//!  8  format         u32      DELTA_REVISION
//! 12  flags          u32      0 (reserved)
//! 16  base_checksum  u64      checksum of the version the delta applies to
//! 24  version        u64      number of the version it makes
//! 32  created_us     i64      that version's creation time (its header field)
//! 40  target_len     u64      that version's length in bytes
//! 48  entries        u64      that version's number of keys
//! 56  checksum       u64      that version's checksum
//! 64  deletes        u64      number of keys deleted
//! 72  upserts        u64      number of keys inserted or changed
//! 80  body_len       u64      bytes after the header
//! 88  delta_sum      u64      xxh3-64 of bytes 0..88 followed by the body
//! 96  body           deletes: (u32 key_len, key)*, then upserts: (u32 key_len, key,
//!                    u32 value_len, value)*, each list in strictly ascending key order
//! ```
//!
//! Every count and length is checked against the bytes that remain before anything is
//! allocated for it, and the version it makes against `max_version_bytes`, so hostile bytes
//! cost at most a pass over themselves.

use std::collections::TryReserveError;

use xxhash_rust::xxh3::Xxh3;

use crate::format::{self, FormatError, VersionBuf};

/// First eight bytes of every delta.
pub const MAGIC: &[u8; 8] = b"LKSTEPD1";
/// Bumped whenever the layout above changes; a client refuses revisions it does not know
/// (and downloads the version whole).
pub const DELTA_REVISION: u32 = 1;
/// Size of the fixed header before the body.
pub const DELTA_HEADER_LEN: usize = 96;
/// Bytes before the delta's own checksum, which covers them.
const SUMMED_HEADER: usize = 88;

/// Why bytes are not a usable delta, or applying one did not make the version it names.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("delta is {0} bytes, shorter than its {DELTA_HEADER_LEN}-byte header")]
    Truncated(usize),
    #[error("delta does not start with the Lockstep delta magic")]
    BadMagic,
    #[error("delta format revision {0} is not supported (this build reads {DELTA_REVISION})")]
    UnsupportedRevision(u32),
    #[error("delta header says {expected} body bytes, buffer has {actual}")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("delta checksum mismatch: header says {expected:016x}, bytes hash to {actual:016x}")]
    ChecksumMismatch { expected: u64, actual: u64 },
    #[error("delta body is malformed: {0}")]
    Malformed(&'static str),
    #[error("delta makes a version of {0} bytes, more than max_version_bytes ({1})")]
    TooLarge(u64, u64),
    #[error("delta applies to the version with checksum {expected:016x}, not {actual:016x}")]
    WrongBase { expected: u64, actual: u64 },
    #[error("delta does not fit its base: {0}")]
    DoesNotFit(&'static str),
    #[error("delta result is not the version it names: {0}")]
    WrongResult(String),
    #[error("base version unusable: {0}")]
    Base(FormatError),
    #[error("out of memory applying a delta: {0}")]
    OutOfMemory(#[from] TryReserveError),
}

/// The fixed header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub base_checksum: u64,
    pub version: u64,
    pub created_us: i64,
    pub target_len: u64,
    pub entries: u64,
    pub checksum: u64,
    pub deletes: u64,
    pub upserts: u64,
    pub body_len: u64,
}

/// A validated delta, borrowing its keys and values from the delta's bytes.
#[derive(Debug)]
pub struct Delta<'a> {
    pub header: Header,
    pub deletes: Vec<&'a [u8]>,
    pub upserts: Vec<(&'a [u8], &'a [u8])>,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn sum(prefix: &[u8], body: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(prefix);
    h.update(body);
    h.digest()
}

/// Reads and checks the header and the delta's own checksum; not the body's structure.
pub fn read_header(bytes: &[u8]) -> Result<Header, DeltaError> {
    if bytes.len() < DELTA_HEADER_LEN {
        return Err(DeltaError::Truncated(bytes.len()));
    }
    if &bytes[0..8] != MAGIC {
        return Err(DeltaError::BadMagic);
    }
    let rev = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if rev != DELTA_REVISION {
        return Err(DeltaError::UnsupportedRevision(rev));
    }
    let header = Header {
        base_checksum: u64_at(bytes, 16),
        version: u64_at(bytes, 24),
        created_us: u64_at(bytes, 32) as i64,
        target_len: u64_at(bytes, 40),
        entries: u64_at(bytes, 48),
        checksum: u64_at(bytes, 56),
        deletes: u64_at(bytes, 64),
        upserts: u64_at(bytes, 72),
        body_len: u64_at(bytes, 80),
    };
    let actual = (bytes.len() - DELTA_HEADER_LEN) as u64;
    if header.body_len != actual {
        return Err(DeltaError::LengthMismatch {
            expected: header.body_len,
            actual,
        });
    }
    let expected = u64_at(bytes, SUMMED_HEADER);
    let actual = sum(&bytes[..SUMMED_HEADER], &bytes[DELTA_HEADER_LEN..]);
    if expected != actual {
        return Err(DeltaError::ChecksumMismatch { expected, actual });
    }
    Ok(header)
}

/// A cursor over the body that never reads or trusts a length past the bytes left.
struct Body<'a> {
    rest: &'a [u8],
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DeltaError> {
        if n > self.rest.len() {
            return Err(DeltaError::Malformed("a length runs past the end"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DeltaError> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.take(len)
    }
}

/// The least bytes one key takes in an encoded version: its slot in the archived table holds
/// two 8-byte vectors (key and value), whatever they contain. A delta naming more keys than
/// its target length can hold is a lie, refused before anything is allocated for them.
pub const MIN_ENTRY_BYTES: u64 = 16;

/// Checks the header's counts against each other and against the version it makes, before
/// anything is allocated for them: every later allocation is then bounded by `target_len`
/// (and `target_len` by `max_version_bytes`), never by what the counts claim.
fn check_counts(h: &Header, max_version_bytes: u64) -> Result<(), DeltaError> {
    if h.target_len > max_version_bytes {
        return Err(DeltaError::TooLarge(h.target_len, max_version_bytes));
    }
    if (h.target_len as usize) < format::HEADER_LEN {
        return Err(DeltaError::Malformed(
            "the version it makes is shorter than a header",
        ));
    }
    if h.entries > (h.target_len - format::HEADER_LEN as u64) / MIN_ENTRY_BYTES {
        return Err(DeltaError::Malformed(
            "more keys than the version it makes can hold",
        ));
    }
    if h.upserts > h.entries {
        return Err(DeltaError::Malformed(
            "more keys inserted or changed than the version it makes holds",
        ));
    }
    // Each delete takes at least 4 bytes and each upsert 8: counts beyond that are lies.
    let least = h
        .deletes
        .saturating_mul(4)
        .saturating_add(h.upserts.saturating_mul(8));
    if least > h.body_len {
        return Err(DeltaError::Malformed("counts larger than the body holds"));
    }
    Ok(())
}

/// Walks the body once without allocating: every length within the bytes left, keys in
/// strictly ascending order in each list, and the upserted keys and values no larger together
/// than the version they go into. Returns where the upserts begin.
fn check_body(body: &[u8], h: &Header) -> Result<usize, DeltaError> {
    let mut cur = Body { rest: body };
    let mut prev: Option<&[u8]> = None;
    for _ in 0..h.deletes {
        let key = cur.bytes()?;
        if prev.is_some_and(|p| p >= key) {
            return Err(DeltaError::Malformed("deleted keys out of order"));
        }
        prev = Some(key);
    }
    let upserts_at = body.len() - cur.rest.len();
    let (mut prev, mut raw) = (None, 0u64);
    for _ in 0..h.upserts {
        let key = cur.bytes()?;
        let value = cur.bytes()?;
        if prev.is_some_and(|p: &[u8]| p >= key) {
            return Err(DeltaError::Malformed("upserted keys out of order"));
        }
        prev = Some(key);
        raw += (key.len() + value.len()) as u64;
        if raw > h.target_len {
            return Err(DeltaError::Malformed(
                "upserted keys and values larger than the version they go into",
            ));
        }
    }
    if !cur.rest.is_empty() {
        return Err(DeltaError::Malformed("bytes after the last change"));
    }
    Ok(upserts_at)
}

/// The deleted keys of a body [`check_body`] accepted, in order.
fn deleted(body: &[u8], count: u64) -> impl Iterator<Item = &[u8]> {
    let mut cur = Body { rest: body };
    (0..count).map_while(move |_| cur.bytes().ok())
}

/// The upserted pairs of a body [`check_body`] accepted (from where they begin), in order.
fn upserted(body: &[u8], count: u64) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut cur = Body { rest: body };
    (0..count).map_while(move |_| Some((cur.bytes().ok()?, cur.bytes().ok()?)))
}

/// Validates a delta completely (header, checksum, counts, every length, key order) and
/// checks that the version it makes is within `max_version_bytes`. Allocates only after the
/// counts are checked against the body's size and the version it makes.
pub fn parse(bytes: &[u8], max_version_bytes: u64) -> Result<Delta<'_>, DeltaError> {
    let header = read_header(bytes)?;
    check_counts(&header, max_version_bytes)?;
    let body = &bytes[DELTA_HEADER_LEN..];
    let upserts_at = check_body(body, &header)?;
    let mut deletes = Vec::new();
    deletes.try_reserve_exact(header.deletes as usize)?;
    deletes.extend(deleted(body, header.deletes));
    let mut upserts = Vec::new();
    upserts.try_reserve_exact(header.upserts as usize)?;
    upserts.extend(upserted(&body[upserts_at..], header.upserts));
    Ok(Delta {
        header,
        deletes,
        upserts,
    })
}

/// Encodes the changes that turn `base` into `target` (both encoded versions). The data
/// server calls this once per pair and caches the bytes.
pub fn make(base: &[u8], target: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let (base_copy, target_copy);
    let base = match is_aligned(base) {
        true => base,
        false => {
            base_copy = format::aligned_copy(base);
            &base_copy[..]
        }
    };
    let target = match is_aligned(target) {
        true => target,
        false => {
            target_copy = format::aligned_copy(target);
            &target_copy[..]
        }
    };
    let (base_header, old) = sorted_pairs(base)?;
    let (target_header, new) = sorted_pairs(target)?;
    // Both lists in key order: one merge pass finds what went and what came or changed.
    let (mut deletes, mut upserts) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(&(ok, _)), Some(&(nk, _))) if ok < nk => {
                deletes.push(ok);
                i += 1;
            }
            (Some(&(ok, ov)), Some(&(nk, nv))) if ok == nk => {
                if ov != nv {
                    upserts.push((nk, nv));
                }
                i += 1;
                j += 1;
            }
            (_, Some(&pair)) => {
                upserts.push(pair);
                j += 1;
            }
            (Some(&(ok, _)), None) => {
                deletes.push(ok);
                i += 1;
            }
            (None, None) => unreachable!("the loop runs while either list has more"),
        }
    }
    encode(
        &Header {
            base_checksum: base_header.checksum,
            version: target_header.version,
            created_us: target_header.created_us,
            target_len: target.len() as u64,
            entries: target_header.entries,
            checksum: target_header.checksum,
            deletes: deletes.len() as u64,
            upserts: upserts.len() as u64,
            body_len: 0,
        },
        &deletes,
        &upserts,
    )
}

fn is_aligned(version: &[u8]) -> bool {
    (version.as_ptr() as usize + format::HEADER_LEN).is_multiple_of(format::ALIGN)
}

/// A validated version's keys and values, borrowed from its bytes, in key order.
#[allow(clippy::type_complexity)]
fn sorted_pairs(version: &[u8]) -> Result<(format::Header, Vec<(&[u8], &[u8])>), DeltaError> {
    let (header, entries) = format::validate(version).map_err(DeltaError::Base)?;
    let mut pairs = Vec::new();
    pairs.try_reserve_exact(entries.map.len())?;
    pairs.extend(
        entries
            .map
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice())),
    );
    pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
    Ok((header, pairs))
}

/// Lays out a delta from its parts (`header.deletes`, `upserts` and `body_len` are taken from
/// the lists). Keys must be in ascending order, as [`parse`] demands.
pub fn encode(
    header: &Header,
    deletes: &[&[u8]],
    upserts: &[(&[u8], &[u8])],
) -> Result<Vec<u8>, DeltaError> {
    let field = |b: &[u8]| -> Result<u32, DeltaError> {
        u32::try_from(b.len()).map_err(|_| DeltaError::Malformed("a key or value over 4 GiB"))
    };
    let body_len = deletes.iter().map(|k| 4 + k.len()).sum::<usize>()
        + upserts
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>();
    let mut out = Vec::new();
    out.try_reserve_exact(DELTA_HEADER_LEN + body_len)?;
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&DELTA_REVISION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for n in [
        header.base_checksum,
        header.version,
        header.created_us as u64,
        header.target_len,
        header.entries,
        header.checksum,
        deletes.len() as u64,
        upserts.len() as u64,
        body_len as u64,
        0,
    ] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    for k in deletes {
        out.extend_from_slice(&field(k)?.to_le_bytes());
        out.extend_from_slice(k);
    }
    for (k, v) in upserts {
        out.extend_from_slice(&field(k)?.to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&field(v)?.to_le_bytes());
        out.extend_from_slice(v);
    }
    let s = sum(&out[..SUMMED_HEADER], &out[DELTA_HEADER_LEN..]);
    out[SUMMED_HEADER..DELTA_HEADER_LEN].copy_from_slice(&s.to_le_bytes());
    Ok(out)
}

/// Makes the body length and the delta's own checksum match the bytes, whatever they hold: a
/// forger's first step, for tests and the fuzz target, which must get past the checksum to
/// reach what lies behind it. Does nothing to bytes shorter than a header.
pub fn reseal(delta: &mut [u8]) {
    if delta.len() < DELTA_HEADER_LEN {
        return;
    }
    let body_len = (delta.len() - DELTA_HEADER_LEN) as u64;
    delta[80..88].copy_from_slice(&body_len.to_le_bytes());
    let s = sum(&delta[..SUMMED_HEADER], &delta[DELTA_HEADER_LEN..]);
    delta[SUMMED_HEADER..DELTA_HEADER_LEN].copy_from_slice(&s.to_le_bytes());
}

/// Rebuilds the version a delta names from `base` (an encoded version) and checks that the
/// result is that version: its length, its entry count and its checksum. The caller still
/// compares the checksum with the one the data server announced.
pub fn apply(base: &[u8], delta: &[u8], max_version_bytes: u64) -> Result<VersionBuf, DeltaError> {
    let h = read_header(delta)?;
    check_counts(&h, max_version_bytes)?;
    let base_header = format::verify_checksum(base).map_err(DeltaError::Base)?;
    if base_header.checksum != h.base_checksum {
        return Err(DeltaError::WrongBase {
            expected: h.base_checksum,
            actual: base_header.checksum,
        });
    }
    // The result keeps every base key not deleted and gains at most the upserts.
    let kept = base_header
        .entries
        .checked_sub(h.deletes)
        .ok_or(DeltaError::DoesNotFit(
            "deletes more keys than the base holds",
        ))?;
    if h.entries < kept || h.entries > kept.saturating_add(h.upserts) {
        return Err(DeltaError::DoesNotFit(
            "the result has another number of keys",
        ));
    }
    let body = &delta[DELTA_HEADER_LEN..];
    let upserts_at = check_body(body, &h)?;
    // The content as borrowed slices, in key order: keys and values stay where they lie, in
    // the base and in the delta, until the encoder copies them into the new version. Three
    // sorted streams merged into one list of at most `h.entries` pairs (bounded by
    // target_len above), allocated fallibly.
    let aligned;
    let base = if is_aligned(base) {
        base
    } else {
        aligned = format::aligned_copy(base);
        &aligned[..]
    };
    let (_, old) = sorted_pairs(base)?;
    let mut content: Vec<(&[u8], &[u8])> = Vec::new();
    content.try_reserve_exact(h.entries as usize)?;
    let too_many = DeltaError::DoesNotFit("the result has another number of keys");
    let mut deletes = deleted(body, h.deletes).peekable();
    let mut upserts = upserted(&body[upserts_at..], h.upserts).peekable();
    let mut old = old.into_iter().peekable();
    loop {
        let next = match (old.peek(), upserts.peek()) {
            (None, None) => break,
            (Some(&(ok, _)), Some(&(nk, _))) if nk < ok => upserts.next(),
            (Some(&(ok, _)), Some(&(nk, _))) if nk == ok => {
                old.next();
                if deletes.peek() == Some(&ok) {
                    return Err(DeltaError::Malformed("a key both deleted and upserted"));
                }
                upserts.next()
            }
            (Some(&(ok, _)), _) => {
                if deletes.peek() == Some(&ok) {
                    deletes.next();
                    old.next();
                    continue;
                }
                old.next()
            }
            (None, Some(_)) => upserts.next(),
        };
        if let Some(pair) = next {
            if content.len() as u64 == h.entries {
                return Err(too_many);
            }
            content.push(pair);
        }
    }
    if deletes.next().is_some() {
        return Err(DeltaError::DoesNotFit(
            "deletes a key the base does not hold",
        ));
    }
    if content.len() as u64 != h.entries {
        return Err(too_many);
    }
    let raw: u64 = content
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    if raw > h.target_len {
        return Err(DeltaError::WrongResult(format!(
            "its keys and values alone take {raw} bytes, more than the {} it names",
            h.target_len
        )));
    }
    let out = format::encode_sorted(h.version, h.created_us, content.iter().copied())
        .map_err(|e| DeltaError::WrongResult(e.to_string()))?;
    if out.len() as u64 != h.target_len {
        return Err(DeltaError::WrongResult(format!(
            "{} bytes where {} were named",
            out.len(),
            h.target_len
        )));
    }
    let made = format::read_header(&out)
        .map_err(|e| DeltaError::WrongResult(e.to_string()))?
        .checksum;
    if made != h.checksum {
        return Err(DeltaError::WrongResult(format!(
            "checksum {made:016x} where {:016x} was named",
            h.checksum
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Content;

    const MAX: u64 = 1 << 30;

    fn content(n: usize, salt: &str) -> Content {
        (0..n)
            .map(|i| {
                (
                    format!("key:{i:05}").into_bytes(),
                    format!("value {i} {salt}").into_bytes(),
                )
            })
            .collect()
    }

    fn pair() -> (VersionBuf, VersionBuf) {
        let a = content(2000, "a");
        let mut b = a.clone();
        for i in (0..2000).step_by(97) {
            b.insert(format!("key:{i:05}").into_bytes(), b"changed".to_vec());
        }
        b.remove(&b"key:00005"[..]);
        b.remove(&b"key:01999"[..]);
        b.insert(b"new key".to_vec(), vec![0, 1, 2]);
        b.insert(Vec::new(), Vec::new());
        (
            format::encode(7, 100, &a).unwrap(),
            format::encode(8, 200, &b).unwrap(),
        )
    }

    #[test]
    fn encoding_a_content_twice_gives_the_same_bytes() {
        // The delta scheme rests on this: the client re-encodes and must hit B's checksum.
        let c = content(20_000, "x");
        let one = format::encode(3, 9, &c).unwrap();
        let two = format::encode(3, 9, &c).unwrap();
        assert!(one[..] == two[..]);
    }

    #[test]
    fn an_honest_delta_rebuilds_the_target_byte_for_byte() {
        let (a, b) = pair();
        let d = make(&a, &b).unwrap();
        assert!(
            d.len() * 10 < b.len(),
            "delta {} vs version {}",
            d.len(),
            b.len()
        );
        let out = apply(&a, &d, MAX).unwrap();
        assert!(out[..] == b[..]);
        let p = parse(&d, MAX).unwrap();
        assert_eq!(p.deletes.len(), 2);
        assert_eq!(p.header.version, 8);
    }

    #[test]
    fn a_delta_between_equal_contents_is_empty_and_applies() {
        let (a, _) = pair();
        let (_, c) = format::decode(&a).unwrap();
        let b = format::encode(9, 300, &c).unwrap();
        let d = make(&a, &b).unwrap();
        assert_eq!(d.len(), DELTA_HEADER_LEN);
        assert!(apply(&a, &d, MAX).unwrap()[..] == b[..]);
    }

    #[test]
    fn a_delta_for_another_base_is_refused() {
        let (a, b) = pair();
        let d = make(&a, &b).unwrap();
        let other = format::encode(7, 100, &content(2000, "other")).unwrap();
        assert!(matches!(
            apply(&other, &d, MAX),
            Err(DeltaError::WrongBase { .. })
        ));
    }

    #[test]
    fn a_delta_whose_result_has_another_checksum_is_refused() {
        // A forger who recomputes the delta's own checksum still cannot name one version
        // and make another.
        let (a, b) = pair();
        let (_, mut c) = format::decode(&b).unwrap();
        // Same length as the real value, so that only the checksum tells them apart.
        c.insert(b"key:00001".to_vec(), b"VALUE 1 a".to_vec());
        let forged = format::encode(8, 200, &c).unwrap();
        let mut d = make(&a, &forged).unwrap();
        let real = format::read_header(&b).unwrap();
        d[56..64].copy_from_slice(&real.checksum.to_le_bytes());
        d[40..48].copy_from_slice(&(b.len() as u64).to_le_bytes());
        reseal(&mut d);
        assert!(matches!(
            apply(&a, &d, MAX),
            Err(DeltaError::WrongResult(_))
        ));
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let (a, b) = pair();
        let d = make(&a, &b).unwrap();
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x21;
            let Err(err) = apply(&a, &bad, MAX) else {
                panic!("flip at byte {i} was accepted");
            };
            // Past the magic, the revision and the body length, the delta's own checksum is
            // what refuses every flip: nothing behind it is ever reached.
            let expected = match i {
                0..8 => matches!(err, DeltaError::BadMagic),
                8..12 => matches!(err, DeltaError::UnsupportedRevision(_)),
                80..88 => matches!(err, DeltaError::LengthMismatch { .. }),
                _ => matches!(err, DeltaError::ChecksumMismatch { .. }),
            };
            assert!(expected, "flip at byte {i}: {err:?}");
        }
    }

    #[test]
    fn no_version_holds_a_key_in_fewer_than_min_entry_bytes() {
        // The cheapest keys there are: empty values, the empty key, then every 1- and 2-byte
        // key. check_counts refuses deltas naming more keys than this allows.
        let mut c = Content::new();
        c.insert(Vec::new(), Vec::new());
        for i in 0..256u32 {
            c.insert(vec![i as u8], Vec::new());
        }
        for i in 0..20_000u32 {
            c.insert((i as u16).to_be_bytes().to_vec(), Vec::new());
        }
        let v = format::encode(1, 0, &c).unwrap();
        let per_key = (v.len() - format::HEADER_LEN) as u64 / c.len() as u64;
        assert!(per_key >= MIN_ENTRY_BYTES, "{per_key} bytes a key");
    }

    /// A resealed delta from version `a` that claims `entries` keys and `upserts` 4-byte keys
    /// with empty values, in a version of `target_len` bytes.
    fn claiming(a: &[u8], target_len: u64, entries: u64, upserts: u32) -> Vec<u8> {
        let keys: Vec<[u8; 4]> = (0..upserts).map(|i| i.to_be_bytes()).collect();
        let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &[][..])).collect();
        let ha = format::read_header(a).unwrap();
        let h = Header {
            base_checksum: ha.checksum,
            version: 8,
            created_us: 0,
            target_len,
            entries,
            checksum: 1,
            deletes: 0,
            upserts: 0,
            body_len: 0,
        };
        encode(&h, &[], &pairs).unwrap()
    }

    #[test]
    fn counts_the_version_it_makes_cannot_hold_are_refused_before_any_work() {
        let (a, _) = pair();
        let ha = format::read_header(&a).unwrap();
        // More keys than the target's length holds, at 16 bytes a key.
        let d = claiming(&a, 64 + 16 * 1000, 1001, 1001);
        assert!(matches!(
            apply(&a, &d, MAX),
            Err(DeltaError::Malformed(
                "more keys than the version it makes can hold"
            ))
        ));
        // More upserts than keys in the result.
        let d = claiming(&a, 64 + 16 * 3000, 999, 1000);
        assert!(matches!(
            apply(&a, &d, MAX),
            Err(DeltaError::Malformed(
                "more keys inserted or changed than the version it makes holds"
            ))
        ));
        // Upserted keys and values larger together than the target length.
        let mut h = read_header(&claiming(&a, 64 + 16 * 4, 2, 0)).unwrap();
        h.target_len = 64 + 16 * 4 + 200;
        let big = [7u8; 200];
        let d = encode(&h, &[], &[(b"x", &big), (b"y", &big)]).unwrap();
        assert!(matches!(
            parse(&d, MAX),
            Err(DeltaError::Malformed(
                "upserted keys and values larger than the version they go into"
            ))
        ));
        // Deleting more keys than the base holds.
        let many: Vec<Vec<u8>> = (0..ha.entries + 1)
            .map(|i| i.to_be_bytes().to_vec())
            .collect();
        let refs: Vec<&[u8]> = many.iter().map(|k| &k[..]).collect();
        let mut d = claiming(&a, 1 << 20, 1, 0);
        let h = read_header(&d).unwrap();
        d = encode(&h, &refs, &[]).unwrap();
        assert!(matches!(
            apply(&a, &d, MAX),
            Err(DeltaError::DoesNotFit(
                "deletes more keys than the base holds"
            ))
        ));
        // A result count the base and the changes cannot make: 2000 base keys, 10 upserts.
        let d = claiming(&a, 1 << 20, ha.entries + 11, 10);
        assert!(matches!(
            apply(&a, &d, MAX),
            Err(DeltaError::DoesNotFit(
                "the result has another number of keys"
            ))
        ));
    }

    #[test]
    fn truncations_and_garbage_are_rejected() {
        let (a, b) = pair();
        let d = make(&a, &b).unwrap();
        for len in [0, 8, DELTA_HEADER_LEN - 1, DELTA_HEADER_LEN, d.len() - 1] {
            assert!(apply(&a, &d[..len], MAX).is_err(), "cut to {len} accepted");
        }
        assert!(matches!(
            apply(&a, &[0x5a; 4096], MAX),
            Err(DeltaError::BadMagic)
        ));
    }

    #[test]
    fn a_delta_naming_a_version_over_the_cap_is_refused_before_any_work() {
        let (a, b) = pair();
        let d = make(&a, &b).unwrap();
        assert!(matches!(
            apply(&a, &d, b.len() as u64 - 1),
            Err(DeltaError::TooLarge(..))
        ));
    }

    #[test]
    fn hostile_counts_and_lengths_are_refused_without_allocating_for_them() {
        let h = Header {
            base_checksum: 1,
            version: 2,
            created_us: 0,
            target_len: 1000,
            entries: 1,
            checksum: 3,
            deletes: 0,
            upserts: 0,
            body_len: 0,
        };
        // Claims of billions of changes in a short body.
        let mut d = encode(&h, &[b"k"], &[]).unwrap();
        d[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
        reseal(&mut d);
        assert!(matches!(parse(&d, MAX), Err(DeltaError::Malformed(_))));
        // A key length past the end.
        let mut d = encode(&h, &[b"key"], &[]).unwrap();
        d[DELTA_HEADER_LEN..DELTA_HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut d);
        assert!(matches!(parse(&d, MAX), Err(DeltaError::Malformed(_))));
        // Keys out of order, and a key twice.
        for keys in [[&b"b"[..], &b"a"[..]], [&b"a"[..], &b"a"[..]]] {
            let d = encode(&h, &keys, &[]).unwrap();
            assert!(matches!(parse(&d, MAX), Err(DeltaError::Malformed(_))));
        }
    }

    #[test]
    fn a_delta_that_deletes_a_missing_key_does_not_fit() {
        let (a, b) = pair();
        let hb = format::read_header(&b).unwrap();
        let ha = format::read_header(&a).unwrap();
        let d = encode(
            &Header {
                base_checksum: ha.checksum,
                version: 8,
                created_us: 200,
                target_len: b.len() as u64,
                entries: hb.entries,
                checksum: hb.checksum,
                deletes: 0,
                upserts: 0,
                body_len: 0,
            },
            &[b"no such key"],
            &[],
        )
        .unwrap();
        assert!(matches!(apply(&a, &d, MAX), Err(DeltaError::DoesNotFit(_))));
    }
}
