//! What the `import` target checks (its own file: it needs the server's import parser and
//! csv, which the other checks do not). Replayed over fuzz/corpus/import by
//! server/tests/fuzz_import_corpus.rs.

use lockstep::wire::ImportRequest;

/// The data server's import parsers: `lockstep import`'s file (JSON object or CSV; `parse`
/// is server/src/import.rs's `parse_import`) and the JSON body of `POST /v1/admin/import`
/// with its base64 values.
pub fn import(data: &[u8], parse: fn(&str) -> Result<Vec<lockstep::wire::Entry>, String>) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(entries) = parse(text) {
            for e in entries {
                // What the CLI then sends: every blob it made decodes.
                e.key.into_bytes().expect("a parsed key decodes");
                e.value.into_bytes().expect("a parsed value decodes");
            }
        }
    }
    if let Ok(req) = serde_json::from_slice::<ImportRequest>(data) {
        for e in req.entries {
            let _ = e.key.into_bytes();
            let _ = e.value.into_bytes();
        }
    }
}
