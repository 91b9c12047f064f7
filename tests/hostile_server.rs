//! SPEC invariant 10: nothing a data server sends can crash a host process or make it hold
//! more than `max_version_bytes` per version. A hostile data server announces huge versions;
//! the host is a separate C process (tests/c/host.c) reading through the C ABI.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use lockstep::delta;
use lockstep::format::{self, Content};
use lockstep::wire::{self, CheckinResponse, SyncTable, HEADER_SERVER_TIME};
use support::proxy::{read_request, respond};
use support::{compile_c, now_us, root};

/// How the hostile server sends version 2.
#[derive(Clone, Copy)]
enum Hostile {
    /// Announce `declared` bytes, then send one byte every `every`.
    Trickle { declared: u64, every: Duration },
    /// Announce `declared` bytes (or nothing: a body that ends when the connection does),
    /// then send zeros as fast as the host takes them.
    Flood { declared: Option<u64> },
    /// Give version 2 a blob URL and send there a small zstd body (one frame, repeated) that
    /// expands to `expands_to` bytes of zeros, each frame declaring a small content size.
    ZstdBomb { expands_to: u64 },
    /// Offer a delta from version 1 to an honest version 2 that claims `upserts` keys (4-byte
    /// keys, empty values) for a version of `target_len` bytes: a small body that cost the
    /// host several times its size to parse and apply. Version 2 downloads whole honestly.
    Delta { upserts: u32, target_len: u64 },
}

/// The checksum the hostile server announces for version 2, and its blob path.
const BOMB_CHECKSUM: &str = "00000000000000aa";
fn bomb_path() -> String {
    format!("/v1/blobs/2-{BOMB_CHECKSUM}-{}", "0".repeat(32))
}

fn version_one() -> Vec<u8> {
    let mut c = Content::new();
    c.insert(b"price".to_vec(), b"2.00".to_vec());
    format::encode(1, 0, &c).unwrap().to_vec()
}

fn version_two() -> Vec<u8> {
    let mut c = Content::new();
    c.insert(b"price".to_vec(), b"3.00".to_vec());
    format::encode(2, 0, &c).unwrap().to_vec()
}

fn checksum(version: &[u8]) -> u64 {
    format::read_header(version).unwrap().checksum
}

/// Downloads of version 2 whole from the server offering a hostile delta.
static WHOLE_AFTER_DELTA: AtomicU64 = AtomicU64::new(0);

fn hostile_delta_path() -> String {
    wire::delta_path(
        checksum(&version_one()),
        2,
        checksum(&version_two()),
        &"0".repeat(32),
    )
}

/// A delta that names version 2 and holds `upserts` changes nothing could fit in it, sealed
/// with its own checksum so that only the counts refuse it.
fn hostile_delta(upserts: u32, target_len: u64) -> Vec<u8> {
    let keys: Vec<[u8; 4]> = (0..upserts).map(|i| i.to_be_bytes()).collect();
    let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &[][..])).collect();
    let header = delta::Header {
        base_checksum: checksum(&version_one()),
        version: 2,
        created_us: 0,
        target_len,
        entries: upserts as u64 + 1,
        checksum: checksum(&version_two()),
        deletes: 0,
        upserts: 0,
        body_len: 0,
    };
    delta::encode(&header, &[], &pairs).unwrap()
}

/// Serves version 1 as active and announces version 2 as staged, which it sends hostilely.
/// Returns its URL and the most bytes of one version body it got into one connection (what
/// the host read of it, plus what the kernel's socket buffers took: a few MB on loopback).
fn hostile_server(how: Hostile, stop: Arc<AtomicBool>) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let most = sent.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let (stop, sent) = (stop.clone(), sent.clone());
                    std::thread::spawn(move || answer(stream, how, &stop, &sent));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    (url, most)
}

