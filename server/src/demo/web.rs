//! One demo web server (`lockstep demo-web`): loads `liblockstep.so` the way a host does, reads
//! through its C ABI, and reports to the driver as [`Event`]s on stdout.
//!
//! The reader reads in a loop, every 200 µs, and back to back from 3 ms before the instant the
//! library armed until 2 ms after it, so each switch of versions is bracketed closely: the last
//! read that saw the old version and the first that saw the new, on CLOCK_MONOTONIC. The
//! brackets are what the driver measures the activation spread with; the armed ("planned")
//! instant is only what the library intended.

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lockstep::clock::mono_ns;
use lockstep::ffi::sync_stats;

use super::event::{Event, Switch, Values};

#[derive(clap::Args, Debug)]
pub struct WebArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    library: PathBuf,
    /// Comma-separated keys to read; the first is the one every read looks up.
    #[arg(long)]
    keys: String,
    #[arg(long, default_value_t = 0)]
    clock_skew_us: i64,
}

/// Read back to back from this long before the armed instant…
const SPIN_BEFORE_NS: i64 = 3_000_000;
/// …until this long after it (the switch itself is exact, the reader's wake-up is not).
const SPIN_AFTER_NS: i64 = 2_000_000;
/// Between reads away from an activation; a real server reads about this often under load.
const IDLE_READ_GAP: Duration = Duration::from_micros(200);
/// How often to look at the staged version and its armed instant.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// How often to report the clock estimate.
const STATS_EVERY: Duration = Duration::from_millis(500);

/// The C ABI, loaded at run time the way a host (nginx, PHP, Python) loads it.
struct Abi {
    _lib: libloading::Library,
    open: unsafe extern "C" fn(*const c_char, usize, *mut *mut c_void) -> u32,
    staged_version: unsafe extern "C" fn(*const c_void, *mut u64, *mut i64) -> u32,
    stats_get: unsafe extern "C" fn(*const c_void, *mut sync_stats) -> u32,
    snapshot_acquire: unsafe extern "C" fn(*const c_void, *mut *mut c_void) -> u32,
    snapshot_version: unsafe extern "C" fn(*const c_void, *mut u64) -> u32,
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
            staged_version: sym!(b"sync_staged_version"),
            stats_get: sym!(b"sync_stats_get"),
            snapshot_acquire: sym!(b"sync_snapshot_acquire"),
            snapshot_version: sym!(b"sync_snapshot_version"),
            snapshot_get: sym!(b"sync_snapshot_get"),
            snapshot_release: sym!(b"sync_snapshot_release"),
            error_message: sym!(b"sync_error_message"),
            _lib: lib,
        })
    }

    fn error(&self, r: u32) -> String {
        let mut buf = [0u8; 512];
        let mut n = 0usize;
        // SAFETY: buf is writable for its length; n is a valid out-pointer.
        unsafe { (self.error_message)(r, buf.as_mut_ptr() as *mut c_char, buf.len(), &mut n) };
        String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned()
    }
}

/// An open handle. Never closed: the driver kills the process, as a host's shutdown would.
struct Handle<'a> {
    abi: &'a Abi,
    ptr: *mut c_void,
}

/// One read as a request handler makes it: pin the version, look keys up, let go.
struct Read {
    version: u64,
    start_ns: i64,
    end_ns: i64,
    /// Every key, when the read found a version other than the one expected.
    values: Option<Values>,
}

impl<'a> Handle<'a> {
    fn open(abi: &'a Abi, options: &str) -> Result<Handle<'a>, String> {
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: options is valid for its length; ptr is a valid out-pointer.
        let r = unsafe { (abi.open)(options.as_ptr() as *const c_char, options.len(), &mut ptr) };
        if r != 0 {
            return Err(format!("sync_open: {}", abi.error(r)));
        }
        Ok(Handle { abi, ptr })
    }

    /// Reads `keys[0]` from one pinned version, and every key when that version is not
    /// `expected`; the clock is read before the pin and after the release. `None` if no
    /// version could be pinned (nothing has arrived yet).
    fn read(&self, keys: &[&str], expected: u64) -> Option<Read> {
        let start_ns = mono_ns();
        let mut snap: *mut c_void = std::ptr::null_mut();
        let mut version = 0u64;
        // SAFETY: live handle and valid out-pointers; values are copied before the release.
        let found: Values = unsafe {
            if (self.abi.snapshot_acquire)(self.ptr, &mut snap) != 0 {
                return None;
            }
            (self.abi.snapshot_version)(snap, &mut version);
            let wanted = if version == expected {
                &keys[..1]
            } else {
                keys
            };
            let found = wanted.iter().filter_map(|k| self.get(snap, k)).collect();
            (self.abi.snapshot_release)(snap);
            found
        };
        Some(Read {
            version,
            start_ns,
            end_ns: mono_ns(),
            values: (version != expected).then_some(found),
        })
    }

    /// # Safety
    /// `snap` must be a live snapshot of this handle.
    unsafe fn get(&self, snap: *mut c_void, key: &str) -> Option<(String, String)> {
        let mut p: *const u8 = std::ptr::null();
        let mut n = 0usize;
        // SAFETY: the caller keeps snap alive; p and n are valid out-pointers, and p points at
        // n bytes inside the snapshot until it is released.
        unsafe {
            if (self.abi.snapshot_get)(snap, key.as_ptr(), key.len(), &mut p, &mut n) != 0 {
                return None;
            }
            let value = String::from_utf8_lossy(std::slice::from_raw_parts(p, n));
            Some((key.to_owned(), value.into_owned()))
        }
    }

    fn stats(&self) -> sync_stats {
        let mut s = sync_stats {
            struct_size: std::mem::size_of::<sync_stats>() as u32,
            ..Default::default()
        };
        // SAFETY: live handle; s is a properly sized stats struct.
        unsafe { (self.abi.stats_get)(self.ptr, &mut s) };
        s
    }

    /// The staged version and its activation time (data server's clock), if one is staged.
    fn staged(&self) -> Option<(u64, i64)> {
        let (mut v, mut at) = (0u64, 0i64);
        // SAFETY: live handle, valid out-pointers.
        (unsafe { (self.abi.staged_version)(self.ptr, &mut v, &mut at) } == 0).then_some((v, at))
    }
}

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
    if keys.is_empty() {
        return Err("--keys names no key".into());
    }
    let handle = Handle::open(&abi, &options)?;
    Reader::new(handle, keys).run()
}

