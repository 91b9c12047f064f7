//! See fuzz/import_check.rs.
#![no_main]

#[path = "../../server/src/import.rs"]
#[allow(dead_code)]
mod import;
#[path = "../import_check.rs"]
mod import_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| import_check::import(data));