fn answer(mut stream: TcpStream, how: Hostile, stop: &AtomicBool, sent_most: &AtomicU64) {
    let Some((path, _)) = read_request(&stream) else {
        return;
    };
    let path = path.as_str();
    let now = now_us();
    let time = (HEADER_SERVER_TIME.to_owned(), now.to_string());
    if path.starts_with("/v1/checkin") {
        let body = serde_json::to_vec(&CheckinResponse {
            sync: SyncTable {
                activation_time_us: now + 300_000,
                interval_us: 1_000_000,
                min_window_us: 100_000,
                staged_version: 2,
                active_version: 1,
            },
            server_time_us: now,
            rotated: false,
            staged_checksum: match how {
                Hostile::ZstdBomb { .. } => BOMB_CHECKSUM.to_owned(),
                Hostile::Delta { .. } => wire::checksum_hex(checksum(&version_two())),
                _ => String::new(),
            },
            active_checksum: match how {
                Hostile::Delta { .. } => wire::checksum_hex(checksum(&version_one())),
                _ => String::new(),
            },
            staged_blob: match how {
                Hostile::ZstdBomb { .. } => bomb_path(),
                _ => String::new(),
            },
            active_blob: String::new(),
            staged_delta_from_active: match how {
                Hostile::Delta { .. } => hostile_delta_path(),
                _ => String::new(),
            },
        })
        .unwrap();
        respond(&mut stream, 200, &[time], &body);
    } else if path == "/v1/versions/1" {
        respond(&mut stream, 200, &[time], &version_one());
    } else if let (Hostile::ZstdBomb { expands_to }, true) = (how, path == bomb_path()) {
        // Frames of 4 MiB of zeros compress to a few hundred bytes each: a body of a few
        // hundred kB that expands a thousandfold.
        const FRAME: u64 = 4 << 20;
        let frame = zstd::bulk::compress(&vec![0u8; FRAME as usize], 1).unwrap();
        let body = frame.repeat(expands_to.div_ceil(FRAME) as usize);
        let encoding = ("Content-Encoding".to_owned(), "zstd".to_owned());
        respond(&mut stream, 200, &[time, encoding], &body);
        sent_most.fetch_max(body.len() as u64, Ordering::Relaxed);
    } else if let (
        Hostile::Delta {
            upserts,
            target_len,
        },
        true,
    ) = (how, path == hostile_delta_path())
    {
        let body = hostile_delta(upserts, target_len);
        respond(&mut stream, 200, &[time], &body);
        sent_most.fetch_max(body.len() as u64, Ordering::Relaxed);
    } else if let (Hostile::Delta { .. }, "/v1/versions/2") = (how, path) {
        respond(&mut stream, 200, &[time], &version_two());
        WHOLE_AFTER_DELTA.fetch_add(1, Ordering::Relaxed);
    } else if path == "/v1/versions/2" {
        let (declared, every) = match how {
            Hostile::Trickle { declared, every } => (Some(declared), Some(every)),
            Hostile::Flood { declared } => (declared, None),
            Hostile::ZstdBomb { .. } | Hostile::Delta { .. } => return,
        };
        let head = match declared {
            Some(n) => format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n"),
            None => "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned(),
        };
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        let zeros = vec![0u8; 1 << 20];
        let mut on_this_connection = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let sent = match every {
                Some(every) => {
                    std::thread::sleep(every);
                    stream.write_all(b"L").map(|()| 1)
                }
                None => stream.write_all(&zeros).map(|()| zeros.len() as u64),
            };
            match sent {
                Ok(n) => {
                    on_this_connection += n;
                    sent_most.fetch_max(on_this_connection, Ordering::Relaxed);
                }
                Err(_) => return, // the host hung up: what it should do
            }
        }
    } else {
        respond(&mut stream, 404, &[time], b"{\"error\":\"no\"}");
    }
}

#[derive(Debug, Default, Clone)]
struct Tick {
    rss_kb: i64,
    vm_kb: i64,
    active: u64,
    failures: u64,
    rejected: u64,
    value: String,
}

fn parse_tick(line: &str) -> Option<Tick> {
    let mut t = Tick::default();
    for kv in line.strip_prefix("TICK ")?.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        match k {
            "rss_kb" => t.rss_kb = v.parse().ok()?,
            "vm_kb" => t.vm_kb = v.parse().ok()?,
            "active" => t.active = v.parse().ok()?,
            "failures" => t.failures = v.parse().ok()?,
            "rejected" => t.rejected = v.parse().ok()?,
            "value" => t.value = v.to_owned(),
            _ => {}
        }
    }
    Some(t)
}

