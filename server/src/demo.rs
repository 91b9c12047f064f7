//! `lockstep demo`: the whole invention on one machine.
//!
//! A data server on a throwaway embedded database, and N web-server processes — each this same
//! binary running `demo-web`, which loads `liblockstep.so` and reads through its C ABI — with
//! wall clocks skewed by hours or days (libfaketime, or the library's `clock_skew_us` hook when
//! libfaketime is absent). The driver edits prices every cycle (one edit scheduled for an exact
//! time) and prints the patent's Fig. 7 as it happens: the rotation performed by the first web
//! server to check in, the asynchronous retrieval into each staging cache, and the synchronous
//! activation, with the spread of activation instants across servers in true time.
//!
//! The same machinery measures the activation spread for the benchmark
//! (`benches/activation_spread.sh`): `--quiet --load` keeps every CPU busy and prints only the
//! per-activation spreads and the summary.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_void};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use lockstep::ffi::sync_stats;
use lockstep::wire::{Blob, Entry, ImportRequest, PutRequest, RotationRecord, SyncTable};

use crate::cli::Cli;
use crate::clock::{self, format_us};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Web-server processes to start.
    #[arg(long, default_value_t = 4)]
    servers: usize,
    /// Time between activations.
    #[arg(long, default_value = "2s")]
    interval: String,
    /// Activations to show before stopping.
    #[arg(long, default_value_t = 5)]
    cycles: usize,
    /// Keep going until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// Print only activations and the summary.
    #[arg(long)]
    quiet: bool,
    /// Keep every CPU busy with spinning threads while measuring (for the benchmark).
    #[arg(long)]
    load: bool,
    /// Use the library's clock_skew_us hook even if libfaketime is installed.
    #[arg(long)]
    no_faketime: bool,
}

#[derive(clap::Args, Debug)]
pub struct WebArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    library: PathBuf,
    /// Comma-separated keys to read.
    #[arg(long)]
    keys: String,
    #[arg(long, default_value_t = 0)]
    clock_skew_us: i64,
}

const PRICES: &[(&str, &str)] = &[
    ("price:apple", "1.25"),
    ("price:pear", "2.10"),
    ("price:plum", "0.80"),
    ("shipping:eu", "4.90"),
    ("promo:winter", "10%"),
];

/// Wall-clock skews of the web servers, seconds: hours, seconds and a day off.
const SKEWS: &[i64] = &[0, -7_200, 37, 86_400, -300, 10_800, -45, 600];

fn skew_of(i: usize) -> i64 {
    SKEWS[i % SKEWS.len()] + (i / SKEWS.len()) as i64 * 13
}

fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn library_path() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("LOCKSTEP_LIBRARY") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let beside = exe.with_file_name("liblockstep.so");
    if beside.exists() {
        Ok(beside)
    } else {
        Err(format!(
            "liblockstep.so not found next to {}: build it with 'cargo build --release -p lockstep' or set LOCKSTEP_LIBRARY",
            exe.display()
        ))
    }
}

/// Children die with the driver, even if it is killed.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A web server as the driver sees it.
#[derive(Default, Clone)]
struct Web {
    name: String,
    skew_s: i64,
    offset_us: i64,
    error_us: i64,
    staged: u64,
    active: u64,
    lagging: bool,
}

/// One web server's activation of one version.
#[derive(Clone)]
struct Seen {
    first_read_mono: i64,
    scheduled_mono: i64,
    values: String,
}

fn mono_to_server_us(mono: i64, map: (i64, i64)) -> i64 {
    // map = (CLOCK_MONOTONIC ns, wall µs) sampled together by the driver, whose wall clock is
    // the data server's (same host, not skewed).
    map.1 + (mono - map.0) / 1000
}

