//! A small lying data server: it announces a staged version and then serves it corrupted,
//! truncated, as garbage, or as the wrong version; or answers check-ins with garbage. The
//! client must never activate any of it and must keep serving its last good version. (A
//! structurally forged archive with a valid checksum is covered in `format`'s unit tests.)

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "support/mod.rs"]
mod support;

use lockstep::client::Client;
use lockstep::format::{self, Content};
use lockstep::wire::{CheckinResponse, SyncTable, HEADER_SERVER_TIME};
use support::proxy::{read_request, respond};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lie {
    ChecksumMismatch,
    Truncated,
    Garbage,
    WrongVersion,
    GarbageCheckin,
    /// A check-in that parses but makes no sense (overflowing times and intervals).
    AbsurdCheckin,
    /// Not a lie: version 2 is good but cannot be downloaded until after its activation.
    Late,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn encoded(version: u64, price: &str) -> Vec<u8> {
    let mut c = Content::new();
    c.insert(b"price".to_vec(), price.as_bytes().to_vec());
    format::encode(version, 0, &c).unwrap().to_vec()
}

fn bad_version(lie: Lie) -> Vec<u8> {
    let good = encoded(2, "1.00");
    match lie {
        Lie::ChecksumMismatch => {
            let mut b = good;
            let mid = b.len() / 2 + 10;
            b[mid] ^= 0x40;
            b
        }
        Lie::Truncated => good[..good.len() / 2].to_vec(),
        Lie::Garbage => (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        Lie::WrongVersion => encoded(3, "1.00"),
        Lie::GarbageCheckin | Lie::AbsurdCheckin | Lie::Late => good,
    }
}

/// Serves version 1 (good, price=2.00) as active and announces version 2, which it lies about.
fn liar(lie: Lie, stop: Arc<AtomicBool>) -> String {
    support::host_cache_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let start = now_us();
    std::thread::spawn(move || {
        let mut checkins = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let (mut stream, _) = match listener.accept() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
            };
            let Some((path, _)) = read_request(&stream) else {
                continue;
            };
            let now = now_us();
            let time = (HEADER_SERVER_TIME.to_owned(), now.to_string());
            if path.starts_with("/v1/checkin") {
                checkins += 1;
                if lie == Lie::GarbageCheckin && checkins > 1 {
                    respond(&mut stream, 200, &[time], b"\x00\xffnot json at all");
                    continue;
                }
                // After a second, claim version 2 should already be active: the client's
                // catch-up path must refuse it too.
                let quiet = matches!(lie, Lie::GarbageCheckin | Lie::AbsurdCheckin);
                let past = now - start > 1_000_000 && !quiet;
                let staged = if quiet { 1 } else { 2 };
                let absurd = lie == Lie::AbsurdCheckin && checkins > 1;
                let sync = SyncTable {
                    activation_time_us: if absurd { i64::MAX } else { now + 300_000 },
                    interval_us: if absurd { i64::MAX } else { 1_000_000 },
                    min_window_us: if absurd { i64::MIN } else { 100_000 },
                    staged_version: staged,
                    active_version: if past { 2 } else { 1 },
                };
                let body = serde_json::to_vec(&CheckinResponse {
                    sync,
                    server_time_us: now,
                    rotated: false,
                    // Announcing no checksums leaves the format's own checks to catch the lies.
                    staged_checksum: String::new(),
                    active_checksum: String::new(),
                    // No blob URLs: the old route, /v1/versions/{n}, as an older server.
                    staged_blob: String::new(),
                    active_blob: String::new(),
                    staged_delta_from_active: String::new(),
                })
                .unwrap();
                respond(&mut stream, 200, &[time], &body);
            } else if path == "/v1/versions/1" {
                respond(&mut stream, 200, &[time], &encoded(1, "2.00"));
            } else if path == "/v1/versions/2" && lie == Lie::Late && now - start < 1_500_000 {
                respond(&mut stream, 503, &[time], b"{\"error\":\"busy\"}");
            } else if path == "/v1/versions/2" {
                respond(&mut stream, 200, &[time], &bad_version(lie));
            } else {
                respond(&mut stream, 404, &[time], b"{\"error\":\"no\"}");
            }
        }
    });
    url
}

fn never_activates(lie: Lie) {
    let stop = Arc::new(AtomicBool::new(false));
    let url = liar(lie, stop.clone());
    let client = Client::open(&format!("url={url};name=victim;bootstrap_wait_ms=5000")).unwrap();
    assert_eq!(client.active_version(), 1);
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(
            client.get(b"price").unwrap(),
            b"2.00",
            "{lie:?} was activated"
        );
        assert_eq!(client.active_version(), 1);
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = client.stats();
    assert!(
        stats.consecutive_failures > 0,
        "{lie:?}: no failure counted"
    );
    if !matches!(lie, Lie::GarbageCheckin | Lie::AbsurdCheckin) {
        assert!(stats.rejected_versions > 0, "{lie:?}: nothing rejected");
        assert_eq!(stats.staged_version, 0, "{lie:?} was staged");
    }
    assert!(!client.last_error().is_empty());
    eprintln!("{lie:?}: {}", client.last_error());
    drop(client);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn checksum_mismatch_is_never_activated() {
    never_activates(Lie::ChecksumMismatch);
}

#[test]
fn truncated_download_is_never_activated() {
    never_activates(Lie::Truncated);
}

#[test]
fn garbage_download_is_never_activated() {
    never_activates(Lie::Garbage);
}

#[test]
fn wrong_version_is_never_activated() {
    never_activates(Lie::WrongVersion);
}

#[test]
fn garbage_checkin_keeps_the_last_version() {
    never_activates(Lie::GarbageCheckin);
}

#[test]
fn absurd_checkin_keeps_the_last_version() {
    never_activates(Lie::AbsurdCheckin);
}

#[test]
fn missed_activation_catches_up_and_reports_lagging() {
    let stop = Arc::new(AtomicBool::new(false));
    let url = liar(Lie::Late, stop.clone());
    let client = Client::open(&format!("url={url};name=late;bootstrap_wait_ms=5000")).unwrap();
    assert_eq!(client.get(b"price").unwrap(), b"2.00");
    assert!(!client.stats().lagging);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.active_version() != 2 {
        // Until it can download, it keeps serving what it has.
        assert_eq!(client.get(b"price").unwrap(), b"2.00");
        assert!(
            Instant::now() < deadline,
            "never caught up: {}",
            client.last_error()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(client.get(b"price").unwrap(), b"1.00");
    let stats = client.stats();
    assert!(
        stats.lagging,
        "caught up late but does not report lagging: {stats:?}"
    );
    drop(client);
    stop.store(true, Ordering::Relaxed);
}
