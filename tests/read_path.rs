//! Properties of the read path and the retrieval thread inside the host process: reads do not
//! allocate, and the thread keeps the host's signals away from itself.

#[path = "support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lockstep::client::Client;
use lockstep::ffi::{self, sync_result_code::*};
use support::*;

/// Counts allocations made by the thread that switched counting on.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
thread_local!(static THIS_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && THIS_THREAD.with(|t| t.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    THIS_THREAD.with(|t| t.set(true));
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    THIS_THREAD.with(|t| t.set(false));
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

struct Handle(*mut ffi::sync_handle);
// SAFETY: a sync_handle is usable from any thread (the C ABI's promise).
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

/// The C ABI's read functions, as a host calls them: value, miss, short buffer, snapshot.
fn c_reads(h: &Handle, rounds: usize) {
    let mut buf = [0u8; 64];
    let mut len = 0usize;
    for _ in 0..rounds {
        let r = ffi::sync_get(
            h.0,
            b"price".as_ptr(),
            5,
            buf.as_mut_ptr(),
            buf.len(),
            &mut len,
        );
        assert_eq!((r, len), (SYNC_OK, 5));
        let r = ffi::sync_get(
            h.0,
            b"nope".as_ptr(),
            4,
            buf.as_mut_ptr(),
            buf.len(),
            &mut len,
        );
        assert_eq!(r, SYNC_NOT_FOUND);
        let r = ffi::sync_get(h.0, b"price".as_ptr(), 5, buf.as_mut_ptr(), 2, &mut len);
        assert_eq!(r, SYNC_BUFFER_TOO_SMALL);
        let mut v = 0u64;
        assert_eq!(ffi::sync_active_version(h.0, &mut v), SYNC_OK);
        let mut snap = std::ptr::null_mut();
        assert_eq!(ffi::sync_snapshot_acquire(h.0, &mut snap), SYNC_OK);
        let (mut p, mut n) = (std::ptr::null(), 0usize);
        assert_eq!(
            ffi::sync_snapshot_get(snap, b"price".as_ptr(), 5, &mut p, &mut n),
            SYNC_OK
        );
        assert_eq!(n, 5);
        ffi::sync_snapshot_release(snap);
    }
}

#[test]
fn c_sync_get_and_snapshots_do_not_allocate_after_a_threads_first_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = fast_server(&dir.path().join("db"));
    put(&s, "price", "12.50");
    wait_active(&s, "price", "12.50");
    let options = format!("url={};name=alloc;cache_dir=", s.url);
    let mut raw = std::ptr::null_mut();
    assert_eq!(
        ffi::sync_open(options.as_ptr().cast(), options.len(), &mut raw),
        SYNC_OK
    );
    let h = Handle(raw);
    let active = |h: &Handle| {
        let mut v = 0u64;
        assert_eq!(ffi::sync_active_version(h.0, &mut v), SYNC_OK);
        v
    };
    // A fresh thread: its first read registers it with arc-swap (what README states), and
    // from then on nothing allocates: not in steady state, not while a version is armed
    // (reads then consult the clock and the armed list), not across its activation.
    let before = active(&h);
    let (first, steady, through) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let first = allocations_in(|| c_reads(&h, 1));
            let steady = allocations_in(|| c_reads(&h, 10_000));
            let through = allocations_in(|| {
                let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
                while std::time::Instant::now() < until && active(&h) == before {
                    c_reads(&h, 100);
                }
                c_reads(&h, 1000);
            });
            (first, steady, through)
        });
        put(&s, "price", "13.00");
        reader.join().unwrap()
    });
    assert!(
        active(&h) > before,
        "no activation happened while the reader counted"
    );
    eprintln!(
        "allocations: {first} on a thread's first reads, {steady} in 10,000 rounds after, \
         {through} through an armed version and its activation"
    );
    assert!(first <= 1, "a thread's first read allocated {first} times");
    assert_eq!(steady, 0, "the read path allocated");
    assert_eq!(
        through, 0,
        "reads allocated while a version was armed or activating"
    );
    ffi::sync_close(h.0);
}

#[test]
fn retrieval_thread_blocks_every_async_signal() {
    let dir = tempfile::tempdir().unwrap();
    let s = fast_server(&dir.path().join("db"));
    let _client = Client::open(&format!("url={};name=signals", s.url)).unwrap();
    let mut found = false;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() != "lockstep-retrie" {
            continue;
        }
        found = true;
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .unwrap()
            .trim();
        let mask = u64::from_str_radix(blocked, 16).unwrap();
        // Every signal but the two the kernel never lets a thread block, and 32 and 33, which
        // glibc keeps for itself (thread cancellation, setxid).
        let unblockable = (1u64 << (libc::SIGKILL - 1))
            | (1u64 << (libc::SIGSTOP - 1))
            | (1u64 << 31)
            | (1u64 << 32);
        assert_eq!(mask | unblockable, u64::MAX, "SigBlk {blocked}");
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGCHLD,
            libc::SIGUSR1,
        ] {
            assert!(mask & (1 << (sig - 1)) != 0, "signal {sig} not blocked");
        }
    }
    assert!(found, "no retrieval thread found");
    // And this (the host's) thread was left as it was.
    let own = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let own_mask = own
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .unwrap()
        .trim();
    assert_eq!(
        u64::from_str_radix(own_mask, 16).unwrap() & (1 << (libc::SIGTERM - 1)),
        0
    );
}

#[test]
fn close_does_not_wait_out_a_hanging_request() {
    host_cache_root();
    // A data server that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let client = Client::open(&format!(
        "url={url};bootstrap_wait_ms=0;allow_not_ready=1;checkin_timeout_ms=30000"
    ))
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200)); // the check-in is now hanging
    let t = std::time::Instant::now();
    drop(client);
    let took = t.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "close took {took:?}"
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the client never connected"
    );
}