/// Runs tests/c/host.c (optionally under `ulimit -v`) and returns its ticks and exit status.
fn run_host(
    options: &str,
    handles: u32,
    seconds: f64,
    ulimit_kb: Option<u64>,
) -> (Vec<Tick>, std::process::ExitStatus, String) {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    let exe = EXE.get_or_init(|| compile_c(&root().join("tests/c/host.c"), &[]));
    let limit = ulimit_kb.map_or(String::new(), |kb| format!("ulimit -v {kb}; "));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{limit}exec \"$0\" \"$1\" price \"$2\" \"$3\""))
        .arg(exe)
        .arg(options)
        .arg(seconds.to_string())
        .arg(handles.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run host");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let ticks = stdout.lines().filter_map(parse_tick).collect();
    let report = format!(
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (ticks, out.status, report)
}

/// The largest growth of resident and of virtual memory over the run, kB.
fn growth(ticks: &[Tick]) -> (i64, i64) {
    let (rss0, vm0) = (ticks[0].rss_kb, ticks[0].vm_kb);
    (
        ticks.iter().map(|t| t.rss_kb - rss0).max().unwrap(),
        ticks.iter().map(|t| t.vm_kb - vm0).max().unwrap(),
    )
}

#[test]
fn invariant_10_a_server_announcing_gigabytes_and_trickling_cannot_bloat_the_host() {
    let stop = Arc::new(AtomicBool::new(false));
    let (url, _) = hostile_server(
        Hostile::Trickle {
            declared: 3 << 30,
            every: Duration::from_millis(5),
        },
        stop.clone(),
    );
    // Three handles on their own (no host cache), each downloading "3 GiB", under the
    // default 4 GiB max_version_bytes.
    let (ticks, status, report) = run_host(
        &format!("url={url};name=host;download_timeout_ms=2500;cache_dir="),
        3,
        4.0,
        None,
    );
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "host died: {status:?}\n{report}");
    assert!(ticks.len() >= 20, "too few ticks: {report}");
    let (rss, vm) = growth(&ticks);
    eprintln!("host grew by {rss} kB resident and {vm} kB of address space");
    assert!(
        rss < 32 * 1024,
        "the host grew by {rss} kB resident on bytes it never received\n{report}"
    );
    assert!(
        vm < 256 * 1024,
        "the host reserved {vm} kB of address space for bytes it never received\n{report}"
    );
    for t in &ticks {
        assert_eq!(
            t.value, "2.00",
            "the host stopped serving version 1\n{report}"
        );
        assert_eq!(t.active, 3, "{report}");
    }
    assert!(
        ticks.iter().any(|t| t.failures >= 3),
        "the trickled downloads of all three handles never timed out\n{report}"
    );
}

#[test]
fn invariant_10_a_failed_allocation_is_a_download_error_not_an_abort() {
    let stop = Arc::new(AtomicBool::new(false));
    // 10^15 bytes announced and allowed by the host's own max_version_bytes: only the address
    // space limit stops the download, and it must stop it as an error.
    let (url, _) = hostile_server(
        Hostile::Flood {
            declared: Some(1_000_000_000_000_000),
        },
        stop.clone(),
    );
    let (ticks, status, report) = run_host(
        &format!(
            "url={url};name=limited;max_version_bytes=1000000000000000;download_timeout_ms=20000;cache_dir="
        ),
        1,
        6.0,
        Some(768 * 1024),
    );
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "host died: {status:?}\n{report}");
    let last = ticks.last().unwrap_or_else(|| panic!("no ticks\n{report}"));
    assert_eq!(last.value, "2.00", "{report}");
    assert!(
        ticks.iter().any(|t| t.failures > 0),
        "no download ever failed: the address-space limit was never reached\n{report}"
    );
    assert!(report.contains("DONE"), "{report}");
}

