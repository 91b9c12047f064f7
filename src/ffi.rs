//! The C ABI. This layer only marshals: it checks pointers and lengths, catches panics, and
//! calls [`crate::client::Client`]. Conventions follow rustls-ffi: one `sync_` prefix, results
//! as stable numbers, every pointer NULL-checked, out-params written only on success, every
//! buffer passed with its length, `*_free`-style calls accept NULL.
#![allow(non_camel_case_types)]
// These functions are called from C, where `unsafe` means nothing; each checks its pointers
// for NULL and documents what else it needs from the caller.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::activation::Version;
use crate::client::{Client, OpenError, ReadError};

/// The ABI version; bindings compare `sync_abi_version()` with the value they were written
/// for and refuse to load a library that differs.
pub const SYNC_ABI_VERSION: u32 = 1;

/// The status every function returns. Numbers are stable and never reused.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sync_result_code {
    /// Success.
    SYNC_OK = 0,
    /// The key is not in the version read.
    SYNC_NOT_FOUND = 1,
    /// No version has arrived yet (the handle was opened with `allow_not_ready=1`).
    SYNC_NOT_READY = 2,
    /// The value does not fit; `*out_len` holds the length needed.
    SYNC_BUFFER_TOO_SMALL = 3,
    /// A required pointer was NULL.
    SYNC_NULL_PARAMETER = 4,
    /// A parameter is out of range (for example a zero-length key, or a stats struct whose
    /// `struct_size` is too small).
    SYNC_INVALID_PARAMETER = 5,
    /// The options string is malformed or names an unknown option.
    SYNC_BAD_OPTION = 6,
    /// The data server could not be reached, or sent nothing usable, within the bootstrap wait.
    SYNC_UNREACHABLE = 7,
    /// The retrieval thread could not be started.
    SYNC_THREAD_FAILED = 8,
    /// A bug inside the library was caught before it reached the caller.
    SYNC_PANIC = 9,
}

use sync_result_code::*;

/// A status: one of the `sync_result_code` numbers.
pub type sync_result = u32;

/// A handle on one data server: its retrieval thread and its staged and active caches.
pub struct sync_handle {
    client: Client,
}

/// A pinned version: every read through it comes from the same version, and values it returns
/// stay valid until `sync_snapshot_release`.
pub struct sync_snapshot {
    // Never instantiated: a `*sync_snapshot` is an `Arc<Version>` turned into a raw pointer,
    // so pinning a version is a reference-count increment and allocates nothing.
    _opaque: (),
}

impl sync_snapshot {
    fn pin(version: Arc<Version>) -> *mut sync_snapshot {
        Arc::into_raw(version) as *mut sync_snapshot
    }

    fn version(&self) -> &Version {
        // SAFETY: every `sync_snapshot` pointer handed out is `Arc::into_raw` of a Version
        // (see `pin`), alive until `sync_snapshot_release`.
        unsafe { &*(self as *const sync_snapshot as *const Version) }
    }
}

/// Counters and gauges of a handle. Set `struct_size` to `sizeof(sync_stats)` before calling
/// `sync_stats_get`; fields may be added at the end in later versions.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sync_stats {
    /// Set by the caller: the size of the struct it passes.
    pub struct_size: u32,
    /// 1 if the client missed an activation and caught up late; 0 once it activates on time.
    pub lagging: u32,
    /// The version reads see now (0: none yet).
    pub active_version: u64,
    /// The version armed for the next activation (0: none).
    pub staged_version: u64,
    /// Next activation time on the data server's clock, µs since the Unix epoch (0: unknown).
    pub next_activation_us: i64,
    /// Data server's clock at the last successful check-in, µs (0: none yet).
    pub last_checkin_us: i64,
    /// Check-ins or downloads that failed in a row since the last success.
    pub consecutive_failures: u64,
    /// Data server's clock minus this host's wall clock, µs.
    pub clock_offset_us: i64,
    /// Bound on the error of the offset used for activations, µs.
    pub clock_error_us: i64,
    /// Successful check-ins.
    pub checkins: u64,
    /// Activations (on time or catching up).
    pub activations: u64,
    /// Downloads that failed verification and were discarded.
    pub rejected_versions: u64,
    /// Data-server time of the last on-time activation, µs.
    pub last_activation_us: i64,
    /// CLOCK_MONOTONIC instant of the last on-time activation, ns: the same clock in every
    /// process on a host, so activations of several clients can be compared.
    pub last_activation_mono_ns: i64,
    /// CLOCK_MONOTONIC instant at which the staged version becomes active, ns (0: none).
    pub next_activation_mono_ns: i64,
    /// What this handle does on its host: 0 no host cache (`cache_dir=`), 1 leader (talks to
    /// the data server for the host), 2 follower (follows the leader through the host cache),
    /// 3 the host cache could not be used (this process alone; `sync_last_error` says why).
    pub host_role: u32,
    /// 1 while the version served came from the host cache at open and nothing has confirmed
    /// it since (the data server may be down); 0 once a check-in has.
    pub unconfirmed: u32,
    /// Data server's clock when the version served was last confirmed current, µs: its age.
    pub confirmed_us: i64,
    /// Host-cache operations that failed (a full disk, a corrupt file); reads never fail
    /// for them.
    pub cache_failures: u64,
}

