//! Read-path benchmarks, each measured side by side with its baseline in one run
//! (`cargo bench --bench read_path`).
//!
//! # Why a hand-rolled harness
//!
//! This machine has 2 cores that other engineers' builds share, so the same loop can take three
//! times longer a minute later: a HashMap baseline measured 287 ns in one run and 807 ns in the
//! next. A ratio of two figures taken at different moments measures the machine, not the code.
//! So every comparison here runs its contenders interleaved, in alternating order (A B C, then
//! C B A, …), for [`ROUNDS`] rounds after one unrecorded warm-up round, and prints each figure
//! as its median with the min–max over the rounds, and each ratio from the pairs measured in
//! the same round. Criterion runs one benchmark to the end before it starts the next, so it
//! cannot interleave.
//!
//! A real data server (target/release/lockstep) holds 1M keys (32-byte keys, 64-byte values,
//! about 115 MB encoded); a handle opened through the C ABI downloads them, and `sync_get` is
//! called through the C ABI exactly as a C host calls it. Every read is checked, in release
//! builds too: a read that fails or returns the wrong length stops the benchmark.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lockstep::activation::{Activation, Version};
use lockstep::ffi::{self, sync_handle};
use lockstep::format::{self, Content};
use support::{admin_post, checkin, Server};

/// Recorded rounds per comparison (each after one warm-up round).
const ROUNDS: usize = 7;
const KEYS: usize = 1_000_000;
/// Lookups per contender per round in the 1M-key comparisons: about half a second each.
const LOOKUPS: usize = 1_000_000;
const KEY_LEN: usize = 32;
const VALUE_LEN: usize = 64;

type Key = [u8; KEY_LEN];

/// The baseline at its fair best: hashbrown's own default hasher, foldhash, which is fast and
/// spreads these keys well. (rkyv's FxHasher64, what a version's archived table probes with,
/// crowds these keys into long probe chains in std's table: 1M lookups did not finish in ten
/// minutes.)
/// std's default SipHash is reported too, as the figure most Rust programs get, but the target
/// is judged against this one.
type FastMap = HashMap<Vec<u8>, Vec<u8>, foldhash::fast::RandomState>;

fn key(i: usize) -> Key {
    format!("key:{i:028}").into_bytes().try_into().unwrap()
}

fn value(i: usize, generation: usize) -> Vec<u8> {
    format!("value:{generation:08}:{i:049}").into_bytes()
}

fn content(n: usize) -> Content {
    (0..n).map(|i| (key(i).to_vec(), value(i, 0))).collect()
}

/// `count` keys drawn at random from `0..n`; each `seed` gives its own sequence.
fn random_keys(n: usize, count: usize, seed: u64) -> Vec<Key> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count).map(|_| key(rng.usize(0..n))).collect()
}

// --- the harness ------------------------------------------------------------------------------

/// One figure over the rounds: its median and its spread.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(samples: impl IntoIterator<Item = f64>) -> Spread {
        let mut s: Vec<f64> = samples.into_iter().collect();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Spread {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }

    /// Each round's a / b: the two were measured seconds apart, so machine drift cancels.
    fn of_ratios(a: &[f64], b: &[f64]) -> Spread {
        Spread::of(a.iter().zip(b).map(|(a, b)| a / b))
    }

    /// "613 (598–640)", with `precision` decimals.
    fn show(&self, precision: usize) -> String {
        let p = precision;
        format!("{:.p$} ({:.p$}–{:.p$})", self.median, self.min, self.max)
    }
}

/// Runs every contender once per round after one warm-up round that is not recorded, in
/// alternating order (A B C, then C B A, …), so that no contender always runs right after the
/// same other one (a map freed or a cache filled by one lands on the next). Returns each
/// contender's samples, in round order.
fn interleave<T>(contenders: &mut [&mut dyn FnMut() -> T]) -> Vec<Vec<T>> {
    for c in contenders.iter_mut() {
        c();
    }
    let mut samples: Vec<Vec<T>> = contenders.iter().map(|_| Vec::new()).collect();
    let n = contenders.len();
    for round in 0..ROUNDS {
        for i in 0..n {
            let i = if round % 2 == 0 { i } else { n - 1 - i };
            samples[i].push(contenders[i]());
        }
    }
    samples
}

