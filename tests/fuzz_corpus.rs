//! The fuzz targets' seed corpus, replayed through the same checks in the ordinary test run:
//! every input that once crashed a target stays in fuzz/corpus/ as a regression test.
//! (The `import` corpus is replayed by server/tests/fuzz_import_corpus.rs.)

#[path = "../fuzz/checks.rs"]
mod checks;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

#[test]
fn version_seeds_and_former_crashes_pass_the_version_check() {
    replay("version", checks::version);
}

#[test]
fn checkin_seeds_pass_the_checkin_check() {
    replay("checkin", checks::checkin);
}

#[test]
fn options_seeds_pass_the_options_check() {
    replay("options", checks::options);
}

#[test]
fn delta_seeds_pass_the_delta_check() {
    replay("delta", checks::delta);
}