/// The size of `sync_stats` before fields were added at its end: callers built against that
/// header get that prefix filled.
const SYNC_STATS_V1_SIZE: usize = std::mem::offset_of!(sync_stats, host_role);

thread_local! {
    /// Detail of the last failure on this thread, for `sync_error_message`.
    static LAST_DETAIL: RefCell<Option<(sync_result, String)>> = const { RefCell::new(None) };
}

fn fail(code: sync_result_code, detail: impl Into<String>) -> sync_result {
    let detail = detail.into();
    LAST_DETAIL.with(|d| *d.borrow_mut() = Some((code as u32, detail)));
    code as u32
}

/// Runs an ABI function body, turning a panic into `SYNC_PANIC`.
macro_rules! ffi_boundary {
    ($body:block) => {
        match catch_unwind(AssertUnwindSafe(|| -> sync_result { $body })) {
            Ok(result) => result,
            Err(_) => SYNC_PANIC as u32,
        }
    };
}

/// Like `ffi_boundary!` for functions that return nothing.
macro_rules! ffi_boundary_void {
    ($body:block) => {
        let _ = catch_unwind(AssertUnwindSafe(|| $body));
    };
}

/// Dereferences a pointer argument or returns `SYNC_NULL_PARAMETER`.
macro_rules! try_ref {
    ($ptr:expr) => {{
        let p = $ptr;
        if p.is_null() {
            return SYNC_NULL_PARAMETER as u32;
        }
        // SAFETY: non-NULL; the caller promises it points to a live object of this type.
        unsafe { &*p }
    }};
}

/// Writes an out-parameter, or returns `SYNC_NULL_PARAMETER` if it is NULL.
macro_rules! try_out {
    ($ptr:expr) => {{
        let p = $ptr;
        if p.is_null() {
            return SYNC_NULL_PARAMETER as u32;
        }
        p
    }};
}