#[test]
fn invariant_10_a_version_past_max_version_bytes_is_refused_announced_or_not() {
    const MAX: u64 = 64 << 20;
    // Announced larger than the host allows: refused before the body is read.
    let stop = Arc::new(AtomicBool::new(false));
    let (url, sent) = hostile_server(
        Hostile::Flood {
            declared: Some(1 << 40),
        },
        stop.clone(),
    );
    let options = format!("url={url};name=capped;max_version_bytes={MAX};cache_dir=");
    let (ticks, status, report) = run_host(&options, 1, 2.0, None);
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "host died: {status:?}\n{report}");
    assert!(ticks.iter().any(|t| t.failures > 0), "{report}");
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("announced past the cap: at most {sent} bytes got into one connection");
    assert!(
        sent < MAX / 2,
        "the host read {sent} bytes of a body announced past its cap\n{report}"
    );

    // Not announced at all: read up to the cap and no further.
    let stop = Arc::new(AtomicBool::new(false));
    let (url, _) = hostile_server(Hostile::Flood { declared: None }, stop.clone());
    let options = format!("url={url};name=capped;max_version_bytes={MAX};cache_dir=");
    let (ticks, status, report) = run_host(&options, 1, 4.0, None);
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "host died: {status:?}\n{report}");
    assert!(
        ticks.iter().any(|t| t.failures > 0),
        "an endless body was never refused\n{report}"
    );
    let (rss, _) = growth(&ticks);
    eprintln!(
        "unannounced flood: the host grew by {rss} kB resident (cap {} kB)",
        MAX / 1024
    );
    assert!(
        rss < (MAX / 1024) as i64 * 3,
        "the host grew by {rss} kB on a body past its {MAX}-byte cap\n{report}"
    );
    assert_eq!(ticks.last().unwrap().value, "2.00", "{report}");
}

#[test]
fn invariant_10_a_zstd_bomb_past_max_version_bytes_is_refused_in_bounded_memory() {
    const MAX: u64 = 64 << 20;
    let stop = Arc::new(AtomicBool::new(false));
    // 1 GiB of zeros in a few hundred kB of zstd, at the blob URL the check-in names.
    let (url, sent) = hostile_server(
        Hostile::ZstdBomb {
            expands_to: 1 << 30,
        },
        stop.clone(),
    );
    let options = format!("url={url};name=bombed;max_version_bytes={MAX};cache_dir=");
    let (ticks, status, report) = run_host(&options, 1, 4.0, None);
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "host died: {status:?}\n{report}");
    assert!(ticks.len() >= 10, "too few ticks: {report}");
    assert!(
        ticks.iter().any(|t| t.failures > 0),
        "the bomb was never refused\n{report}"
    );
    assert!(
        sent.load(Ordering::Relaxed) > 0,
        "the host never asked for the blob URL the check-in gave\n{report}"
    );
    let (rss, _) = growth(&ticks);
    eprintln!(
        "zstd bomb: the host grew by {rss} kB resident (cap {} kB, bomb {} kB)",
        MAX / 1024,
        (1u64 << 30) / 1024
    );
    assert!(
        rss < (MAX / 1024) as i64 * 3,
        "the host grew by {rss} kB decoding a bomb past its {MAX}-byte cap\n{report}"
    );
    for t in &ticks {
        assert_eq!(
            t.value, "2.00",
            "the host stopped serving version 1\n{report}"
        );
    }
}

#[test]
fn invariant_10_a_delta_claiming_more_keys_than_its_version_holds_costs_no_more_than_its_bytes() {
    const MAX: u64 = 32 << 20;
    // 2.5 million 4-byte keys in 30 MB, for a version of 32 MiB: honest counts for its body,
    // impossible ones for the version it names (every key takes at least 16 bytes there).
    // Parsed and merged before the counts were checked, it took the host ~9 times its size.
    let upserts = 2_500_000;
    let stop = Arc::new(AtomicBool::new(false));
    let (url, sent) = hostile_server(
        Hostile::Delta {
            upserts,
            target_len: MAX,
        },
        stop.clone(),
    );
    let options = format!("url={url};name=delta;max_version_bytes={MAX};cache_dir=");
    let (ticks, status, report) = run_host(&options, 1, 5.0, None);
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "host died: {status:?}\n{report}");
    assert!(ticks.len() >= 10, "too few ticks: {report}");
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        sent > 12 * upserts as u64,
        "the host never asked for the delta the check-in offered\n{report}"
    );
    let (rss, _) = growth(&ticks);
    eprintln!(
        "hostile delta: the host grew by {rss} kB resident (delta {} kB, cap {} kB)",
        sent / 1024,
        MAX / 1024
    );
    // The delta's own bytes once, and some room: not several copies of it in parsed form.
    assert!(
        rss < (sent / 1024) as i64 * 2 + 16 * 1024,
        "the host grew by {rss} kB on a {sent}-byte delta\n{report}"
    );
    assert!(
        ticks.iter().any(|t| t.rejected > 0),
        "the hostile delta was never refused\n{report}"
    );
    // It fell back to the whole version.
    assert!(
        WHOLE_AFTER_DELTA.load(Ordering::Relaxed) > 0,
        "the host never downloaded version 2 whole after refusing the delta\n{report}"
    );
}