// --- the data server and the handle -----------------------------------------------------------

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
                    "key": String::from_utf8(key(i).to_vec()).unwrap(),
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
        let active = checkin(&s, "bench").sync.active_version;
        let active_entries = support::admin_get(&s, "/v1/admin/history")
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"].as_u64() == Some(active))
            .and_then(|v| v["entries"].as_u64());
        if active_entries == Some(n as u64) {
            return s;
        }
        assert!(Instant::now() < deadline, "data never became active");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Handle(*mut sync_handle);
// SAFETY: the C ABI promises that a handle may be used from any number of threads at once.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Handle {
    /// Opens a handle whose host cache lives in `dir`, as the default one would in /var/tmp:
    /// the same code path, without leaving a 115 MB version file behind after every run.
    fn open(url: &str, dir: &std::path::Path) -> Handle {
        let cache = dir.join("host-cache");
        let opts = format!(
            "url={url};name=bench;bootstrap_wait_ms=120000;cache_dir={}",
            cache.display()
        );
        let mut h = std::ptr::null_mut();
        let r = ffi::sync_open(opts.as_ptr() as *const _, opts.len(), &mut h);
        assert_eq!(r, ffi::sync_result_code::SYNC_OK, "sync_open failed");
        Handle(h)
    }

    /// `sync_get` into `buf`; any result but `SYNC_OK` stops the benchmark.
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
        if r != ffi::sync_result_code::SYNC_OK {
            panic!("sync_get({:?}) returned {r}", String::from_utf8_lossy(key));
        }
        n
    }

    fn activations(&self) -> u64 {
        let mut s = ffi::sync_stats {
            struct_size: std::mem::size_of::<ffi::sync_stats>() as u32,
            ..Default::default()
        };
        assert_eq!(
            ffi::sync_stats_get(self.0, &mut s),
            ffi::sync_result_code::SYNC_OK,
            "sync_stats_get failed"
        );
        s.activations
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        ffi::sync_close(self.0);
    }
}

/// The same work as `sync_get` on a map: find the value and copy it into the caller's buffer.
#[inline]
fn map_get<S: std::hash::BuildHasher>(
    map: &HashMap<Vec<u8>, Vec<u8>, S>,
    key: &[u8],
    buf: &mut [u8],
) -> usize {
    map.get(key).map_or(0, |v| {
        buf[..v.len()].copy_from_slice(v);
        v.len()
    })
}

/// A reader: copies the value of a key into a buffer and returns its length.
type Get<'a> = &'a (dyn Fn(&[u8], &mut [u8]) -> usize + Sync);

/// A map of the pairs `0..n`, sized for them up front as a loader that knows its count would.
fn map_of<S: std::hash::BuildHasher + Default>(n: usize) -> HashMap<Vec<u8>, Vec<u8>, S> {
    let mut m = HashMap::with_capacity_and_hasher(n, S::default());
    m.extend((0..n).map(|i| (key(i).to_vec(), value(i, 0))));
    m
}

/// Reads every key of `keys` and checks that each finds its value.
#[inline]
fn read_all(get: Get, keys: &[Key]) {
    let mut buf = [0u8; VALUE_LEN];
    for k in keys {
        let n = get(k, &mut buf);
        if n != VALUE_LEN {
            panic!("read of {:?} gave {n} bytes", String::from_utf8_lossy(k));
        }
        black_box(&mut buf);
    }
}

fn ns_per_read(get: Get, keys: &[Key]) -> f64 {
    let t = Instant::now();
    read_all(get, keys);
    t.elapsed().as_nanos() as f64 / keys.len() as f64
}

