//! Blob URLs against the real `lockstep serve`: immutable, cacheable answers that need no
//! token, keys that cannot be forged, zstd when asked for, one secret per database.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::path::Path;

use common::postgres::{each_backend, Backend};
use common::*;
use lockstep::wire;

const READ: &str = "blob-test-read-token";

fn server(db: &Path) -> Server {
    Server::start_env(
        db,
        "127.0.0.1:0",
        &["--interval", "2s", "--min-window", "1s"],
        &[("LOCKSTEP_READ_TOKEN", READ)],
    )
}

/// A check-in with the read token, and its answer.
fn checkin_with_token(s: &Server) -> wire::CheckinResponse {
    let a = get(&format!("{}/v1/checkin?name=t", s.url), Some(READ), &[]);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    serde_json::from_slice(&a.body).unwrap()
}

/// This instance's `lockstep_downloads_total`.
fn downloads(s: &Server) -> u64 {
    let a = get(&format!("{}/metrics", s.url), Some(READ), &[]);
    let text = String::from_utf8_lossy(&a.body);
    text.lines()
        .find_map(|l| l.strip_prefix("lockstep_downloads_total "))
        .unwrap_or_else(|| panic!("no lockstep_downloads_total in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).map_or("", |v| v.to_str().unwrap_or(""))
}

/// Production with compressible content, rotated until it is the staged version.
fn staged_with_content(s: &Server) -> wire::CheckinResponse {
    let entries: Vec<_> = (0..2000)
        .map(|i| serde_json::json!({"key": format!("k{i}"), "value": "a fairly repetitive value"}))
        .collect();
    admin_post(
        s,
        "/v1/admin/import",
        serde_json::json!({ "entries": entries }),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = checkin_with_token(s);
        let v = r.sync.staged_version;
        if v != r.sync.active_version && value_in_version(s, "k1", v).is_some() {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "never staged: {r:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_blob_url_serves_the_version_without_a_token_immutably_while_check_ins_need_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("db"));
    let r = staged_with_content(&s);
    let v = r.sync.staged_version;
    let checksum = wire::parse_checksum_hex(&r.staged_checksum).unwrap();
    assert!(
        r.staged_blob
            .starts_with(&format!("/v1/blobs/{v}-{}-", r.staged_checksum)),
        "{r:?}"
    );
    // Check-ins and the old version route still need the read token.
    assert_eq!(
        get(&format!("{}/v1/checkin?name=t", s.url), None, &[]).status,
        401
    );
    assert_eq!(
        get(&format!("{}/v1/versions/{v}", s.url), None, &[]).status,
        401
    );

    let url = format!("{}{}", s.url, r.staged_blob);
    let official = get(&format!("{}/v1/versions/{v}", s.url), Some(READ), &[]);
    let before = downloads(&s);
    let plain = get(&url, None, &[]);
    assert_eq!(
        plain.status,
        200,
        "{}",
        String::from_utf8_lossy(&plain.body)
    );
    assert_eq!(
        plain.body, official.body,
        "the blob is not the version's bytes"
    );
    let header = |a: &Answer, n: &str| header(a, n).to_owned();
    assert_eq!(header(&plain, "etag"), format!("\"{}\"", r.staged_checksum));
    assert_eq!(header(&plain, "cache-control"), wire::BLOB_CACHE_CONTROL);
    assert_eq!(header(&plain, "vary"), "Accept-Encoding");
    assert_eq!(header(&plain, "content-encoding"), "");
    assert_eq!(downloads(&s), before + 1, "a blob download is counted");

    // Asked for zstd: smaller, and the same bytes once decoded.
    let z = get(&url, None, &[("Accept-Encoding", "gzip, zstd")]);
    assert_eq!(z.status, 200);
    assert_eq!(header(&z, "content-encoding"), "zstd");
    assert_eq!(
        header(&z, "etag"),
        format!("\"{}-zstd\"", r.staged_checksum)
    );
    assert!(
        z.body.len() < plain.body.len() / 2,
        "{} bytes",
        z.body.len()
    );
    assert_eq!(zstd::stream::decode_all(&z.body[..]).unwrap(), plain.body);

    // Revalidation: 304 for the form the request would get, with no body and no count.
    let counted = downloads(&s);
    let etag = format!("\"{}\"", wire::checksum_hex(checksum));
    let again = get(&url, None, &[("If-None-Match", &etag)]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(header(&again, "cache-control"), wire::BLOB_CACHE_CONTROL);
    let zetag = format!("\"{}-zstd\"", wire::checksum_hex(checksum));
    let zagain = get(
        &url,
        None,
        &[("If-None-Match", &zetag), ("Accept-Encoding", "zstd")],
    );
    assert_eq!(zagain.status, 304);
    assert_eq!(downloads(&s), counted, "a 304 counted as a download");
}

#[test]
fn a_wrong_key_is_404_and_a_malformed_name_is_400_each_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("db"));
    let r = staged_with_content(&s);
    let good = r.staged_blob.clone();
    let key = good.rsplit('-').next().unwrap();
    let flipped = format!(
        "{}{}",
        &good[..good.len() - 1],
        if key.ends_with('0') { '1' } else { '0' }
    );
    // Another version's key on this version's name, and a key one digit off.
    let other_key = r.active_blob.rsplit('-').next().unwrap();
    let swapped = format!("{}{other_key}", &good[..good.len() - key.len()]);
    for path in [flipped, swapped] {
        let a = get(&format!("{}{path}", s.url), Some(READ), &[]);
        assert_eq!(a.status, 404, "{path}");
        assert!(
            a.json()["error"].as_str().unwrap().contains("key"),
            "{}",
            a.json()
        );
    }
    let v = r.sync.staged_version;
    for name in [
        "nonsense".to_owned(),
        format!("{v}-{}", r.staged_checksum),
        format!("{v}-{}-{}", r.staged_checksum, &key[..8]),
        format!("+{v}-{}-{key}", r.staged_checksum),
        format!("{v}-{}-{key}", r.staged_checksum.to_uppercase()),
    ] {
        let a = get(&format!("{}/v1/blobs/{name}", s.url), None, &[]);
        assert_eq!(a.status, 400, "{name}");
        assert!(a.json()["error"].as_str().unwrap().contains("malformed"));
    }
    // The right key still works after all that.
    assert_eq!(get(&format!("{}{good}", s.url), None, &[]).status, 200);
}

#[test]
fn the_blob_secret_is_kept_by_the_database_and_shared_by_its_instances() {
    each_backend(|backend, db| {
        let first = server(db);
        let a = checkin_with_token(&first);
        let second = server(db);
        let b = checkin_with_token(&second);
        assert_eq!(
            a.active_blob, b.active_blob,
            "{backend:?}: instances sign alike"
        );
        assert_eq!(
            get(&format!("{}{}", second.url, a.active_blob), None, &[]).status,
            200,
            "{backend:?}: one instance's URL works on another"
        );
        drop((first, second));
        let again = server(db);
        assert_eq!(
            checkin_with_token(&again).active_blob,
            a.active_blob,
            "{backend:?}: a restart keeps the secret"
        );
        if backend == Backend::Sqlite {
            let other = server(&db.with_file_name("other-db"));
            // Version 1 exists there too: the first database's URL for it fails on the key.
            assert_eq!(checkin_with_token(&other).sync.active_version, 1);
            let foreign = get(&format!("{}{}", other.url, a.active_blob), None, &[]);
            assert_eq!(foreign.status, 404);
            let error = foreign.json()["error"].as_str().unwrap().to_owned();
            assert!(error.contains("key"), "two databases, one secret: {error}");
        }
    });
}