/// Borrows `len` bytes at `ptr`; NULL is accepted only with a zero length.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller promises `len` readable bytes at `ptr`.
    Some(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The ABI version of this library (`SYNC_ABI_VERSION` when it was built).
#[no_mangle]
pub extern "C" fn sync_abi_version() -> u32 {
    SYNC_ABI_VERSION
}

/// The library's version, as a static NUL-terminated string ("lockstep 0.1.0").
#[no_mangle]
pub extern "C" fn sync_version() -> *const c_char {
    concat!("lockstep ", env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// Opens a handle and starts its retrieval thread.
///
/// `options` holds `options_len` bytes of `key=value` pairs separated by `;`, `,` or newlines
/// (need not be NUL-terminated; NULL with length 0 means all defaults):
/// - `url` data server base URL (default `http://127.0.0.1:7420`);
/// - `token` read token; `name` this client's name in the farm view;
/// - `connect_timeout_ms`, `checkin_timeout_ms`, `download_timeout_ms`;
/// - `bootstrap_wait_ms` how long to wait for the version that should be active now
///   (default 5000);
/// - `allow_not_ready` 1: if that wait runs out, return a handle that answers
///   `SYNC_NOT_READY` until data arrives; 0 (default): fail with `SYNC_UNREACHABLE`;
/// - `max_version_bytes` largest version accepted;
/// - `clock_skew_us` testing hook: pretend the wall clock is off by this much (reported
///   offset only; activations never use the wall clock).
///
/// On success `*out` receives the handle; release it with `sync_close`.
#[no_mangle]
pub extern "C" fn sync_open(
    options: *const c_char,
    options_len: usize,
    out: *mut *mut sync_handle,
) -> sync_result {
    ffi_boundary!({
        let out = try_out!(out);
        // SAFETY: caller promises options_len readable bytes.
        let Some(raw) = (unsafe { bytes(options as *const u8, options_len) }) else {
            return SYNC_NULL_PARAMETER as u32;
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            return fail(SYNC_BAD_OPTION, "options are not UTF-8");
        };
        match Client::open(text) {
            Ok(client) => {
                let handle = Box::new(sync_handle { client });
                // SAFETY: out is non-NULL and points to writable storage for a pointer.
                unsafe { *out = Box::into_raw(handle) };
                SYNC_OK as u32
            }
            Err(OpenError::BadOption(m)) => fail(SYNC_BAD_OPTION, m),
            Err(OpenError::Unreachable(m)) => fail(SYNC_UNREACHABLE, m),
            Err(OpenError::Thread(m)) => fail(SYNC_THREAD_FAILED, m),
        }
    })
}

/// Stops the retrieval thread, waits for it, and frees the handle. NULL is a no-op. Call it
/// only when no other thread uses the handle; snapshots taken from it stay valid. The wait is
/// at most 2 s: a thread caught inside a network request finishes that request and exits on
/// its own, so a host's shutdown never waits out a timeout or a large download.
#[no_mangle]
pub extern "C" fn sync_close(handle: *mut sync_handle) {
    ffi_boundary_void!({
        if !handle.is_null() {
            // SAFETY: the pointer came from sync_open and is not used after this call.
            drop(unsafe { Box::from_raw(handle) });
        }
    });
}

fn read_result(e: ReadError, out_len: *mut usize) -> sync_result {
    match e {
        ReadError::NotReady => SYNC_NOT_READY as u32,
        ReadError::NotFound => SYNC_NOT_FOUND as u32,
        ReadError::TooSmall(needed) => {
            // SAFETY: checked non-NULL by the caller of read_result.
            unsafe { *out_len = needed };
            SYNC_BUFFER_TOO_SMALL as u32
        }
    }
}

/// Copies the value of `key` in the version active now into `buf`.
///
/// On `SYNC_OK`, `*out_len` is the value's length. On `SYNC_BUFFER_TOO_SMALL`, `*out_len` is
/// the length needed and `buf` is untouched (pass `buf_len` 0 and `buf` NULL to ask for the
/// length). Never blocks on the network and never allocates.
#[no_mangle]
pub extern "C" fn sync_get(
    handle: *const sync_handle,
    key: *const u8,
    key_len: usize,
    buf: *mut u8,
    buf_len: usize,
    out_len: *mut usize,
) -> sync_result {
    ffi_boundary!({
        let handle = try_ref!(handle);
        let out_len = try_out!(out_len);
        if key.is_null() {
            return SYNC_NULL_PARAMETER as u32;
        }
        if key_len == 0 {
            return SYNC_INVALID_PARAMETER as u32;
        }
        if buf.is_null() && buf_len != 0 {
            return SYNC_NULL_PARAMETER as u32;
        }
        // SAFETY: key is non-NULL with key_len readable bytes (caller's promise).
        let key = unsafe { std::slice::from_raw_parts(key, key_len) };
        let buf: &mut [u8] = if buf_len == 0 {
            &mut []
        } else {
            // SAFETY: buf is non-NULL with buf_len writable bytes (caller's promise).
            unsafe { std::slice::from_raw_parts_mut(buf, buf_len) }
        };
        match handle.client.get_into(key, buf) {
            Ok(n) => {
                // SAFETY: out_len is non-NULL.
                unsafe { *out_len = n };
                SYNC_OK as u32
            }
            Err(e) => read_result(e, out_len),
        }
    })
}

/// The version reads see now. `SYNC_NOT_READY` before the first one arrives.
#[no_mangle]
pub extern "C" fn sync_active_version(handle: *const sync_handle, out: *mut u64) -> sync_result {
    ffi_boundary!({
        let handle = try_ref!(handle);
        let out = try_out!(out);
        match handle.client.active_version() {
            0 => SYNC_NOT_READY as u32,
            v => {
                // SAFETY: out is non-NULL.
                unsafe { *out = v };
                SYNC_OK as u32
            }
        }
    })
}

/// The staged version armed for the next activation and that activation's time on the data
/// server's clock (µs since the Unix epoch). `SYNC_NOT_FOUND` when nothing is staged.
#[no_mangle]
pub extern "C" fn sync_staged_version(
    handle: *const sync_handle,
    out_version: *mut u64,
    out_activation_us: *mut i64,
) -> sync_result {
    ffi_boundary!({
        let handle = try_ref!(handle);
        let out_version = try_out!(out_version);
        let out_activation_us = try_out!(out_activation_us);
        match handle.client.staged() {
            None => SYNC_NOT_FOUND as u32,
            Some((v, at)) => {
                // SAFETY: both non-NULL.
                unsafe {
                    *out_version = v;
                    *out_activation_us = at;
                }
                SYNC_OK as u32
            }
        }
    })
}

/// The next activation time the data server announced (µs since the Unix epoch, its clock).
/// `SYNC_NOT_READY` before the first check-in.
#[no_mangle]
pub extern "C" fn sync_next_activation(
    handle: *const sync_handle,
    out_us: *mut i64,
) -> sync_result {
    ffi_boundary!({
        let handle = try_ref!(handle);
        let out_us = try_out!(out_us);
        match handle.client.stats().next_activation_us {
            0 => SYNC_NOT_READY as u32,
            t => {
                // SAFETY: non-NULL.
                unsafe { *out_us = t };
                SYNC_OK as u32
            }
        }
    })
}

/// Fills `*out` (whose `struct_size` the caller has set) with the handle's statistics.
#[no_mangle]
pub extern "C" fn sync_stats_get(handle: *const sync_handle, out: *mut sync_stats) -> sync_result {
    ffi_boundary!({
        let handle = try_ref!(handle);
        let out = try_out!(out);
        // SAFETY: out is non-NULL; struct_size is the first field of every version.
        let size = unsafe { (*out).struct_size } as usize;
        if size < SYNC_STATS_V1_SIZE {
            return fail(
                SYNC_INVALID_PARAMETER,
                format!(
                    "sync_stats.struct_size is {size}; this library needs at least \
                     {SYNC_STATS_V1_SIZE}"
                ),
            );
        }
        let s = handle.client.stats();
        let stats = sync_stats {
            struct_size: std::mem::size_of::<sync_stats>() as u32,
            lagging: s.lagging as u32,
            active_version: s.active_version,
            staged_version: s.staged_version,
            next_activation_us: s.next_activation_us,
            last_checkin_us: s.last_checkin_us,
            consecutive_failures: s.consecutive_failures,
            clock_offset_us: s.clock_offset_us,
            clock_error_us: s.clock_error_us,
            checkins: s.checkins,
            activations: s.activations,
            rejected_versions: s.rejected_versions,
            last_activation_us: s.last_activation_us,
            last_activation_mono_ns: s.last_activation_mono_ns,
            next_activation_mono_ns: s.next_activation_mono_ns,
            host_role: s.host_role,
            unconfirmed: s.unconfirmed as u32,
            confirmed_us: s.confirmed_us,
            cache_failures: s.cache_failures,
        };
        // A caller built against an older header gets the fields its struct has.
        let n = size.min(std::mem::size_of::<sync_stats>());
        // SAFETY: out is non-NULL with `size` writable bytes (the caller's struct_size), and
        // n <= size; the source is a whole sync_stats.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&stats as *const sync_stats).cast::<u8>(),
                out.cast::<u8>(),
                n,
            );
            (*out).struct_size = n as u32;
        }
        SYNC_OK as u32
    })
}

/// Pins the version reads see now. Release it with `sync_snapshot_release`.
#[no_mangle]
pub extern "C" fn sync_snapshot_acquire(
    handle: *const sync_handle,
    out: *mut *mut sync_snapshot,
) -> sync_result {
    ffi_boundary!({
        let handle = try_ref!(handle);
        let out = try_out!(out);
        match handle.client.snapshot() {
            Ok(version) => {
                // SAFETY: out is non-NULL.
                unsafe { *out = sync_snapshot::pin(version) };
                SYNC_OK as u32
            }
            Err(_) => SYNC_NOT_READY as u32,
        }
    })
}

/// Looks `key` up in a pinned version. On `SYNC_OK`, `*out_value` points into the snapshot
/// (not NUL-terminated, `*out_len` bytes) and stays valid until the snapshot is released.
#[no_mangle]
pub extern "C" fn sync_snapshot_get(
    snapshot: *const sync_snapshot,
    key: *const u8,
    key_len: usize,
    out_value: *mut *const u8,
    out_len: *mut usize,
) -> sync_result {
    ffi_boundary!({
        let snapshot = try_ref!(snapshot);
        let out_value = try_out!(out_value);
        let out_len = try_out!(out_len);
        if key.is_null() {
            return SYNC_NULL_PARAMETER as u32;
        }
        if key_len == 0 {
            return SYNC_INVALID_PARAMETER as u32;
        }
        // SAFETY: key is non-NULL with key_len readable bytes.
        let key = unsafe { std::slice::from_raw_parts(key, key_len) };
        match snapshot.version().get(key) {
            Some(value) => {
                // SAFETY: both non-NULL.
                unsafe {
                    *out_value = value.as_ptr();
                    *out_len = value.len();
                }
                SYNC_OK as u32
            }
            None => SYNC_NOT_FOUND as u32,
        }
    })
}

/// The version number a snapshot pinned.
#[no_mangle]
pub extern "C" fn sync_snapshot_version(
    snapshot: *const sync_snapshot,
    out: *mut u64,
) -> sync_result {
    ffi_boundary!({
        let snapshot = try_ref!(snapshot);
        let out = try_out!(out);
        // SAFETY: non-NULL.
        unsafe { *out = snapshot.version().number() };
        SYNC_OK as u32
    })
}

/// Releases a snapshot. NULL is a no-op.
#[no_mangle]
pub extern "C" fn sync_snapshot_release(snapshot: *mut sync_snapshot) {
    ffi_boundary_void!({
        if !snapshot.is_null() {
            // SAFETY: the pointer came from `sync_snapshot::pin` (Arc::into_raw of a Version)
            // and is not used again.
            drop(unsafe { Arc::from_raw(snapshot as *const Version) });
        }
    });
}

fn describe(result: sync_result) -> &'static str {
    match result {
        0 => "success",
        1 => "key not found",
        2 => "no version has arrived from the data server yet",
        3 => "buffer too small for the value",
        4 => "a required pointer was NULL",
        5 => "a parameter is out of range",
        6 => "bad option",
        7 => "data server unreachable",
        8 => "cannot start the retrieval thread",
        9 => "internal error (a bug in lockstep; please report it)",
        _ => "unknown result code",
    }
}

