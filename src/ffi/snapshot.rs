//! `sync_snapshot`: a pinned version, read without the handle.

use std::sync::Arc;

use super::sync_handle;
use super::sync_result;
use super::sync_result_code::*;
use crate::activation::Version;

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

/// Pins the version reads see now. Release it with `sync_snapshot_release`.
#[no_mangle]
pub extern "C" fn sync_snapshot_acquire(
    handle: *const sync_handle,
    out: *mut *mut sync_snapshot,
) -> sync_result {
    ffi_panic_boundary!({
        let handle = try_ref!(handle);
        let out = try_out!(out);
        match handle.client.snapshot() {
            Ok(version) => {
                // SAFETY: out is non-NULL.
                unsafe { *out = sync_snapshot::pin(version) };
                SYNC_OK
            }
            Err(_) => SYNC_NOT_READY,
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
    ffi_panic_boundary!({
        let snapshot = try_ref!(snapshot);
        let out_value = try_out!(out_value);
        let out_len = try_out!(out_len);
        let key = try_key!(key, key_len);
        match snapshot.version().get(key) {
            Some(value) => {
                // SAFETY: both non-NULL.
                unsafe {
                    *out_value = value.as_ptr();
                    *out_len = value.len();
                }
                SYNC_OK
            }
            None => SYNC_NOT_FOUND,
        }
    })
}

/// The version number a snapshot pinned.
#[no_mangle]
pub extern "C" fn sync_snapshot_version(
    snapshot: *const sync_snapshot,
    out: *mut u64,
) -> sync_result {
    ffi_panic_boundary!({
        let snapshot = try_ref!(snapshot);
        let out = try_out!(out);
        // SAFETY: non-NULL.
        unsafe { *out = snapshot.version().number() };
        SYNC_OK
    })
}

/// Releases a snapshot. NULL is a no-op.
#[no_mangle]
pub extern "C" fn sync_snapshot_release(snapshot: *mut sync_snapshot) {
    ffi_panic_boundary!({
        if !snapshot.is_null() {
            // SAFETY: the pointer came from `sync_snapshot::pin` (Arc::into_raw of a Version)
            // and is not used again.
            drop(unsafe { Arc::from_raw(snapshot as *const Version) });
        }
    })
}
