//! Read-path benchmarks, each measured side by side with its baseline in one run, printing
//! the ratios at the end (`cargo bench --bench read_path`).
//!
//! A real data server (target/release/lockstep) holds 1M keys (32-byte keys, 64-byte values,
//! about 100 MB encoded); a handle opened through the C ABI downloads them, and `sync_get` is
//! called through the C ABI exactly as a C host calls it.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use lockstep::activation::{Activation, Version};
use lockstep::ffi::{self, sync_handle};
use lockstep::format::{self, Content};
use support::{admin_post, checkin, Server};

const KEYS: usize = 1_000_000;

fn key(i: usize) -> Vec<u8> {
    format!("key:{i:028}").into_bytes()
}

fn value(i: usize, generation: usize) -> Vec<u8> {
    format!("value:{generation:08}:{i:049}").into_bytes()
}

fn content(n: usize) -> Content {
    (0..n).map(|i| (key(i), value(i, 0))).collect()
}

/// Loads `n` keys into a data server and waits until they are the active version.
fn loaded_server(dir: &std::path::Path, n: usize, interval: &str) -> Server {
    let s = Server::start(
        &dir.join("db"),
        &["--interval", interval, "--max-body-bytes", "1000000000"],
    );
    for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
        let entries: Vec<_> = chunk
            .iter()
            .map(|&i| {
                serde_json::json!({
                    "key": String::from_utf8(key(i)).unwrap(),
                    "value": String::from_utf8(value(i, 0)).unwrap()
                })
            })
            .collect();
        admin_post(
            &s,
            "/v1/admin/import",
            serde_json::json!({ "entries": entries }),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let sync = checkin(&s, "bench").sync;
        let status = support::admin_get(&s, "/v1/admin/history?limit=1");
        let active_entries = support::admin_get(&s, "/v1/admin/history")
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"].as_u64() == Some(sync.active_version))
            .and_then(|v| v["entries"].as_u64());
        let _ = status;
        if active_entries == Some(n as u64) {
            return s;
        }
        assert!(Instant::now() < deadline, "data never became active");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Handle(*mut sync_handle);
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Handle {
    fn open(url: &str) -> Handle {
        let opts = format!("url={url};name=bench;bootstrap_wait_ms=120000");
        let mut h = std::ptr::null_mut();
        let r = ffi::sync_open(opts.as_ptr() as *const _, opts.len(), &mut h);
        assert_eq!(r, 0, "sync_open failed");
        Handle(h)
    }

    #[inline]
    fn get(&self, key: &[u8], buf: &mut [u8]) -> usize {
        let mut n = 0usize;
        let r = ffi::sync_get(
            self.0,
            key.as_ptr(),
            key.len(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut n,
        );
        debug_assert_eq!(r, 0);
        n
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        ffi::sync_close(self.0);
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// ns per operation of `f` over `keys`, best of `rounds` passes.
fn ns_per_op(rounds: usize, keys: &[Vec<u8>], mut f: impl FnMut(&[u8]) -> usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        let mut sum = 0usize;
        for k in keys {
            sum = sum.wrapping_add(f(k));
        }
        black_box(sum);
        best = best.min(t.elapsed().as_nanos() as f64 / keys.len() as f64);
    }
    best
}

fn random_keys(n: usize, count: usize) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(42);
    (0..count).map(|_| key(rng.usize(0..n))).collect()
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let mut report: Vec<String> = Vec::new();

    // --- 1M keys through the C ABI versus a HashMap ------------------------------------
    let dir = tempfile::tempdir().unwrap();
    eprintln!("loading {KEYS} keys into a data server...");
    let server = loaded_server(dir.path(), KEYS, "2s");
    let rss_before = rss_bytes();
    let handle = Arc::new(Handle::open(&server.url));
    let rss_after = rss_bytes();
    let encoded = support::admin_get(&server, "/v1/admin/history?limit=1")[0]["size"]
        .as_u64()
        .unwrap();
    let map: HashMap<Vec<u8>, Vec<u8>> = (0..KEYS).map(|i| (key(i), value(i, 0))).collect();
    let lookups = random_keys(KEYS, 2_000_000);

    let mut group = c.benchmark_group("lookup_1M_random");
    group.bench_function(BenchmarkId::new("sync_get_c_abi", KEYS), |b| {
        let mut buf = [0u8; 64];
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % lookups.len();
            handle.get(&lookups[i], &mut buf)
        })
    });
    group.bench_function(BenchmarkId::new("hashmap_get", KEYS), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % lookups.len();
            map.get(lookups[i].as_slice()).map_or(0, |v| v.len())
        })
    });
    group.finish();

    let mut buf = [0u8; 64];
    let abi = ns_per_op(3, &lookups, |k| handle.get(k, &mut buf));
    let hm = ns_per_op(3, &lookups, |k| map.get(k).map_or(0, |v| v.len()));
    report.push(format!(
        "sync_get (C ABI, 1M keys, random) {abi:.1} ns vs HashMap {hm:.1} ns: ratio {:.2} (target <= 1.5)",
        abi / hm
    ));

    // --- two threads versus one ----------------------------------------------------------
    let per_thread = |h: Arc<Handle>, keys: Arc<Vec<Vec<u8>>>| {
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let mut sum = 0;
        for k in keys.iter() {
            sum += h.get(k, &mut buf);
        }
        black_box(sum);
        keys.len() as f64 / t.elapsed().as_secs_f64()
    };
    let keys = Arc::new(lookups.clone());
    let one = (0..3)
        .map(|_| per_thread(handle.clone(), keys.clone()))
        .fold(0.0, f64::max);
    let mut two = 0.0f64;
    for _ in 0..3 {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let (h, k) = (handle.clone(), keys.clone());
                std::thread::spawn(move || per_thread(h, k))
            })
            .collect();
        two = two.max(hs.into_iter().map(|h| h.join().unwrap()).sum());
    }
    report.push(format!(
        "sync_get from 2 threads {:.1} M/s vs 1 thread {:.1} M/s: {:.2}x (target >= 1.9x)",
        two / 1e6,
        one / 1e6,
        two / one
    ));

    report.push(format!(
        "client memory for the held version: RSS +{:.1} MB for a {:.1} MB version: {:.2}x (target <= 1.2x)",
        (rss_after.saturating_sub(rss_before)) as f64 / 1e6,
        encoded as f64 / 1e6,
        rss_after.saturating_sub(rss_before) as f64 / encoded as f64
    ));
    drop(handle);
    drop(map);
    drop(server);

    // --- downloaded to ready: validation versus building a HashMap ---------------------
    let entries = content(KEYS);
    let bytes = format::encode(7, 0, &entries).unwrap();
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = entries.into_iter().collect();
    let mut group = c.benchmark_group("ready_to_activate_1M");
    group.sample_size(10);
    group.bench_function("verify_version", |b| {
        b.iter_batched(
            || format::aligned_copy(&bytes),
            |buf| Version::verify(buf, Some(7)).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("build_hashmap", |b| {
        b.iter_batched(
            || pairs.clone(),
            |p| p.into_iter().collect::<HashMap<_, _>>(),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
    let best = |f: &mut dyn FnMut() -> Duration| (0..5).map(|_| f()).min().unwrap();
    let verify = best(&mut || {
        let buf = format::aligned_copy(&bytes);
        let t = Instant::now();
        black_box(Version::verify(buf, Some(7)).unwrap());
        t.elapsed()
    });
    let build = best(&mut || {
        let p = pairs.clone();
        let t = Instant::now();
        black_box(p.into_iter().collect::<HashMap<_, _>>());
        t.elapsed()
    });
    report.push(format!(
        "downloaded -> ready, {:.0} MB, 1M keys: verify {:.1} ms vs HashMap build {:.1} ms: {:.2}x (target <= 50 ms)",
        bytes.len() as f64 / 1e6,
        verify.as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e3,
        verify.as_secs_f64() / build.as_secs_f64()
    ));
    let version = Arc::new(Version::verify(format::aligned_copy(&bytes), Some(7)).unwrap());
    let activation = Activation::new();
    let swaps = 100_000;
    let t = Instant::now();
    for _ in 0..swaps {
        activation.activate_now(version.clone());
    }
    let swap_ns = t.elapsed().as_nanos() as f64 / swaps as f64;
    report.push(format!(
        "swap (publish a new active version): {swap_ns:.0} ns (target <= 1 µs)"
    ));
    drop(version);
    drop(activation);

    // --- read latency while activations happen every 100 ms ----------------------------
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000;
    let server = loaded_server(dir.path(), n, "100ms");
    let handle = Handle::open(&server.url);
    let keys = random_keys(n, 1_000_000);
    let p999 = |handle: &Handle| {
        let mut lat: Vec<u32> = Vec::with_capacity(keys.len());
        let mut buf = [0u8; 64];
        for k in &keys {
            let t = Instant::now();
            black_box(handle.get(k, &mut buf));
            lat.push(t.elapsed().as_nanos() as u32);
        }
        lat.sort_unstable();
        lat[lat.len() * 999 / 1000]
    };
    let steady = p999(&handle);
    let activations_before = {
        let mut s = ffi::sync_stats {
            struct_size: std::mem::size_of::<ffi::sync_stats>() as u32,
            ..Default::default()
        };
        ffi::sync_stats_get(handle.0, &mut s);
        s.activations
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let editor = {
        let (url, stop) = (server.url.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut g = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = serde_json::json!({"key": "key:0000000000000000000000000000",
                                              "value": format!("{g}")});
                support::post(
                    &format!("{url}/v1/admin/put"),
                    Some(support::TOKEN),
                    body.to_string().as_bytes(),
                );
                g += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let busy = (0..5).map(|_| p999(&handle)).max().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    editor.join().unwrap();
    let mut s = ffi::sync_stats {
        struct_size: std::mem::size_of::<ffi::sync_stats>() as u32,
        ..Default::default()
    };
    ffi::sync_stats_get(handle.0, &mut s);
    report.push(format!(
        "read latency p99.9 with an activation every 100 ms ({} activations) {busy} ns vs steady {steady} ns: {:.2}x (target <= 2x)",
        s.activations - activations_before,
        busy as f64 / steady as f64
    ));
    drop(handle);
    drop(server);

    c.final_summary();
    println!("\nRatios, measured side by side in this run:");
    for line in report {
        println!("  {line}");
    }
}