/// The read loop and what it remembers between reads.
struct Reader<'a> {
    handle: Handle<'a>,
    keys: Vec<&'a str>,
    out: std::io::StdoutLock<'static>,
    /// The version the last read saw, and when that read started.
    current: u64,
    last_read_start_ns: i64,
    /// Armed instant of each version seen staged.
    planned: HashMap<u64, i64>,
    staged_shown: u64,
    next_planned_ns: i64,
    next_poll: Instant,
    next_stats: Instant,
}

impl<'a> Reader<'a> {
    fn new(handle: Handle<'a>, keys: Vec<&'a str>) -> Reader<'a> {
        Reader {
            handle,
            keys,
            out: std::io::stdout().lock(),
            current: 0,
            last_read_start_ns: 0,
            planned: HashMap::new(),
            staged_shown: 0,
            next_planned_ns: 0,
            next_poll: Instant::now(),
            next_stats: Instant::now(),
        }
    }

    fn emit(&mut self, event: Event) {
        let _ = writeln!(self.out, "{event}");
        let _ = self.out.flush();
    }

    fn run(mut self) -> Result<(), String> {
        let first = self
            .handle
            .read(&self.keys, u64::MAX)
            .ok_or("no version to read after sync_open succeeded")?;
        self.current = first.version;
        self.last_read_start_ns = first.start_ns;
        self.emit(Event::Ready {
            active: first.version,
            values: first.values.unwrap_or_default(),
        });
        loop {
            self.read_once();
            // Near the instant, look at every turn: each check-in re-arms the staged version
            // with the latest clock estimate, and the instant reported must be the final one.
            if self.near_planned() || Instant::now() >= self.next_poll {
                self.poll_staged();
            }
            self.pace();
        }
    }

    /// One read; a version other than the last read's closes a bracket and is reported.
    fn read_once(&mut self) {
        let Some(read) = self.handle.read(&self.keys, self.current) else {
            return;
        };
        if read.version != self.current {
            let switch = Switch {
                from: self.current,
                to: read.version,
                last_old_read_ns: self.last_read_start_ns,
                first_new_read_ns: read.end_ns,
                planned_ns: self.planned.get(&read.version).copied(),
                values: read.values.unwrap_or_default(),
            };
            self.current = read.version;
            self.planned.retain(|v, _| *v > read.version);
            self.emit(Event::Switched(switch));
        }
        self.last_read_start_ns = read.start_ns;
    }

    /// Notes the staged version's armed instant, and reports the clock estimate now and then.
    fn poll_staged(&mut self) {
        // One stats call gives the staged version and its armed instant together.
        let s = self.handle.stats();
        self.next_planned_ns = s.next_activation_mono_ns;
        if s.staged_version != 0 && s.next_activation_mono_ns != 0 {
            self.planned
                .insert(s.staged_version, s.next_activation_mono_ns);
            if s.staged_version != self.staged_shown {
                if let Some((version, activation_us)) = self.handle.staged() {
                    self.staged_shown = version;
                    self.emit(Event::Staged {
                        version,
                        activation_us,
                        planned_ns: s.next_activation_mono_ns,
                    });
                }
            }
        }
        if Instant::now() >= self.next_stats {
            self.emit(Event::Stats {
                offset_us: s.clock_offset_us,
                error_us: s.clock_error_us,
                checkins: s.checkins,
                failures: s.consecutive_failures,
                lagging: s.lagging != 0,
            });
            self.next_stats = Instant::now() + STATS_EVERY;
        }
        self.next_poll = Instant::now() + POLL_EVERY;
    }

    fn near_planned(&self) -> bool {
        let until = self.next_planned_ns - mono_ns();
        self.next_planned_ns != 0 && (-SPIN_AFTER_NS..=SPIN_BEFORE_NS).contains(&until)
    }

    /// Back to back around an armed instant; otherwise a short sleep that leaves the CPU to
    /// others.
    fn pace(&self) {
        if !self.near_planned() {
            std::thread::sleep(IDLE_READ_GAP);
        }
    }
}
