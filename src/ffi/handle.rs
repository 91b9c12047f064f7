//! `sync_handle`: open, read, close, and the handle's own failure text.

use std::ffi::c_char;

use super::error::{fail, write_c_string};
use super::sync_result;
use super::sync_result_code::*;
use crate::client::{Client, OpenError, ReadError};

/// A handle on one data server: its retrieval thread and its staged and active caches.
pub struct sync_handle {
    pub(crate) client: Client,
}

/// Opens a handle and starts its retrieval thread.
///
/// `options` holds `options_len` bytes of `key=value` pairs separated by `;`, `,` or newlines
/// (need not be NUL-terminated; NULL with length 0 means all defaults):
/// - `url` data server base URL (default `http://127.0.0.1:7420`; `https://` verifies the
///   server against the system's roots, or against `ca_file`);
/// - `token` read token; `name` this client's name in the farm view;
/// - `ca_file` PEM file of the certificate authorities to trust instead of the system's;
/// - `connect_timeout_ms`, `checkin_timeout_ms`, `download_timeout_ms`;
/// - `bootstrap_wait_ms` how long to wait for the version that should be active now
///   (default 5000);
/// - `allow_not_ready` 1: if that wait runs out, return a handle that answers
///   `SYNC_NOT_READY` until data arrives; 0 (default): fail with `SYNC_UNREACHABLE`, or
///   `SYNC_UNAUTHORIZED` if the data server refused the token;
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
    ffi_panic_boundary!({
        let out = try_out!(out);
        // SAFETY: caller promises options_len readable bytes.
        let Some(raw) = (unsafe { super::bytes(options as *const u8, options_len) }) else {
            return SYNC_NULL_PARAMETER;
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            return fail(SYNC_BAD_OPTION, "options are not UTF-8");
        };
        match Client::open(text) {
            Ok(client) => {
                let handle = Box::new(sync_handle { client });
                // SAFETY: out is non-NULL and points to writable storage for a pointer.
                unsafe { *out = Box::into_raw(handle) };
                SYNC_OK
            }
            Err(OpenError::BadOption(m)) => fail(SYNC_BAD_OPTION, m),
            Err(OpenError::Unreachable(m)) => fail(SYNC_UNREACHABLE, m),
            Err(OpenError::Unauthorized(m)) => fail(SYNC_UNAUTHORIZED, m),
            Err(OpenError::Thread(m)) => fail(SYNC_THREAD_FAILED, m),
        }
    })
}

/// Stops the retrieval thread, waits for it, and frees the handle. NULL is a no-op. Call it
/// only when no other thread uses the handle; snapshots taken from it stay valid. The wait is
/// at most 2 s: a thread caught inside a network request finishes that request and exits on
/// its own, so a host's shutdown never waits out a timeout or a stalled download. One
/// exception: a version being fetched for the host cache while its bytes keep arriving is
/// waited for, up to 15 s in all, so that the host keeps it (a recycled worker is often its
/// host's leader, and its successor would otherwise fetch the same version again).
#[no_mangle]
pub extern "C" fn sync_close(handle: *mut sync_handle) {
    ffi_panic_boundary!({
        if !handle.is_null() {
            // SAFETY: the pointer came from sync_open and is not used after this call.
            drop(unsafe { Box::from_raw(handle) });
        }
    })
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
    ffi_panic_boundary!({
        let handle = try_ref!(handle);
        let out_len = try_out!(out_len);
        let key = try_key!(key, key_len);
        if buf.is_null() && buf_len != 0 {
            return SYNC_NULL_PARAMETER;
        }
        let buf: &mut [u8] = if buf_len == 0 {
            &mut []
        } else {
            // SAFETY: buf is non-NULL with buf_len writable bytes (caller's promise).
            unsafe { std::slice::from_raw_parts_mut(buf, buf_len) }
        };
        let (code, n) = match handle.client.get_into(key, buf) {
            Ok(n) => (SYNC_OK, n),
            Err(ReadError::NotReady) => return SYNC_NOT_READY,
            Err(ReadError::NotFound) => return SYNC_NOT_FOUND,
            Err(ReadError::TooSmall(needed)) => (SYNC_BUFFER_TOO_SMALL, needed),
        };
        // SAFETY: out_len is non-NULL.
        unsafe { *out_len = n };
        code
    })
}

/// The version reads see now. `SYNC_NOT_READY` before the first one arrives.
#[no_mangle]
pub extern "C" fn sync_active_version(handle: *const sync_handle, out: *mut u64) -> sync_result {
    ffi_panic_boundary!({
        let handle = try_ref!(handle);
        let out = try_out!(out);
        match handle.client.active_version() {
            0 => SYNC_NOT_READY,
            v => {
                // SAFETY: out is non-NULL.
                unsafe { *out = v };
                SYNC_OK
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
    ffi_panic_boundary!({
        let handle = try_ref!(handle);
        let out_version = try_out!(out_version);
        let out_activation_us = try_out!(out_activation_us);
        match handle.client.staged() {
            None => SYNC_NOT_FOUND,
            Some((v, at)) => {
                // SAFETY: both non-NULL.
                unsafe {
                    *out_version = v;
                    *out_activation_us = at;
                }
                SYNC_OK
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
    ffi_panic_boundary!({
        let handle = try_ref!(handle);
        let out_us = try_out!(out_us);
        match handle.client.stats().next_activation_us {
            0 => SYNC_NOT_READY,
            t => {
                // SAFETY: non-NULL.
                unsafe { *out_us = t };
                SYNC_OK
            }
        }
    })
}

/// Writes the handle's last retrieval failure ("check-in to … failed: …"), NUL-terminated, as
/// `sync_error_message` does; an empty string if there has been none. Its kind
/// (`SYNC_UNAUTHORIZED`, `SYNC_UNREACHABLE`) is `sync_stats.last_failure`.
#[no_mangle]
pub extern "C" fn sync_last_error(
    handle: *const sync_handle,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> sync_result {
    ffi_panic_boundary!({
        let handle = try_ref!(handle);
        write_c_string(&handle.client.last_error(), buf, len, out_len)
    })
}
