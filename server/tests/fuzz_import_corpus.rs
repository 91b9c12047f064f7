//! The `import` fuzz target's corpus (fuzz/corpus/import), replayed through its check in the
//! ordinary test run, so that an input that once crashed it stays a regression test.

#[path = "../src/import.rs"]
#[allow(dead_code)]
mod import;
#[path = "../../fuzz/import_check.rs"]
mod import_check;

#[test]
fn import_seeds_pass_the_import_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/import");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| import_check::import(&data));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}
