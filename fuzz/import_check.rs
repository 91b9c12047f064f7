//! What the `import` target checks (its own file: it needs the server's import parser and
//! csv, which the other checks do not). Replayed over fuzz/corpus/import by
//! server/tests/fuzz_import_corpus.rs. Both declare server/src/import.rs as `crate::import`.

use lockstep::wire::{Entry, ImportRequest};

use crate::import::{import_entries, parse_import};

/// Small limits, so the fuzzer reaches the size checks with small inputs.
const MAX_KEY: usize = 16;
const MAX_VALUE: usize = 64;

/// The data server's import: `lockstep import`'s file (JSON object or CSV, `parse_import`),
/// and the JSON body of `POST /v1/admin/import`, both through the handler's own checks
/// (`import_entries`: base64 decoding, key and value limits, a key given twice).
pub fn import(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(entries) = parse_import(text) {
            for e in &entries {
                // What the CLI then sends: every blob it made decodes.
                e.key.clone().into_bytes().expect("a parsed key decodes");
                e.value
                    .clone()
                    .into_bytes()
                    .expect("a parsed value decodes");
            }
            admitted(entries);
        }
    }
    if let Ok(req) = serde_json::from_slice::<ImportRequest>(data) {
        admitted(req.entries);
    }
}

/// What `import_entries` lets in is exactly the entries, decoded, each within the limits,
/// no key twice; what it refuses, it refuses with a message naming the entry.
fn admitted(entries: Vec<Entry>) {
    let decoded: Vec<Option<(Vec<u8>, Vec<u8>)>> = entries
        .iter()
        .map(|e| {
            Some((
                e.key.clone().into_bytes().ok()?,
                e.value.clone().into_bytes().ok()?,
            ))
        })
        .collect();
    let shown = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    match import_entries(entries, MAX_KEY, MAX_VALUE, shown) {
        Ok(got) => {
            assert_eq!(got.len(), decoded.len());
            let mut keys = std::collections::HashSet::new();
            for (g, d) in got.iter().zip(&decoded) {
                assert_eq!(Some(g), d.as_ref(), "an admitted entry is its decoded self");
                let (k, v) = g;
                assert!(!k.is_empty() && k.len() <= MAX_KEY, "key {k:?} admitted");
                assert!(v.len() <= MAX_VALUE, "value of {} bytes admitted", v.len());
                assert!(keys.insert(k.clone()), "key {k:?} admitted twice");
            }
        }
        Err(r) => {
            assert!(r.message.starts_with("entry "), "{}", r.message);
            let bad = decoded.iter().enumerate().any(|(i, d)| match d {
                None => true,
                Some((k, v)) => {
                    k.is_empty()
                        || k.len() > MAX_KEY
                        || v.len() > MAX_VALUE
                        || decoded[..i].iter().flatten().any(|(k0, _)| k0 == k)
                }
            });
            assert!(bad, "refused a good import: {}", r.message);
        }
    }
}
