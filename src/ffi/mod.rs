//! The C ABI. This layer only marshals: it checks pointers and lengths, catches panics, and
//! calls [`crate::client::Client`]. Conventions follow rustls-ffi: one `sync_` prefix, every
//! function returns [`sync_result_code`] (whose `Display` is its message), every pointer
//! NULL-checked, out-params written only on success, every buffer passed with its length,
//! `*_free`-style calls accept NULL.
//!
//! One module per C type family: [`handle`] (`sync_handle`), [`snapshot`] (`sync_snapshot`),
//! [`stats`] (`sync_stats`), [`error`] (`sync_result_code` and the last failure's detail);
//! the plumbing they share (the panic boundary, pointer and key checks) is here.
#![allow(non_camel_case_types)]
// These functions are called from C, where `unsafe` means nothing; each checks its pointers
// for NULL and documents what else it needs from the caller.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::ffi::c_char;

/// The ABI version; bindings compare `sync_abi_version()` with the value they were written
/// for and refuse to load a library that differs.
pub const SYNC_ABI_VERSION: u32 = 1;

/// Runs an ABI function body: clears this thread's failure detail first (unless
/// `keep_detail`, for the one call that reads it), and turns a panic into the return type's
/// [`error::PanicOrDefault`] value (`SYNC_PANIC` for a result) with its message as detail.
macro_rules! ffi_panic_boundary {
    (keep_detail, $body:block) => {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| $body)) {
            Ok(result) => result,
            Err(payload) => {
                $crate::ffi::error::record_panic(&*payload);
                $crate::ffi::error::PanicOrDefault::on_panic()
            }
        }
    };
    ($body:block) => {
        ffi_panic_boundary!(keep_detail, {
            $crate::ffi::error::clear_detail();
            $body
        })
    };
}

/// Dereferences a pointer argument or returns `SYNC_NULL_PARAMETER`.
macro_rules! try_ref {
    ($ptr:expr) => {{
        let p = $ptr;
        if p.is_null() {
            return $crate::ffi::sync_result_code::SYNC_NULL_PARAMETER;
        }
        // SAFETY: non-NULL; the caller promises it points to a live object of this type.
        unsafe { &*p }
    }};
}

/// Checks an out-parameter, or returns `SYNC_NULL_PARAMETER` if it is NULL.
macro_rules! try_out {
    ($ptr:expr) => {{
        let p = $ptr;
        if p.is_null() {
            return $crate::ffi::sync_result_code::SYNC_NULL_PARAMETER;
        }
        p
    }};
}

/// Borrows a key argument, or returns `SYNC_NULL_PARAMETER` (NULL) or
/// `SYNC_INVALID_PARAMETER` (length 0): the check every lookup shares.
macro_rules! try_key {
    ($ptr:expr, $len:expr) => {{
        match $crate::ffi::key($ptr, $len) {
            Ok(k) => k,
            Err(code) => return code,
        }
    }};
}

pub mod error;
pub mod handle;
pub mod snapshot;
pub mod stats;

pub use error::{sync_error_message, sync_result, sync_result_code};
pub use handle::*;
pub use snapshot::*;
pub use stats::*;

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

/// A lookup key: non-NULL and at least one byte (the version format has no empty key).
fn key<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], sync_result_code> {
    if ptr.is_null() {
        return Err(sync_result_code::SYNC_NULL_PARAMETER);
    }
    if len == 0 {
        return Err(sync_result_code::SYNC_INVALID_PARAMETER);
    }
    // SAFETY: non-NULL; the caller promises `len` readable bytes at `ptr`.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The ABI version of this library (`SYNC_ABI_VERSION` when it was built).
#[no_mangle]
pub extern "C" fn sync_abi_version() -> u32 {
    ffi_panic_boundary!({ SYNC_ABI_VERSION })
}

/// The library's version, as a static NUL-terminated string ("lockstep 0.1.0").
#[no_mangle]
pub extern "C" fn sync_version() -> *const c_char {
    ffi_panic_boundary!({
        concat!("lockstep ", env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
    })
}
