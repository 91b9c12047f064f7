//! Delta transfer end to end: a real `lockstep serve`, a client in its own process
//! (tests/c/observer.c, through the C ABI) and, between them, a proxy that passes everything
//! through or tampers with delta downloads. An honest delta is applied and costs only its own
//! bytes; a corrupt delta, a delta made against another base, and a delta whose result is not
//! the announced version are each refused, and the client downloads the version whole.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use lockstep::{delta, format, wire};
use support::observer::Observer;
use support::proxy::{read_request, respond};
use support::{admin_post, Server, TOKEN};

/// What the proxy does to delta downloads (everything else passes through untouched).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tamper {
    None,
    /// One byte of the body flipped: the delta's own checksum no longer matches.
    FlipByte,
    /// An honest delta, but made from another version than the client's active one.
    WrongBase,
    /// A byte of one new value changed and the delta resealed: well-formed, for the right
    /// base, naming the right version, but rebuilding something else.
    WrongResult,
    /// A self-consistent forgery: the delta from the client's active version to another
    /// version 2 (one value changed), whose header names that version's checksum, sealed.
    /// Every check in `delta` passes; only the checksum the check-in announced refuses it.
    Forged,
}

struct TamperProxy {
    url: String,
    stop: Arc<AtomicBool>,
    /// Requests by path prefix (`/v1/deltas`, `/v1/blobs`, ...): status codes seen.
    seen: Arc<Mutex<BTreeMap<String, Vec<u16>>>>,
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl TamperProxy {
    fn start(upstream: &str, tamper: Tamper) -> TamperProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, up, sn) = (stop.clone(), upstream.to_owned(), seen.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (up, sn) = (up.clone(), sn.clone());
                        std::thread::spawn(move || serve(stream, &up, tamper, &sn));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        TamperProxy { url, stop, seen }
    }