fn write_c_string(text: &str, buf: *mut c_char, len: usize, out_len: *mut usize) -> sync_result {
    if buf.is_null() || out_len.is_null() {
        return SYNC_NULL_PARAMETER as u32;
    }
    if len == 0 {
        return SYNC_INVALID_PARAMETER as u32;
    }
    let mut n = text.len().min(len - 1);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: buf has len writable bytes and n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
        *out_len = n;
    }
    SYNC_OK as u32
}

/// Writes a NUL-terminated description of `result` into `buf` (truncated to `len - 1` bytes;
/// `*out_len` is the length written, without the NUL). When the last failing call on this
/// thread returned `result`, its detail follows ("bad option: unknown option 'colour'").
#[no_mangle]
pub extern "C" fn sync_error_message(
    result: sync_result,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> sync_result {
    ffi_boundary!({
        let detail = LAST_DETAIL.with(|d| match &*d.borrow() {
            Some((code, detail)) if *code == result => Some(detail.clone()),
            _ => None,
        });
        let text = match detail {
            Some(d) => format!("{}: {d}", describe(result)),
            None => describe(result).to_owned(),
        };
        write_c_string(&text, buf, len, out_len)
    })
}

/// Writes the handle's last retrieval failure ("check-in to … failed: …"), NUL-terminated, as
/// `sync_error_message` does; an empty string if there has been none.
#[no_mangle]
pub extern "C" fn sync_last_error(
    handle: *const sync_handle,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> sync_result {
    ffi_boundary!({
        let handle = try_ref!(handle);
        write_c_string(&handle.client.last_error(), buf, len, out_len)
    })
}