/// Reads per second of one thread per key sequence, all started together: every thread's
/// reads over the wall time from the common start to the last thread's finish.
fn reads_per_second(get: Get, sequences: &[&[Key]]) -> f64 {
    let start = Barrier::new(sequences.len() + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = sequences
            .iter()
            .map(|keys| {
                let start = &start;
                s.spawn(move || {
                    // The first read on a thread registers it with arc-swap: not timed.
                    read_all(get, &keys[..1]);
                    start.wait();
                    read_all(get, keys);
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        for w in workers {
            w.join().unwrap();
        }
        let total: usize = sequences.iter().map(|k| k.len()).sum();
        total as f64 / t.elapsed().as_secs_f64()
    })
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

// --- the comparisons --------------------------------------------------------------------------

/// sync_get on 1M keys against HashMaps holding the same keys, one thread and two.
fn lookups_1m(report: &mut Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    eprintln!("loading {KEYS} keys into a data server...");
    let server = loaded_server(dir.path(), KEYS, "2s");
    let rss_before = rss_bytes();
    let handle = Handle::open(&server.url, dir.path());
    let rss_after = rss_bytes();
    let encoded = support::admin_get(&server, "/v1/admin/history?limit=1")[0]["size"]
        .as_u64()
        .unwrap();
    report.push(format!(
        "client memory for the held version: RSS +{:.1} MB for a {:.1} MB version: {:.2}x \
         (target <= 1.2x; one measurement)",
        rss_after.saturating_sub(rss_before) as f64 / 1e6,
        encoded as f64 / 1e6,
        rss_after.saturating_sub(rss_before) as f64 / encoded as f64
    ));

    let fast: FastMap = map_of(KEYS);
    let sip: HashMap<Vec<u8>, Vec<u8>> = map_of(KEYS);
    let sequences: Vec<Vec<Key>> = (1..=3)
        .map(|seed| random_keys(KEYS, LOOKUPS, seed))
        .collect();
    let sync_get: Get = &|k, buf| handle.get(k, buf);
    let fast_get: Get = &|k, buf| map_get(&fast, k, buf);
    let sip_get: Get = &|k, buf| map_get(&sip, k, buf);

    eprintln!("sync_get vs HashMap, one thread, {ROUNDS} interleaved rounds...");
    let keys = &sequences[0];
    let s = interleave(&mut [
        &mut || ns_per_read(sync_get, keys),
        &mut || ns_per_read(fast_get, keys),
        &mut || ns_per_read(sip_get, keys),
    ]);
    report.push(format!(
        "sync_get (C ABI, 1M keys, random) {} ns | HashMap+foldhash {} ns | \
         HashMap+SipHash {} ns | \
         ratio vs foldhash {}, vs SipHash {} (target <= 1.5 vs the foldhash map)",
        Spread::of(s[0].clone()).show(0),
        Spread::of(s[1].clone()).show(0),
        Spread::of(s[2].clone()).show(0),
        Spread::of_ratios(&s[0], &s[1]).show(2),
        Spread::of_ratios(&s[0], &s[2]).show(2),
    ));

    eprintln!("two threads vs one, {ROUNDS} interleaved rounds...");
    let one: [&[Key]; 1] = [&sequences[0]];
    let two: [&[Key]; 2] = [&sequences[1], &sequences[2]];
    let s = interleave(&mut [
        &mut || reads_per_second(sync_get, &one) / 1e6,
        &mut || reads_per_second(sync_get, &two) / 1e6,
        &mut || reads_per_second(fast_get, &one) / 1e6,
        &mut || reads_per_second(fast_get, &two) / 1e6,
    ]);
    report.push(format!(
        "sync_get from 2 threads {} M/s vs 1 thread {} M/s: {}x (target >= 1.9x); \
         the foldhash map on the same cores: {}x",
        Spread::of(s[1].clone()).show(2),
        Spread::of(s[0].clone()).show(2),
        Spread::of_ratios(&s[1], &s[0]).show(2),
        Spread::of_ratios(&s[3], &s[2]).show(2),
    ));
}

/// Downloaded bytes to a version ready to activate, against building the fair-best HashMap
/// from the same pairs; then the swap that publishes a version, alone and with a reader.
fn ready_and_swap(report: &mut Vec<String>) {
    let entries = content(KEYS);
    let bytes = format::encode(7, 0, &entries).unwrap();
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = entries.into_iter().collect();
    eprintln!("verify vs HashMap build, {ROUNDS} interleaved rounds...");
    // Each result is kept until the clock has stopped: dropping it frees 115 MB (the version)
    // or 2M buffers (the map), which is not part of getting ready.
    let s = interleave(&mut [
        &mut || {
            let buf = format::aligned_copy(&bytes);
            let t = Instant::now();
            let ready = black_box(Version::verify(buf, Some(7)).unwrap());
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(ready);
            ms
        },
        &mut || {
            let p = pairs.clone();
            let t = Instant::now();
            // Sized up front: the loader knows the count from the download, so the map never
            // grows and rehashes.
            let mut map = FastMap::with_capacity_and_hasher(p.len(), Default::default());
            map.extend(p);
            let map = black_box(map);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(map);
            ms
        },
    ]);
    report.push(format!(
        "downloaded -> ready, {:.0} MB, 1M keys: verify {} ms vs HashMap+foldhash build {} ms: \
         {}x (target <= 50 ms)",
        bytes.len() as f64 / 1e6,
        Spread::of(s[0].clone()).show(1),
        Spread::of(s[1].clone()).show(1),
        Spread::of_ratios(&s[0], &s[1]).show(3),
    ));
    drop(pairs);

    let version = Arc::new(Version::verify(format::aligned_copy(&bytes), Some(7)).unwrap());
    let activation = Activation::new();
    activation.activate_now(version.clone());
    let lookups = random_keys(KEYS, 100_000, 4);
    eprintln!("swap alone vs swap with a reader, {ROUNDS} interleaved rounds...");
    let s = interleave(
        &mut [&mut || swap_ns(&activation, &version, None), &mut || {
            swap_ns(&activation, &version, Some(&lookups))
        }],
    );
    let alone: Vec<f64> = s[0].iter().map(|r| r.0).collect();
    let busy: Vec<f64> = s[1].iter().map(|r| r.0).collect();
    report.push(format!(
        "swap (publish a new active version) with a reader thread reading all the while {} ns \
         ({} reads per round) vs no reader {} ns (target <= 1 µs with readers)",
        Spread::of(busy).show(0),
        Spread::of(s[1].iter().map(|r| r.1 as f64)).show(0),
        Spread::of(alone).show(0),
    ));
}

/// ns per `activate_now`, over a batch of swaps; with `reader_keys`, a second thread reads
/// through the same `Activation` from before the first swap until after the last. Returns the
/// ns per swap and the reads done meanwhile.
fn swap_ns(
    activation: &Activation,
    version: &Arc<Version>,
    reader_keys: Option<&[Key]>,
) -> (f64, u64) {
    const SWAPS: usize = 100_000;
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|s| {
        if let Some(keys) = reader_keys {
            let (stop, reads) = (&stop, &reads);
            s.spawn(move || {
                let mut n = 0u64;
                for k in keys.iter().cycle() {
                    let found =
                        activation.with_current(|v| v.and_then(|v| v.get(k)).map(<[u8]>::len));
                    if found != Some(VALUE_LEN) {
                        panic!("reader lost {:?} during swaps", String::from_utf8_lossy(k));
                    }
                    n += 1;
                    reads.store(n, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            });
            while reads.load(Ordering::Relaxed) == 0 {
                std::hint::spin_loop();
            }
        }
        let before = reads.load(Ordering::Relaxed);
        let t = Instant::now();
        for _ in 0..SWAPS {
            activation.activate_now(version.clone());
        }
        let ns = t.elapsed().as_nanos() as f64 / SWAPS as f64;
        let during = reads.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        (ns, during)
    })
}

/// Read latencies of one pass, in ns, as a histogram: sorting tens of millions of samples
/// would take longer than the pass.
struct Latencies {
    counts: Vec<u64>,
    max: u64,
}

impl Latencies {
    /// Latencies above this many ns share the last bucket (the maximum is still exact).
    const BUCKETS: usize = 100_000;

    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.counts.iter().sum();
        let rank = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (ns, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return ns as u64;
            }
        }
        self.max
    }
}

/// Times each read of `keys` (cycled) for `duration`.
fn timed_reads(handle: &Handle, keys: &[Key], duration: Duration) -> Latencies {
    let mut lat = Latencies {
        counts: vec![0; Latencies::BUCKETS],
        max: 0,
    };
    let mut buf = [0u8; VALUE_LEN];
    let end = Instant::now() + duration;
    for k in keys.iter().cycle() {
        let t = Instant::now();
        let n = handle.get(k, &mut buf);
        let done = Instant::now();
        if n != VALUE_LEN {
            panic!("read of {:?} gave {n} bytes", String::from_utf8_lossy(k));
        }
        let ns = (done - t).as_nanos() as u64;
        lat.counts[(ns as usize).min(Latencies::BUCKETS - 1)] += 1;
        lat.max = lat.max.max(ns);
        if done >= end {
            break;
        }
    }
    lat
}

/// Read latency while the data server rotates a new version in every 100 ms, against the same
/// handle while nothing changes, interleaved.
fn latency_under_activation(report: &mut Vec<String>) {
    const PASS: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000;
    let server = loaded_server(dir.path(), n, "100ms");
    let handle = Handle::open(&server.url, dir.path());
    let keys = random_keys(n, 1_000_000, 5);
    let editing = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    eprintln!("read latency steady vs under activation, {ROUNDS} interleaved rounds...");
    let s = std::thread::scope(|s| {
        s.spawn(|| {
            let mut generation = 1;
            while !stop.load(Ordering::Relaxed) {
                if editing.load(Ordering::Relaxed) {
                    let body = serde_json::json!({
                        "key": String::from_utf8(key(0).to_vec()).unwrap(),
                        "value": String::from_utf8(value(0, generation)).unwrap(),
                    });
                    let url = format!("{}/v1/admin/put", server.url);
                    support::post(&url, Some(support::TOKEN), body.to_string().as_bytes());
                    generation += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let pass = |edit: bool| {
            editing.store(edit, Ordering::Relaxed);
            // An edit is staged at the next rotation and active at the one after: let the
            // pipeline fill, or drain, before the pass starts.
            std::thread::sleep(Duration::from_millis(300));
            let before = handle.activations();
            let lat = timed_reads(&handle, &keys, PASS);
            (
                lat.quantile(0.999),
                lat.max / 1000,
                handle.activations() - before,
            )
        };
        let samples = interleave(&mut [&mut || pass(false), &mut || pass(true)]);
        stop.store(true, Ordering::Relaxed);
        samples
    });
    let p999 = |i: usize| s[i].iter().map(|r| r.0 as f64).collect::<Vec<_>>();
    let field =
        |i: usize, f: fn(&(u64, u64, u64)) -> u64| Spread::of(s[i].iter().map(|r| f(r) as f64));
    report.push(format!(
        "read latency p99.9 with an activation every 100 ms {} ns ({} activations per 1 s \
         pass, max {} µs) vs steady {} ns ({} activations, max {} µs): {}x (target <= 2x)",
        Spread::of(p999(1)).show(0),
        field(1, |r| r.2).show(0),
        field(1, |r| r.1).show(0),
        Spread::of(p999(0)).show(0),
        field(0, |r| r.2).show(0),
        field(0, |r| r.1).show(0),
        Spread::of_ratios(&p999(1), &p999(0)).show(2),
    ));
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: a benchmark run takes minutes.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("read_path: run it with `cargo bench --bench read_path`");
        return;
    }
    let mut report: Vec<String> = Vec::new();
    lookups_1m(&mut report);
    ready_and_swap(&mut report);
    latency_under_activation(&mut report);
    println!(
        "\nEach figure: median (min–max) over {ROUNDS} rounds, run interleaved with its baseline \
         in this process; ratios are per round."
    );
    for line in report {
        println!("  {line}");
    }
}