    fn statuses(&self, prefix: &str) -> Vec<u16> {
        self.seen
            .lock()
            .unwrap()
            .get(prefix)
            .cloned()
            .unwrap_or_default()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn fetch(url: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut resp = agent()
        .get(url)
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k.starts_with("x-lockstep") || k == "etag" || k == "content-type"
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut body = Vec::new();
    resp.body_mut()
        .with_config()
        .limit(1 << 30)
        .reader()
        .read_to_end(&mut body)
        .unwrap();
    (resp.status().as_u16(), headers, body)
}

fn serve(
    mut stream: TcpStream,
    upstream: &str,
    tamper: Tamper,
    seen: &Mutex<BTreeMap<String, Vec<u16>>>,
) {
    let Some((path, _)) = read_request(&stream) else {
        return;
    };
    // The client's token goes upstream as the test's own (check-ins); blob and delta URLs
    // need none. Accept-Encoding is not passed on: the proxy works on plain bytes.
    let (status, headers, mut body) = fetch(&format!("{upstream}{path}"));
    let prefix = path.split('/').take(3).collect::<Vec<_>>().join("/");
    seen.lock().unwrap().entry(prefix).or_default().push(status);
    if path.starts_with(wire::PATH_DELTAS) && status == 200 {
        body = damage(upstream, body, tamper);
    }
    respond(&mut stream, status, &headers, &body);
}

fn damage(upstream: &str, honest: Vec<u8>, tamper: Tamper) -> Vec<u8> {
    match tamper {
        Tamper::None => honest,
        Tamper::FlipByte => {
            let mut b = honest;
            let i = delta::DELTA_HEADER_LEN + (b.len() - delta::DELTA_HEADER_LEN) / 2;
            b[i] ^= 0x20;
            b
        }
        Tamper::WrongBase => {
            let h = delta::read_header(&honest).unwrap();
            let (_, _, target) = fetch(&format!("{upstream}/v1/versions/{}", h.version));
            let mut other = format::Content::new();
            other.insert(b"price".to_vec(), b"from another base".to_vec());
            let other = format::encode(h.version - 1, 0, &other).unwrap();
            delta::make(&other, &target).unwrap()
        }
        Tamper::WrongResult => {
            let mut b = honest.clone();
            let d = delta::parse(&honest, u64::MAX).unwrap();
            let (_, value) = d
                .upserts
                .iter()
                .find(|(_, v)| !v.is_empty())
                .expect("the delta sets a value");
            let at = value.as_ptr() as usize - honest.as_ptr() as usize;
            b[at] ^= 0x01;
            delta::reseal(&mut b);
            b
        }
        Tamper::Forged => {
            let h = delta::read_header(&honest).unwrap();
            let (_, _, target) = fetch(&format!("{upstream}/v1/versions/{}", h.version));
            let base = (1..h.version)
                .rev()
                .map(|n| fetch(&format!("{upstream}/v1/versions/{n}")).2)
                .find(|v| format::read_header(v).is_ok_and(|b| b.checksum == h.base_checksum))
                .expect("the delta's base is a version the data server holds");
            let (head, mut content) = format::decode(&format::aligned_copy(&target)).unwrap();
            content.insert(b"key:00000".to_vec(), b"value-0-forged".to_vec());
            let forged = format::encode(h.version, head.created_us, &content).unwrap();
            let d = delta::make(&base, &forged).unwrap();
            let fh = delta::read_header(&d).unwrap();
            assert!(fh.checksum != h.checksum && fh.base_checksum == h.base_checksum);
            d
        }
    }
}

const KEYS: usize = 2000;

/// Sets the 2000 keys, every `changed_every`-th with `salt` in its value (values without
/// spaces: the observer prints the value it reads as one word).
fn import(s: &Server, salt: &str, changed_every: usize) {
    let entries: Vec<serde_json::Value> = (0..KEYS)
        .map(|i| {
            let value = if i % changed_every == 0 {
                format!("value-{i}-{salt}")
            } else {
                format!("value-{i}")
            };
            serde_json::json!({"key": format!("key:{i:05}"), "value": value})
        })
        .collect();
    admin_post(
        s,
        "/v1/admin/import",
        serde_json::json!({ "entries": entries }),
    );
}

/// Starts a data server with 2000 keys active, and an observer of `key:00000` behind a proxy
/// that tampers with deltas as told; then changes 1% of the keys (that one among them) and
/// waits until the observer serves the new value. Returns the observer's stats before the
/// change and after it, and the proxy.
/// An observer's STATS line, as key=value pairs.
type Stats = Vec<(String, i64)>;

fn one_change(tamper: Tamper) -> (Stats, Stats, TamperProxy) {
    let dir = tempfile::tempdir().unwrap();
    // A second of window: time to try the delta and then download in full before the
    // activation, so that a refused delta costs bytes, never the shared instant.
    let s = Server::start(
        &dir.path().join("db.sqlite"),
        &["--interval", "2s", "--min-window", "1s"],
    );
    import(&s, "before", KEYS);
    support::wait_active(&s, "key:00000", "value-0-before");
    let proxy = TamperProxy::start(&s.url, tamper);
    let o = Observer::start_with(
        &proxy.url,
        &format!("delta-{tamper:?}"),
        "key:00000",
        30.0,
        None,
        "",
    );
    o.wait_ready();
    let before = o
        .wait_for(Duration::from_secs(10), |r| {
            (r.stat("full_downloads") == Some(1)).then(|| r.stats.clone())
        })
        .expect("the first version arrives whole");
    import(&s, "after", 100);
    o.wait_value("value-0-after", Duration::from_secs(20));
    let lines = o.report().stats_lines;
    let after = o
        .wait_for(Duration::from_secs(5), |r| {
            (r.stats_lines > lines).then(|| r.stats.clone())
        })
        .unwrap();
    (before, after, proxy)
}

fn stat(stats: &[(String, i64)], key: &str) -> i64 {
    stats
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key} in {stats:?}"))
        .1
}

#[test]
fn an_honest_delta_is_applied_and_costs_only_its_own_bytes() {
    let (before, after, proxy) = one_change(Tamper::None);
    assert_eq!(proxy.statuses("/v1/deltas"), vec![200], "one delta, served");
    assert_eq!(stat(&after, "deltas_applied"), 1);
    assert_eq!(stat(&after, "lagging"), 0, "switched late");
    assert_eq!(
        stat(&after, "full_downloads"),
        1,
        "no full download after it"
    );
    assert_eq!(stat(&after, "rejected"), 0);
    let version_bytes = stat(&before, "bytes_downloaded");
    let delta_bytes = stat(&after, "bytes_downloaded") - version_bytes;
    // 20 of 2000 keys changed: the delta is a small fraction of the version.
    assert!(
        delta_bytes > 0 && delta_bytes * 20 < version_bytes,
        "delta {delta_bytes} bytes against a {version_bytes}-byte version"
    );
}

fn refused_then_downloaded_whole(tamper: Tamper) {
    let (_, after, proxy) = one_change(tamper);
    assert!(
        proxy.statuses("/v1/deltas").contains(&200),
        "{tamper:?}: the client never tried the delta"
    );
    assert_eq!(stat(&after, "deltas_applied"), 0, "{tamper:?} was applied");
    // Downloaded whole in time for the activation, not caught up afterwards.
    assert_eq!(stat(&after, "lagging"), 0, "{tamper:?}: switched late");
    assert!(stat(&after, "rejected") >= 1, "{tamper:?} not counted");
    assert_eq!(
        stat(&after, "full_downloads"),
        2,
        "{tamper:?}: no full download after the refusal"
    );
}

#[test]
fn a_corrupt_delta_is_refused_and_the_version_downloaded_whole() {
    refused_then_downloaded_whole(Tamper::FlipByte);
}

#[test]
fn a_delta_against_another_base_is_refused_and_the_version_downloaded_whole() {
    refused_then_downloaded_whole(Tamper::WrongBase);
}

#[test]
fn a_delta_that_rebuilds_another_version_is_refused_and_the_version_downloaded_whole() {
    refused_then_downloaded_whole(Tamper::WrongResult);
}

#[test]
fn a_sound_delta_to_a_version_other_than_the_announced_one_is_refused() {
    refused_then_downloaded_whole(Tamper::Forged);
}

/// Polls check-ins until the staged version holds `key`=`value` and is not the active one.
fn wait_staged(s: &Server, key: &str, value: &str) -> wire::CheckinResponse {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = support::checkin(s, "delta-test");
        if r.sync.staged_version != r.sync.active_version
            && support::value_in_version(s, key, r.sync.staged_version).as_deref() == Some(value)
        {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{key}={value} never staged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_data_server_serves_the_active_to_staged_delta_immutable_to_holders_of_its_url() {
    let dir = tempfile::tempdir().unwrap();
    // A long enough cycle that the staged version stays staged while the test looks at it.
    let s = Server::start(
        &dir.path().join("db.sqlite"),
        &["--interval", "3s", "--min-window", "1s"],
    );
    import(&s, "before", KEYS);
    support::wait_active(&s, "key:00000", "value-0-before");
    import(&s, "after", 100);
    let r = wait_staged(&s, "key:00000", "value-0-after");
    let path = r.staged_delta_from_active.clone();
    assert!(
        path.starts_with(&format!("{}/", wire::PATH_DELTAS)),
        "check-in names no delta: {path:?}"
    );
    // No token: the URL is the capability.
    let d = support::get(&format!("{}{path}", s.url), None, &[]);
    assert_eq!(d.status, 200, "{}", String::from_utf8_lossy(&d.body));
    assert_eq!(
        d.headers.get("cache-control").unwrap(),
        wire::BLOB_CACHE_CONTROL
    );
    let etag = d.headers.get("etag").unwrap().to_str().unwrap().to_owned();
    let version = |n: u64| support::get(&format!("{}/v1/versions/{n}", s.url), None, &[]).body;
    let (active, staged) = (
        version(r.sync.active_version),
        version(r.sync.staged_version),
    );
    assert!(d.body.len() * 20 < staged.len(), "delta not small");
    let rebuilt = delta::apply(&format::aligned_copy(&active), &d.body, u64::MAX).unwrap();
    assert!(
        rebuilt[..] == staged[..],
        "the delta does not rebuild the staged version"
    );
    let again = support::get(
        &format!("{}{path}", s.url),
        None,
        &[("If-None-Match", &etag)],
    );
    assert_eq!(again.status, 304);
    // Another key, or a name that is not a delta's, gets nothing.
    let mut forged = path.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        support::get(&format!("{}{forged}", s.url), None, &[]).status,
        404
    );
    let bad = support::get(
        &format!("{}{}/not-a-delta", s.url, wire::PATH_DELTAS),
        None,
        &[],
    );
    assert_eq!(bad.status, 400, "{}", String::from_utf8_lossy(&bad.body));
}

#[test]
fn a_delta_no_smaller_than_its_version_is_not_offered() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db.sqlite"),
        &["--interval", "3s", "--min-window", "1s"],
    );
    // Fifty long keys replaced by fifty others: the delta carries each key twice (deleted and
    // inserted), which costs more than the version's own overhead per key.
    let key = |which: &str, i: usize| format!("{which}-{}-{i:03}", "k".repeat(60));
    let entries = |which: &str| -> Vec<serde_json::Value> {
        (0..50)
            .map(|i| serde_json::json!({"key": key(which, i), "value": "v"}))
            .collect()
    };
    admin_post(
        &s,
        "/v1/admin/import",
        serde_json::json!({ "entries": entries("old") }),
    );
    support::wait_active(&s, &key("old", 49), "v");
    for i in 0..50 {
        admin_post(
            &s,
            "/v1/admin/delete",
            serde_json::json!({ "key": key("old", i) }),
        );
    }
    admin_post(
        &s,
        "/v1/admin/import",
        serde_json::json!({ "entries": entries("new") }),
    );
    let r = wait_staged(&s, &key("new", 49), "v");
    assert!(support::value_in_version(&s, &key("old", 0), r.sync.staged_version).is_none());
    if !r.staged_delta_from_active.is_empty() {
        // Named before it was made: its URL says there is none.
        let d = support::get(
            &format!("{}{}", s.url, r.staged_delta_from_active),
            None,
            &[],
        );
        assert_eq!(d.status, 404, "{}", String::from_utf8_lossy(&d.body));
    }
    let r = support::checkin(&s, "delta-test");
    assert_ne!(r.sync.staged_version, r.sync.active_version);
    assert_eq!(
        r.staged_delta_from_active, "",
        "a useless delta is still offered"
    );
}