fn clock_map() -> (i64, i64) {
    let a = lockstep::clock::mono_ns();
    let w = clock::now_us();
    let b = lockstep::clock::mono_ns();
    ((a + b) / 2, w)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

/// Time of day (UTC) with milliseconds: 09:10:02.123.
fn hms(us: i64) -> String {
    let ms = us.div_euclid(1000);
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

pub fn run(args: DemoArgs) -> Result<(), String> {
    let interval_us = clock::parse_duration_us(&args.interval)
        .map_err(|e| format!("bad --interval: {e}; write it like 2s or 500ms"))?;
    clock::check_interval(interval_us, interval_us / 2)?;
    if args.servers == 0 {
        return Err("--servers must be at least 1".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let library = library_path()?;
    let dir = std::env::temp_dir().join(format!("lockstep-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = drive(&args, &exe, &library, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn drive(args: &DemoArgs, exe: &Path, library: &Path, dir: &Path) -> Result<(), String> {
    let say = |line: String| {
        if !args.quiet {
            println!("{line}");
        }
    };
    let token = format!("demo-{:x}", clock::now_us() ^ std::process::id() as i64);
    let db = dir.join("demo.db");
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--db")
        .arg(&db)
        .args(["--listen", "127.0.0.1:0", "--interval", &args.interval])
        .env("LOCKSTEP_ADMIN_TOKEN", &token)
        .env("LOCKSTEP_LOG", "warn")
        .stdout(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut server = Proc(
        cmd.spawn()
            .map_err(|e| format!("cannot start the data server: {e}"))?,
    );
    let mut first = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut first)
        .map_err(|e| e.to_string())?;
    let url = first
        .trim()
        .strip_prefix("lockstep: listening on ")
        .ok_or_else(|| format!("data server did not start: {first:?}"))?
        .to_owned();
    let admin = Cli::new(url.clone(), Some(token), false);
    let err = |e: crate::cli::CliError| e.0;

    let faketime = if args.no_faketime {
        None
    } else {
        libfaketime()
    };
    println!(
        "Lockstep demo: data server {url} (embedded SQLite in {}), interval {}",
        db.display(),
        args.interval
    );
    println!(
        "{} web servers, each a process reading through liblockstep.so's C ABI; wall clocks skewed by {}",
        args.servers,
        match &faketime {
            Some(p) => format!("libfaketime ({})", p.display()),
            None => "the library's clock_skew_us hook (libfaketime not installed)".to_owned(),
        }
    );

    let entries = PRICES
        .iter()
        .map(|(k, v)| Entry {
            key: Blob::Text(k.to_string()),
            value: Blob::Text(v.to_string()),
        })
        .collect();
    let _: serde_json::Value = admin
        .post("/v1/admin/import", &ImportRequest { entries })
        .map_err(err)?;
    say(format!(
        "production: seeded {} keys ({})",
        PRICES.len(),
        PRICES
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // Keep the CPUs busy for the benchmark, in this process so it all ends together.
    let stop_load = Arc::new(AtomicBool::new(false));
    if args.load {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..cpus {
            let stop = stop_load.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            });
        }
        println!("load: {cpus} spinning threads keep every CPU busy");
    }

    let keys = PRICES.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(",");
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut webs: Vec<Web> = Vec::new();
    let mut children = Vec::new();
    for i in 0..args.servers {
        let skew = skew_of(i);
        let name = format!("web-{i}");
        let mut cmd = Command::new(exe);
        cmd.arg("demo-web")
            .args(["--url", &url, "--name", &name, "--keys", &keys])
            .arg("--library")
            .arg(library)
            .stdout(Stdio::piped());
        match &faketime {
            Some(lib) => {
                cmd.env("LD_PRELOAD", lib)
                    .env("FAKETIME", format!("{skew:+}"))
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
            None => {
                cmd.args(["--clock-skew-us", &(skew * 1_000_000).to_string()]);
            }
        }
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start web server {name}: {e}"))?;
        let out = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((i, line)).is_err() {
                    break;
                }
            }
        });
        children.push(Proc(child));
        webs.push(Web {
            name,
            skew_s: skew,
            ..Web::default()
        });
    }

    say(String::new());
    say("Fig. 7, live. Times are the data server's clock.".into());
    say("  ROTATION    the first web server to check in after the activation time rotates the data server:".into());
    say("              active <- staged, staged <- production, next activation on the grid (once, under a lock)".into());
    say("  RETRIEVAL   asynchronous: each web server downloads the staged version into its staging cache".into());
    say(
        "  ACTIVATION  synchronous: at the activation time every web server swaps staged -> active"
            .into(),
    );
    say(String::new());

    let mut ready = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending_lines = Vec::new();
    while ready < webs.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (i, line) = rx
            .recv_timeout(left)
            .map_err(|_| "web servers did not start within 30 s".to_owned())?;
        if line.starts_with("READY") {
            ready += 1;
            webs[i].active = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else {
            pending_lines.push((i, line));
        }
    }

    let mut rotations_seen = 0usize;
    let mut seen: BTreeMap<u64, HashMap<usize, Seen>> = BTreeMap::new();
    let mut activation_time: HashMap<u64, i64> = HashMap::new();
    let mut reported: Vec<u64> = Vec::new();
    let mut spreads_first: Vec<f64> = Vec::new();
    let mut spreads_sched: Vec<f64> = Vec::new();
    let mut activations = 0usize;
    let mut tick = 0u64;
    let mut scheduled_note: Option<(i64, String)> = None;
    let mut last_poll = Instant::now() - Duration::from_secs(1);
    let start_versions: u64 = webs.iter().map(|w| w.active).max().unwrap_or(0);

    loop {
        for (i, line) in pending_lines.drain(..).chain(rx.try_iter()) {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("STAGED") => {
                    let v: u64 = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    let t: i64 = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    webs[i].staged = v;
                    activation_time.insert(v, t);
                    say(format!(
                        "{}  RETRIEVAL   {:<7} staged v{v} for activation at {} (async, local clock {:+}s)",
                        hms(clock::now_us()),
                        webs[i].name,
                        hms(t),
                        webs[i].skew_s
                    ));
                }
                Some("ACTIVE") => {
                    let v: u64 = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    let first_read_mono = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    let scheduled_mono = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    let lagging = f.next() == Some("1");
                    let values = f.next().unwrap_or("").to_owned();
                    webs[i].active = v;
                    webs[i].lagging = lagging;
                    if webs[i].staged == v {
                        webs[i].staged = 0;
                    }
                    if v > start_versions {
                        seen.entry(v).or_default().insert(
                            i,
                            Seen {
                                first_read_mono,
                                scheduled_mono,
                                values,
                            },
                        );
                    }
                }
                Some("STATS") => {
                    for kv in f {
                        if let Some((k, val)) = kv.split_once('=') {
                            let val: i64 = val.parse().unwrap_or(0);
                            match k {
                                "offset_us" => webs[i].offset_us = val,
                                "error_us" => webs[i].error_us = val,
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
        }

        // Rotations, from the data server's log.
        if last_poll.elapsed() >= Duration::from_millis(50) {
            last_poll = Instant::now();
            let log: Vec<RotationRecord> = admin.get("/v1/admin/rotations", &[]).map_err(err)?;
            for r in log.iter().skip(rotations_seen) {
                say(format!(
                    "{}  ROTATION    by {:<7} (first check-in after {}): active <- v{}, staged <- v{}, next activation {}",
                    hms(r.rotated_at_us),
                    r.rotated_by,
                    hms(r.activation_time_us),
                    r.active_version,
                    r.staged_version,
                    hms(r.next_activation_us)
                ));
                activation_time
                    .entry(r.active_version)
                    .or_insert(r.activation_time_us);
                // An edit every cycle, so every activation brings a new version.
                tick += 1;
                let sync: SyncTable = admin
                    .get("/v1/admin/status", &[])
                    .map(|s: lockstep::wire::StatusResponse| s.sync)
                    .map_err(err)?;
                let price = format!("{:.2}", 1.25 + (tick % 7) as f64 * 0.05);
                if tick == 2 {
                    // A scheduled change: live at exactly the first activation at or after it.
                    let at = sync.activation_time_us + sync.interval_us;
                    let req = PutRequest {
                        key: Blob::Text("promo:winter".into()),
                        value: Blob::Text("25%".into()),
                        at: Some(format_us(at)),
                    };
                    let _: serde_json::Value = admin.post("/v1/admin/put", &req).map_err(err)?;
                    say(format!(
                        "{}  ADMIN       schedule promo:winter=25% for {} (goes live at exactly that activation)",
                        hms(clock::now_us()),
                        hms(at)
                    ));
                    scheduled_note = Some((at, "promo:winter=25%".into()));
                }
                let req = PutRequest {
                    key: Blob::Text("price:apple".into()),
                    value: Blob::Text(price.clone()),
                    at: None,
                };
                let _: serde_json::Value = admin.post("/v1/admin/put", &req).map_err(err)?;
                say(format!(
                    "{}  ADMIN       put price:apple={price} in production (active everywhere by the second activation)",
                    hms(clock::now_us())
                ));
            }
            rotations_seen = log.len();
        }

        // Activations every web server has reported.
        // Complete once every web server reported it and its activation time is known (from a
        // web server's staging, or else from the rotation log).
        let complete: Vec<u64> = seen
            .iter()
            .filter(|(v, by)| {
                by.len() == webs.len() && !reported.contains(v) && activation_time.contains_key(v)
            })
            .map(|(v, _)| *v)
            .collect();
        for v in complete {
            reported.push(v);
            activations += 1;
            let by = &seen[&v];
            let map = clock_map();
            let firsts: Vec<i64> = by.values().map(|s| s.first_read_mono).collect();
            let spread_first =
                (firsts.iter().max().unwrap() - firsts.iter().min().unwrap()) as f64 / 1e6;
            let scheds: Vec<i64> = by
                .values()
                .map(|s| s.scheduled_mono)
                .filter(|t| *t > 0)
                .collect();
            let late = by.len() - scheds.len();
            let spread_sched = if late == 0 {
                (scheds.iter().max().unwrap() - scheds.iter().min().unwrap()) as f64 / 1e6
            } else {
                f64::NAN
            };
            spreads_first.push(spread_first);
            if spread_sched.is_finite() {
                spreads_sched.push(spread_sched);
            }
            let t = activation_time[&v];
            let deltas: Vec<String> = (0..webs.len())
                .map(|i| {
                    let d = mono_to_server_us(by[&i].first_read_mono, map) - t;
                    format!("{} {:+.2}ms", webs[i].name, d as f64 / 1000.0)
                })
                .collect();
            let values: std::collections::BTreeSet<&str> =
                by.values().map(|s| s.values.as_str()).collect();
            println!(
                "{}  ACTIVATION  v{v} on {}/{} web servers: spread {:.3} ms (first reads), {}",
                hms(t),
                by.len(),
                webs.len(),
                spread_first,
                if late == 0 {
                    format!("{spread_sched:.3} ms (scheduled instants)")
                } else {
                    format!("{late} caught up late (missed the activation, now lagging)")
                }
            );
            if !args.quiet {
                println!(
                    "              offsets from the activation time: {}",
                    deltas.join(", ")
                );
                println!(
                    "              every server serves the same data: {}",
                    if values.len() == 1 {
                        values.iter().next().unwrap().replace(',', ", ")
                    } else {
                        format!("NO: {values:?}")
                    }
                );
                if let Some((at, what)) = &scheduled_note {
                    if *at == t {
                        println!(
                            "              the scheduled change {what} went live at exactly {}",
                            hms(t)
                        );
                    }
                }
                println!(
                    "              {:<7} {:>8} {:>14} {:>9} {:>7} {:>7}",
                    "server", "skew", "offset to DS", "± error", "active", "lagging"
                );
                for w in &webs {
                    println!(
                        "              {:<7} {:>+7}s {:>+12.3}ms {:>7.3}ms {:>7} {:>7}",
                        w.name,
                        w.skew_s,
                        w.offset_us as f64 / 1000.0,
                        w.error_us as f64 / 1000.0,
                        format!("v{}", w.active),
                        if w.lagging { "yes" } else { "no" }
                    );
                }
            }
            let _ = std::io::stdout().flush();
        }

        if !args.watch && activations >= args.cycles {
            break;
        }
        for (i, c) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.0.try_wait() {
                return Err(format!("web server {} exited: {status}", webs[i].name));
            }
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            return Err(format!("data server exited: {status}"));
        }
        if let Ok((i, line)) = rx.recv_timeout(Duration::from_millis(20)) {
            pending_lines.push((i, line));
        }
    }
    stop_load.store(true, Ordering::Relaxed);

    let mut f = spreads_first.clone();
    f.sort_by(|a, b| a.total_cmp(b));
    let mut s = spreads_sched.clone();
    s.sort_by(|a, b| a.total_cmp(b));
    println!();
    println!(
        "Summary over {} activations, {} web servers{}:",
        activations,
        webs.len(),
        if args.load { ", every CPU busy" } else { "" }
    );
    println!(
        "  activation spread, scheduled instants (where reads switch): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(&s, 0.5),
        percentile(&s, 0.99),
        s.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  activation spread, first reads observed (adds each process's wake-up delay): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(&f, 0.5),
        percentile(&f, 0.99),
        f.last().copied().unwrap_or(f64::NAN)
    );
    let errors: Vec<String> = webs
        .iter()
        .map(|w| format!("{} ±{:.3}ms", w.name, w.error_us as f64 / 1000.0))
        .collect();
    println!("  clock-offset error bounds: {}", errors.join(", "));
    drop(children);
    drop(server);
    Ok(())
}

/// The C ABI, loaded at run time the way a host (nginx, PHP, Python) loads it.
struct Abi {
    _lib: libloading::Library,
    open: unsafe extern "C" fn(*const c_char, usize, *mut *mut c_void) -> u32,
    active_version: unsafe extern "C" fn(*const c_void, *mut u64) -> u32,
    staged_version: unsafe extern "C" fn(*const c_void, *mut u64, *mut i64) -> u32,
    stats_get: unsafe extern "C" fn(*const c_void, *mut sync_stats) -> u32,
    snapshot_acquire: unsafe extern "C" fn(*const c_void, *mut *mut c_void) -> u32,
    snapshot_get:
        unsafe extern "C" fn(*const c_void, *const u8, usize, *mut *const u8, *mut usize) -> u32,
    snapshot_release: unsafe extern "C" fn(*mut c_void),
    error_message: unsafe extern "C" fn(u32, *mut c_char, usize, *mut usize) -> u32,
}

impl Abi {
    fn load(path: &Path) -> Result<Abi, String> {
        // SAFETY: loading our own library, whose initialisers are Rust statics only.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol's type is the one include/lockstep.h declares.
                *unsafe { lib.get($name) }.map_err(|e| format!("{}: {e}", path.display()))?
            };
        }
        Ok(Abi {
            open: sym!(b"sync_open"),
            active_version: sym!(b"sync_active_version"),
            staged_version: sym!(b"sync_staged_version"),
            stats_get: sym!(b"sync_stats_get"),
            snapshot_acquire: sym!(b"sync_snapshot_acquire"),
            snapshot_get: sym!(b"sync_snapshot_get"),
            snapshot_release: sym!(b"sync_snapshot_release"),
            error_message: sym!(b"sync_error_message"),
            _lib: lib,
        })
    }
}

/// One demo web server: reads through the C ABI and reports each change on stdout.
pub fn web(args: WebArgs) -> Result<(), String> {
    let abi = Abi::load(&args.library)?;
    let mut options = format!(
        "url={};name={};bootstrap_wait_ms=15000",
        args.url, args.name
    );
    if args.clock_skew_us != 0 {
        options.push_str(&format!(";clock_skew_us={}", args.clock_skew_us));
    }
    let keys: Vec<&str> = args.keys.split(',').filter(|k| !k.is_empty()).collect();
    let mut handle: *mut c_void = std::ptr::null_mut();
    // SAFETY: options is valid for its length; handle is a valid out-pointer.
    let r = unsafe {
        (abi.open)(
            options.as_ptr() as *const c_char,
            options.len(),
            &mut handle,
        )
    };
    if r != 0 {
        let mut buf = [0u8; 512];
        let mut n = 0usize;
        // SAFETY: buf is writable for its length.
        unsafe { (abi.error_message)(r, buf.as_mut_ptr() as *mut c_char, buf.len(), &mut n) };
        return Err(format!("sync_open: {}", String::from_utf8_lossy(&buf[..n])));
    }
    let mut out = std::io::stdout().lock();
    let stats = |h: *const c_void| {
        let mut s = sync_stats {
            struct_size: std::mem::size_of::<sync_stats>() as u32,
            ..Default::default()
        };
        // SAFETY: h is a live handle; s is a properly sized stats struct.
        unsafe { (abi.stats_get)(h, &mut s) };
        s
    };
    let version = |h: *const c_void| {
        let mut v = 0u64;
        // SAFETY: h is live, v writable.
        unsafe { (abi.active_version)(h, &mut v) };
        v
    };
    let _ = writeln!(out, "READY {}", version(handle));
    let _ = out.flush();
    let mut shown = 0u64;
    let mut staged_shown = 0u64;
    let mut scheduled: HashMap<u64, i64> = HashMap::new();
    let mut next_poll = Instant::now();
    let mut next_stats = Instant::now();
    let mut next_activation_mono = 0i64;
    loop {
        let now = lockstep::clock::mono_ns();
        let v = version(handle);
        if v != shown {
            let first_read = now;
            let s = stats(handle);
            // Read every key from one pinned version.
            let mut snap: *mut c_void = std::ptr::null_mut();
            let mut values = Vec::new();
            // SAFETY: live handle, valid out-pointer; values are copied before release.
            unsafe {
                if (abi.snapshot_acquire)(handle, &mut snap) == 0 {
                    for k in &keys {
                        let mut p: *const u8 = std::ptr::null();
                        let mut n = 0usize;
                        if (abi.snapshot_get)(snap, k.as_ptr(), k.len(), &mut p, &mut n) == 0 {
                            let val = String::from_utf8_lossy(std::slice::from_raw_parts(p, n));
                            values.push(format!("{k}={val}"));
                        }
                    }
                    (abi.snapshot_release)(snap);
                }
            }
            let _ = writeln!(
                out,
                "ACTIVE {v} {first_read} {} {} {}",
                scheduled.get(&v).copied().unwrap_or(0),
                s.lagging,
                values.join(",")
            );
            let _ = out.flush();
            shown = v;
        }
        if Instant::now() >= next_poll {
            let s = stats(handle);
            let mut sv = 0u64;
            let mut st = 0i64;
            // SAFETY: live handle, valid out-pointers.
            if unsafe { (abi.staged_version)(handle, &mut sv, &mut st) } == 0 {
                scheduled.insert(sv, s.next_activation_mono_ns);
                next_activation_mono = s.next_activation_mono_ns;
                if sv != staged_shown {
                    let _ = writeln!(out, "STAGED {sv} {st}");
                    staged_shown = sv;
                }
            }
            if Instant::now() >= next_stats {
                let _ = writeln!(
                    out,
                    "STATS offset_us={} error_us={} checkins={} failures={}",
                    s.clock_offset_us, s.clock_error_us, s.checkins, s.consecutive_failures
                );
                next_stats = Instant::now() + Duration::from_millis(500);
            }
            let _ = out.flush();
            next_poll = Instant::now() + Duration::from_millis(20);
        }
        // Spin across an imminent activation so the first read after it is measured closely;
        // otherwise sleep a little and leave the CPU to others.
        let until = next_activation_mono - lockstep::clock::mono_ns();
        if !(-2_000_000..=3_000_000).contains(&until) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
