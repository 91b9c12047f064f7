//! The data server's import parsers: `lockstep import`'s file (JSON object or CSV, the very
//! source of server/src/import.rs) and the JSON body of `POST /v1/admin/import` with its
//! base64 values.
#![no_main]

#[path = "../../server/src/import.rs"]
#[allow(dead_code)]
mod import;

use libfuzzer_sys::fuzz_target;
use lockstep::wire::ImportRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(entries) = import::parse_import(text) {
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
});
