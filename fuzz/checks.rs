//! What each fuzz target checks, as plain functions: the targets in fuzz_targets/ call them,
//! and `tests/fuzz_corpus.rs` replays the seed corpus (which keeps every crash found, as a
//! regression) through them in the ordinary `cargo test`, on every CI run.
#![allow(dead_code)]

use lockstep::activation::Version;
use lockstep::clock::{ClockSync, Sample};
use lockstep::format::{self, FORMAT_REVISION, HEADER_LEN, MAGIC};
use lockstep::options::Options;
use lockstep::retrieval::{parse_checkin, plausible};
use lockstep::wire;

/// The version format on arbitrary bytes: validation, then lookups in whatever passed. Bytes
/// are tried as they are (the header and checksum gate) and again with a header made to match
/// them (magic, revision, length and checksum fixed up), so the fuzzer reaches rkyv's
/// structural validation behind the checksum and the lookups after it.
pub fn version(data: &[u8]) {
    if let Ok(v) = Version::verify(format::aligned_copy(data), None) {
        look_up(&v, data);
    }
    if data.len() < HEADER_LEN {
        return;
    }
    let mut forged = data.to_vec();
    forged[..8].copy_from_slice(MAGIC);
    forged[8..12].copy_from_slice(&FORMAT_REVISION.to_le_bytes());
    forged[32..40].copy_from_slice(&((data.len() - HEADER_LEN) as u64).to_le_bytes());
    let checksum = format::compute_checksum(&forged).unwrap();
    forged[56..64].copy_from_slice(&checksum.to_le_bytes());
    let number = u64::from_le_bytes(forged[16..24].try_into().unwrap());
    if let Ok(v) = Version::verify(format::aligned_copy(&forged), Some(number)) {
        assert_eq!(v.number(), number);
        look_up(&v, &forged);
        // What validates also decodes. A forged archive may hold a key where its hash does
        // not lead (found by this target: crash-48026d58…, kept in the corpus as
        // misplaced-key): a lookup then misses it, which is all it may do.
        let (_, content) = format::decode(&forged).expect("validated bytes decode");
        for key in content.keys() {
            let _ = v.get(key);
        }
    }
}

fn look_up(version: &Version, data: &[u8]) {
    // Keys from the input itself (the payload holds them when it is a real archive), and the
    // empty key.
    for key in data.chunks(7).take(64).chain([&b""[..]]) {
        if let Some(value) = version.get(key) {
            // The value lies inside the version's bytes (oob-empty-key in the corpus once
            // answered 587 MB from beyond them).
            let inside = version.bytes().as_ptr_range();
            let value = value.as_ptr_range();
            assert!(inside.start <= value.start && value.end <= inside.end);
        }
    }
}

/// The check-in answer as the retrieval thread takes it: the body's JSON, the plausibility
/// gate, the announced checksums, and the clock sample made from the answer's times. The first
/// 16 bytes are the two server-time headers (`X-Lockstep-Server-Time-Us` and `-Received-Us`),
/// which come off the network as freely as the body.
pub fn checkin(data: &[u8]) {
    if data.len() < 16 {
        return;
    }
    let server_us = i64::from_le_bytes(data[..8].try_into().unwrap());
    let received_us = i64::from_le_bytes(data[8..16].try_into().unwrap());
    let Ok(answer) = parse_checkin(&data[16..]) else {
        return;
    };
    let _ = wire::parse_checksum_hex(&answer.staged_checksum);
    let _ = wire::parse_checksum_hex(&answer.active_checksum);
    if plausible(&answer.sync, server_us).is_err() {
        return;
    }
    let mut clock = ClockSync::new();
    let estimate = clock.add(Sample {
        sent_ns: 1_000_000,
        received_ns: 3_000_000,
        server_us,
        server_received_us: Some(received_us),
        wall_mid_us: 1_700_000_000_000_000,
    });
    let _ = estimate.mono_at(answer.sync.activation_time_us);
    let _ = estimate.server_now_us();
    let _ = clock.estimate(5_000_000);
}

/// `sync_open`'s options parser on arbitrary bytes: never a panic, and what it accepts is a
/// set of options a handle can be opened with.
pub fn options(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(o) = Options::parse(text) {
        assert!(!o.urls.is_empty());
        assert!(o
            .urls
            .iter()
            .all(|u| u.starts_with("http://") || u.starts_with("https://")));
        assert!(!o.name.is_empty());
        // Parsing what was accepted again gives the same options.
        assert_eq!(Options::parse(text).as_ref(), Ok(&o));
    }
}

/// The version a `delta` input is applied to: a few keys, so that deletes and upserts of them
/// fit and the fuzzer can reach a rebuilt version.
fn delta_base() -> format::VersionBuf {
    let content: format::Content = [
        (&b"a"[..], &b"1"[..]),
        (b"price:apple", b"1.25"),
        (b"price:pear", b"2.00"),
        (b"", b"empty key"),
    ]
    .iter()
    .map(|(k, v)| (k.to_vec(), v.to_vec()))
    .collect();
    format::encode(1, 1000, &content).expect("encodes")
}

/// A delta's cap in the fuzz run: hostile lengths must be refused against it, not allocated.
const DELTA_MAX_VERSION_BYTES: u64 = 1 << 20;

/// The delta format on arbitrary bytes, applied to [`delta_base`]: as they are (the header
/// and checksum gate), and again with the magic, revision, base checksum, body length and the
/// delta's own checksum made to match, so the fuzzer reaches the body's parsing and the
/// rebuild behind them. Whatever applies is exactly the version the delta names: it verifies,
/// with the named length and checksum.
pub fn delta(data: &[u8]) {
    use lockstep::delta;
    let base = delta_base();
    check_applied(&base, data);
    if data.len() < delta::DELTA_HEADER_LEN {
        return;
    }
    let mut forged = data.to_vec();
    forged[..8].copy_from_slice(delta::MAGIC);
    forged[8..12].copy_from_slice(&delta::DELTA_REVISION.to_le_bytes());
    let base_checksum = format::read_header(&base).expect("base header").checksum;
    forged[16..24].copy_from_slice(&base_checksum.to_le_bytes());
    delta::reseal(&mut forged);
    check_applied(&base, &forged);
}

fn check_applied(base: &[u8], data: &[u8]) {
    use lockstep::delta;
    let Ok(out) = delta::apply(base, data, DELTA_MAX_VERSION_BYTES) else {
        return;
    };
    let named = delta::read_header(data).expect("an applied delta has a header");
    assert_eq!(out.len() as u64, named.target_len);
    let v = Version::verify(out, Some(named.version)).expect("a rebuilt version verifies");
    assert_eq!(v.checksum(), named.checksum);
}
